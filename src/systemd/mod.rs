//! systemd integration without libsystemd: `sd_notify`, socket activation and the watchdog.
//!
//! Everything here is plain `std` (no libsystemd, no extra crates; `libc` only to read
//! `CLOCK_MONOTONIC` for `MONOTONIC_USEC=`) and a no-op when the process was not started by
//! systemd, so `serve` can call it unconditionally.
//!
//! One file per concern:
//!
//! - `notify.rs`: [`notify()`] and the helpers [`ready`], [`status`], [`reloading`],
//!   [`stopping`], [`watchdog_ping`], [`extend_timeout`] send `sd_notify(3)` datagrams to `$NOTIFY_SOCKET` (a
//!   path, or an abstract address written with a leading `@`). [`Notifier`] is the same thing
//!   bound to an explicit address, for code and tests that must not read the environment.
//! - `activation.rs`: [`listen_fds`], [`listen_fds_with_names`] and [`listener_from_env`]
//!   implement `sd_listen_fds(3)`: `LISTEN_PID`, `LISTEN_FDS` (fds start at 3), `LISTEN_FDNAMES`.
//! - `journal.rs`: [`stderr_is_journal`] and [`journal_priority`]: log lines for journald (no
//!   timestamps, `<N>` priority prefixes) when stderr is the journal.
//! - `watchdog.rs`: [`watchdog_interval`] reads `WATCHDOG_USEC`/`WATCHDOG_PID`; [`Watchdog`]
//!   turns progress made on the inference path into `WATCHDOG=1` pings, and stops pinging when a
//!   worker is wedged.
//!
//! Typical use in `serve`:
//!
//! ```no_run
//! use electra_edge::systemd;
//! // 1. Very first thing, while still single-threaded: take the passed socket (if any).
//! let listener = systemd::listener_from_env()?;
//! // 2. The watchdog (systemd enforces it only after READY=1; start-up is bounded by
//! //    TimeoutStartSec=, which EXTEND_TIMEOUT_USEC can stretch).
//! let watchdog = systemd::Watchdog::from_env();
//! systemd::status("loading model")?;
//! // ... load, self-check ...
//! systemd::ready()?; // READY=1 only after the self-check passed
//! // Worker, per request:
//! {
//!     let _busy = watchdog.busy(); // marks the worker busy until dropped
//!     // ... for each window / batch: run the model, then
//!     watchdog.ping();
//! }
//! // On SIGHUP (`systemctl reload`): RELOADING=1 + MONOTONIC_USEC, then READY=1 either way.
//! systemd::reloading("reloading the model")?;
//! // ... load, self-check, swap (or keep the old model) ...
//! systemd::ready_with_status("serving ...")?;
//! // On SIGTERM:
//! systemd::stopping()?;
//! # Ok::<(), std::io::Error>(())
//! ```

mod activation;
mod journal;
mod notify;
mod watchdog;

pub use activation::{
    check_unix_stream_listener, listen_fds, listen_fds_with_names, listener_from_env,
    parse_listen_env, take_fds, take_listen_env, ListenEnv, LISTEN_FDS_START,
};
pub use journal::{journal_priority, journal_stream_matches, stderr_is_journal};
pub use notify::{
    extend_timeout, monotonic_usec, notify, parse_notify_socket, ready, ready_with_status,
    reloading, reloading_state, status, status_line, stopping, watchdog_ping, Notifier,
};
pub use watchdog::{ping_period, watchdog_interval, watchdog_interval_from, Busy, Watchdog};
