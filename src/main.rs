use std::io::{self, Write};
use std::process::ExitCode;

use clap::Parser;
use electra_edge::cli::Cli;

fn main() -> ExitCode {
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"));
    // Under journald (JOURNAL_STREAM names our stderr) the journal stamps each line itself,
    // and a `<N>` prefix gives the line its priority (`journalctl -p err` finds the errors).
    let journal = electra_edge::systemd::stderr_is_journal();
    if journal {
        logger.format(|out, record| {
            writeln!(
                out,
                "<{}>[{:<5} {}] {}",
                electra_edge::systemd::journal_priority(record.level()),
                record.level(),
                record.target(),
                record.args()
            )
        });
    }
    logger.init();
    let cli = Cli::parse();
    match electra_edge::commands::dispatch(&cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // A reader that went away is not an error worth a message.
            if err
                .downcast_ref::<io::Error>()
                .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
            {
                return ExitCode::SUCCESS;
            }
            let priority = if journal { "<3>" } else { "" };
            let _ = writeln!(io::stderr(), "{priority}electra-edge: {err:#}");
            ExitCode::FAILURE
        }
    }
}
