//! Command-line arguments of the subcommands (the commands themselves are in
//! `commands/`). Defaults come from what they configure.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::Task;
use crate::engine::{EngineOptions, DEFAULT_MAX_CHARS};
use crate::pretty::Style;
use crate::run::Format;
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
    /// Read requests (plain text or JSON lines) from stdin, answer each one on stdout.
    ///
    /// Answers are JSON lines, the contract `serve` has too, when stdout is a pipe or a file,
    /// and a form for a person to read when stdout is a terminal (the text with flagged
    /// characters highlighted and their scores, labels, entities inline, an embedding's
    /// summary); --pretty and --json choose either one whatever stdout is.
    Run(RunArgs),
    /// Serve the same JSON lines on a Unix socket to many clients, within a fixed memory budget.
    Serve(ServeArgs),
    /// Check a model folder: file checksums and golden outputs from manifest.json.
    Check(CheckArgs),
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
    #[command(flatten)]
    pub output: OutputArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub model: ModelArgs,
}

/// How `run` writes its answers.
#[derive(Debug, Args, Clone)]
pub struct OutputArgs {
    /// Answers for a person to read: each text with its flagged characters highlighted and
    /// their scores (discriminator), labels with scores (classify), entities inline (tag), an
    /// embedding's size, norm and first values (embed). The default when stdout is a terminal.
    #[arg(long, conflicts_with = "json")]
    pub pretty: bool,
    /// One JSON line per input line, also when stdout is a terminal (the default for pipes and
    /// files).
    #[arg(long)]
    pub json: bool,
    /// Colours of the pretty form: auto (when stdout is a terminal and NO_COLOR is not set),
    /// always, never (highlights marked with brackets instead: 我[门]).
    #[arg(long, value_enum, default_value = "auto", value_name = "WHEN")]
    pub color: ColorArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorArg {
    Auto,
    Always,
    Never,
}

impl OutputArgs {
    /// The format these flags ask for, given whether stdout is a terminal and whether the
    /// NO_COLOR convention is in force (the variable set and not empty).
    pub fn format(&self, stdout_is_terminal: bool, no_color: bool) -> Format {
        let pretty = self.pretty || (stdout_is_terminal && !self.json);
        if !pretty {
            return Format::Json;
        }
        let color = match self.color {
            ColorArg::Always => true,
            ColorArg::Never => false,
            ColorArg::Auto => stdout_is_terminal && !no_color,
        };
        Format::Pretty(if color { Style::Color } else { Style::Plain })
    }
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
    /// Inference threads (default: the cores available to the process, divided by --threads;
    /// cgroup quota and CPU affinity respected).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Open connections; the next one gets a busy error and is closed.
    #[arg(long, default_value_t = ServerConfig::default().max_connections)]
    pub max_connections: usize,
    /// Longest request line in bytes (default: 4 x --max-chars + 64 KiB).
    #[arg(long)]
    pub max_line_bytes: Option<usize>,
    /// Inference requests waiting for a worker, all connections together; at the cap readers
    /// wait for a slot.
    #[arg(long, default_value_t = ServerConfig::default().max_queue)]
    pub max_queue: usize,
    /// MiB that requests and their answers may hold from reading until the answer is written,
    /// all connections together; at the cap readers wait.
    #[arg(long, default_value_t = ServerConfig::default().max_held_bytes >> 20)]
    pub max_held_mib: u64,
    /// Requests of one connection read but not yet answered; the server stops reading there.
    #[arg(long, default_value_t = ServerConfig::default().max_in_flight)]
    pub max_in_flight: usize,
    /// Seconds a request may wait for a queue slot and a worker before it gets busy.
    #[arg(long, default_value_t = ServerConfig::default().queue_timeout.as_secs_f64())]
    pub queue_timeout: f64,
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
    /// Threads per request for the int8 matmuls, attention, LayerNorm and GELU (default: run and
    /// check: the cores available to the process; serve: the cores divided by --workers, 1 with
    /// the default workers).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub threads: Option<u16>,
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

/// The cores this process may use (CPU affinity and cgroup quota respected), at least 1.
pub fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Workers and threads per request for `serve`: what was asked, the other filled in so that
/// workers x threads does not exceed the cores (both unset: one worker per core, 1 thread).
pub fn split_cores(cores: usize, workers: Option<usize>, threads: Option<u16>) -> (usize, usize) {
    let cores = cores.max(1);
    match (workers, threads.map(usize::from)) {
        (Some(w), Some(t)) => (w, t),
        (Some(w), None) => (w, (cores / w.max(1)).max(1)),
        (None, Some(t)) => ((cores / t.max(1)).max(1), t),
        (None, None) => (cores, 1),
    }
}

impl ModelArgs {
    /// The engine options these arguments ask for; `threads` where `--threads` is not given.
    pub fn engine_options(&self, threads: usize) -> EngineOptions {
        EngineOptions {
            task: self.task,
            onnx_file: self.onnx.clone(),
            window_tokens: self.window_tokens,
            overlap: self.overlap,
            max_chars: self.max_chars,
            tract_int8: self.tract_int8,
            self_check: !self.no_self_check,
            threads: self.threads.map_or(threads, usize::from),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_are_shared_between_workers_and_threads() {
        assert_eq!(split_cores(4, None, None), (4, 1));
        assert_eq!(split_cores(4, Some(2), None), (2, 2));
        assert_eq!(split_cores(4, None, Some(4)), (1, 4));
        assert_eq!(split_cores(4, Some(3), None), (3, 1));
        assert_eq!(split_cores(2, None, Some(3)), (1, 3));
        // asked for more than the cores: as asked
        assert_eq!(split_cores(2, Some(4), Some(2)), (4, 2));
        assert!(available_cores() >= 1);
    }

    #[test]
    fn pretty_on_terminals_json_elsewhere_unless_asked() {
        use ColorArg::*;
        use Format::*;
        let output = |pretty, json, color| OutputArgs {
            pretty,
            json,
            color,
        };
        // (flags, stdout is a terminal, NO_COLOR) -> format
        let cases = [
            (output(false, false, Auto), false, false, Json),
            (
                output(false, false, Auto),
                true,
                false,
                Pretty(Style::Color),
            ),
            (output(false, false, Auto), true, true, Pretty(Style::Plain)),
            (output(false, true, Auto), true, false, Json),
            (
                output(true, false, Auto),
                false,
                false,
                Pretty(Style::Plain),
            ),
            (
                output(true, false, Always),
                false,
                false,
                Pretty(Style::Color),
            ),
            (
                output(true, false, Always),
                true,
                true,
                Pretty(Style::Color),
            ),
            (
                output(true, false, Never),
                true,
                false,
                Pretty(Style::Plain),
            ),
            (
                output(false, false, Never),
                true,
                false,
                Pretty(Style::Plain),
            ),
            (output(false, true, Always), false, false, Json),
        ];
        for (args, terminal, no_color, want) in cases {
            assert_eq!(
                args.format(terminal, no_color),
                want,
                "{args:?}, terminal {terminal}, NO_COLOR {no_color}"
            );
        }
    }

    #[test]
    fn pretty_and_json_exclude_each_other() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(
                ["electra-edge", "run", "--model", "m"]
                    .iter()
                    .chain(args)
                    .copied(),
            )
        };
        assert!(parse(&["--pretty", "--json"]).is_err());
        let Command::Run(run) = parse(&["--pretty", "--color", "never"]).unwrap().command else {
            panic!("not run");
        };
        assert!(run.output.pretty && run.output.color == ColorArg::Never);
        assert!(
            Cli::try_parse_from(["electra-edge", "check", "--model", "m", "--pretty"]).is_err()
        );
    }
}
