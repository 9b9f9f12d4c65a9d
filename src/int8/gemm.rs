//! The integer GEMM driver: A packing, tiling, threads, zero-point compensation and the f32
//! epilogue, around per-kernel micro-tiles (`MR` rows x `NP` panels of 8 columns of raw i32
//! sums).
//!
//! Exactness: every kernel computes a *raw* sum `R[m,n] = sum_k â[m,k] * w[k,n]` over the
//! packed i8 weights, with `â = a - za` (scalar, AVX2: i16 activations), `â = a - 128`
//! (NEON: i8 activations) or `â = a` (VNNI, i8mm: the u8 activations as they are), then
//!
//! ```text
//! C[m,n] = R[m,n] + za' * colsum[n] - zw[n] * rowsum[m]
//!   za' = 0 (â = a - za), 128 - za (â = a - 128) or -za (â = a),
//!   rowsum[m] = sum_k (a[m,k] - za)
//! ```
//! which is `sum_k (a - za) * (w - zw)` exactly. All intermediate i32 arithmetic wraps, so the
//! result is exact whenever the true result fits in i32 (always for K <= 33025).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use super::pack::{PackedWeights, NR, QUAD_BYTES};
use super::quantize::{self, QuantParams};
use super::Kernel;

use std::mem::MaybeUninit;

/// Packed-A formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AFormat {
    /// i16 `a - za`, k-quads of MR rows: `[block][q][r][4]`.
    I16MinusZa,
    /// i8 `a - 128` (`a ^ 0x80`), k-quads of MR rows: `[block][q][r][4]`.
    I8Shifted,
    /// u8 `a` as is, k-quads of MR rows: `[block][q][r][4]` (VNNI `vpdpbusd`).
    U8,
    /// u8 `a` as is, pairs of k-quads (8 k) of pairs of rows: `[block][q / 2][r / 2][2][8]`,
    /// a 2 x 8 matrix per 16 bytes (i8mm `usmmla`); k past K (an odd last quad) is 0.
    U8Pairs,
}

pub(crate) enum ABuf {
    I16(Vec<i16>),
    I8(Vec<i8>),
    U8(Vec<u8>),
}

impl ABuf {
    fn ptr(&self) -> *const u8 {
        match self {
            ABuf::I16(v) => v.as_ptr() as *const u8,
            ABuf::I8(v) => v.as_ptr() as *const u8,
            ABuf::U8(v) => v.as_ptr(),
        }
    }
}

pub(crate) struct PackedA {
    pub buf: ABuf,
    pub rowsum: Vec<i32>,
    /// Bytes of one block of MR rows.
    pub block_bytes: usize,
}

/// Per-kernel configuration: rows per tile and A format.
pub(crate) fn config(kernel: Kernel) -> (usize, AFormat) {
    match kernel {
        Kernel::Scalar => (4, AFormat::I16MinusZa),
        Kernel::Avx2 => (6, AFormat::I16MinusZa),
        Kernel::AvxVnni => (super::vnni::MR_YMM, AFormat::U8),
        Kernel::Avx512Vnni => (super::vnni::MR_ZMM, AFormat::U8),
        Kernel::Neon => (4, AFormat::I8Shifted),
        Kernel::Dotprod => (8, AFormat::I8Shifted),
        Kernel::I8mm => (8, AFormat::U8Pairs),
    }
}

/// Panels (of 8 columns) per tile: the unit in which columns are split between threads.
pub(crate) fn panels_per_tile(kernel: Kernel) -> usize {
    match kernel {
        Kernel::AvxVnni => super::vnni::NP_YMM,
        Kernel::Avx512Vnni => super::vnni::NP_ZMM,
        _ => 1,
    }
}

/// Values (of the format's element type) in one packed block of `mr` rows of `k`.
fn block_len(fmt: AFormat, mr: usize, k: usize) -> usize {
    let kq = k.div_ceil(4);
    match fmt {
        // U8Pairs rounds K up to whole pairs of quads (8 k)
        AFormat::U8Pairs => kq.div_ceil(2) * 8 * mr,
        _ => kq * mr * 4,
    }
}

/// Bytes of one packed-A element.
fn elem_bytes(fmt: AFormat) -> usize {
    match fmt {
        AFormat::I16MinusZa => 2,
        _ => 1,
    }
}

/// Packs u8 activations `[M, K]` (row-major) for a kernel.
pub(crate) fn pack_a(kernel: Kernel, a: &[u8], m: usize, k: usize, za: u8) -> PackedA {
    let (mr, fmt) = config(kernel);
    assert_eq!(a.len(), m * k);
    let per_block = block_len(fmt, mr, k);
    let len = m.div_ceil(mr) * per_block;
    let mut rowsum = vec![0i32; m];
    let buf = match fmt {
        AFormat::I16MinusZa => {
            let mut buf = vec![0i16; len];
            pack_rows_i16(kernel, a, k, za, mr, &mut buf, &mut rowsum);
            ABuf::I16(buf)
        }
        AFormat::I8Shifted => {
            let mut buf = vec![0i8; len];
            pack_rows_i8(a, k, za, mr, &mut buf, &mut rowsum);
            ABuf::I8(buf)
        }
        AFormat::U8 | AFormat::U8Pairs => {
            let mut buf = vec![0u8; len];
            pack_rows_u8(fmt, a, k, za, mr, &mut buf, &mut rowsum);
            ABuf::U8(buf)
        }
    };
    PackedA {
        buf,
        rowsum,
        block_bytes: per_block * elem_bytes(fmt),
    }
}

/// The I16MinusZa layout of `rowsum.len()` rows of u8 `a` into `buf` (their blocks, zeroed);
/// `rowsum[m] = sum_k (a - za)`.
fn pack_rows_i16(
    kernel: Kernel,
    a: &[u8],
    k: usize,
    za: u8,
    mr: usize,
    buf: &mut [i16],
    rowsum: &mut [i32],
) {
    let per_block = block_len(AFormat::I16MinusZa, mr, k);
    let kza = (k as i32) * za as i32;
    for (row, rs) in rowsum.iter_mut().enumerate() {
        let (b, r) = (row / mr, row % mr);
        let dst = &mut buf[b * per_block + r * 4..(b + 1) * per_block];
        let src = &a[row * k..(row + 1) * k];
        let s = match kernel {
            // SAFETY: an available kernel (resolved by the callers): AVX2 is there.
            #[cfg(target_arch = "x86_64")]
            Kernel::Avx2 => unsafe { super::x86::pack_row_i16_avx2(src, dst, mr * 4, za) },
            _ => pack_row_i16(src, dst, mr * 4, za),
        };
        *rs = s - kza;
    }
}

/// The I8Shifted layout (`a - 128`) of `rowsum.len()` rows of u8 `a` into `buf` (their
/// blocks, zeroed); `rowsum[m] = sum_k (a - za)`.
fn pack_rows_i8(a: &[u8], k: usize, za: u8, mr: usize, buf: &mut [i8], rowsum: &mut [i32]) {
    let per_block = block_len(AFormat::I8Shifted, mr, k);
    let kza = (k as i32) * za as i32;
    for (row, rs) in rowsum.iter_mut().enumerate() {
        let (b, r) = (row / mr, row % mr);
        let dst = &mut buf[b * per_block..(b + 1) * per_block];
        let src = &a[row * k..(row + 1) * k];
        let mut s = 0i32;
        for (q, chunk) in src.chunks(4).enumerate() {
            let d = &mut dst[(q * mr + r) * 4..(q * mr + r) * 4 + 4];
            for (d, &x) in d.iter_mut().zip(chunk) {
                *d = (x ^ 0x80) as i8;
                s += x as i32;
            }
        }
        *rs = s - kza;
    }
}

/// The U8 / U8Pairs layout of `rowsum.len()` rows of u8 `a` into `buf` (their blocks,
/// zeroed); `rowsum[m] = sum_k (a - za)`.
fn pack_rows_u8(
    fmt: AFormat,
    a: &[u8],
    k: usize,
    za: u8,
    mr: usize,
    buf: &mut [u8],
    rowsum: &mut [i32],
) {
    let per_block = block_len(fmt, mr, k);
    let kza = (k as i32) * za as i32;
    for (row, rs) in rowsum.iter_mut().enumerate() {
        let (b, r) = (row / mr, row % mr);
        let dst = &mut buf[b * per_block..(b + 1) * per_block];
        let src = &a[row * k..(row + 1) * k];
        *rs = pack_row_u8(fmt, src, dst, mr, r) - kza;
    }
}

/// Row `r` of a block of `mr` rows into the U8 / U8Pairs layouts (`dst`: the block). Returns
/// the sum of the row's u8 values.
pub(crate) fn pack_row_u8(fmt: AFormat, src: &[u8], dst: &mut [u8], mr: usize, r: usize) -> i32 {
    let mut s = 0i32;
    for (q, chunk) in src.chunks(4).enumerate() {
        let at = match fmt {
            AFormat::U8 => (q * mr + r) * 4,
            // [q / 2][r / 2][r % 2][q % 2][4]
            _ => ((q / 2 * mr + r / 2 * 2 + r % 2) * 2 + q % 2) * 4,
        };
        dst[at..at + chunk.len()].copy_from_slice(chunk);
        s += chunk.iter().map(|&x| x as i32).sum::<i32>();
    }
    s
}

/// One row into the i16 `a - za` layout: k-quad `q` of the row goes to `dst[q * stride..][..4]`.
/// Returns the sum of the row's u8 values.
pub(crate) fn pack_row_i16(src: &[u8], dst: &mut [i16], stride: usize, za: u8) -> i32 {
    let mut s = 0i32;
    for (q, chunk) in src.chunks(4).enumerate() {
        let d = &mut dst[q * stride..q * stride + chunk.len()];
        for (d, &x) in d.iter_mut().zip(chunk) {
            *d = x as i16 - za as i16;
            s += x as i32;
        }
    }
    s
}

#[derive(Clone, Copy)]
pub(crate) enum Out<'a> {
    I32(*mut i32),
    /// `y = acc as f32 * (sa * sw[n]) + bias[n]` (`sw`: 1 or N scales, `bias`: N values): the
    /// epilogue reads the op's own vectors, nothing is copied or padded per call.
    F32 {
        y: *mut f32,
        sa: f32,
        sw: &'a [f32],
        bias: Option<&'a [f32]>,
        /// `Some(div)`: torch's erf GELU on the result, applied by [`execute`] to each
        /// column range after its GEMM.
        gelu: Option<f32>,
    },
}

/// Everything a thread needs; raw pointers so column ranges can be shared across threads
/// (each thread writes disjoint columns).
pub(crate) struct Job<'a> {
    pub a: *const u8,
    pub block_bytes: usize,
    pub m: usize,
    pub n: usize,
    pub kq: usize,
    pub w: *const u8,
    pub rowsum: &'a [i32],
    /// The weights' column sums (padded to whole panels); `za' * colsum[n]` is added to every
    /// output, with `za'` = `col_offset` for the kernel's A format.
    pub colsum: &'a [i32],
    pub col_offset: i32,
    pub zp: &'a [i32],
    pub zp_zero: bool,
    pub out: Out<'a>,
}

// SAFETY: the raw pointers are read-only inputs (A, W, scale, bias) that outlive the job, and
// the output, which threads share only through disjoint column ranges (`execute`).
unsafe impl Send for Job<'_> {}
// SAFETY: as for `Send`: shared use reads the inputs and writes disjoint output columns.
unsafe impl Sync for Job<'_> {}

/// Panels of W per L2 block (the block stays in L2 while the row blocks of A, each small
/// enough for L1, go over it).
fn panels_per_chunk(kq: usize) -> usize {
    let budget = 192 * 1024;
    (budget / (kq * QUAD_BYTES).max(1)).max(1)
}

/// The generic driver over column panels `[p0, p1)`; `tile(a, w, kq, out, rows, np)` writes
/// the raw sums of `MR` rows x `np` panels (`1 <= np <= NP`; panel `i` at `w + i * kq * 32`)
/// into `out`, row-major with a row stride of `NP * 8` (only the first `rows` rows need to be
/// computed). Inlined into each kernel's `target_feature` wrapper so that the epilogue is
/// compiled for that kernel's features. Loop order: W chunk (L2) / row block (L1) / panel
/// group, so each row block's output is written in contiguous runs.
///
/// # Safety
/// `job` must describe valid buffers (see [`Job`]), `p0 <= p1 <= panels`, and `tile` must only
/// read A rows of its block and the `np` panels it is given, and write `MR x NP x 8` values.
#[inline(always)]
pub(crate) unsafe fn drive<
    const MR: usize,
    const NP: usize,
    F: Fn(*const u8, *const u8, usize, *mut i32, usize, usize),
>(
    job: &Job,
    p0: usize,
    p1: usize,
    tile: F,
) {
    let chunk = panels_per_chunk(job.kq).div_ceil(NP) * NP;
    // MR x NP x 8, NP <= 4 (a fixed-size buffer: no allocation per call)
    let mut t = [[0i32; 4 * NR]; MR];
    debug_assert!(NP <= 4);
    let mut pc0 = p0;
    while pc0 < p1 {
        let pc1 = (pc0 + chunk).min(p1);
        let mut mb = 0;
        while mb < job.m {
            let rows = (job.m - mb).min(MR);
            // SAFETY: block mb / MR of the packed A exists (mb < m; blocks = ceil(m / MR)).
            let a = unsafe { job.a.add(mb / MR * job.block_bytes) };
            let mut p = pc0;
            while p < pc1 {
                let np = (pc1 - p).min(NP);
                // SAFETY: panel p < panels, so its kq * 32 bytes are inside the packed data.
                let w = unsafe { job.w.add(p * job.kq * QUAD_BYTES) };
                tile(a, w, job.kq, t.as_mut_ptr() as *mut i32, rows, np);
                for i in 0..np {
                    let n0 = (p + i) * NR;
                    let cols = (job.n - n0).min(NR);
                    // SAFETY: rows mb..mb + rows < m and columns n0..n0 + cols < n are inside
                    // the output; this call's column range is written by no other thread.
                    unsafe { store::<MR>(job, &t, i * NR, mb, rows, n0, cols) };
                }
                p += np;
            }
            mb += MR;
        }
        pc0 = pc1;
    }
}

/// Writes rows `m0..m0 + rows`, columns `n0..n0 + cols` of the output from the raw sums
/// `t[r][c0..c0 + 8]` with the zero-point compensation and the epilogue.
///
/// # Safety
/// The output pointers of `job` must be valid for those rows and columns.
#[inline(always)]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn store<const MR: usize>(
    job: &Job,
    t: &[[i32; 4 * NR]; MR],
    c0: usize,
    m0: usize,
    rows: usize,
    n0: usize,
    cols: usize,
) {
    let colsum: &[i32; NR] = job.colsum[n0..n0 + NR].try_into().unwrap();
    let colterm: [i32; NR] = std::array::from_fn(|j| colsum[j].wrapping_mul(job.col_offset));
    let zp: &[i32; NR] = job.zp[n0..n0 + NR].try_into().unwrap();
    // The epilogue's scales and bias for this panel (0 past N: those columns are not stored).
    let live = (job.n - n0).min(NR);
    let (scale, bias): ([f32; NR], Option<[f32; NR]>) = match &job.out {
        Out::I32(_) => ([0f32; NR], None),
        Out::F32 { sa, sw, bias, .. } => (
            std::array::from_fn(|j| match (j < live, sw.len()) {
                (false, _) => 0.0,
                (true, 1) => sa * sw[0],
                (true, _) => sa * sw[n0 + j],
            }),
            bias.map(|b| std::array::from_fn(|j| if j < live { b[n0 + j] } else { 0.0 })),
        ),
    };
    for r in 0..rows {
        let m = m0 + r;
        let rs = job.rowsum[m];
        let raw: &[i32; NR] = t[r][c0..c0 + NR].try_into().unwrap();
        let mut v = [0i32; NR];
        if job.zp_zero {
            for j in 0..NR {
                v[j] = raw[j].wrapping_add(colterm[j]);
            }
        } else {
            for j in 0..NR {
                v[j] = raw[j]
                    .wrapping_add(colterm[j])
                    .wrapping_sub(zp[j].wrapping_mul(rs));
            }
        }
        match job.out {
            Out::I32(c) => {
                // SAFETY: the caller guarantees row m, columns n0..n0 + cols of C.
                unsafe {
                    let dst = c.add(m * job.n + n0);
                    std::ptr::copy_nonoverlapping(v.as_ptr(), dst, cols);
                }
            }
            Out::F32 { y, .. } => {
                let mut f = [0f32; NR];
                for j in 0..NR {
                    f[j] = v[j] as f32 * scale[j];
                }
                if let Some(b) = &bias {
                    for j in 0..NR {
                        f[j] += b[j];
                    }
                }
                // SAFETY: the caller guarantees row m, columns n0..n0 + cols of Y; a whole
                // panel is one fixed-size (unaligned) store, not a call to memmove.
                unsafe {
                    let dst = y.add(m * job.n + n0);
                    if cols == NR {
                        std::ptr::write_unaligned(dst as *mut [f32; NR], f);
                    } else {
                        std::ptr::copy_nonoverlapping(f.as_ptr(), dst, cols);
                    }
                }
            }
        }
    }
}

/// Portable tile: MR = 4, A = i16 `a - za`.
///
/// # Safety
/// `a` must point at `kq * 16` i16 values (one packed block), `w` at `kq * 32` bytes (one
/// panel) and `out` at `4 x 32` writable i32 (the driver's tile buffer).
pub(crate) unsafe fn tile_scalar(a: *const u8, w: *const u8, kq: usize, out: *mut i32) {
    const MR: usize = 4;
    // SAFETY: the caller guarantees both extents; the packed A buffer is a Vec<i16>, so `a`
    // is aligned for i16.
    let (a, w) = unsafe {
        (
            std::slice::from_raw_parts(a as *const i16, kq * MR * 4),
            std::slice::from_raw_parts(w as *const i8, kq * QUAD_BYTES),
        )
    };
    let mut acc = [[0i32; NR]; MR];
    for q in 0..kq {
        let wq = &w[q * QUAD_BYTES..(q + 1) * QUAD_BYTES];
        for r in 0..MR {
            let aq = &a[(q * MR + r) * 4..(q * MR + r) * 4 + 4];
            for j in 0..NR {
                let wj = &wq[j * 4..j * 4 + 4];
                let mut s = 0i32;
                for i in 0..4 {
                    s += aq[i] as i32 * wj[i] as i32;
                }
                acc[r][j] = acc[r][j].wrapping_add(s);
            }
        }
    }
    for (r, acc) in acc.iter().enumerate() {
        // SAFETY: row r of the driver's buffer (row stride 4 * NR) is writable.
        unsafe { std::ptr::copy_nonoverlapping(acc.as_ptr(), out.add(r * 4 * NR), NR) };
    }
}

/// # Safety
/// As [`drive`].
unsafe fn run_scalar(job: &Job, p0: usize, p1: usize) {
    // SAFETY: the driver hands the tile one packed block, one panel and its tile buffer.
    unsafe { drive::<4, 1, _>(job, p0, p1, |a, w, kq, o, _, _| tile_scalar(a, w, kq, o)) }
}

/// A kernel's GEMM over panels `[p0, p1)` of a job.
pub(crate) type Runner = unsafe fn(&Job, usize, usize);

/// The runner of an available kernel.
fn runner(kernel: Kernel) -> Runner {
    match kernel {
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx2 => super::x86::run_avx2,
        #[cfg(target_arch = "x86_64")]
        Kernel::AvxVnni => super::x86::run_avxvnni,
        #[cfg(target_arch = "x86_64")]
        Kernel::Avx512Vnni => super::x86::run_avx512vnni,
        #[cfg(target_arch = "aarch64")]
        Kernel::Neon => super::arm::run_neon,
        #[cfg(target_arch = "aarch64")]
        Kernel::Dotprod => super::arm::run_dotprod,
        #[cfg(target_arch = "aarch64")]
        Kernel::I8mm => super::arm::run_i8mm,
        _ => run_scalar,
    }
}

/// Smallest share of a matmul worth a thread of its own (~40 us of AVX2 work): waking a pool
/// thread costs microseconds on an idle host, but on a busy one a helper that is descheduled
/// with a claimed task makes the caller wait; at 0.5M MACs two threads were slower than one
/// on the shared dev host (8 x 256 x 1024).
pub(crate) const MIN_MACS_PER_THREAD: usize = 2 << 20;

/// Runs the job over all panels with `run`, split over up to `threads` threads of the pool
/// (1 = on the calling thread; fewer when the matmul is too small to pay for the wake-ups).
/// Column ranges are whole tiles of `np` panels; there are about twice as many ranges as
/// threads so that a thread that starts late (busy host) takes fewer.
fn execute(run: Runner, np: usize, job: &Job, panels: usize, threads: usize) {
    let macs = job.m * job.kq * 4 * job.n;
    // (unit tests split even tiny matmuls, to exercise the threaded path)
    let useful = if cfg!(test) {
        threads
    } else {
        macs / MIN_MACS_PER_THREAD
    };
    let groups = panels.div_ceil(np);
    let threads = threads.min(useful).clamp(1, groups.max(1));
    if threads == 1 {
        // SAFETY: the job's buffers are valid for all panels (built by the callers below),
        // and the epilogue's columns are the ones just computed, on this thread only.
        unsafe {
            run(job, 0, panels);
            gelu_columns(job, 0, panels);
        }
        return;
    }
    let tasks = (2 * threads).min(groups);
    let per = groups.div_ceil(tasks) * np;
    let tasks = panels.div_ceil(per);
    super::pool::Pool::global().run(tasks, threads, |i| {
        let p0 = i * per;
        let p1 = (p0 + per).min(panels);
        // SAFETY: as above; tasks cover disjoint column ranges, so no two threads write the
        // same output element, and the job outlives `run` (which waits for every task).
        unsafe {
            run(job, p0, p1);
            gelu_columns(job, p0, p1);
        }
    });
}

/// The GELU of an f32 job with one, over the columns of panels `[p0, p1)` of every row (the
/// whole output in one call when that is all of it).
///
/// # Safety
/// The job's output must be valid for `m x n` values, and the columns of panels `[p0, p1)`
/// written by no other thread meanwhile.
unsafe fn gelu_columns(job: &Job, p0: usize, p1: usize) {
    let Out::F32 {
        y, gelu: Some(div), ..
    } = job.out
    else {
        return;
    };
    let (c0, c1) = ((p0 * NR).min(job.n), (p1 * NR).min(job.n));
    if c0 == 0 && c1 == job.n {
        // SAFETY: the whole output (caller), no other thread writes it meanwhile.
        let all = unsafe { std::slice::from_raw_parts_mut(y, job.m * job.n) };
        super::gelu::gelu_f32(true, all, div);
        return;
    }
    for row in 0..job.m {
        // SAFETY: row `row`, columns c0..c1 <= n of the output (caller), which only this
        // call writes meanwhile.
        let part = unsafe { std::slice::from_raw_parts_mut(y.add(row * job.n + c0), c1 - c0) };
        super::gelu::gelu_f32(true, part, div);
    }
}

fn check_a(a: &[u8], m: usize, w: &PackedWeights) {
    assert_eq!(
        a.len(),
        m * w.k(),
        "qgemm: A has {} elements, not M*K = {m}*{}",
        a.len(),
        w.k()
    );
}

fn prepare(kernel: Kernel, a: &[u8], m: usize, za: u8, w: &PackedWeights) -> (Kernel, PackedA) {
    let kernel = Kernel::resolve(Some(kernel));
    let pa = pack_a(kernel, a, m, w.k(), za);
    (kernel, pa)
}

impl<'a> Job<'a> {
    /// The job over `m` rows of activations packed for `layout` with zero point `za`, and `w`.
    fn new(
        layout: Kernel,
        pa: &'a PackedA,
        m: usize,
        za: u8,
        w: &'a PackedWeights,
        out: Out<'a>,
    ) -> Job<'a> {
        Job {
            a: pa.buf.ptr(),
            block_bytes: pa.block_bytes,
            m,
            n: w.n(),
            kq: w.kq(),
            w: w.data().as_ptr(),
            rowsum: &pa.rowsum,
            colsum: w.colsum(),
            col_offset: col_offset(layout, za),
            zp: w.zero_points(),
            zp_zero: w.zero_points_all_zero(),
            out,
        }
    }
}

/// `za'` of `za' * colsum[n]` for the kernel's A format.
fn col_offset(kernel: Kernel, za: u8) -> i32 {
    match config(kernel).1 {
        AFormat::I16MinusZa => 0,
        AFormat::I8Shifted => 128 - za as i32,
        AFormat::U8 | AFormat::U8Pairs => -(za as i32),
    }
}

/// Exact integer GEMM: `c[m,n] = sum_k (a[m,k] - za) * (w[k,n] - zw[n])`, `a` u8 `[M, K]`
/// row-major, `c` i32 `[M, N]` row-major.
pub fn qgemm_i32(
    kernel: Kernel,
    a: &[u8],
    m: usize,
    za: u8,
    w: &PackedWeights,
    c: &mut [i32],
    threads: usize,
) {
    check_a(a, m, w);
    assert_eq!(
        c.len(),
        m * w.n(),
        "qgemm_i32: C has {} elements, not M*N",
        c.len()
    );
    if m == 0 {
        return;
    }
    let (kernel, pa) = prepare(kernel, a, m, za, w);
    let (run, np) = (runner(kernel), panels_per_tile(kernel));
    let job = Job::new(kernel, &pa, m, za, w, Out::I32(c.as_mut_ptr()));
    execute(run, np, &job, w.panels(), threads);
}

/// Quantized GEMM with the f32 epilogue:
/// `y[m,n] = c[m,n] as f32 * (sa * sw[n]) + bias[n]` (`sw`: 1 or N scales; `bias`: N values).
#[allow(clippy::too_many_arguments)]
pub fn qgemm_f32(
    kernel: Kernel,
    a: &[u8],
    m: usize,
    za: u8,
    sa: f32,
    w: &PackedWeights,
    sw: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    threads: usize,
) {
    check_a(a, m, w);
    check_f32_epilogue("qgemm_f32", m, w, sw, bias, y);
    if m == 0 {
        return;
    }
    let (kernel, pa) = prepare(kernel, a, m, za, w);
    run_f32(kernel, &pa, za, m, sa, w, sw, bias, None, y, threads);
}

/// Shapes of the f32 epilogue's operands: `y` `[M, N]`, 1 or N weight scales, N bias values.
fn check_f32_epilogue(
    who: &str,
    m: usize,
    w: &PackedWeights,
    sw: &[f32],
    bias: Option<&[f32]>,
    y: &[f32],
) {
    let n = w.n();
    assert_eq!(y.len(), m * n, "{who}: Y has {} elements, not M*N", y.len());
    assert!(
        sw.len() == 1 || sw.len() == n,
        "{who}: {} weight scales for N = {n}",
        sw.len()
    );
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "{who}: bias has {} values for N = {n}", b.len());
    }
}

/// The f32 GEMM over packed activations (shapes already checked).
#[allow(clippy::too_many_arguments)]
fn run_f32(
    kernel: Kernel,
    pa: &PackedA,
    za: u8,
    m: usize,
    sa: f32,
    w: &PackedWeights,
    sw: &[f32],
    bias: Option<&[f32]>,
    gelu: Option<f32>,
    y: &mut [f32],
    threads: usize,
) {
    let out = Out::F32 {
        y: y.as_mut_ptr(),
        sa,
        sw,
        bias,
        gelu,
    };
    let job = Job::new(kernel, pa, m, za, w, out);
    execute(
        runner(kernel),
        panels_per_tile(kernel),
        &job,
        w.panels(),
        threads,
    );
}

/// The whole fused op on f32 activations `x` `[M, K]`: `DynamicQuantizeLinear`, then
/// [`qgemm_f32`] into `y` `[M, N]`. Returns the activations' quantization parameters.
#[allow(clippy::too_many_arguments)]
pub fn quantized_matmul_f32(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    sw: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    threads: usize,
) -> QuantParams {
    quantized_matmul_gelu_f32(kernel, x, m, w, sw, bias, None, y, threads)
}

/// [`quantized_matmul_f32`], then with `gelu = Some(div)` torch's erf GELU on every output,
/// `y * (erf(y / div) + 1) * 0.5` ([`super::gelu`]), applied by each thread to the columns
/// it computed (no separate pass). Every step is split over up to `threads` threads when it
/// is big enough (min/max by chunks, quantize-and-pack by row blocks, the GEMM and the GELU
/// by column ranges); the result is the same for any number of threads.
#[allow(clippy::too_many_arguments)]
pub fn quantized_matmul_gelu_f32(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    w: &PackedWeights,
    sw: &[f32],
    bias: Option<&[f32]>,
    gelu: Option<f32>,
    y: &mut [f32],
    threads: usize,
) -> QuantParams {
    assert_eq!(
        x.len(),
        m * w.k(),
        "quantized_matmul_f32: X has {} elements, not M*K",
        x.len()
    );
    check_f32_epilogue("quantized_matmul_f32", m, w, sw, bias, y);
    let kernel = Kernel::resolve(Some(kernel));
    let (lo, hi) = min_max_split(kernel, x, threads);
    let p = QuantParams::from_min_max(lo, hi);
    if m == 0 {
        return p;
    }
    let pa = quantize_pack_a(kernel, x, m, w.k(), p, threads);
    run_f32(
        kernel,
        &pa,
        p.zero_point,
        m,
        p.scale,
        w,
        sw,
        bias,
        gelu,
        y,
        threads,
    );
    p
}

/// Smallest share of a quantize-and-pack pass worth a thread of its own, in elements (about
/// 10 us of AVX2 work: 128 tokens x K = 256 is two shares).
pub(crate) const MIN_QUANT_ELEMS_PER_THREAD: usize = 1 << 14;

/// Smallest share of the min/max pass worth a thread of its own, in elements (min/max is
/// several times cheaper per element than quantizing).
pub(crate) const MIN_MINMAX_ELEMS_PER_THREAD: usize = 1 << 16;

/// Min and max of `x` together with 0 (NaNs ignored), split over up to `threads` threads
/// when it is big enough: each chunk's min/max, then the min/max of those, which is exact
/// (and the chunks' results are never NaN; only a zero's sign may differ, NEON's `fminnm`
/// giving -0, which [`QuantParams::from_min_max`] ignores), so the quantization parameters
/// are the same for any split.
pub(crate) fn min_max_split(kernel: Kernel, x: &[f32], threads: usize) -> (f32, f32) {
    let t = super::pool::threads_for(x.len(), threads, MIN_MINMAX_ELEMS_PER_THREAD);
    if t <= 1 {
        return quantize::min_max(kernel, x);
    }
    let per = super::pool::units_per_task(x.len(), t);
    let mut parts = vec![(0f32, 0f32); x.len().div_ceil(per)];
    let items: Vec<_> = x.chunks(per).zip(parts.iter_mut()).collect();
    super::pool::for_each_item(items, t, |_, (c, part)| {
        *part = quantize::min_max(kernel, c)
    });
    parts.iter().fold((0f32, 0f32), |(lo, hi), &(l, h)| {
        (if l < lo { l } else { lo }, if h > hi { h } else { hi })
    })
}

/// `DynamicQuantizeLinear` of `x` `[M, K]` with parameters `p`, packed for `kernel`, split
/// over up to `threads` threads by ranges of whole row blocks when it is big enough. AVX2
/// quantizes straight into its layout (`a - za = clamp(round(x / s), -zp, 255 - zp)`, no u8
/// tensor), and so does the VNNI layout (u8 `a`, with AVX2); the others quantize a range of
/// rows to u8, then pack it. `kernel` must be available (resolved), or (tests) a layout whose
/// quantizer this CPU can run (the x86-64 layouts need AVX2).
pub(crate) fn quantize_pack_a(
    kernel: Kernel,
    x: &[f32],
    m: usize,
    k: usize,
    p: QuantParams,
    threads: usize,
) -> PackedA {
    assert_eq!(
        x.len(),
        m * k,
        "quantize_pack_a: X has {} elements, not M*K",
        x.len()
    );
    let (mr, fmt) = config(kernel);
    let per_block = block_len(fmt, mr, k);
    let mut rowsum = vec![0i32; m];
    let za = p.zero_point;
    let quantized = |xs: &[f32]| {
        let mut q = vec![0u8; xs.len()];
        quantize::quantize(kernel, xs, p, &mut q);
        q
    };
    let rs = &mut rowsum;
    let buf = match fmt {
        AFormat::I16MinusZa => ABuf::I16(build_blocks(x, k, mr, per_block, threads, rs, {
            |xs: &[f32], buf: &mut [i16], rs: &mut [i32]| match kernel {
                #[cfg(target_arch = "x86_64")]
                Kernel::Avx2 => {
                    // (scale > 0 is what the AVX2 quantizers require; with scale 0, every q is
                    // zp = 0, and the zeroed blocks and row sums are already the result)
                    if p.scale > 0.0 {
                        // SAFETY: an available kernel (resolved by the callers): AVX2 is
                        // there; `xs` holds the rows, `buf` their blocks; scale > 0.
                        unsafe { super::x86::quantize_rows_i16_avx2(xs, k, p, buf, rs) }
                    }
                }
                _ => pack_rows_i16(kernel, &quantized(xs), k, za, mr, buf, rs),
            }
        })),
        AFormat::I8Shifted => ABuf::I8(build_blocks(x, k, mr, per_block, threads, rs, {
            |xs: &[f32], buf: &mut [i8], rs: &mut [i32]| {
                pack_rows_i8(&quantized(xs), k, za, mr, buf, rs)
            }
        })),
        AFormat::U8 | AFormat::U8Pairs => {
            ABuf::U8(build_blocks(x, k, mr, per_block, threads, rs, {
                |xs: &[f32], buf: &mut [u8], rs: &mut [i32]| match (kernel, fmt) {
                    #[cfg(target_arch = "x86_64")]
                    (Kernel::AvxVnni | Kernel::Avx512Vnni, AFormat::U8) => {
                        // (scale > 0 is what the AVX2 quantizers require; with scale 0, every q is
                        // zp = 0, and the zeroed blocks and row sums are already the result)
                        if p.scale > 0.0 {
                            // SAFETY: AVX2 is there: a resolved VNNI kernel's availability
                            // includes it (`Kernel::is_available`), and the tests pass these
                            // layouts only where AVX2 is detected; `xs` holds the rows, `buf`
                            // their blocks; scale > 0.
                            unsafe { super::x86::quantize_rows_u8(xs, k, p, mr, buf, rs) }
                        }
                    }
                    _ => pack_rows_u8(fmt, &quantized(xs), k, za, mr, buf, rs),
                }
            }))
        }
    };
    PackedA {
        buf,
        rowsum,
        block_bytes: per_block * elem_bytes(fmt),
    }
}

/// The packed-A buffer of the rows of `x` (`rowsum.len()` rows of `k`): `ceil(rows / mr)`
/// blocks of `per_block` values, built by `fill(rows of x, their blocks, their row sums)`
/// over ranges of whole blocks, on up to `threads` threads of the pool when the input is big
/// enough. Each range is zeroed (the padding: k past K, rows past the last) by the task that
/// fills it, so no serial memset precedes the split.
fn build_blocks<T, F>(
    x: &[f32],
    k: usize,
    mr: usize,
    per_block: usize,
    threads: usize,
    rowsum: &mut [i32],
    fill: F,
) -> Vec<T>
where
    T: Copy + Default + Send,
    F: Fn(&[f32], &mut [T], &mut [i32]) + Sync,
{
    let m = rowsum.len();
    let blocks = m.div_ceil(mr);
    let len = blocks * per_block;
    if len == 0 {
        return Vec::new();
    }
    let t = super::pool::threads_for(blocks, threads, MIN_QUANT_ELEMS_PER_THREAD.div_ceil(mr * k));
    let per = super::pool::units_per_task(blocks, t);
    let mut buf: Vec<T> = Vec::with_capacity(len);
    type Item<'a, T> = (usize, &'a mut [MaybeUninit<T>], &'a mut [i32]);
    let items: Vec<Item<T>> = buf.spare_capacity_mut()[..len]
        .chunks_mut(per * per_block)
        .zip(rowsum.chunks_mut(per * mr))
        .enumerate()
        .map(|(i, (b, r))| (i * per * mr, b, r))
        .collect();
    // every block is in one of the ranges (so all `len` values get initialised below)
    assert_eq!(items.len(), len.div_ceil(per * per_block));
    super::pool::for_each_item(items, t, |_, (row0, b, rs)| {
        b.fill(MaybeUninit::new(T::default()));
        // SAFETY: every element of `b` was initialised just above, and `MaybeUninit<T>` has
        // the layout of `T`.
        let b = unsafe { &mut *(b as *mut [MaybeUninit<T>] as *mut [T]) };
        fill(&x[row0 * k..(row0 + rs.len()) * k], b, rs);
    });
    // SAFETY: the ranges cover the first `len` values of the capacity (asserted above) and
    // each task initialised its whole range; `for_each_item` returns only after every task
    // has finished (a panicking task is re-raised before this line is reached).
    unsafe { buf.set_len(len) };
    buf
}

/// [`qgemm_i32`] with the A layout of `layout` (available here or not) and a given runner:
/// the tests run the VNNI tile with an emulated instruction through this.
#[cfg(test)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn qgemm_i32_with_runner(
    layout: Kernel,
    run: Runner,
    np: usize,
    a: &[u8],
    m: usize,
    za: u8,
    w: &PackedWeights,
    c: &mut [i32],
    threads: usize,
) {
    check_a(a, m, w);
    assert_eq!(c.len(), m * w.n());
    if m == 0 {
        return;
    }
    let pa = pack_a(layout, a, m, w.k(), za);
    let job = Job::new(layout, &pa, m, za, w, Out::I32(c.as_mut_ptr()));
    execute(run, np, &job, w.panels(), threads);
}
