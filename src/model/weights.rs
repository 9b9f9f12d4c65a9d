//! Where the fused int8 matmuls' packed weights come from: a memory-mapped sidecar (next to the
//! model or in the cache folder), or the heap; `pack` writes a sidecar. See the module docs of
//! [`crate::model`] for the search order and the checks.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use tract_onnx::prelude::*;

use super::decode::{decode, parse_typed};
use super::memory::release_free_heap;
use super::Stages;
use crate::int8::Sidecar;

/// The environment variable naming a writable cache folder for packed-weights sidecars.
pub const CACHE_ENV: &str = "ELECTRA_EDGE_CACHE";
/// Extension appended to the ONNX file name for its sidecar.
pub const SIDECAR_EXT: &str = "int8pack";

/// Where the fused int8 matmuls take their packed weights from (module docs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum WeightsSource {
    /// A valid sidecar next to the model or in `$ELECTRA_EDGE_CACHE`, else the heap (and, with
    /// `$ELECTRA_EDGE_CACHE` set, write one there).
    #[default]
    Auto,
    /// [`WeightsSource::Auto`] with this cache folder instead of `$ELECTRA_EDGE_CACHE`.
    Cache(PathBuf),
    /// Always pack on the heap (comparisons, tests).
    Heap,
    /// This sidecar file; the heap (with a warning) when it is missing or unusable.
    Sidecar(PathBuf),
}

/// Where a loaded model's int8 weights live.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WeightsInfo {
    /// Quantized matmuls run by our fused op.
    pub fused: usize,
    /// Of those, how many read their weights from the mapped sidecar.
    pub mapped: usize,
    /// The sidecar in use, if any.
    pub sidecar: Option<PathBuf>,
}

/// [`crate::int8::sidecar::fingerprint`] of a byte string: what a sidecar records of its model
/// is this of every byte of the ONNX file, combined with it of each external-data file the
/// model names (any change is detected; ~3 ms for 13 MB of hot pages).
pub fn model_fingerprint(bytes: &[u8]) -> u64 {
    crate::int8::sidecar::fingerprint(bytes)
}

/// The sidecar path next to an ONNX file: `model.onnx` -> `model.onnx.int8pack`.
pub fn sidecar_path(onnx: &Path) -> PathBuf {
    let mut name = onnx.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{SIDECAR_EXT}"));
    onnx.with_file_name(name)
}

/// The sidecar path of an ONNX file inside a cache folder: the file name plus a hash of its
/// canonical path, so that models with the same file name do not share an entry.
pub fn cached_sidecar_path(cache: &Path, onnx: &Path) -> PathBuf {
    let canonical = onnx.canonicalize().unwrap_or_else(|_| onnx.to_owned());
    let tag = model_fingerprint(canonical.as_os_str().as_encoded_bytes());
    let name = onnx.file_name().unwrap_or_default().to_string_lossy();
    cache.join(format!("{name}.{tag:016x}.{SIDECAR_EXT}"))
}

pub fn cache_dir_from_env() -> Option<PathBuf> {
    std::env::var_os(CACHE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Maps and parses a sidecar; `Ok(None)` when the file does not exist.
fn open_sidecar(path: &Path) -> Result<Option<Sidecar>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    // The mapping lives as long as the packed weights borrowed from it (the plan). Before any
    // weight is used, the header, index and every entry's bounds are checked against the
    // mapped length (`Sidecar::parse`, `PackedWeights::from_shared`), the fingerprint against
    // the model file's, and each entry against the graph's weights.
    // SAFETY: read-only and private to us; sidecars are only replaced by rename, never
    // truncated or rewritten in place (module docs), so the mapped inode keeps its bytes (an
    // in-place truncation would be a SIGBUS, as for any memory-mapped file).
    let map = unsafe { Mmap::map(&file) }
        .with_context(|| format!("cannot memory-map {}", path.display()))?;
    let sidecar = Sidecar::parse(Arc::new(map)).with_context(|| path.display().to_string())?;
    Ok(Some(sidecar))
}

/// What [`pack`] wrote.
#[derive(Clone, Debug)]
pub struct PackReport {
    pub path: PathBuf,
    /// Fused matmuls whose packed weights are in the file.
    pub entries: usize,
    pub bytes: usize,
}

/// Writes the packed-weights sidecar of an int8 ONNX file to `out` (atomically: temporary
/// file + rename), for [`Model::load`] to map. Every fusable matmul of the whole graph is
/// packed, whichever output a later load selects.
pub fn pack(onnx: &Path, out: &Path) -> Result<PackReport> {
    let decoded = decode(onnx)?;
    let fingerprint = decoded.fingerprint();
    let (mut typed, _) = parse_typed(onnx, &decoded, None, false)?;
    drop(decoded);
    let report = crate::int8::fuse_quantized_matmuls_from(&mut typed, &Default::default(), None)
        .map_err(|e| anyhow!("{}: int8 fusion failed: {e:#}", onnx.display()))?;
    if report.fused == 0 {
        bail!(
            "{}: no quantized matmul to pack (not an int8 quantize_dynamic graph?)",
            onnx.display()
        );
    }
    let (entries, bytes) = write_packed_sidecar(&typed, out, fingerprint)?;
    Ok(PackReport {
        path: out.to_owned(),
        entries,
        bytes,
    })
}

/// Error context of a failed sidecar write: `pack_cli` recognises it to add a hint.
#[derive(Debug)]
pub struct CannotWrite(pub PathBuf);

impl std::fmt::Display for CannotWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "cannot write {}", self.0.display())
    }
}

/// Writes the packed weights of `typed`'s fused ops to the sidecar `out` (atomically).
/// Returns the entries and bytes written.
fn write_packed_sidecar(
    typed: &TypedModel,
    out: &Path,
    fingerprint: u64,
) -> Result<(usize, usize)> {
    let entries = crate::int8::packed_weights_of(typed);
    let bytes = crate::int8::sidecar::sidecar_bytes(
        entries.iter().map(|(n, w)| (n.as_str(), w)),
        fingerprint,
    );
    crate::int8::sidecar::write_sidecar(out, &bytes).context(CannotWrite(out.to_owned()))?;
    Ok((entries.len(), bytes.len()))
}

/// Fuses the int8 matmuls of `typed` into our op, with packed weights from the first usable
/// sidecar of `weights` (else the heap; with a cache folder, a sidecar is then written and
/// mapped at once).
pub(super) fn fuse_int8(
    typed: &mut TypedModel,
    path: &Path,
    threads: usize,
    weights: &WeightsSource,
    fingerprint: Option<u64>,
    stages: &mut Stages,
) -> Result<WeightsInfo> {
    let want_sidecar = *weights != WeightsSource::Heap;
    // the sidecar candidates, in order, and whether we may write the last one
    let cache = match weights {
        WeightsSource::Auto => cache_dir_from_env(),
        WeightsSource::Cache(dir) => Some(dir.clone()),
        _ => None,
    };
    let candidates: Vec<PathBuf> = match weights {
        WeightsSource::Heap => vec![],
        WeightsSource::Sidecar(p) => vec![p.clone()],
        _ => std::iter::once(sidecar_path(path))
            .chain(cache.iter().map(|c| cached_sidecar_path(c, path)))
            .collect(),
    };
    let mut info = WeightsInfo::default();
    let mut sidecar = None;
    for candidate in &candidates {
        match open_sidecar(candidate) {
            Ok(None) => continue,
            Ok(Some(s)) if Some(s.fingerprint()) == fingerprint => {
                sidecar = Some((candidate.clone(), s));
                break;
            }
            Ok(Some(_)) => log::info!(
                "{}: stale (made from another version of {}), not used; \
                 `electra-edge pack` makes a new one",
                candidate.display(),
                path.display()
            ),
            Err(e) => log::warn!("ignoring packed-weights sidecar: {e:#}"),
        }
    }
    stages.lap("sidecar");
    let fuse_opts = crate::int8::FuseOptions {
        kernel: None,
        threads: threads.max(1),
    };
    let report = crate::int8::fuse_quantized_matmuls_from(
        typed,
        &fuse_opts,
        sidecar.as_ref().map(|(_, s)| s),
    )
    .map_err(|e| anyhow!("{}: int8 fusion failed: {e:#}", path.display()))?;
    info.fused = report.fused;
    info.mapped = report.from_sidecar;
    if report.from_sidecar > 0 {
        info.sidecar = sidecar.map(|(p, _)| p);
    }
    release_free_heap(); // the weights' parse-time copies, dropped by the fusion
    stages.lap("fuse");
    if report.fused > report.from_sidecar {
        let writable = match &cache {
            Some(c) if info.sidecar.is_none() => Some(cached_sidecar_path(c, path)),
            _ => None,
        };
        match writable.map(|out| write_and_map(typed, &out, fingerprint)) {
            Some(Ok((out, mapped))) => {
                log::info!(
                    "{}: packed int8 weights written to {}",
                    path.display(),
                    out.display()
                );
                info.mapped = mapped;
                info.sidecar = Some(out);
            }
            Some(Err(e)) => log::warn!("{CACHE_ENV}: cannot cache packed weights: {e:#}"),
            None if want_sidecar => log::info!(
                "{}: {} of {} int8 matmuls packed on the heap; `electra-edge pack --model DIR` \
                 (or {CACHE_ENV}=DIR) writes a sidecar so that they stay in a shared memory map",
                path.display(),
                report.fused - report.from_sidecar,
                report.fused
            ),
            None => {}
        }
        stages.lap("cache");
    }
    log::debug!(
        "{}: {} quantized matmuls fused, {} with mapped weights{}",
        path.display(),
        info.fused,
        info.mapped,
        info.sidecar
            .as_ref()
            .map(|p| format!(" ({})", p.display()))
            .unwrap_or_default()
    );
    Ok(info)
}

/// Writes the fused ops' packed weights to a sidecar, maps it and moves every op onto the
/// mapped copy (the heap copies are then freed). Returns the path and ops moved.
fn write_and_map(
    typed: &mut TypedModel,
    out: &Path,
    fingerprint: Option<u64>,
) -> Result<(PathBuf, usize)> {
    let fingerprint = fingerprint.context("no fingerprint")?;
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_packed_sidecar(typed, out, fingerprint)?;
    let sidecar = open_sidecar(out)?.with_context(|| format!("{} vanished", out.display()))?;
    let mut moved = 0;
    for id in 0..typed.nodes().len() {
        let name = typed.node(id).name.clone();
        let Some(op) = typed.node_mut(id).op_as_mut::<crate::int8::QMatMul>() else {
            continue;
        };
        if let Some(Ok(w)) = sidecar.get(&name) {
            if w.as_bytes() == op.weights.as_bytes() {
                op.weights = w;
                moved += 1;
            }
        }
    }
    Ok((out.to_owned(), moved))
}
