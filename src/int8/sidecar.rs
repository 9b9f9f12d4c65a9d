//! A packed-weights sidecar: the [`PackedWeights`] of every fused matmul of a model in one
//! file, written once next to the model and memory-mapped afterwards, so that the int8
//! weights live in clean, shared, evictable page-cache pages instead of private heap copies.
//!
//! # Format (version 2, little-endian)
//!
//! ```text
//! offset size
//!      0    8  magic b"EEQSIDE1"
//!      8    4  version = 2 (1: blobs of packed-weights format version 1, no longer read)
//!     12    4  count (entries)
//!     16    8  source fingerprint (the caller's: e.g. [`fingerprint`] of the ONNX file bytes)
//!     24    8  index offset (= 64)
//!     32    8  index length
//!     40   24  reserved (0)
//!     64       index: count x { name_len u32, name (UTF-8), blob offset u64, blob length u64 }
//!              blobs: PackedWeights blobs (see [`super::pack`]), each at a 64-aligned offset
//! ```
//!
//! Entries are keyed by the fused node's name, which is stable for a given ONNX file.
//!
//! # Deployment rule
//!
//! A mapped file that is truncated or rewritten in place under a running process makes the
//! next access to a vanished page a SIGBUS. So: the sidecar is only ever replaced by writing a
//! new file and `rename`-ing it over the old one ([`write_sidecar`] does this); running
//! processes keep the old inode. The same holds for the model file itself. What can be
//! detected is detected: a bad magic/version, a truncated file, an index or blob out of
//! bounds, a fingerprint that does not match the model (the caller compares
//! [`Sidecar::fingerprint`]), and a blob whose shape, signedness, zero points or first k-quad
//! of every panel differ from the model's weights (checked when fusing).

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

use super::PackedWeights;

pub const SIDECAR_MAGIC: [u8; 8] = *b"EEQSIDE1";
pub const SIDECAR_VERSION: u32 = 2;
const HEADER: usize = 64;

/// A cheap 64-bit fingerprint of a byte string (8 bytes at a time, multiply-xor; not
/// cryptographic): enough to tell that a sidecar was made from these model bytes.
pub fn fingerprint(bytes: &[u8]) -> u64 {
    const P: u64 = 0x100000001b3;
    let mut h: u64 = 0xcbf29ce484222325 ^ bytes.len() as u64;
    let chunks = bytes.chunks_exact(8);
    let rest = chunks.remainder();
    for c in chunks {
        h = (h ^ u64::from_le_bytes(c.try_into().unwrap())).wrapping_mul(P);
        h ^= h >> 29;
    }
    for &b in rest {
        h = (h ^ b as u64).wrapping_mul(P);
    }
    h ^ (h >> 32)
}

/// Serializes named packed weights into a sidecar.
pub fn sidecar_bytes<'a>(
    entries: impl IntoIterator<Item = (&'a str, &'a PackedWeights)>,
    source_fingerprint: u64,
) -> Vec<u8> {
    let entries: Vec<(&str, &PackedWeights)> = entries.into_iter().collect();
    let index_len: usize = entries.iter().map(|(n, _)| 4 + n.len() + 16).sum();
    let mut offsets = vec![];
    let mut at = (HEADER + index_len).div_ceil(64) * 64;
    for (_, w) in &entries {
        offsets.push(at);
        at = (at + w.as_bytes().len()).div_ceil(64) * 64;
    }
    let mut out = vec![0u8; at];
    out[0..8].copy_from_slice(&SIDECAR_MAGIC);
    out[8..12].copy_from_slice(&SIDECAR_VERSION.to_le_bytes());
    out[12..16].copy_from_slice(&(entries.len() as u32).to_le_bytes());
    out[16..24].copy_from_slice(&source_fingerprint.to_le_bytes());
    out[24..32].copy_from_slice(&(HEADER as u64).to_le_bytes());
    out[32..40].copy_from_slice(&(index_len as u64).to_le_bytes());
    let mut i = HEADER;
    for ((name, w), off) in entries.iter().zip(&offsets) {
        out[i..i + 4].copy_from_slice(&(name.len() as u32).to_le_bytes());
        out[i + 4..i + 4 + name.len()].copy_from_slice(name.as_bytes());
        i += 4 + name.len();
        out[i..i + 8].copy_from_slice(&(*off as u64).to_le_bytes());
        out[i + 8..i + 16].copy_from_slice(&(w.as_bytes().len() as u64).to_le_bytes());
        i += 16;
        out[*off..*off + w.as_bytes().len()].copy_from_slice(w.as_bytes());
    }
    out
}

/// Writes `bytes` to `path` atomically: a temporary file in the same directory, fsync, then
/// rename over `path` (processes mapping the old file keep it).
pub fn write_sidecar(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("sidecar");
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A parsed sidecar over a shared buffer (typically an `Arc<memmap2::Mmap>`).
#[derive(Clone)]
pub struct Sidecar {
    buf: Arc<dyn AsRef<[u8]> + Send + Sync>,
    fingerprint: u64,
    index: HashMap<String, (usize, usize)>,
}

impl std::fmt::Debug for Sidecar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sidecar")
            .field("entries", &self.index.len())
            .field("fingerprint", &format_args!("{:016x}", self.fingerprint))
            .finish()
    }
}

impl Sidecar {
    /// Validates the header and index (not the blobs: each is validated when taken).
    pub fn parse(buf: Arc<dyn AsRef<[u8]> + Send + Sync>) -> anyhow::Result<Sidecar> {
        let b: &[u8] = (*buf).as_ref();
        anyhow::ensure!(b.len() >= HEADER, "sidecar: truncated header");
        anyhow::ensure!(b[0..8] == SIDECAR_MAGIC, "sidecar: bad magic");
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().unwrap());
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap());
        let version = u32_at(8);
        anyhow::ensure!(
            version == SIDECAR_VERSION,
            "sidecar: format version {version}, this build reads {SIDECAR_VERSION} \
             (`electra-edge pack` makes a new one)"
        );
        let count = u32_at(12) as usize;
        let fingerprint = u64_at(16);
        let (ioff, ilen) = (u64_at(24) as usize, u64_at(32) as usize);
        anyhow::ensure!(
            ioff == HEADER && ilen <= b.len() - HEADER,
            "sidecar: index out of bounds (truncated file?)"
        );
        let mut index = HashMap::with_capacity(count);
        let mut i = ioff;
        let end = ioff + ilen;
        for _ in 0..count {
            anyhow::ensure!(i + 4 <= end, "sidecar: bad index");
            let n = u32_at(i) as usize;
            anyhow::ensure!(i + 4 + n + 16 <= end, "sidecar: bad index");
            let name = std::str::from_utf8(&b[i + 4..i + 4 + n])?.to_string();
            i += 4 + n;
            let (off, len) = (u64_at(i) as usize, u64_at(i + 8) as usize);
            i += 16;
            anyhow::ensure!(
                off >= end && off.checked_add(len).is_some_and(|e| e <= b.len()),
                "sidecar: entry {name} out of bounds (truncated file?)"
            );
            index.insert(name, (off, len));
        }
        Ok(Sidecar {
            buf,
            fingerprint,
            index,
        })
    }

    /// The fingerprint of the model the sidecar was made from.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The packed weights of `name`, borrowed from the buffer (no copy of the weight bytes).
    pub fn get(&self, name: &str) -> Option<anyhow::Result<PackedWeights>> {
        let &(off, len) = self.index.get(name)?;
        Some(
            PackedWeights::from_shared(self.buf.clone(), off).and_then(|w| {
                anyhow::ensure!(
                    w.as_bytes().len() == len,
                    "sidecar: entry {name} length mismatch"
                );
                Ok(w)
            }),
        )
    }
}
