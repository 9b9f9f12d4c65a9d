//! Log lines under journald: when `JOURNAL_STREAM` names the process's stderr (as systemd sets
//! it for `StandardError=journal`), every line starts with the `<N>` priority prefix journald
//! reads (so `journalctl -p err` finds errors) and carries no timestamp; otherwise lines are
//! plain.

use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;

use crate::common::{demo_models, electra_edge, TempDir};

/// Runs `electra-edge ARGS` with stderr to a file (and `JOURNAL_STREAM` naming that file when
/// `journal`), stdin empty; returns stderr's lines.
fn stderr_lines(args: &[&str], journal: bool) -> Vec<String> {
    let dir = TempDir::new("journal");
    let path = dir.path().join("stderr");
    let file = File::create(&path).unwrap();
    let meta = file.metadata().unwrap();
    let mut cmd = electra_edge();
    cmd.args(args)
        .env("RUST_LOG", "info")
        .env_remove("JOURNAL_STREAM")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(file);
    if journal {
        cmd.env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()));
    }
    cmd.status().unwrap();
    std::fs::read_to_string(&path)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn log_lines_carry_journal_priorities_under_journald() {
    let model = demo_models().join("discriminator").display().to_string();
    let info = stderr_lines(&["run", "--model", &model, "--json"], true);
    assert!(!info.is_empty(), "no log lines at RUST_LOG=info");
    for line in &info {
        assert!(
            line.starts_with("<6>[INFO "),
            "an info line under journald without <6>: {line}"
        );
    }
    let failed = stderr_lines(&["run", "--model", "/nonexistent/model", "--json"], true);
    let last = failed.last().expect("no error line");
    assert!(
        last.starts_with("<3>electra-edge: ") && last.contains("/nonexistent/model"),
        "the fatal error under journald is not at priority 3: {last}"
    );
}

#[test]
fn log_lines_are_plain_without_journald() {
    let model = demo_models().join("discriminator").display().to_string();
    let info = stderr_lines(&["run", "--model", &model, "--json"], false);
    assert!(!info.is_empty(), "no log lines at RUST_LOG=info");
    for line in &info {
        assert!(line.starts_with('['), "a log line with a prefix: {line}");
        assert!(
            line.contains(" INFO "),
            "no timestamp-and-level form: {line}"
        );
    }
    let failed = stderr_lines(&["run", "--model", "/nonexistent/model", "--json"], false);
    assert!(failed
        .last()
        .is_some_and(|l| l.starts_with("electra-edge: ")));
}
