//! electra-edge: Chinese ELECTRA (discriminator, classifier, tagger, encoder) and other
//! BERT-family int8 ONNX graphs through tract, for edge boards.
//!
//! Three layers; each uses only the layers below it:
//!
//! ```text
//!  commands   main.rs -> commands/{run,serve,check,pack}.rs, cli.rs (arguments)
//!     |
//!  service    protocol/ (JSON lines)   pretty.rs   dispatch.rs   run.rs (stdin)   server/ (socket)
//!             systemd/
//!     |
//!  core       engine.rs -> tasks/  model/ -> int8/   tokenize.rs  windows.rs  config.rs
//!             selfcheck.rs   procfs.rs   cputime.rs
//! ```
//!
//! Core (no JSON lines, no CLI, no sockets):
//! - [`config`]: `config.json` of a model folder, and the task picked from it.
//! - [`tokenize`]: tokenizer loading (`tokenizer.json`, or `vocab.txt` fallback) and encoding
//!   with character offsets.
//! - [`model`]: the one narrow boundary around tract: load (decode -> parse -> fuse -> optimize
//!   -> plan, once, with a symbolic sequence length) and run a row of token ids; packed int8
//!   weights in a memory-mapped sidecar; onnxruntime's `com.microsoft` ops replaced by
//!   standard ONNX nodes after decoding.
//! - [`folder`]: which ONNX file of a model folder to load (int8 first) and where its
//!   tokenizer is.
//! - [`int8`]: our fused quantized matmul and its kernels (the fast int8 path).
//! - [`ops`]: our transformer ops (attention, residual + LayerNorm, GELU) and their graph
//!   rewrite; the loader's panic guard.
//! - [`windows`]: overlapping windows for texts longer than the model's positions.
//! - [`tasks`]: typed answers, one module per task (discriminator scores and flagged spans,
//!   classification, BIO/BIOES entities, pooled embeddings), output-shape checks, stitching.
//! - [`engine`]: model folder = tokenizer + model + task: load -> warm-up (output shape
//!   checked once) -> self-check; one text in, one typed answer out.
//! - [`selfcheck`]: golden outputs from `manifest.json` checked before serving.
//! - [`procfs`]: memory figures from `/proc`; [`cputime`]: CPU clocks for benchmarks.
//!
//! Service:
//! - [`protocol`]: the JSON-lines contract, pure: request parsing, answers and errors as lines.
//! - [`pretty`]: answers for a person to read (`run --pretty`), pure.
//! - [`dispatch`]: the one request dispatcher of `run` and `serve` (same contract for both).
//! - [`run`]: the stdin/stdout loop; [`server`]: the Unix socket service; [`systemd`]:
//!   sd_notify, socket activation and watchdog, without libsystemd.
//!
//! Commands: [`cli`] (arguments) and [`commands`] (one module per subcommand).

// core
pub mod config;
pub mod cputime;
pub mod engine;
pub mod folder;
pub mod int8;
pub mod model;
pub mod ops;
pub mod procfs;
pub mod selfcheck;
pub mod tasks;
pub mod tokenize;
pub mod windows;

// service
pub mod dispatch;
pub mod pretty;
pub mod protocol;
pub mod run;
pub mod server;
pub mod systemd;

// commands
pub mod cli;
pub mod commands;

#[cfg(test)]
pub(crate) mod testutil;
