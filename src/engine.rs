//! A model folder made servable: tokenizer + model + task, one request in, one answer out.
//!
//! The folder is the Hugging Face / optimum layout: `model.onnx`, `config.json`,
//! `tokenizer.json` (or `vocab.txt`), optionally `manifest.json` from `models/export.py`.
//! Loading runs load -> warm-up (one short input through the whole path, which also checks
//! that the output shape fits the task) -> self-check (the manifest's golden outputs, when the
//! folder has them; see [`crate::selfcheck`]) before the engine answers anything.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::config::{ModelConfig, Task};
use crate::model::{Model, ModelOptions, RowOutput};
use crate::protocol::{response_line, ErrorCode, ErrorReply, Request, RequestOptions};
use crate::tasks::embed::Pooling;
use crate::tasks::{classify, discriminator, embed, json_f32s, tag, PerToken};
use crate::tokenize::{TextTokenizer, Token};
use crate::windows::WindowPlan;

/// Default longest text, in characters. At ~400 characters per window this is about 50
/// windows: seconds of work on a board, not minutes, and bounded memory.
pub const DEFAULT_MAX_CHARS: usize = 20_000;

/// How to load a folder, and the defaults that requests may override.
#[derive(Clone, Debug)]
pub struct EngineOptions {
    /// Override the task picked from `config.json`.
    pub task: Option<Task>,
    /// Load this ONNX file instead of `DIR/model.onnx` (e.g. `model.fp32.onnx`).
    pub onnx_file: Option<PathBuf>,
    /// Tokens per window including `[CLS]` and `[SEP]`; the model's positions when `None`.
    pub window_tokens: Option<usize>,
    /// Tokens shared by consecutive windows; a quarter of the window when `None`.
    pub overlap: Option<usize>,
    pub max_chars: usize,
    /// Run int8 matmuls with tract's own kernels instead of ours (for comparisons).
    pub tract_int8: bool,
    /// Threads per int8 matmul.
    pub threads: usize,
    /// Check the manifest's golden outputs at load (when there is a manifest).
    pub self_check: bool,
    pub defaults: Defaults,
}

/// Answer options used when a request does not set them.
#[derive(Clone, Debug)]
pub struct Defaults {
    pub raw: bool,
    pub threshold: f32,
    pub pooling: Pooling,
    pub normalize: bool,
    pub tokens: bool,
}

impl Default for Defaults {
    fn default() -> Self {
        Defaults {
            raw: false,
            threshold: 0.5,
            pooling: Pooling::Mean,
            normalize: false,
            tokens: false,
        }
    }
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            task: None,
            onnx_file: None,
            window_tokens: None,
            overlap: None,
            max_chars: DEFAULT_MAX_CHARS,
            tract_int8: false,
            threads: 1,
            self_check: true,
            defaults: Defaults::default(),
        }
    }
}

pub struct Engine {
    pub task: Task,
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    pub model: Model,
    pub dir: PathBuf,
    /// Text tokens per window (window size minus `[CLS]` and `[SEP]`).
    capacity: usize,
    overlap: usize,
    pub options: EngineOptions,
    /// What the start-up self-check saw (`None` when switched off).
    pub self_check: Option<crate::selfcheck::Report>,
}

/// The model's work on one text: its tokens, the window plan and each window's output.
pub struct Forward {
    pub tokens: Vec<Token>,
    pub plan: WindowPlan,
    pub outputs: Vec<RowOutput>,
}

impl Engine {
    pub fn load(dir: &Path, options: EngineOptions) -> Result<Engine> {
        if !dir.is_dir() {
            bail!(
                "model folder {} does not exist or is not a folder",
                dir.display()
            );
        }
        let config = ModelConfig::load(&dir.join("config.json"))?;
        let task = match options.task {
            Some(task) => task,
            None => config.task()?,
        };
        let tokenizer = TextTokenizer::load(dir)?;
        let onnx = options
            .onnx_file
            .clone()
            .unwrap_or_else(|| dir.join("model.onnx"));
        let model_options = ModelOptions {
            output: Some(task.output_name().to_string()),
            tract_int8: options.tract_int8,
            threads: options.threads,
        };
        let model = Model::load(&onnx, &model_options)?;
        let positions = config.max_position_embeddings;
        let window = options.window_tokens.unwrap_or(positions);
        if !(3..=positions).contains(&window) {
            bail!("window of {window} tokens is outside 3..={positions} (max_position_embeddings)");
        }
        let capacity = window - 2;
        let overlap = options.overlap.unwrap_or(capacity / 4).min(capacity - 1);
        let self_check = options.self_check;
        let mut engine = Engine {
            task,
            config,
            tokenizer,
            model,
            dir: dir.to_owned(),
            capacity,
            overlap,
            options,
            self_check: None,
        };
        engine.warm_up().context("warm-up run failed")?;
        if self_check {
            let report = crate::selfcheck::check(&engine)?;
            if report.checked > 0 {
                log::info!(
                    "self-check passed: {} golden texts, max error {} (bound {})",
                    report.checked,
                    report.max_error,
                    report.bound
                );
            }
            engine.self_check = Some(report);
        }
        Ok(engine)
    }

    /// One short input through tokenizer, model and task: the first real request then costs no
    /// more than any other, and a head that does not fit the task is reported at start.
    fn warm_up(&self) -> Result<()> {
        let answer = self.answer("我", &RequestOptions::default())?;
        log::debug!("warm-up answer: {answer:?}");
        Ok(())
    }

    /// Tokenizes, plans windows and runs the model on each window.
    pub fn forward(&self, text: &str) -> Result<Forward> {
        let tokens = self.tokenizer.encode(text)?;
        let plan = WindowPlan::new(tokens.len(), self.capacity, self.overlap);
        let mut outputs = Vec::with_capacity(plan.windows.len());
        // Windows run one at a time: peak memory stays that of one window.
        for range in &plan.windows {
            let mut row = Vec::with_capacity(range.len() + 2);
            row.push(self.tokenizer.cls_id);
            row.extend(tokens[range.clone()].iter().map(|t| t.id));
            row.push(self.tokenizer.sep_id);
            outputs.push(self.model.run(&row)?);
        }
        Ok(Forward {
            tokens,
            plan,
            outputs,
        })
    }

    /// The answer body for `text` (without `id`).
    pub fn answer(&self, text: &str, options: &RequestOptions) -> Result<Map<String, Value>> {
        self.answer_from(text, &self.forward(text)?, options)
    }

    /// The answer body for `text` from its model run `forward` ([`Engine::forward`] of the same
    /// text): one run can serve several option sets (the self-check's two poolings).
    pub fn answer_from(
        &self,
        text: &str,
        forward: &Forward,
        options: &RequestOptions,
    ) -> Result<Map<String, Value>> {
        let d = &self.options.defaults;
        let mut body = Map::new();
        body.insert("task".into(), self.task.name().into());
        let raw = options.raw.unwrap_or(d.raw);
        let raw_ids = || {
            let mut ids = vec![self.tokenizer.cls_id];
            ids.extend(forward.tokens.iter().map(|t| t.id));
            ids.push(self.tokenizer.sep_id);
            ids
        };
        let (answer, raw_logits) = match self.task {
            Task::Discriminator | Task::Tag => {
                if !self.model.per_token() {
                    bail!(
                        "the {} task needs per-token outputs; this graph's are pooled",
                        self.task
                    );
                }
                let logits = PerToken::stitch(&forward.plan, &forward.outputs);
                let answer = if self.task == Task::Discriminator {
                    if logits.width != 1 {
                        bail!(
                            "a discriminator has 1 logit per token, this graph has {}",
                            logits.width
                        );
                    }
                    let threshold = options.threshold.unwrap_or(d.threshold);
                    to_map(discriminator::answer(
                        text,
                        &forward.tokens,
                        &logits,
                        threshold,
                    ))
                } else {
                    let labels = self.config.labels(logits.width);
                    let with_tokens = options.tokens.unwrap_or(d.tokens);
                    to_map(tag::answer(
                        text,
                        &forward.tokens,
                        &logits,
                        &labels,
                        with_tokens,
                    ))
                };
                let raw_logits = raw.then(|| {
                    if logits.width == 1 {
                        json_f32s(&logits.data)
                    } else {
                        logits.data.chunks(logits.width).map(json_f32s).collect()
                    }
                });
                (answer, raw_logits)
            }
            Task::Classify => {
                if forward.outputs[0].shape.len() != 1 {
                    bail!(
                        "a classifier outputs [labels], this graph {:?}",
                        forward.outputs[0].shape
                    );
                }
                let logits = classify::combine(&forward.outputs);
                let labels = self.config.labels(logits.len());
                (
                    to_map(classify::answer(&logits, &labels)),
                    raw.then(|| json_f32s(&logits)),
                )
            }
            Task::Embed => {
                let pooling = options.pooling.unwrap_or(d.pooling);
                let normalized = options.normalize.unwrap_or(d.normalize);
                let mut embedding = embed::pool(&forward.outputs, pooling)?;
                if normalized {
                    embed::normalize(&mut embedding);
                }
                let answer = embed::Answer {
                    pooling,
                    normalized,
                    dim: embedding.len(),
                    embedding,
                };
                (to_map(answer), None)
            }
        };
        body.extend(answer);
        if raw {
            body.insert("input_ids".into(), Value::from(raw_ids()));
            if let Some(logits) = raw_logits {
                body.insert("logits".into(), logits);
            }
        }
        Ok(body)
    }

    /// The response line for one parsed request; a model failure is logged and becomes an
    /// `internal` error reply (returned as such, so that a server can count it).
    pub fn respond(&self, request: &Request) -> Result<String, ErrorReply> {
        self.answer(&request.text, &request.options)
            .map(|body| response_line(request.id.as_ref(), body))
            .map_err(|e| {
                log::error!("request failed: {e:#}");
                ErrorReply::new(request.id.clone(), ErrorCode::Internal, format!("{e:#}"))
            })
    }

    /// Text tokens one window holds (the window minus `[CLS]` and `[SEP]`).
    pub fn window_capacity(&self) -> usize {
        self.capacity
    }

    /// Parser limits implied by this engine's options.
    pub fn limits(&self) -> crate::protocol::Limits {
        crate::protocol::Limits {
            max_chars: self.options.max_chars,
        }
    }
}

fn to_map(answer: impl serde::Serialize) -> Map<String, Value> {
    match serde_json::to_value(answer) {
        Ok(Value::Object(map)) => map,
        other => unreachable!("answers serialize to objects, got {other:?}"),
    }
}
