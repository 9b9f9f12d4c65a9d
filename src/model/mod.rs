//! The one narrow boundary around tract: load an ONNX graph once, run token ids through it.
//!
//! Loading: the file is memory-mapped and decoded (onnxruntime's `com.microsoft` ops, as its
//! optimizer and `quantize_dynamic` write them, replaced by standard ONNX nodes: `contrib`),
//! parsed by tract-onnx (ignoring the exporter's `value_info`, whose symbolic
//! `batch`/`sequence` dims would otherwise clash with ours; `MatMulInteger` and, with our
//! transformer ops, `LayerNormalization` through our own parsers: `onnx_ops`, which type them
//! into fewer nodes, faster), given inputs `[B, S]` with symbolic
//! batch and sequence lengths, pruned to the one output the task needs, and optimized **once**:
//! every length up to the model's positions runs through the same plan without re-optimizing.
//! Everything else in the crate sees only [`Model::run`].
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
//! of the ONNX file and of the external-data files it names, if any; ~3 ms for the 13 MB small
//! model, while its pages are hot from decoding), and each entry matches the graph's weights
//! (shape, signedness, zero points, first k-quad of the first and last panels). Otherwise the
//! weights are packed on the heap, with a warning for a corrupt or truncated file and an info
//! line saying how to make one for a missing or stale one: a bad sidecar never stops the model
//! from loading.
//!
//! What cannot be detected: a sidecar or model file truncated or rewritten **in place** after
//! it was mapped (the next touch of a vanished page is a SIGBUS). Deployment rule: replace
//! model files and sidecars by writing a new file and renaming it over the old one (`pack`
//! does; so do `install`, `cp` to a temporary name + `mv`, package managers); running
//! processes keep the old inode until they restart.
//!
//! # Memory while loading
//!
//! tract copies every initializer into a tensor at parse time (twice when it reads external
//! data), and the decoded protobuf holds a copy too. To have one copy only, initializers of
//! 16 KiB and more of plain numeric types are left out of the decoded protobuf (`decode`: the
//! file is re-encoded at the wire level without them) and, after tract's parse has made their
//! names unresolved inputs, turned into constants copied once from the file's map; pages
//! already read are dropped from the resident set (`MADV_DONTNEED` on the read-only file map),
//! and glibc's free memory is handed back after each stage
//! (`malloc_trim`). Small model, sidecar mapped: load peak ~1.35x the steady RSS (was ~1.8x).

mod contrib;
mod decode;
mod embeddings;
mod inputs;
mod memory;
mod onnx_ops;
#[cfg(test)]
mod test_protos;
mod weights;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, bail, Result};
use tract_onnx::prelude::*;

pub use embeddings::{EmbeddingTables, Lookups};
pub use weights::{
    cache_dir_from_env, cached_sidecar_path, model_fingerprint, pack, sidecar_path, CannotWrite,
    PackReport, WeightsInfo, WeightsSource, CACHE_ENV, SIDECAR_EXT,
};

use inputs::InputKind;
use memory::release_free_heap;

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
    /// Rows of the embedding tables, for the check against the tokenizer
    /// ([`EmbeddingTables::check`]).
    embeddings: EmbeddingTables,
}

/// One batch row's output: the model output without the batch axis, padding removed.
#[derive(Clone, Debug, PartialEq)]
pub struct RowOutput {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// Times (and, with debug logs, memory after) each load stage.
pub(crate) struct Stages {
    timings: Vec<(&'static str, f64)>,
    memory: Vec<String>,
    clock: Instant,
    debug: bool,
}

impl Stages {
    fn new() -> Stages {
        Stages {
            timings: vec![],
            memory: vec![],
            clock: Instant::now(),
            debug: log::log_enabled!(log::Level::Debug),
        }
    }

    /// Ends the stage `name`.
    pub(crate) fn lap(&mut self, name: &'static str) {
        self.timings
            .push((name, self.clock.elapsed().as_secs_f64() * 1e3));
        if self.debug {
            self.memory.push(crate::procfs::memory_line());
        }
        self.clock = Instant::now();
    }

    fn log(&self, path: &Path) {
        for (i, (stage, ms)) in self.timings.iter().enumerate() {
            let mem = self
                .memory
                .get(i)
                .map(|m| format!(", then {m}"))
                .unwrap_or_default();
            log::debug!("load {}: {stage} {ms:.1} ms{mem}", path.display());
        }
    }
}

impl Model {
    /// Loads with [`WeightsSource::Auto`].
    pub fn load(path: &Path, options: &ModelOptions) -> Result<Model> {
        Self::load_with(path, options, &WeightsSource::Auto)
    }

    /// Loads, taking the fused matmuls' packed weights from `weights`: decode -> parse and
    /// type -> fuse int8 matmuls -> optimize -> plan.
    pub fn load_with(
        path: &Path,
        options: &ModelOptions,
        weights: &WeightsSource,
    ) -> Result<Model> {
        let mut stages = Stages::new();
        let fuse = !options.tract_int8;
        let want_sidecar = fuse && *weights != WeightsSource::Heap;
        let decoded = decode::decode(path)?;
        stages.lap("decode");

        let output = Some(options.output.as_deref());
        // the sidecar's check needs the file's fingerprint (~3 ms of hashing): on a second
        // thread while tract parses
        let (parsed, fingerprint) = std::thread::scope(|s| {
            let hashing = want_sidecar.then(|| {
                std::thread::Builder::new()
                    .name("model-hash".into())
                    .spawn_scoped(s, || decoded.fingerprint())
            });
            let parsed = decode::parse_typed(path, &decoded, output, fuse);
            let fingerprint = hashing.map(|h| match h {
                Ok(h) => h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)),
                Err(_) => decoded.fingerprint(), // no thread to spare
            });
            (parsed, fingerprint)
        });
        let (mut typed, inputs) = parsed?;
        drop(decoded);
        let embeddings = EmbeddingTables::find(&typed, &inputs);
        // the decoded proto and tract's inference model are gone: give their memory back
        // before the next stages allocate (keeps the load's peak RSS down)
        release_free_heap();
        stages.lap("parse+type");

        let weights = if fuse {
            let threads = options.threads.max(1);
            let info =
                weights::fuse_int8(&mut typed, path, threads, weights, fingerprint, &mut stages)?;
            let ops_options = crate::ops::OpsOptions {
                kernel: None,
                threads,
            };
            let ops = crate::ops::fuse_transformer_ops(&mut typed, &ops_options)
                .map_err(|e| anyhow!("{}: attention fusion failed: {e:#}", path.display()))?;
            log::debug!("{}: our ops installed: {ops:?}", path.display());
            stages.lap("ops");
            info
        } else {
            WeightsInfo::default()
        };
        let per_token = {
            let fact = typed.outlet_fact(typed.output_outlets()?[0])?;
            fact.shape.len() >= 2 && !fact.shape[1].symbols().is_empty()
        };
        let optimized =
            crate::ops::guard::catch_tract("cannot optimize the graph", || typed.into_optimized())
                .map_err(|e| anyhow!("{}: {e:#}", path.display()))?;
        stages.lap("optimize");
        let plan = optimized.into_runnable()?;
        stages.lap("plan");
        release_free_heap();
        stages.lap("trim");
        stages.log(path);
        Ok(Model {
            plan,
            inputs,
            per_token,
            path: path.to_owned(),
            load_timings: stages.timings,
            weights,
            embeddings,
        })
    }

    /// Runs one row of token ids (already framed with `[CLS]` and `[SEP]`), all attended to.
    pub fn run(&self, ids: &[i64]) -> Result<RowOutput> {
        let seq = ids.len();
        if seq == 0 {
            bail!("empty input");
        }
        let inputs = inputs::input_tensors(&self.inputs, ids)?;
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

    /// The graph's embedding tables, as found at load: what the engine checks against its
    /// tokenizer and windows before serving.
    pub fn embedding_tables(&self) -> &EmbeddingTables {
        &self.embeddings
    }

    /// Whether outputs have one entry per token (discriminator, tagger, encoder).
    pub fn per_token(&self) -> bool {
        self.per_token
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::testutil::{fixture, TempDir};

    /// The tiny fixture's discriminator.
    fn tiny() -> PathBuf {
        fixture("electra-tiny-zh/discriminator/model.onnx")
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
        let onnx = tiny();
        let dir = TempDir::new("model-pack");
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
    }

    /// Truncated, corrupt, empty, stale and foreign sidecars: the load falls back to the heap
    /// (entirely, or for the entries that do not check out) and answers the same.
    #[test]
    fn bad_sidecars_fall_back_to_the_heap() {
        let onnx = tiny();
        let dir = TempDir::new("model-bad");
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
        let demo = crate::testutil::demo_models().join("discriminator/model.onnx");
        let foreign = dir.join("foreign.int8pack");
        pack(&demo, &foreign).unwrap();
        cases.push(("other model", std::fs::read(&foreign).unwrap()));
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
    }

    /// With a cache folder and no sidecar, the first load writes one and maps it at once; the
    /// next load maps it without writing.
    #[test]
    fn cache_folder_is_written_then_mapped() {
        let onnx = tiny();
        let dir = TempDir::new("model-cache");
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
    }
}
