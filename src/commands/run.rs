//! `electra-edge run`: stdin to stdout.

use std::io::{self, IsTerminal};

use anyhow::Result;

use crate::cli::{available_cores, RunArgs};
use crate::engine::Engine;

/// Loads the model folder, then answers every line of stdin on stdout: JSON lines, or the
/// pretty form (`--pretty`, or stdout a terminal without `--json`).
pub fn run(args: &RunArgs) -> Result<()> {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let format = args.output.format(io::stdout().is_terminal(), no_color);
    let options = args.model.engine_options(available_cores());
    let engine = Engine::load(&args.model.model, options)?;
    crate::run::serve_lines_as(&engine, io::stdin().lock(), io::stdout().lock(), format)
}
