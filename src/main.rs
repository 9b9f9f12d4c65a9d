use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use electra_edge::cli::{Cli, Command};
use electra_edge::engine::Engine;

fn main() -> ExitCode {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    // Under journald (JOURNAL_STREAM names our stderr) the journal stamps each line itself.
    if electra_edge::systemd::stderr_is_journal() {
        logger.format_timestamp(None);
    }
    logger.init();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A reader that went away is not an error worth a message.
            if err
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            let _ = writeln!(io::stderr(), "electra-edge: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => {
            let engine = Engine::load(&args.model.model, args.model.engine_options())?;
            electra_edge::run::serve_lines(&engine, io::stdin().lock(), io::stdout().lock())
        }
        Command::Serve(args) => electra_edge::server::run_cli(&args),
        Command::Check(args) => electra_edge::selfcheck::run_cli(&args.model),
        Command::Pack(args) => electra_edge::model::pack_cli(&args),
    }
}
