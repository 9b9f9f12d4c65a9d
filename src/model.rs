//! The one narrow boundary around tract: load an ONNX graph once, run token ids through it.
//!
//! Loading: the file is memory-mapped and decoded, parsed by tract-onnx (ignoring the
//! exporter's `value_info`, whose symbolic `batch`/`sequence` dims would otherwise clash with
//! ours), given inputs `[B, S]` with symbolic batch and sequence lengths, pruned to the one
//! output the task needs, and optimized **once**: every length up to the model's positions runs
//! through the same plan without re-optimizing. Everything else in the crate sees only
//! [`Model::run`].

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

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
}

/// One batch row's output: the model output without the batch axis, padding removed.
#[derive(Clone, Debug, PartialEq)]
pub struct RowOutput {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl Model {
    pub fn load(path: &Path, options: &ModelOptions) -> Result<Model> {
        let mut timings = vec![];
        let mut clock = Instant::now();
        let mut lap = |name: &'static str| {
            timings.push((name, clock.elapsed().as_secs_f64() * 1e3));
            clock = Instant::now();
        };
        let file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let len = file
            .metadata()
            .with_context(|| format!("cannot stat {}", path.display()))?
            .len();
        if len == 0 {
            bail!("{} is empty", path.display());
        }
        // SAFETY: the map is only read while decoding below and is dropped before this function
        // returns (decoding copies what it keeps). Another process truncating or rewriting the
        // file during those milliseconds could make the read fault or see torn bytes; the
        // deployment rule (README) is to replace model files by rename, never in place.
        let map = unsafe { Mmap::map(&file) }
            .with_context(|| format!("cannot memory-map {}", path.display()))?;
        let proto = ModelProto::decode(&map[..]).map_err(|e| {
            anyhow!(
                "{} is not a valid ONNX file (truncated or corrupt?): {e}",
                path.display()
            )
        })?;
        drop(map);
        lap("decode");

        let dir = path.parent().and_then(Path::to_str);
        let parsed = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .parse(&proto, dir)
            .map_err(|e| anyhow!("{}: tract cannot read the graph: {e:#}", path.display()))?;
        drop(proto);
        if !parsed.unresolved_inputs.is_empty() {
            bail!(
                "{}: unresolved graph inputs {:?}",
                path.display(),
                parsed.unresolved_inputs
            );
        }
        let mut model = parsed.model;
        lap("parse");

        let inputs = Self::bind_inputs(&mut model).with_context(|| path.display().to_string())?;
        Self::select_output(&mut model, options.output.as_deref())
            .with_context(|| path.display().to_string())?;
        let mut typed = model
            .into_typed()
            .map_err(|e| anyhow!("{}: cannot type the graph: {e:#}", path.display()))?;
        lap("type");
        if !options.tract_int8 {
            // Before declutter/optimize: tract then has far fewer quantization nodes to rewrite.
            let fuse = crate::int8::FuseOptions { kernel: None, threads: options.threads.max(1) };
            let fused = crate::int8::fuse_quantized_matmuls_with(&mut typed, &fuse)
                .map_err(|e| anyhow!("{}: int8 fusion failed: {e:#}", path.display()))?;
            log::debug!("{}: {fused} quantized matmuls fused", path.display());
            lap("fuse");
        }
        let per_token = {
            let fact = typed.outlet_fact(typed.output_outlets()?[0])?;
            fact.shape.len() >= 2 && !fact.shape[1].symbols().is_empty()
        };
        let optimized = typed
            .into_optimized()
            .map_err(|e| anyhow!("{}: cannot optimize the graph: {e:#}", path.display()))?;
        lap("optimize");
        let plan = optimized.into_runnable()?;
        lap("plan");
        for (stage, ms) in &timings {
            log::debug!("load {}: {stage} {ms:.1} ms", path.display());
        }
        Ok(Model {
            plan,
            inputs,
            per_token,
            path: path.to_owned(),
            load_timings: timings,
        })
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

    /// Whether outputs have one entry per token (discriminator, tagger, encoder).
    pub fn per_token(&self) -> bool {
        self.per_token
    }
}
