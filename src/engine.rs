//! A model folder made servable: tokenizer + model + task, one request in, one answer out.
//!
//! The folder is the Hugging Face / optimum layout: `model.onnx`, `config.json`,
//! `tokenizer.json` (or `vocab.txt`), optionally `manifest.json` from `models/export.py`.
//! Loading runs load -> warm-up (one short input through the whole path, which also checks
//! that the output shape fits the task) -> self-check (the manifest's golden outputs, when the
//! folder has them; see [`crate::selfcheck`]) before the engine answers anything.
//!
//! The folder path is resolved first (it may be a symlink an operator switches between model
//! folders) and every file is read from that one resolved folder. [`Engine::reload`] loads the
//! same path again with the same options, resolving it anew.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use crate::config::{ModelConfig, Task};
use crate::model::{Model, ModelOptions, RowOutput};
use crate::tasks::{self, Answer, AnswerOptions, OutputShape, Pooling, Raw, Response};
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
    /// Answer options used when a request does not set them.
    pub defaults: AnswerOptions,
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
            defaults: AnswerOptions::default(),
        }
    }
}

pub struct Engine {
    pub task: Task,
    pub config: ModelConfig,
    pub tokenizer: TextTokenizer,
    pub model: Model,
    /// The folder path as given (it may be a symlink).
    pub dir: PathBuf,
    /// The folder the files were read from: `dir` with every symlink resolved.
    pub folder: PathBuf,
    /// Text tokens per window (window size minus `[CLS]` and `[SEP]`).
    capacity: usize,
    overlap: usize,
    pub options: EngineOptions,
    /// The head's label names (empty for heads without labels), from config.json.
    labels: Vec<String>,
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
        // Resolved once: a link switched during the load does not mix two folders' files.
        let folder = dir
            .canonicalize()
            .with_context(|| format!("cannot resolve the model folder {}", dir.display()))?;
        let config = ModelConfig::load(&folder.join("config.json"))?;
        let task = match options.task {
            Some(task) => task,
            None => config.task()?,
        };
        let onnx = match options.onnx_file.clone() {
            Some(file) => file,
            None => {
                let choice = crate::folder::find_onnx(&folder)?;
                log::info!("model file: {} ({})", choice.path.display(), choice.why);
                choice.path
            }
        };
        let model_options = ModelOptions {
            output: Some(task.output_name().to_string()),
            tract_int8: options.tract_int8,
            threads: options.threads,
        };
        // The tokenizer (~10% of the start: parsing tokenizer.json) loads on a second thread
        // while the model loads; its error, if any, comes first as before.
        let tokenizer_dir = crate::folder::tokenizer_dir(&folder, &onnx);
        let (tokenizer, model) = std::thread::scope(|s| {
            let tokenizer = std::thread::Builder::new()
                .name("tokenizer-load".into())
                .spawn_scoped(s, || TextTokenizer::load(&tokenizer_dir));
            let model = Model::load(&onnx, &model_options);
            let tokenizer = match tokenizer {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|_| Err(anyhow!("loading the tokenizer panicked"))),
                // no thread to spare: load it here
                Err(_) => TextTokenizer::load(&tokenizer_dir),
            };
            (tokenizer, model)
        });
        let (tokenizer, model) = (tokenizer?, model?);
        let positions = config.max_position_embeddings;
        let window = options.window_tokens.unwrap_or(positions);
        if !(3..=positions).contains(&window) {
            bail!("window of {window} tokens is outside 3..={positions} (max_position_embeddings)");
        }
        // a table smaller than what is looked up in it would fail every request (see
        // `model::EmbeddingTables`): refuse the folder now
        let lookups = crate::model::Lookups {
            vocabulary: tokenizer.vocab_size(),
            window,
            token_types: 1, // every token is of type 0
        };
        model.embedding_tables().check(&lookups).with_context(|| {
            format!("{} does not fit its tokenizer and windows", onnx.display())
        })?;
        let capacity = window - 2;
        let overlap = options.overlap.unwrap_or(capacity / 4).min(capacity - 1);
        let self_check = options.self_check;
        let mut engine = Engine {
            task,
            config,
            tokenizer,
            model,
            dir: dir.to_owned(),
            folder,
            capacity,
            overlap,
            options,
            labels: Vec::new(),
            self_check: None,
        };
        engine.labels = engine.warm_up().context("warm-up run failed")?;
        if self_check {
            let report = engine.self_check()?;
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

    /// The same folder path loaded again with the same options (load, warm-up, self-check),
    /// the path resolved anew: a symlink switched to another model folder loads that folder.
    /// `self` is left as it was, whatever the outcome.
    pub fn reload(&self) -> Result<Engine> {
        Engine::load(&self.dir, self.options.clone())
    }

    /// One short input through tokenizer, model and task: the first real request then costs no
    /// more than any other, and a graph whose output does not fit the task is reported at
    /// start (the only shape check: every later window has the same output layout). Returns
    /// the head's label names.
    fn warm_up(&self) -> Result<Vec<String>> {
        let forward = self.forward("我")?;
        let shape = OutputShape {
            dims: forward.outputs[0].shape.clone(),
            positions: forward.tokens.len() + 2,
            per_token: self.model.per_token(),
        };
        let labels = self.config.labels(tasks::check_output(self.task, &shape)?);
        let answer = self.answer_with_labels(&forward, &self.options.defaults, &labels);
        log::debug!("warm-up answer: {answer:?}");
        Ok(labels)
    }

    /// Tokenizes, plans windows and runs the model on each window.
    pub fn forward(&self, text: &str) -> Result<Forward> {
        self.forward_with(text, &mut || {})
    }

    /// [`Engine::forward`], calling `on_window` after each window (a long text is many
    /// windows: a watchdog sees progress per window, not per request).
    pub fn forward_with(&self, text: &str, on_window: &mut dyn FnMut()) -> Result<Forward> {
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
            on_window();
        }
        Ok(Forward {
            tokens,
            plan,
            outputs,
        })
    }

    /// The answer for `text`.
    pub fn answer(&self, text: &str, options: &AnswerOptions) -> Result<Response> {
        Ok(self.answer_from(&self.forward(text)?, options))
    }

    /// [`Engine::answer`], calling `on_window` after each model window.
    pub fn answer_with(
        &self,
        text: &str,
        options: &AnswerOptions,
        on_window: &mut dyn FnMut(),
    ) -> Result<Response> {
        Ok(self.answer_from(&self.forward_with(text, on_window)?, options))
    }

    /// The answer from a model run ([`Engine::forward`]): one run can serve several option
    /// sets (the self-check's two poolings).
    pub fn answer_from(&self, forward: &Forward, options: &AnswerOptions) -> Response {
        self.answer_with_labels(forward, options, &self.labels)
    }

    fn answer_with_labels(
        &self,
        forward: &Forward,
        options: &AnswerOptions,
        labels: &[String],
    ) -> Response {
        let input = tasks::Input {
            tokens: &forward.tokens,
            plan: &forward.plan,
            outputs: &forward.outputs,
            labels,
        };
        let (answer, logits) = tasks::answer(self.task, &input, options);
        let raw = options.raw.then(|| Raw {
            input_ids: self.input_ids(forward),
            logits,
        });
        Response { answer, raw }
    }

    /// The model's input ids for the whole text: `[CLS]`, the tokens, `[SEP]`.
    pub fn input_ids(&self, forward: &Forward) -> Vec<i64> {
        let mut ids = Vec::with_capacity(forward.tokens.len() + 2);
        ids.push(self.tokenizer.cls_id);
        ids.extend(forward.tokens.iter().map(|t| t.id));
        ids.push(self.tokenizer.sep_id);
        ids
    }

    /// Our token ids and raw output for `text` in the references' shape (manifest goldens and
    /// the fixtures' `reference.jsonl`): logits, or `cls` then `mean` for encoders (not
    /// normalized).
    pub fn raw_output(&self, text: &str) -> Result<(Vec<i64>, Vec<f32>)> {
        // One model run; an encoder's two poolings are both taken from it.
        let forward = self.forward(text)?;
        let options = |pooling| AnswerOptions {
            raw: true,
            normalize: false,
            pooling,
            ..self.options.defaults.clone()
        };
        let response = self.answer_from(&forward, &options(Pooling::Cls));
        let values = match response.answer {
            Answer::Embed(cls) => {
                let mut v = cls.embedding;
                if let Answer::Embed(mean) =
                    self.answer_from(&forward, &options(Pooling::Mean)).answer
                {
                    v.extend(mean.embedding);
                }
                v
            }
            _ => response
                .raw
                .and_then(|r| r.logits)
                .map(|l| l.values().to_vec())
                .context("the answer has no raw output")?,
        };
        Ok((self.input_ids(&forward), values))
    }

    /// The manifest's golden check on this engine (see [`crate::selfcheck`]).
    pub fn self_check(&self) -> Result<crate::selfcheck::Report> {
        crate::selfcheck::check(&self.folder, self.capacity + 2, |text| {
            self.raw_output(text)
        })
    }

    /// Text tokens one window holds (the window minus `[CLS]` and `[SEP]`).
    pub fn window_capacity(&self) -> usize {
        self.capacity
    }
}
