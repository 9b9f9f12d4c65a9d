//! What the systemd tests share: the lock held by tests that change the environment, and
//! failing clearly when a tool a test needs is not installed.

use std::process::{Command, Stdio};
use std::sync::Mutex;

static ENV_LOCK: Mutex<()> = Mutex::new(());

pub fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    ENV_LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fails the test when `cmd` is not installed (`.ci/run` installs every tool these tests use).
pub fn need(cmd: &str) {
    assert!(
        have(cmd),
        "{cmd} is not installed: this test needs it (.ci/run installs it: apt-get install {})",
        match cmd {
            "python3" => "python3",
            "socat" => "socat",
            _ => "systemd",
        }
    );
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}
