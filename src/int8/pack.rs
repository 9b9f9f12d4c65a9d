//! Packed int8 weights: one layout shared by every kernel, stored as plain little-endian bytes
//! so that it can be written to a file once and used straight from a memory map.
//!
//! # Format (version 2, layout 1 = `KQ4_NR8_I8`)
//!
//! All integers little-endian. The blob must start at an offset that is a multiple of 64 in
//! its buffer for best speed (a page-aligned memory map, or a 64-aligned offset inside one);
//! the kernels use unaligned loads, so any alignment is *correct*.
//!
//! ```text
//! offset  size  field
//!      0     4  magic b"EEQW"
//!      4     4  version = 2
//!      8     4  layout  = 1 (KQ4_NR8_I8)
//!     12     4  flags: bit 0 = the source weights were uint8 (shifted by -128);
//!                  bit 1 = no packed weight is -128 (all in [-127, 127])
//!     16     4  K
//!     20     4  N
//!     24     4  KQ = ceil(K / 4)           (k-quads)
//!     28     4  P  = ceil(N / 8)           (column panels)
//!     32     8  data offset   (= 64)
//!     40     8  data length   (= P * KQ * 32)
//!     48     8  colsum offset (64-aligned, after data)
//!     56     8  zero-point offset (= colsum offset + P * 8 * 4)
//!     64        data: P panels; panel p, k-quad q = 32 bytes at 64 + (p * KQ + q) * 32:
//!               for column j in 0..8 (n = 8p + j), the 4 bytes w[4q..4q+4, n] as i8
//!               (k past K and n past N are 0)
//!  colsum       P * 8 i32: sum over k < K of the packed i8 weight of column n (0 past N)
//!  zero pts     P * 8 i32: the weight zero point of column n in the packed i8 domain
//!               (uint8 sources: zp - 128), 0 past N
//! ```
//! Total length = zero-point offset + P * 8 * 4.
//!
//! The packed weight of an int8 source is the byte itself; of a uint8 source, `w - 128` (and
//! the zero point also moves by -128, so `w - zw` is unchanged). The column sums are what the
//! kernels that shift activations to i8 (`a - 128`, NEON) need to compensate exactly.
//!
//! Flag bit 1 lets the NEON kernel add two i8 x i8 products in one i16 lane (exact only
//! when no weight is -128, see `arm::neon`); it is computed once when packing. Version 1
//! blobs lacked it and are refused (a sidecar made by an older build is then repacked).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::sync::Arc;

/// `b"EEQW"`.
pub const MAGIC: [u8; 4] = *b"EEQW";
pub const VERSION: u32 = 2;
/// k-quads (4 consecutive k of a column together), panels of 8 columns, i8.
pub const LAYOUT_KQ4_NR8_I8: u32 = 1;
pub const FLAG_FROM_U8: u32 = 1;
/// No packed weight is -128.
pub const FLAG_NO_MINUS_128: u32 = 2;
pub const HEADER_LEN: usize = 64;
/// Columns per panel.
pub const NR: usize = 8;
/// Bytes of one k-quad of one panel.
pub const QUAD_BYTES: usize = 4 * NR;
/// Largest K for which the exact i32 result cannot overflow (255 * 255 * K < 2^31).
pub const MAX_K: usize = 33025;

/// Where the bytes of a [`PackedWeights`] live.
#[derive(Clone)]
enum Storage {
    Owned(Arc<Vec<u8>>),
    /// Borrowed from a shared buffer (a memory map), starting at `offset`.
    Shared {
        buf: Arc<dyn AsRef<[u8]> + Send + Sync>,
        offset: usize,
        len: usize,
    },
}

/// Packed int8 weights `[K, N]` plus column sums and zero points (see the module docs).
/// Cloning is cheap (the bytes are shared).
#[derive(Clone)]
pub struct PackedWeights {
    storage: Storage,
    k: usize,
    n: usize,
    kq: usize,
    panels: usize,
    from_u8: bool,
    /// No packed weight is -128.
    no_minus_128: bool,
    /// Column sums of the packed i8 weights (length `panels * 8`).
    colsum: Arc<[i32]>,
    /// Zero points in the packed domain (length `panels * 8`).
    zp: Arc<[i32]>,
    zp_all_zero: bool,
}

impl std::fmt::Debug for PackedWeights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedWeights")
            .field("k", &self.k)
            .field("n", &self.n)
            .field("from_u8", &self.from_u8)
            .field("mapped", &matches!(self.storage, Storage::Shared { .. }))
            .finish()
    }
}

fn rd_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn rd_u64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}
fn align64(x: usize) -> usize {
    x.div_ceil(64) * 64
}

/// Offsets of the sections for a K x N matrix: (data, colsum, zp, total).
fn sections(k: usize, n: usize) -> (usize, usize, usize, usize) {
    let kq = k.div_ceil(4);
    let p = n.div_ceil(NR);
    let data = HEADER_LEN;
    let colsum = align64(data + p * kq * QUAD_BYTES);
    let zp = colsum + p * NR * 4;
    (data, colsum, zp, zp + p * NR * 4)
}

/// Packs `w`, `[K, N]` row-major bytes (`signed`: i8, else u8), with zero points `zp` in the
/// same signedness: empty (all 0), one (per tensor) or `N` (per column).
pub fn pack_weights(w: &[u8], signed: bool, k: usize, n: usize, zp: &[u8]) -> PackedWeights {
    let bytes = pack_weights_bytes(w, signed, k, n, zp);
    PackedWeights::from_vec(bytes).expect("freshly packed weights are valid")
}

/// Like [`pack_weights`] but returns the blob's bytes (to be written to a file).
pub fn pack_weights_bytes(w: &[u8], signed: bool, k: usize, n: usize, zp: &[u8]) -> Vec<u8> {
    assert_eq!(
        w.len(),
        k * n,
        "pack_weights: w has {} bytes, not K*N = {k}*{n}",
        w.len()
    );
    assert!(k >= 1 && n >= 1, "pack_weights: empty matrix");
    assert!(
        k <= MAX_K,
        "pack_weights: K = {k} > {MAX_K} could overflow i32 accumulators"
    );
    assert!(
        zp.is_empty() || zp.len() == 1 || zp.len() == n,
        "pack_weights: {} zero points for N = {n}",
        zp.len()
    );
    let kq = k.div_ceil(4);
    let p = n.div_ceil(NR);
    let (data_off, colsum_off, zp_off, total) = sections(k, n);
    let mut out = vec![0u8; total];
    out[0..4].copy_from_slice(&MAGIC);
    let mut put32 = |at: usize, v: u32| out[at..at + 4].copy_from_slice(&v.to_le_bytes());
    put32(4, VERSION);
    put32(8, LAYOUT_KQ4_NR8_I8);
    put32(16, k as u32);
    put32(20, n as u32);
    put32(24, kq as u32);
    put32(28, p as u32);
    let mut put64 =
        |at: usize, v: usize| out[at..at + 8].copy_from_slice(&(v as u64).to_le_bytes());
    put64(32, data_off);
    put64(40, p * kq * QUAD_BYTES);
    put64(48, colsum_off);
    put64(56, zp_off);

    // The int8 bits of a weight: as stored (int8), or shifted by -128 (uint8: `b - 128` has the
    // bits of `b ^ 0x80`).
    let conv = |b: u8| -> u8 {
        if signed {
            b
        } else {
            b ^ 0x80
        }
    };
    {
        // Row by row (sequential reads); within a row, one panel's 8 columns at a time: their
        // bytes go 4 apart into the panel's quad of this row.
        let data = &mut out[data_off..data_off + p * kq * QUAD_BYTES];
        for (kk, row) in w.chunks_exact(n).enumerate() {
            let (q, kin) = (kk / 4, kk % 4);
            let mut panels = row.chunks_exact(NR);
            for (pp, cols) in (&mut panels).enumerate() {
                let base = (pp * kq + q) * QUAD_BYTES + kin;
                let dst = &mut data[base..base + 4 * (NR - 1) + 1];
                for j in 0..NR {
                    dst[4 * j] = conv(cols[j]);
                }
            }
            let tail = panels.remainder();
            if !tail.is_empty() {
                let base = (n / NR * kq + q) * QUAD_BYTES + kin;
                for (j, &b) in tail.iter().enumerate() {
                    data[base + 4 * j] = conv(b);
                }
            }
        }
    }
    // Column sums and the -128 check as plain passes over the rows (vectorized).
    let mut colsum = vec![0i32; p * NR];
    for row in w.chunks_exact(n) {
        for (c, &b) in colsum.iter_mut().zip(row) {
            *c += conv(b) as i8 as i32;
        }
    }
    let minus_128 = w.iter().fold(false, |any, &b| any | (conv(b) == 0x80));
    let mut flags = if signed { 0 } else { FLAG_FROM_U8 };
    if !minus_128 {
        flags |= FLAG_NO_MINUS_128;
    }
    out[12..16].copy_from_slice(&flags.to_le_bytes());
    for (i, c) in colsum.iter().enumerate() {
        out[colsum_off + 4 * i..colsum_off + 4 * i + 4].copy_from_slice(&c.to_le_bytes());
    }
    for nn in 0..n {
        let z = match zp.len() {
            0 => 0,
            1 => zp[0],
            _ => zp[nn],
        };
        let z = if signed {
            z as i8 as i32
        } else {
            z as i32 - 128
        };
        out[zp_off + 4 * nn..zp_off + 4 * nn + 4].copy_from_slice(&z.to_le_bytes());
    }
    out
}

impl PackedWeights {
    /// Validates and wraps an owned blob.
    pub fn from_vec(bytes: Vec<u8>) -> anyhow::Result<PackedWeights> {
        let len = bytes.len();
        Self::parse(Storage::Owned(Arc::new(bytes)), len)
    }

    /// Validates and wraps a blob inside a shared buffer (e.g. an `Arc<memmap2::Mmap>`),
    /// starting at `offset`; the weight bytes are read from the buffer, never copied (the
    /// column sums and zero points, `8 * N` bytes, are copied to the heap).
    pub fn from_shared(
        buf: Arc<dyn AsRef<[u8]> + Send + Sync>,
        offset: usize,
    ) -> anyhow::Result<PackedWeights> {
        let avail = (*buf).as_ref().len();
        anyhow::ensure!(
            offset <= avail,
            "packed weights offset {offset} past the buffer end"
        );
        let len = avail - offset;
        Self::parse(Storage::Shared { buf, offset, len }, len)
    }

    fn parse(storage: Storage, avail: usize) -> anyhow::Result<PackedWeights> {
        let b: &[u8] = match &storage {
            Storage::Owned(v) => v.as_slice(),
            Storage::Shared { buf, offset, .. } => &(**buf).as_ref()[*offset..],
        };
        anyhow::ensure!(avail >= HEADER_LEN, "packed weights: truncated header");
        anyhow::ensure!(b[0..4] == MAGIC, "packed weights: bad magic");
        let version = rd_u32(b, 4);
        anyhow::ensure!(
            version == VERSION,
            "packed weights: format version {version}, this build reads {VERSION} \
             (`electra-edge pack` makes a new sidecar)"
        );
        let layout = rd_u32(b, 8);
        anyhow::ensure!(
            layout == LAYOUT_KQ4_NR8_I8,
            "packed weights: unknown layout {layout}"
        );
        let flags = rd_u32(b, 12);
        let (k, n) = (rd_u32(b, 16) as usize, rd_u32(b, 20) as usize);
        anyhow::ensure!(
            k >= 1 && n >= 1 && k <= MAX_K,
            "packed weights: bad shape {k}x{n}"
        );
        let (kq, p) = (rd_u32(b, 24) as usize, rd_u32(b, 28) as usize);
        anyhow::ensure!(
            kq == k.div_ceil(4) && p == n.div_ceil(NR),
            "packed weights: bad header"
        );
        let (data_off, colsum_off, zp_off, total) = sections(k, n);
        anyhow::ensure!(
            rd_u64(b, 32) as usize == data_off
                && rd_u64(b, 40) as usize == p * kq * QUAD_BYTES
                && rd_u64(b, 48) as usize == colsum_off
                && rd_u64(b, 56) as usize == zp_off,
            "packed weights: bad section offsets"
        );
        anyhow::ensure!(
            avail >= total,
            "packed weights: truncated ({avail} < {total} bytes)"
        );
        let read_i32s = |at: usize| -> Vec<i32> {
            (0..p * NR)
                .map(|i| i32::from_le_bytes(b[at + 4 * i..at + 4 * i + 4].try_into().unwrap()))
                .collect()
        };
        let colsum: Arc<[i32]> = read_i32s(colsum_off).into();
        let zp: Arc<[i32]> = read_i32s(zp_off).into();
        let zp_all_zero = zp.iter().all(|&z| z == 0);
        let storage = match storage {
            Storage::Shared { buf, offset, .. } => Storage::Shared {
                buf,
                offset,
                len: total,
            },
            s => s,
        };
        Ok(PackedWeights {
            storage,
            k,
            n,
            kq,
            panels: p,
            from_u8: flags & FLAG_FROM_U8 != 0,
            no_minus_128: flags & FLAG_NO_MINUS_128 != 0,
            colsum,
            zp,
            zp_all_zero,
        })
    }

    /// The whole blob (header included): write this to a file to map it later.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.storage {
            Storage::Owned(v) => v.as_slice(),
            Storage::Shared { buf, offset, len } => &(**buf).as_ref()[*offset..*offset + *len],
        }
    }

    /// Whether the bytes live in a shared buffer (memory map) rather than on the heap.
    pub fn is_shared(&self) -> bool {
        matches!(self.storage, Storage::Shared { .. })
    }

    pub fn k(&self) -> usize {
        self.k
    }
    pub fn n(&self) -> usize {
        self.n
    }
    /// Number of k-quads (`ceil(K / 4)`).
    pub fn kq(&self) -> usize {
        self.kq
    }
    /// Number of 8-column panels.
    pub fn panels(&self) -> usize {
        self.panels
    }
    /// Whether the source weights were uint8.
    pub fn from_u8(&self) -> bool {
        self.from_u8
    }
    /// Whether no packed weight is -128 (all in [-127, 127]), recorded when packing.
    pub fn no_minus_128(&self) -> bool {
        self.no_minus_128
    }
    /// Column sums of the packed i8 weights, `panels * 8` long (0 past N).
    pub fn colsum(&self) -> &[i32] {
        &self.colsum
    }
    /// Zero points in the packed i8 domain, `panels * 8` long (0 past N).
    pub fn zero_points(&self) -> &[i32] {
        &self.zp
    }
    pub fn zero_points_all_zero(&self) -> bool {
        self.zp_all_zero
    }
    /// The panel data: `panels * kq * 32` bytes.
    pub fn data(&self) -> &[u8] {
        &self.as_bytes()[HEADER_LEN..HEADER_LEN + self.panels * self.kq * QUAD_BYTES]
    }
    /// Total bytes of the blob for a K x N matrix.
    pub fn packed_len(k: usize, n: usize) -> usize {
        sections(k, n).3
    }
}
