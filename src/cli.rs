//! Command-line arguments of the subcommands (the commands themselves are in
//! `commands/`). Defaults come from what they configure.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Task;
use crate::engine::{EngineOptions, DEFAULT_MAX_CHARS};
use crate::server::ServerConfig;
use crate::tasks::{AnswerOptions, Pooling};

#[derive(Debug, Parser)]
#[command(
    name = "electra-edge",
    version,
    about = "Chinese ELECTRA int8 inference for edge boards"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read requests (plain text or JSON lines) from stdin, write one JSON line each to stdout.
    Run(RunArgs),
    /// Serve the same JSON lines on a Unix socket to many clients, within a fixed memory budget.
    Serve(ServeArgs),
    /// Check a model folder: file checksums and golden outputs from manifest.json.
    Check(RunArgs),
    /// Write the packed int8 weights sidecar of a model, which later loads memory-map.
    Pack(PackArgs),
}

/// `electra-edge pack`: see the [`crate::model`] docs for where loads look for the sidecar.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// Model folder (its model.onnx is packed).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// ONNX file to pack instead of DIR/model.onnx.
    #[arg(long, value_name = "FILE")]
    pub onnx: Option<PathBuf>,
    /// Write to this file instead of next to the ONNX file (model.onnx.int8pack).
    #[arg(long, value_name = "FILE", conflicts_with = "weights_cache")]
    pub out: Option<PathBuf>,
    /// Write into this cache folder, where loads with ELECTRA_EDGE_CACHE=DIR find it (for
    /// read-only model folders). Default: $ELECTRA_EDGE_CACHE when set.
    #[arg(long, value_name = "DIR")]
    pub weights_cache: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

/// `electra-edge serve`; limits are documented in docs/serve.md.
#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Unix socket to bind (a stale socket file is replaced, a live one refused). Not needed
    /// under systemd socket activation or with --print-budget.
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// Mode of the socket file, octal.
    #[arg(long, default_value = "0660")]
    pub socket_mode: String,
    /// Group of the socket file, by name or number.
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Inference threads.
    #[arg(long, default_value_t = ServerConfig::default().workers)]
    pub workers: usize,
    /// Open connections; the next one gets a busy error and is closed.
    #[arg(long, default_value_t = ServerConfig::default().max_connections)]
    pub max_connections: usize,
    /// Longest request line in bytes (default: 4 x --max-chars + 64 KiB).
    #[arg(long)]
    pub max_line_bytes: Option<usize>,
    /// Inference requests waiting for a worker, all connections together; more get busy.
    #[arg(long, default_value_t = ServerConfig::default().max_queue)]
    pub max_queue: usize,
    /// Requests of one connection read but not yet answered; the server stops reading there.
    #[arg(long, default_value_t = ServerConfig::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Seconds a connection may stay idle (nothing received, nothing pending) before closing.
    #[arg(long, default_value_t = ServerConfig::default().idle_timeout.as_secs_f64())]
    pub idle_timeout: f64,
    /// Seconds a client may take no answer bytes before it is dropped.
    #[arg(long, default_value_t = ServerConfig::default().write_timeout.as_secs_f64())]
    pub write_timeout: f64,
    /// Load the model, print the memory budget (JSON) and exit.
    #[arg(long)]
    pub print_budget: bool,
}

/// Which model folder to load and how to answer.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// Model folder: model.onnx, config.json, tokenizer.json (or vocab.txt).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// Task, instead of the one config.json's architectures name.
    #[arg(long, value_parser = clap::value_parser!(Task))]
    pub task: Option<Task>,
    /// ONNX file to load instead of DIR/model.onnx (e.g. DIR/model.fp32.onnx).
    #[arg(long, value_name = "FILE")]
    pub onnx: Option<PathBuf>,
    /// Longest accepted text in characters; longer ones get a too_large error.
    #[arg(long, default_value_t = DEFAULT_MAX_CHARS)]
    pub max_chars: usize,
    /// Tokens per window, [CLS] and [SEP] included (default: max_position_embeddings).
    #[arg(long)]
    pub window_tokens: Option<usize>,
    /// Tokens shared by consecutive windows (default: a quarter of the window).
    #[arg(long)]
    pub overlap: Option<usize>,
    /// Discriminator: flag tokens whose replaced probability is above this.
    #[arg(long, default_value_t = 0.5)]
    pub threshold: f32,
    /// Add input_ids and the raw model output to every answer.
    #[arg(long)]
    pub raw: bool,
    /// Embed: pooling of last_hidden_state.
    #[arg(long, value_enum, default_value = "mean")]
    pub pooling: PoolingArg,
    /// Embed: L2-normalize the vector.
    #[arg(long)]
    pub normalize: bool,
    /// Tag: include per-token labels.
    #[arg(long)]
    pub tokens: bool,
    /// Threads per int8 matmul (1 = the calling thread only).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: u16,
    /// Use tract's own int8 kernels instead of electra-edge's fused int8 matmul (comparisons).
    #[arg(long)]
    pub tract_int8: bool,
    /// Skip the start-up check of manifest.json's golden outputs.
    #[arg(long)]
    pub no_self_check: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PoolingArg {
    Mean,
    Cls,
}

impl ModelArgs {
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            task: self.task,
            onnx_file: self.onnx.clone(),
            window_tokens: self.window_tokens,
            overlap: self.overlap,
            max_chars: self.max_chars,
            tract_int8: self.tract_int8,
            self_check: !self.no_self_check,
            threads: usize::from(self.threads),
            defaults: AnswerOptions {
                raw: self.raw,
                threshold: self.threshold,
                pooling: match self.pooling {
                    PoolingArg::Mean => Pooling::Mean,
                    PoolingArg::Cls => Pooling::Cls,
                },
                normalize: self.normalize,
                tokens: self.tokens,
            },
        }
    }
}
