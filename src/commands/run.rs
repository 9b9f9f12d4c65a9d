//! `electra-edge run`: stdin to stdout.

use std::io;

use anyhow::Result;

use crate::cli::RunArgs;
use crate::engine::Engine;

/// Loads the model folder, then answers every line of stdin on stdout.
pub fn run(args: &RunArgs) -> Result<()> {
    let engine = Engine::load(&args.model.model, args.model.engine_options())?;
    crate::run::serve_lines(&engine, io::stdin().lock(), io::stdout().lock())
}
