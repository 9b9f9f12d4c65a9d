//! systemd integration without systemd: real sockets, real environment variables, real child
//! processes; no mocks. Run with `cargo test --release --test systemd`.
//!
//! - sd_notify: a `UnixDatagram` bound in a temp dir (and an abstract one) stands in for
//!   systemd's notification socket; `NOTIFY_SOCKET` points at it (`notify.rs`, with the
//!   watchdog).
//! - Socket activation: this test binary re-runs itself as a child with a listening socket at
//!   fd 3 and `LISTEN_FDS`/`LISTEN_PID` set, once through `python3` (bind, listen, `dup2` to 3,
//!   `exec`) and once through systemd's own `systemd-socket-activate` tool when installed
//!   (`activation.rs`). Under qemu-user (no binfmt), set
//!   `ELECTRA_EDGE_TEST_RUNNER="qemu-aarch64 -L ..."` so the child is started through it
//!   (`.ci/aarch64.sh` does).
//! - log lines under journald: `<N>` priority prefixes when `JOURNAL_STREAM` names stderr
//!   (`journal.rs`).
//! - `cross/install.sh` into a temp prefix, and `cross/verify-units.sh` (`units.rs`).
//! - `electra-edge serve` end to end under stand-ins for systemd: activation, notifications,
//!   watchdog, restart on the same socket (`service.rs`).
//!
//! Tests that change the environment hold `ENV_LOCK` (`harness.rs`; tests run in parallel
//! threads).

#[path = "../common/mod.rs"]
mod common;
mod harness;

mod activation;
mod journal;
mod notify;
mod service;
mod units;
