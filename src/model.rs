//! The one narrow boundary around tract: load an ONNX graph once, run token ids through it.
//!
//! Loading: the file is memory-mapped and decoded, parsed by tract-onnx (ignoring the
//! exporter's `value_info`, whose symbolic `batch`/`sequence` dims would otherwise clash with
//! ours), given inputs `[B, S]` with symbolic batch and sequence lengths, pruned to the one
//! output the task needs, and optimized **once**: every length up to the model's positions runs
//! through the same plan without re-optimizing. Everything else in the crate sees only
//! [`Model::run`].
//!
//! # int8 weights in a memory map (the packed-weights sidecar)
//!
//! Every `quantize_dynamic` matmul of an int8 graph runs through our fused op
//! ([`crate::int8`]), whose weights are packed into the kernels' layout. Packed on the heap
//! they are ~10 MB of private memory per process for ELECTRA-small. `electra-edge pack`
//! ([`pack`]) writes them once into a sidecar file ([`crate::int8::sidecar`] format); the
//! loader then memory-maps it and the fused ops read their weights straight from the mapping:
//! clean, shared, evictable page-cache pages (two processes serving the same model share them).
//!
//! Where the loader looks ([`WeightsSource::Auto`], the default), first match wins:
//! 1. `MODEL.int8pack` next to the ONNX file (`DIR/model.onnx.int8pack`);
//! 2. `$ELECTRA_EDGE_CACHE/<file name>.<16 hex of the model's canonical path>.int8pack`, for
//!    read-only model folders (systemd: `CacheDirectory=electra-edge` and
//!    `Environment=ELECTRA_EDGE_CACHE=%C/electra-edge`). With the variable set and no usable
//!    sidecar there, the loader writes one itself after packing on the heap and switches to
//!    the mapped copy at once (so the first start writes it, every later one just maps it).
//!
//! A sidecar is used only when it parses (magic, version, index and every entry in bounds),
//! its fingerprint equals the model file's ([`model_fingerprint`]: a hash of **every byte**
//! of the ONNX file, ~3 ms for the 13 MB small model, while its pages are hot from decoding), and
//! each entry matches the graph's weights (shape, signedness, zero points, first k-quad of the
//! first and last panels). Otherwise the weights are packed on the heap, with a warning for a
//! corrupt or truncated file and an info line saying how to make one for a missing or stale
//! one: a bad sidecar never stops the model from loading.
//!
//! What cannot be detected: a sidecar or model file truncated or rewritten **in place** after
//! it was mapped (the next touch of a vanished page is a SIGBUS). Deployment rule: replace
//! model files and sidecars by writing a new file and renaming it over the old one (`pack`
//! does; so do `install`, `cp` to a temporary name + `mv`, package managers); running
//! processes keep the old inode until they restart.
//!
//! # Memory while loading
//!
//! tract copies every initializer into a tensor at parse time, and the decoded protobuf holds a
//! copy too. To avoid having both (and the model file's pages) resident at once, initializers of
//! 16 KiB and more are turned into external-data references to their offsets in the model file
//! right after decoding (their protobuf copies are freed) and served to tract from our map
//! (`MapResolver`); pages already read are dropped from the resident set (`MADV_DONTNEED` on
//! the read-only file map), and glibc's free memory is handed back after each stage
//! (`malloc_trim`). Small model, sidecar mapped: load peak ~1.35x the steady RSS (was ~1.8x).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use crate::int8::Sidecar;
use anyhow::{anyhow, bail, Context, Result};
use memmap2::Mmap;
use prost::Message;
use tract_onnx::pb::ModelProto;
use tract_onnx::prelude::*;

/// How to load a model graph.
#[derive(Clone, Debug, Default)]
pub struct ModelOptions {
    /// Name of the ONNX output to compute; the graph's first output when `None`.
    pub output: Option<String>,
    /// Leave int8 matmuls to tract instead of our fused op ([`crate::int8`]); for comparisons.
    pub tract_int8: bool,
    /// Threads per int8 matmul (1: no spawning).
    pub threads: usize,
}

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

/// Which model input a graph input is, matched by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InputKind {
    InputIds,
    AttentionMask,
    TokenTypeIds,
}

/// A loaded, optimized graph, shareable between threads.
pub struct Model {
    plan: Arc<TypedRunnableModel>,
    inputs: Vec<InputKind>,
    /// Whether output axis 1 is the sequence axis (per-token outputs) or not (pooled heads).
    per_token: bool,
    pub path: PathBuf,
    /// Milliseconds spent in each load stage, for logs and start-up measurements.
    pub load_timings: Vec<(&'static str, f64)>,
    /// Where the fused int8 matmuls' weights live.
    pub weights: WeightsInfo,
}

/// One batch row's output: the model output without the batch axis, padding removed.
#[derive(Clone, Debug, PartialEq)]
pub struct RowOutput {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// The fingerprint a sidecar records of its model: [`crate::int8::sidecar::fingerprint`] of
/// every byte of the ONNX file (any change is detected; ~3 ms for 13 MB of hot pages).
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

fn cache_dir_from_env() -> Option<PathBuf> {
    std::env::var_os(CACHE_ENV)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// `RssAnon`, `RssFile` and `VmHWM` of this process (Linux), for the load's debug log.
fn memory_status() -> String {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    ["RssAnon", "RssFile", "VmHWM"]
        .iter()
        .filter_map(|k| {
            let v = status
                .lines()
                .find_map(|l| l.strip_prefix(k)?.strip_prefix(':'))?;
            let kb: f64 = v.trim().trim_end_matches(" kB").parse().ok()?;
            Some(format!("{k} {:.1} MB", kb / 1024.0))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Gives the allocator's free memory back to the system. Loading frees far more than it keeps
/// (the decoded protobuf, tract's parse-time copies of the weights, the graphs before
/// optimization: ~25 MB for the small model), but glibc's malloc keeps freed chunks for reuse
/// (its mmap threshold rises after the first large free, so later large buffers come from the
/// brk heap); without this the freed memory stays private RSS for the life of the process.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> i32;
        }
        // SAFETY: glibc's malloc_trim only returns free memory to the kernel; it is thread-safe
        // (takes each arena's lock) and has no preconditions.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Maps and parses a sidecar; `Ok(None)` when the file does not exist.
fn open_sidecar(path: &Path) -> Result<Option<Sidecar>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("cannot open {}", path.display())),
    };
    // SAFETY: the mapping lives as long as the packed weights borrowed from it (the plan). It
    // is read-only and private to us; what guards it: (1) the deployment rule (module docs):
    // sidecars are only ever replaced by rename, never truncated or rewritten in place, so the
    // inode we mapped keeps its bytes; (2) before any weight is used, the header, index and
    // every entry's bounds are checked against the mapped length (`Sidecar::parse`,
    // `PackedWeights::from_shared`), the fingerprint against the model file's, and each entry
    // against the graph's weights. An in-place truncation after these checks is the one case
    // left: a SIGBUS, as for any memory-mapped file.
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
    let (proto, fingerprint, map) = decode(onnx, true)?;
    let (mut typed, _) = parse_typed(onnx, &proto, map, None)?;
    drop(proto);
    let report = crate::int8::fuse_quantized_matmuls_from(&mut typed, &Default::default(), None)
        .map_err(|e| anyhow!("{}: int8 fusion failed: {e:#}", onnx.display()))?;
    if report.fused == 0 {
        bail!(
            "{}: no quantized matmul to pack (not an int8 quantize_dynamic graph?)",
            onnx.display()
        );
    }
    let (entries, bytes) = write_packed_sidecar(&typed, out, fingerprint.expect("asked for"))?;
    Ok(PackReport {
        path: out.to_owned(),
        entries,
        bytes,
    })
}

/// Error context of a failed sidecar write: `pack_cli` recognises it to add a hint.
#[derive(Debug)]
struct CannotWrite(PathBuf);

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

/// `electra-edge pack`: writes the sidecar where [`Model::load`] looks for it.
pub fn pack_cli(args: &crate::cli::PackArgs) -> Result<()> {
    let onnx = args
        .onnx
        .clone()
        .unwrap_or_else(|| args.model.join("model.onnx"));
    let cache = args.weights_cache.clone().or_else(cache_dir_from_env);
    let out = match (&args.out, &cache) {
        (Some(out), _) => out.clone(),
        (None, Some(cache)) => {
            std::fs::create_dir_all(cache)
                .with_context(|| format!("cannot create {}", cache.display()))?;
            cached_sidecar_path(cache, &onnx)
        }
        (None, None) => sidecar_path(&onnx),
    };
    let report = pack(&onnx, &out).map_err(|e| {
        if args.out.is_none() && cache.is_none() && e.downcast_ref::<CannotWrite>().is_some() {
            e.context(format!(
                "(read-only model folder? use --weights-cache DIR and run with {CACHE_ENV}=DIR)"
            ))
        } else {
            e
        }
    })?;
    println!(
        "{}: {} packed int8 matrices, {:.1} MB",
        report.path.display(),
        report.entries,
        report.bytes as f64 / 1e6
    );
    Ok(())
}

/// Maps and decodes an ONNX file; with `fingerprint`, also hashes its bytes.
fn decode(path: &Path, fingerprint: bool) -> Result<(ModelProto, Option<u64>, Arc<Mmap>)> {
    let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let len = file
        .metadata()
        .with_context(|| format!("cannot stat {}", path.display()))?
        .len();
    if len == 0 {
        bail!("{} is empty", path.display());
    }
    // SAFETY: the map is only read while loading (decode, then tract's parse reads the big
    // initializers from it through `MapResolver`) and is dropped before the load returns
    // (tract copies what it keeps). Another process truncating or rewriting the file during
    // those milliseconds could make the read fault or see torn bytes; the deployment rule
    // (module docs, README) is to replace model files by rename, never in place.
    let map = unsafe { Mmap::map(&file) }
        .with_context(|| format!("cannot memory-map {}", path.display()))?;
    let mut proto = ModelProto::decode(&map[..]).map_err(|e| {
        anyhow!(
            "{} is not a valid ONNX file (truncated or corrupt?): {e}",
            path.display()
        )
    })?;
    let fp = fingerprint.then(|| model_fingerprint(&map[..]));
    let moved = externalize_initializers(path, &mut proto, &map);
    release_free_heap();
    drop_pages(&map, 0, map.len());
    log::debug!(
        "{}: {moved} initializers read from the map at parse",
        path.display()
    );
    Ok((proto, fp, Arc::new(map)))
}

/// Initializers at least this big are read by tract straight from the model's map instead of
/// from the decoded protobuf ([`externalize_initializers`]).
const EXTERNAL_MIN_BYTES: usize = 16 * 1024;

/// Where each initializer's `raw_data` lies in the ONNX file: (name, offset, length), found by
/// walking the protobuf wire format (ModelProto.graph = 7, GraphProto.initializer = 5,
/// TensorProto.name = 8, .raw_data = 9). `None` on anything unexpected.
fn raw_data_offsets(b: &[u8]) -> Option<Vec<(String, usize, usize)>> {
    fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *b.get(*i)?;
            *i += 1;
            v |= ((byte & 0x7f) as u64) << shift;
            if byte & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// (field, payload start, payload end) of each length-delimited field of b[start..end].
    fn fields(b: &[u8], start: usize, end: usize) -> Option<Vec<(u64, usize, usize)>> {
        let mut out = vec![];
        let mut i = start;
        while i < end {
            let key = varint(b, &mut i)?;
            match key & 7 {
                0 => {
                    varint(b, &mut i)?;
                }
                1 => i += 8,
                5 => i += 4,
                2 => {
                    let len = varint(b, &mut i)? as usize;
                    let e = i.checked_add(len).filter(|&e| e <= end)?;
                    out.push((key >> 3, i, e));
                    i = e;
                }
                _ => return None,
            }
        }
        (i == end).then_some(out)
    }
    let mut found = vec![];
    for (f, gs, ge) in fields(b, 0, b.len())? {
        if f != 7 {
            continue;
        }
        for (f, ts, te) in fields(b, gs, ge)? {
            if f != 5 {
                continue;
            }
            let (mut name, mut raw) = (None, None);
            for (f, s, e) in fields(b, ts, te)? {
                match f {
                    8 => name = Some(std::str::from_utf8(&b[s..e]).ok()?.to_string()),
                    9 => raw = Some((s, e - s)),
                    _ => {}
                }
            }
            if let (Some(n), Some((off, len))) = (name, raw) {
                found.push((n, off, len));
            }
        }
    }
    Some(found)
}

/// Lowers the load's peak memory: tract's parse copies every initializer into a tensor while
/// the decoded protobuf still holds its own copy (twice the weights at once). This frees the
/// protobuf's copy of every big initializer and marks it as external data at its offset in the
/// model file itself; [`MapResolver`] then serves tract those bytes from our map of the file
/// (the same inode as decoded, even if the path was replaced since). Only when the file is
/// really inside its folder (tract refuses external data that resolves elsewhere). Returns
/// how many initializers were moved.
fn externalize_initializers(path: &Path, proto: &mut ModelProto, map: &[u8]) -> usize {
    use tract_onnx::pb::{tensor_proto::DataLocation, StringStringEntryProto};
    let (Some(name), Some(dir)) = (path.file_name().and_then(|n| n.to_str()), model_dir(path))
    else {
        return 0;
    };
    let inside = match (path.canonicalize(), Path::new(dir).canonicalize()) {
        (Ok(p), Ok(d)) => p.parent() == Some(d.as_path()),
        _ => false,
    };
    let Some(graph) = proto.graph.as_mut().filter(|_| inside) else {
        return 0;
    };
    let Some(offsets) = raw_data_offsets(map) else {
        return 0;
    };
    let offsets: std::collections::HashMap<&str, (usize, usize)> = offsets
        .iter()
        .map(|(n, o, l)| (n.as_str(), (*o, *l)))
        .collect();
    let mut moved = 0;
    for t in &mut graph.initializer {
        let Some(&(off, len)) = offsets.get(t.name.as_str()) else {
            continue;
        };
        if len < EXTERNAL_MIN_BYTES
            || len != t.raw_data.len()
            || map[off..off + len] != t.raw_data[..]
        {
            continue;
        }
        t.raw_data = Vec::new();
        t.data_location = Some(DataLocation::External as i32);
        let kv = |k: &str, v: String| StringStringEntryProto {
            key: k.into(),
            value: v,
        };
        t.external_data = vec![
            kv("location", name.into()),
            kv("offset", off.to_string()),
            kv("length", len.to_string()),
        ];
        moved += 1;
    }
    moved
}

fn model_dir(path: &Path) -> Option<&str> {
    match path.parent().and_then(Path::to_str) {
        Some("") => Some("."),
        other => other,
    }
}

/// Serves tract's external-data reads from our map of the model file (see
/// [`externalize_initializers`]).
struct MapResolver(Arc<Mmap>);

impl tract_onnx::data_resolver::ModelDataResolver for MapResolver {
    fn read_bytes_from_path(
        &self,
        buf: &mut Vec<u8>,
        _p: &Path,
        offset: usize,
        length: Option<usize>,
    ) -> TractResult<()> {
        let end = length.map_or(Some(self.0.len()), |l| offset.checked_add(l));
        let bytes = end
            .and_then(|e| self.0.get(offset..e))
            .context("external data out of the model file")?;
        buf.extend_from_slice(bytes);
        drop_pages(&self.0, offset, bytes.len());
        Ok(())
    }
}

/// Takes pages of a read-only file map out of our resident set once read (they stay in the
/// page cache): while loading, the model file's pages would otherwise count in the process's
/// RSS on top of the copies made from them.
fn drop_pages(map: &Mmap, offset: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: `map` is a shared, read-only mapping of a file (`Mmap::map`): MADV_DONTNEED only
    // unmaps its pages from our page tables, and the next read faults the same bytes back in
    // from the page cache (unlike a private or anonymous mapping, no data can be lost). The
    // range is in bounds (memmap2 checks it and aligns the start down to a page).
    unsafe {
        let _ = map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, offset, len);
    }
}

/// tract parse of a decoded proto, inputs bound, output selected (all kept when `output` is
/// `None`), then typed.
fn parse_typed(
    path: &Path,
    proto: &ModelProto,
    map: Arc<Mmap>,
    output: Option<Option<&str>>,
) -> Result<(TypedModel, Vec<InputKind>)> {
    let mut onnx = tract_onnx::onnx().with_ignore_value_info(true);
    onnx.provider = Arc::new(MapResolver(map));
    let parsed = crate::ops::guard::catch_tract("tract cannot read the graph", || {
        onnx.parse(proto, model_dir(path))
    })
    .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    if !parsed.unresolved_inputs.is_empty() {
        bail!(
            "{}: unresolved graph inputs {:?}",
            path.display(),
            parsed.unresolved_inputs
        );
    }
    let mut model = parsed.model;
    let inputs = Model::bind_inputs(&mut model).with_context(|| path.display().to_string())?;
    if let Some(name) = output {
        Model::select_output(&mut model, name).with_context(|| path.display().to_string())?;
    }
    let typed =
        crate::ops::guard::into_typed(model).map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
    Ok((typed, inputs))
}

impl Model {
    /// Loads with [`WeightsSource::Auto`].
    pub fn load(path: &Path, options: &ModelOptions) -> Result<Model> {
        Self::load_with(path, options, &WeightsSource::Auto)
    }

    /// Loads, taking the fused matmuls' packed weights from `weights`.
    pub fn load_with(
        path: &Path,
        options: &ModelOptions,
        weights: &WeightsSource,
    ) -> Result<Model> {
        let mut timings = vec![];
        let mut rss = vec![];
        let debug = log::log_enabled!(log::Level::Debug);
        let mut clock = Instant::now();
        let mut lap = |name: &'static str| {
            timings.push((name, clock.elapsed().as_secs_f64() * 1e3));
            if debug {
                rss.push(memory_status());
            }
            clock = Instant::now();
        };
        let fuse = !options.tract_int8;
        let want_sidecar = fuse && *weights != WeightsSource::Heap;
        let (proto, fingerprint, map) = decode(path, want_sidecar)?;
        lap("decode");

        let (mut typed, inputs) = parse_typed(path, &proto, map, Some(options.output.as_deref()))?;
        drop(proto);
        // the proto's copies of the weights are gone: give them back before the next stages
        // allocate (keeps the load's peak RSS down)
        release_free_heap();
        lap("parse+type");
        // the sidecar candidates, in order, and whether we may write the last one
        let cache = match weights {
            WeightsSource::Auto => cache_dir_from_env(),
            WeightsSource::Cache(dir) => Some(dir.clone()),
            _ => None,
        };
        let candidates: Vec<PathBuf> = match weights {
            _ if !want_sidecar => vec![],
            WeightsSource::Sidecar(p) => vec![p.clone()],
            _ => std::iter::once(sidecar_path(path))
                .chain(cache.iter().map(|c| cached_sidecar_path(c, path)))
                .collect(),
        };
        let mut info = WeightsInfo::default();
        if fuse {
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
            lap("sidecar");
            let fuse_opts = crate::int8::FuseOptions {
                kernel: None,
                threads: options.threads.max(1),
            };
            let report = crate::int8::fuse_quantized_matmuls_from(
                &mut typed,
                &fuse_opts,
                sidecar.as_ref().map(|(_, s)| s),
            )
            .map_err(|e| anyhow!("{}: int8 fusion failed: {e:#}", path.display()))?;
            let ops_opts = crate::ops::OpsOptions {
                kernel: None,
                threads: fuse_opts.threads,
            };
            crate::ops::fuse_transformer_ops(&mut typed, &ops_opts)
                .map_err(|e| anyhow!("{}: attention fusion failed: {e:#}", path.display()))?;
            info.fused = report.fused;
            info.mapped = report.from_sidecar;
            if report.from_sidecar > 0 {
                info.sidecar = sidecar.map(|(p, _)| p);
            }
            release_free_heap(); // the weights' parse-time copies, dropped by the fusion
            lap("fuse");
            if report.fused > report.from_sidecar {
                let writable = match &cache {
                    Some(c) if info.sidecar.is_none() => Some(cached_sidecar_path(c, path)),
                    _ => None,
                };
                match writable.map(|out| Self::write_and_map(&mut typed, &out, fingerprint)) {
                    Some(Ok((out, mapped))) => {
                        log::info!("{}: packed int8 weights written to {}", path.display(), out.display());
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
                lap("cache");
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
        }
        let per_token = {
            let fact = typed.outlet_fact(typed.output_outlets()?[0])?;
            fact.shape.len() >= 2 && !fact.shape[1].symbols().is_empty()
        };
        let optimized =
            crate::ops::guard::catch_tract("cannot optimize the graph", || typed.into_optimized())
                .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        lap("optimize");
        let plan = optimized.into_runnable()?;
        lap("plan");
        release_free_heap();
        lap("trim");
        for (i, (stage, ms)) in timings.iter().enumerate() {
            let mem = rss
                .get(i)
                .map(|m| format!(", then {m}"))
                .unwrap_or_default();
            log::debug!("load {}: {stage} {ms:.1} ms{mem}", path.display());
        }
        Ok(Model {
            plan,
            inputs,
            per_token,
            path: path.to_owned(),
            load_timings: timings,
            weights: info,
        })
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
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
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

    /// Declares every graph input as i64 `[1, S]` and records which one is which. The batch
    /// is fixed at one row: with a symbolic batch too, the exporter's mask arithmetic
    /// (`Flatten` over batch x sequence) is beyond tract's shape inference.
    fn bind_inputs(model: &mut InferenceModel) -> Result<Vec<InputKind>> {
        let seq = model.symbols.sym("S");
        let mut kinds = vec![];
        for (ix, outlet) in model.input_outlets()?.to_vec().into_iter().enumerate() {
            let name = model.node(outlet.node).name.as_str();
            let kind = match name {
                "input_ids" => InputKind::InputIds,
                "attention_mask" => InputKind::AttentionMask,
                "token_type_ids" => InputKind::TokenTypeIds,
                other => bail!("unexpected graph input {other:?} (expected input_ids, attention_mask, token_type_ids)"),
            };
            kinds.push(kind);
            let fact = InferenceFact::dt_shape(i64::datum_type(), tvec![1.to_dim(), seq.to_dim()]);
            model.set_input_fact(ix, fact)?;
        }
        if !kinds.contains(&InputKind::InputIds) {
            bail!("the graph has no input_ids input");
        }
        Ok(kinds)
    }

    fn select_output(model: &mut InferenceModel, name: Option<&str>) -> Result<()> {
        let outputs = model.output_outlets()?.to_vec();
        let chosen = match name {
            None => outputs[0],
            Some(name) => *outputs
                .iter()
                .find(|o| model.node(o.node).name == name || model.outlet_label(**o) == Some(name))
                .or_else(|| outputs.first().filter(|_| outputs.len() == 1))
                .ok_or_else(|| anyhow!("the graph has no output named {name:?}"))?,
        };
        model.select_output_outlets(&[chosen])?;
        Ok(())
    }

    /// Runs one row of token ids (already framed with `[CLS]` and `[SEP]`), all attended to.
    pub fn run(&self, ids: &[i64]) -> Result<RowOutput> {
        let seq = ids.len();
        if seq == 0 {
            bail!("empty input");
        }
        let inputs: TVec<TValue> = self
            .inputs
            .iter()
            .map(|kind| {
                let tensor = match kind {
                    InputKind::InputIds => Tensor::from_shape(&[1, seq], ids)?,
                    InputKind::AttentionMask => {
                        tract_ndarray::Array2::<i64>::ones((1, seq)).into_tensor()
                    }
                    InputKind::TokenTypeIds => {
                        tract_ndarray::Array2::<i64>::zeros((1, seq)).into_tensor()
                    }
                };
                Ok(tensor.into_tvalue())
            })
            .collect::<Result<_>>()?;
        let outputs = self
            .plan
            .run(inputs)
            .map_err(|e| anyhow!("model run failed: {e:#}"))?;
        let output = outputs[0].to_plain_array_view::<f32>()?;
        match output.shape().split_first() {
            Some((1, rest)) => Ok(RowOutput {
                shape: rest.to_vec(),
                data: output.iter().copied().collect(),
            }),
            _ => bail!("model output shape {:?} is not [1, ...]", output.shape()),
        }
    }

    /// The plan's constants and the fused ops' heap-packed weights, by node, largest first, in
    /// bytes (what the model holds besides code and activations; opaque packed tensors count
    /// as their element count times the element size).
    pub fn constants(&self) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = self
            .plan
            .model()
            .nodes()
            .iter()
            .filter_map(|n| {
                if let Some(c) = n.op_as::<tract_core::ops::konst::Const>() {
                    let t = c.val();
                    Some((n.name.clone(), t.len() * t.datum_type().size_of()))
                } else {
                    n.op_as::<crate::int8::QMatMul>()
                        .filter(|op| !op.weights.is_shared())
                        .map(|op| (n.name.clone(), op.weights.as_bytes().len()))
                }
            })
            .collect();
        v.sort_by_key(|e| std::cmp::Reverse(e.1));
        v
    }

    /// Whether outputs have one entry per token (discriminator, tagger, encoder).
    pub fn per_token(&self) -> bool {
        self.per_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tiny fixture's discriminator (`$ELECTRA_EDGE_FIXTURES` or `../shared/fixtures`).
    fn tiny() -> Option<PathBuf> {
        let root = std::env::var("ELECTRA_EDGE_FIXTURES")
            .unwrap_or(concat!(env!("CARGO_MANIFEST_DIR"), "/../shared/fixtures").into());
        let p = Path::new(&root).join("electra-tiny-zh/discriminator/model.onnx");
        p.exists().then_some(p)
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ee-model-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn outputs(m: &Model) -> Vec<RowOutput> {
        [3usize, 17, 40]
            .iter()
            .map(|&n| {
                let ids: Vec<i64> = (0..n as i64).map(|j| 101 + (j * 131) % 3000).collect();
                m.run(&ids).unwrap()
            })
            .collect()
    }

    #[test]
    fn packed_sidecar_is_mapped_and_bit_identical() {
        let Some(onnx) = tiny() else {
            return eprintln!("skipped: no tiny fixture");
        };
        let dir = temp_dir("pack");
        let side = dir.join("model.onnx.int8pack");
        let report = pack(&onnx, &side).unwrap();
        assert!(report.entries > 0);
        let opts = ModelOptions::default();
        let heap = Model::load_with(&onnx, &opts, &WeightsSource::Heap).unwrap();
        assert_eq!(
            (heap.weights.mapped, heap.weights.sidecar.clone()),
            (0, None)
        );
        let mapped = Model::load_with(&onnx, &opts, &WeightsSource::Sidecar(side.clone())).unwrap();
        assert_eq!(mapped.weights.fused, heap.weights.fused);
        assert_eq!(mapped.weights.mapped, mapped.weights.fused);
        assert_eq!(mapped.weights.sidecar.as_deref(), Some(side.as_path()));
        assert!(mapped
            .constants()
            .iter()
            .all(|(n, _)| !n.ends_with(".qmatmul")));
        assert_eq!(outputs(&heap), outputs(&mapped));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Truncated, corrupt, empty, stale and foreign sidecars: the load falls back to the heap
    /// (entirely, or for the entries that do not check out) and answers the same.
    #[test]
    fn bad_sidecars_fall_back_to_the_heap() {
        let Some(onnx) = tiny() else {
            return eprintln!("skipped: no tiny fixture");
        };
        let dir = temp_dir("bad");
        let good = dir.join("good.int8pack");
        pack(&onnx, &good).unwrap();
        let bytes = std::fs::read(&good).unwrap();
        let opts = ModelOptions::default();
        let want = outputs(&Model::load_with(&onnx, &opts, &WeightsSource::Heap).unwrap());
        let mut cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("header only", bytes[..40].to_vec()),
            ("truncated", bytes[..bytes.len() / 2].to_vec()),
            ("last byte cut", bytes[..bytes.len() - 1].to_vec()),
        ];
        let mut magic = bytes.clone();
        magic[0] ^= 0xff;
        cases.push(("bad magic", magic));
        let mut stale = bytes.clone();
        stale[16] ^= 1; // the fingerprint
        cases.push(("stale", stale));
        let mut blob = bytes.clone();
        let first_blob = (64..blob.len())
            .step_by(64)
            .find(|&i| blob[i..i + 4] == *b"EEQW")
            .unwrap();
        blob[first_blob + 16] ^= 0x10; // K of the first entry
        cases.push(("corrupt entry", blob));
        let mut weights = bytes.clone();
        weights[first_blob + 64] ^= 0x01; // first weight byte of the first entry
        cases.push(("changed weight", weights));
        let demo =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/demo/discriminator/model.onnx");
        if demo.exists() {
            let foreign = dir.join("foreign.int8pack");
            pack(&demo, &foreign).unwrap();
            cases.push(("other model", std::fs::read(&foreign).unwrap()));
        }
        for (what, b) in cases {
            let p = dir.join(format!("{}.int8pack", what.replace(' ', "-")));
            std::fs::write(&p, &b).unwrap();
            let m = Model::load_with(&onnx, &opts, &WeightsSource::Sidecar(p)).unwrap();
            assert!(
                m.weights.mapped < m.weights.fused,
                "{what}: {:?}",
                m.weights
            );
            assert_eq!(outputs(&m), want, "{what}");
        }
        let missing =
            Model::load_with(&onnx, &opts, &WeightsSource::Sidecar(dir.join("none"))).unwrap();
        assert_eq!(missing.weights.mapped, 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// With a cache folder and no sidecar, the first load writes one and maps it at once; the
    /// next load maps it without writing.
    #[test]
    fn cache_folder_is_written_then_mapped() {
        let Some(onnx) = tiny() else {
            return eprintln!("skipped: no tiny fixture");
        };
        let dir = temp_dir("cache");
        let cache = dir.join("cache");
        let opts = ModelOptions::default();
        let first = Model::load_with(&onnx, &opts, &WeightsSource::Cache(cache.clone())).unwrap();
        let side = cached_sidecar_path(&cache, &onnx);
        assert_eq!(first.weights.sidecar.as_deref(), Some(side.as_path()));
        assert_eq!(first.weights.mapped, first.weights.fused);
        let mtime = std::fs::metadata(&side).unwrap().modified().unwrap();
        let second = Model::load_with(&onnx, &opts, &WeightsSource::Cache(cache)).unwrap();
        assert_eq!(second.weights.mapped, second.weights.fused);
        assert_eq!(std::fs::metadata(&side).unwrap().modified().unwrap(), mtime);
        assert_eq!(outputs(&first), outputs(&second));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
