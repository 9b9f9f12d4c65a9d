//! electra-edge: Chinese ELECTRA (discriminator, classifier, tagger, encoder) as int8 ONNX
//! graphs through tract, for edge boards.
//!
//! Module map:
//! - [`cli`]: command-line arguments shared by the subcommands.
//! - [`config`]: `config.json` of a model folder, and the task picked from it.
//! - [`tokenize`]: tokenizer loading (`tokenizer.json`, or `vocab.txt` fallback) and encoding
//!   with character offsets.
//! - [`model`]: the one narrow boundary around tract: load (memory map, parse, optimize once
//!   with a symbolic sequence length) and run a batch of token ids.
//! - [`windows`]: overlapping windows for texts longer than the model's positions.
//! - [`tasks`]: turning raw model outputs into answers: discriminator scores and flagged
//!   spans, classification, BIO/BIOES entity decoding, pooled embeddings; window stitching.
//! - [`protocol`]: the JSON-lines contract, pure: request parsing and response shapes.
//! - [`folder`]: which ONNX file of a model folder to load (int8 first) and where its tokenizer is.
//! - [`engine`]: model folder = tokenizer + model + task; one request in, one response out.
//! - [`selfcheck`]: golden outputs from `manifest.json` checked before serving.
//! - [`run`]: the stdin/stdout loop behind `electra-edge run`.
//! - [`int8`]: our fused quantized matmul and its kernels (the fast int8 path).
//! - [`server`]: the Unix socket service behind `electra-edge serve`.
//! - [`cputime`]: thread and process CPU clocks for benchmarks and timing tests.
//! - [`systemd`]: sd_notify, socket activation and watchdog, without libsystemd.

pub mod cli;
pub mod config;
pub mod cputime;
pub mod engine;
pub mod folder;
pub mod int8;
pub mod model;
pub mod protocol;
pub mod run;
pub mod selfcheck;
pub mod server;
pub mod systemd;
pub mod tasks;
pub mod tokenize;
pub mod windows;
