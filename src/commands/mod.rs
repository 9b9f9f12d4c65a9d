//! The subcommands: each loads what it needs from the layers below and prints its result.

mod check;
mod pack;
mod run;
mod serve;

use anyhow::Result;

use crate::cli::Command;

/// Runs one subcommand.
pub fn dispatch(command: &Command) -> Result<()> {
    match command {
        Command::Run(args) => run::run(args),
        Command::Serve(args) => serve::serve(args),
        Command::Check(args) => check::check(&args.model),
        Command::Pack(args) => pack::pack(args),
    }
}
