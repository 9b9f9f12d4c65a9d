//! systemd integration without libsystemd: `sd_notify`, socket activation and the watchdog.
//!
//! Everything here is plain `std` (no `libc`, no extra crates) and a no-op when the process was
//! not started by systemd, so `serve` can call it unconditionally.
//!
//! - [`notify`] and the helpers [`ready`], [`status`], [`stopping`], [`watchdog_ping`],
//!   [`extend_timeout`] send `sd_notify(3)` datagrams to `$NOTIFY_SOCKET` (a path, or an abstract
//!   address written with a leading `@`). [`Notifier`] is the same thing bound to an explicit
//!   address, for code and tests that must not read the environment.
//! - [`listen_fds`], [`listen_fds_with_names`] and [`listener_from_env`] implement
//!   `sd_listen_fds(3)`: `LISTEN_PID`, `LISTEN_FDS` (fds start at 3), `LISTEN_FDNAMES`.
//! - [`stderr_is_journal`] and [`journal_priority`]: log lines for journald (no timestamps,
//!   `<N>` priority prefixes) when stderr is the journal.
//! - [`watchdog_interval`] reads `WATCHDOG_USEC`/`WATCHDOG_PID`; [`Watchdog`] turns progress made
//!   on the inference path into `WATCHDOG=1` pings, and stops pinging when a worker is wedged.
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
//! // On SIGTERM:
//! systemd::stopping()?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram, UnixListener};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// First file descriptor passed by socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

// ---------------------------------------------------------------------------------------------
// sd_notify
// ---------------------------------------------------------------------------------------------

/// A connection-less sender of `sd_notify` messages to one notification socket.
#[derive(Debug)]
pub struct Notifier {
    addr: SocketAddr,
    sock: UnixDatagram,
}

impl Notifier {
    /// Notifier for an explicit `NOTIFY_SOCKET` value: an absolute path (`/run/...`) or an
    /// abstract address (`@name`). Other forms (e.g. `vsock:`) are `Unsupported`.
    pub fn new(notify_socket: &str) -> io::Result<Notifier> {
        let addr = parse_notify_socket(notify_socket)?;
        let sock = UnixDatagram::unbound()?;
        // Never block the caller (or the watchdog thread) on a full receive queue: a failed
        // notification is reported as `WouldBlock` instead.
        sock.set_nonblocking(true)?;
        Ok(Notifier { addr, sock })
    }

    /// Notifier for `$NOTIFY_SOCKET`, or `None` when it is unset or empty (not under systemd,
    /// or the unit is not `Type=notify`).
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            None => Ok(None),
            Some(v) if v.is_empty() => Ok(None),
            Some(v) => {
                let v = v.into_string().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "NOTIFY_SOCKET is not UTF-8")
                })?;
                Notifier::new(&v).map(Some)
            }
        }
    }

    /// Send one state string, e.g. `"READY=1"` or `"STATUS=loading\nREADY=1"`.
    pub fn send(&self, state: &str) -> io::Result<()> {
        let n = self.sock.send_to_addr(state.as_bytes(), &self.addr)?;
        if n != state.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                "short sd_notify datagram",
            ));
        }
        Ok(())
    }
}

/// Parse a `NOTIFY_SOCKET` value into a Unix socket address (path or abstract `@name`).
pub fn parse_notify_socket(value: &str) -> io::Result<SocketAddr> {
    if let Some(name) = value.strip_prefix('@') {
        SocketAddr::from_abstract_name(name.as_bytes())
    } else if value.starts_with('/') {
        SocketAddr::from_pathname(value)
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("unsupported NOTIFY_SOCKET address {value:?} (want /path or @abstract)"),
        ))
    }
}

/// `sd_notify(0, state)`: send `state` to `$NOTIFY_SOCKET`. Returns `Ok(false)` (and does
/// nothing) when `NOTIFY_SOCKET` is unset, `Ok(true)` when the datagram was sent.
///
/// The environment variable is kept (unlike `sd_notify(1, ...)`) so later calls and the
/// [`Watchdog`] thread keep working; our child processes, if any, would inherit it.
pub fn notify(state: &str) -> io::Result<bool> {
    match Notifier::from_env()? {
        None => Ok(false),
        Some(n) => n.send(state).map(|()| true),
    }
}

/// `READY=1`: the model is loaded and the self-check passed.
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// `STATUS=msg` (shown by `systemctl status`). Newlines in `msg` become spaces, since the
/// protocol is one `KEY=value` per line.
pub fn status(msg: &str) -> io::Result<bool> {
    notify(&status_line(msg))
}

/// `READY=1` and `STATUS=msg` in one datagram, so no other notification (a watchdog ping
/// from another thread) can land between them: a listener sees the status with readiness.
pub fn ready_with_status(msg: &str) -> io::Result<bool> {
    notify(&format!("READY=1\n{}", status_line(msg)))
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `WATCHDOG=1`: one keep-alive ping. Prefer [`Watchdog`], which only pings while the
/// workers make progress.
pub fn watchdog_ping() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// `EXTEND_TIMEOUT_USEC=...`: ask for more start-up (or stop) time, e.g. during a slow model
/// load on a small board. Supported by systemd >= 236.
pub fn extend_timeout(by: Duration) -> io::Result<bool> {
    notify(&format!("EXTEND_TIMEOUT_USEC={}", by.as_micros()))
}

/// The `STATUS=` line for `msg`, with line breaks flattened.
pub fn status_line(msg: &str) -> String {
    let flat: String = msg
        .chars()
        .map(|c| if c == '\n' || c == '\r' { ' ' } else { c })
        .collect();
    format!("STATUS={flat}")
}

// ---------------------------------------------------------------------------------------------
// Journal
// ---------------------------------------------------------------------------------------------

/// Whether stderr is connected to the journal (systemd sets `JOURNAL_STREAM=DEV:INODE` to the
/// device and inode of the stream it gave us; see `systemd.exec(5)`). When true, log lines
/// should carry no timestamp (journald adds one) and may start with a [`journal_priority`]
/// prefix such as `<4>`, which journald turns into the entry's priority.
pub fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    journal_stream_matches(&value.to_string_lossy(), meta.dev(), meta.ino())
}

/// Pure form of [`stderr_is_journal`]: does `JOURNAL_STREAM` (`"DEV:INODE"`, decimal) name
/// the stream with device `dev` and inode `ino`?
pub fn journal_stream_matches(journal_stream: &str, dev: u64, ino: u64) -> bool {
    let Some((d, i)) = journal_stream.trim().split_once(':') else {
        return false;
    };
    d.parse::<u64>().ok() == Some(dev) && i.parse::<u64>().ok() == Some(ino)
}

/// The syslog priority journald reads from a `<N>` line prefix, for a `log` level:
/// error 3, warn 4, info 6, debug and trace 7.
pub fn journal_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

// ---------------------------------------------------------------------------------------------
// Watchdog
// ---------------------------------------------------------------------------------------------

/// The watchdog interval systemd expects (`WatchdogSec=`), from `WATCHDOG_USEC`, when it is
/// meant for this process (`WATCHDOG_PID` unset or equal to our pid). Ping at half of it
/// ([`ping_period`]).
pub fn watchdog_interval() -> Option<Duration> {
    let usec = std::env::var("WATCHDOG_USEC").ok();
    let pid = std::env::var("WATCHDOG_PID").ok();
    watchdog_interval_from(usec.as_deref(), pid.as_deref(), std::process::id())
}

/// Pure form of [`watchdog_interval`]: `usec` and `pid` are the raw variable values.
/// Invalid or zero values mean "no watchdog", like `sd_watchdog_enabled(3)`.
pub fn watchdog_interval_from(
    usec: Option<&str>,
    pid: Option<&str>,
    our_pid: u32,
) -> Option<Duration> {
    let usec: u64 = usec?.trim().parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Some(pid) = pid {
        let pid: u32 = pid.trim().parse().ok()?;
        if pid != our_pid {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// The recommended ping period for a watchdog `interval`: half of it (as `sd_watchdog_enabled(3)`
/// advises), and never zero.
pub fn ping_period(interval: Duration) -> Duration {
    (interval / 2).max(Duration::from_millis(1))
}

/// Progress-gated watchdog.
///
/// # Design
///
/// A timer thread cannot tell on its own whether the inference workers are alive, and a worker
/// thread cannot be trusted to send pings itself on a fixed period (a request can legitimately
/// take longer than the period, and an idle worker sends nothing). So the two are split:
///
/// - The hot path only touches atomics: [`Watchdog::ping`] stores "now" (milliseconds since the
///   watchdog was created) into an `AtomicU64` with `Relaxed` ordering: one `Instant::now()`
///   (a vDSO call) and one store, cheap enough to call after every window or batch.
///   [`Watchdog::busy`] returns a guard that counts the worker as busy (an `AtomicUsize`) until
///   it is dropped; entering and leaving also count as progress.
/// - A timer thread wakes every [`ping_period`] (half the systemd interval) and sends
///   `WATCHDOG=1` only while the service is healthy: no worker is busy (idle is fine), or the
///   last progress is more recent than the stall limit (by default the full watchdog interval).
/// - When a worker is busy and has made no progress for longer than the stall limit (a wedged
///   kernel, a deadlock, an endless loop), the timer withholds the pings (logging once);
///   systemd then sees no `WATCHDOG=1` for `WatchdogSec=`, kills the service with SIGABRT and,
///   with `Restart=on-failure`, starts a fresh one. If progress resumes before that, pings
///   resume too.
///
/// systemd arms the watchdog once start-up is complete (after `READY=1`); pings sent earlier
/// are harmless, so the watchdog may be created at any point before `READY=1`. With no
/// `WATCHDOG_USEC` it is disabled and every method is still cheap and safe to call. The handle
/// is `Clone` (share it with the workers); the timer thread stops when the last handle is
/// dropped (it holds only a `Weak` reference) or on [`Watchdog::stop`].
#[derive(Clone, Debug)]
pub struct Watchdog {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    epoch: Instant,
    /// Milliseconds since `epoch` of the last progress.
    last_progress_ms: AtomicU64,
    busy: AtomicUsize,
    stop: AtomicBool,
    /// Set while pings are withheld (so the stall is logged once, and tests can observe it).
    withholding: AtomicBool,
    pings_sent: AtomicU64,
    stall_limit: Duration,
    enabled: bool,
}

impl Shared {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    fn healthy(&self) -> bool {
        if self.busy.load(Ordering::Acquire) == 0 {
            return true;
        }
        let last = self.last_progress_ms.load(Ordering::Relaxed);
        let since = self.now_ms().saturating_sub(last);
        Duration::from_millis(since) <= self.stall_limit
    }
}

/// Guard returned by [`Watchdog::busy`]: the worker counts as busy until it is dropped.
#[must_use = "the worker counts as busy only while the guard lives"]
#[derive(Debug)]
pub struct Busy<'a> {
    wd: &'a Watchdog,
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.wd.ping();
        self.wd.shared.busy.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Watchdog {
    /// Watchdog from the environment: enabled when `WATCHDOG_USEC` is set for us and
    /// `NOTIFY_SOCKET` is set; otherwise a disabled (no-op) watchdog. The stall limit is the
    /// watchdog interval.
    pub fn from_env() -> Watchdog {
        let notifier = match Notifier::from_env() {
            Ok(n) => n,
            Err(e) => {
                log::warn!("systemd watchdog disabled: {e}");
                None
            }
        };
        match (watchdog_interval(), notifier) {
            (Some(interval), Some(notifier)) => Watchdog::start(interval, interval, notifier),
            _ => Watchdog::disabled(),
        }
    }

    /// A watchdog that never pings (not under systemd, or no `WatchdogSec=`).
    pub fn disabled() -> Watchdog {
        Watchdog {
            shared: Arc::new(Shared::new(Duration::MAX, false)),
        }
    }

    /// Start the timer thread explicitly: `interval` is systemd's watchdog interval (pings go out
    /// every `interval / 2`), `stall_limit` how long a busy worker may go without progress
    /// before pings are withheld, `notifier` where `WATCHDOG=1` goes.
    pub fn start(interval: Duration, stall_limit: Duration, notifier: Notifier) -> Watchdog {
        let shared = Arc::new(Shared::new(stall_limit, true));
        let weak: Weak<Shared> = Arc::downgrade(&shared);
        let period = ping_period(interval);
        let spawned = std::thread::Builder::new()
            .name("sd-watchdog".into())
            .spawn(move || timer_loop(weak, period, notifier));
        if let Err(e) = spawned {
            log::warn!("systemd watchdog thread could not start: {e}");
        }
        Watchdog { shared }
    }

    /// Whether pings are sent at all.
    pub fn is_enabled(&self) -> bool {
        self.shared.enabled
    }

    /// Record progress (cheap: a clock read and a relaxed atomic store). Call it from the
    /// inference path, e.g. after each window or batch.
    #[inline]
    pub fn ping(&self) {
        self.shared
            .last_progress_ms
            .store(self.shared.now_ms(), Ordering::Relaxed);
    }

    /// Mark the calling worker busy until the guard is dropped (counts as progress on both ends).
    pub fn busy(&self) -> Busy<'_> {
        self.ping();
        self.shared.busy.fetch_add(1, Ordering::AcqRel);
        Busy { wd: self }
    }

    /// Whether the timer would send a ping now (no busy worker, or recent progress).
    pub fn is_healthy(&self) -> bool {
        self.shared.healthy()
    }

    /// Whether the timer is currently withholding pings because a busy worker stalled.
    pub fn is_withholding(&self) -> bool {
        self.shared.withholding.load(Ordering::Relaxed)
    }

    /// How many `WATCHDOG=1` datagrams the timer has sent.
    pub fn pings_sent(&self) -> u64 {
        self.shared.pings_sent.load(Ordering::Relaxed)
    }

    /// Stop the timer thread (it exits at its next tick). Dropping every handle does the same.
    pub fn stop(&self) {
        self.shared.stop.store(true, Ordering::Release);
    }
}

impl Shared {
    fn new(stall_limit: Duration, enabled: bool) -> Shared {
        Shared {
            epoch: Instant::now(),
            last_progress_ms: AtomicU64::new(0),
            busy: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            withholding: AtomicBool::new(false),
            pings_sent: AtomicU64::new(0),
            stall_limit,
            enabled,
        }
    }
}

fn timer_loop(weak: Weak<Shared>, period: Duration, notifier: Notifier) {
    loop {
        {
            let Some(shared) = weak.upgrade() else { return };
            if shared.stop.load(Ordering::Acquire) {
                return;
            }
            if shared.healthy() {
                if shared.withholding.swap(false, Ordering::Relaxed) {
                    log::warn!("watchdog: worker progress resumed, pinging systemd again");
                }
                match notifier.send("WATCHDOG=1") {
                    Ok(()) => {
                        shared.pings_sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => log::warn!("watchdog: sd_notify failed: {e}"),
                }
            } else if !shared.withholding.swap(true, Ordering::Relaxed) {
                let since = shared
                    .now_ms()
                    .saturating_sub(shared.last_progress_ms.load(Ordering::Relaxed));
                log::error!(
                    "watchdog: a busy worker made no progress for {since} ms (limit {} ms); \
                     withholding WATCHDOG=1 so systemd restarts the service",
                    shared.stall_limit.as_millis()
                );
            }
        } // drop the strong reference before sleeping
        std::thread::sleep(period);
    }
}

// ---------------------------------------------------------------------------------------------
// Socket activation
// ---------------------------------------------------------------------------------------------

/// What `LISTEN_PID`/`LISTEN_FDS`/`LISTEN_FDNAMES` say, once validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListenEnv {
    /// Number of passed fds, at `LISTEN_FDS_START..LISTEN_FDS_START + count`.
    pub count: usize,
    /// One name per fd (`"unknown"` when `LISTEN_FDNAMES` is unset, as in `sd_listen_fds_with_names(3)`).
    pub names: Vec<String>,
}

/// Pure parse of the socket-activation variables (raw values, `None` when unset).
///
/// `Ok(None)` when nothing was passed to us: `LISTEN_PID` or `LISTEN_FDS` unset, or `LISTEN_PID`
/// names another process (the variables were inherited from a parent). An `Err` for malformed
/// values or a `LISTEN_FDNAMES` whose count does not match.
pub fn parse_listen_env(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    our_pid: u32,
) -> io::Result<Option<ListenEnv>> {
    let invalid = |what: String| io::Error::new(io::ErrorKind::InvalidInput, what);
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    let pid: u32 = pid
        .trim()
        .parse()
        .map_err(|_| invalid(format!("LISTEN_PID={pid:?} is not a pid")))?;
    if pid != our_pid {
        return Ok(None);
    }
    let count: usize = fds
        .trim()
        .parse()
        .map_err(|_| invalid(format!("LISTEN_FDS={fds:?} is not a count")))?;
    // RawFd is i32: keep start + count representable.
    if count > (RawFd::MAX - LISTEN_FDS_START) as usize {
        return Err(invalid(format!("LISTEN_FDS={count} is out of range")));
    }
    let names = match listen_fdnames {
        None => vec!["unknown".to_string(); count],
        Some(s) => {
            let names: Vec<String> = if count == 0 && s.is_empty() {
                Vec::new()
            } else {
                s.split(':').map(str::to_string).collect()
            };
            if names.len() != count {
                return Err(invalid(format!(
                    "LISTEN_FDNAMES has {} names for LISTEN_FDS={count}",
                    names.len()
                )));
            }
            names
        }
    };
    Ok(Some(ListenEnv { count, names }))
}

/// Take ownership of `count` passed fds starting at `start`, with close-on-exec set.
///
/// systemd passes the fds without `FD_CLOEXEC`. Without `libc` there is no `fcntl(F_SETFD)`,
/// so each fd is duplicated with `OwnedFd::try_clone` (which is `fcntl(F_DUPFD_CLOEXEC)`) and
/// the original number is closed: the result is the same open socket, close-on-exec, usually
/// at a different fd number. Each fd is checked to be open (`/proc/self/fd/N`) first.
///
/// # Safety
/// The fds `start..start + count` must be open and owned by nobody else in this process (true
/// for fds passed by socket activation and not yet taken; take them once, at start-up).
pub unsafe fn take_fds(start: RawFd, count: usize) -> io::Result<Vec<OwnedFd>> {
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let fd = start + i as RawFd;
        if std::fs::symlink_metadata(format!("/proc/self/fd/{fd}")).is_err()
            && std::path::Path::new("/proc/self/fd").is_dir()
        {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("socket activation: fd {fd} is not open"),
            ));
        }
        // SAFETY: the caller guarantees `fd` is open and unowned.
        let passed = unsafe { OwnedFd::from_raw_fd(fd) };
        let cloexec = passed.try_clone()?; // F_DUPFD_CLOEXEC
        drop(passed); // close the inheritable original
        out.push(cloexec);
    }
    Ok(out)
}

/// Read and remove the socket-activation variables (`LISTEN_PID`, `LISTEN_FDS`,
/// `LISTEN_FDNAMES`) from the environment, returning what they say about us.
///
/// The variables are removed whether or not they were meant for us, so that child processes
/// do not inherit them (`sd_listen_fds(1)`). Call this at start-up while the process is still
/// single-threaded: `std::env::remove_var` is not thread-safe against concurrent `getenv`.
pub fn take_listen_env() -> io::Result<Option<ListenEnv>> {
    let get = |k: &str| std::env::var(k).ok();
    let (pid, fds, names) = (get("LISTEN_PID"), get("LISTEN_FDS"), get("LISTEN_FDNAMES"));
    for k in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(k);
    }
    parse_listen_env(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )
}

/// `sd_listen_fds_with_names(1, ...)`: the fds passed by socket activation with their names
/// (`FileDescriptorName=`, default the socket unit's name), close-on-exec, and the variables
/// removed from the environment. Empty when not socket-activated. Call once, early, while
/// single-threaded.
pub fn listen_fds_with_names() -> io::Result<Vec<(OwnedFd, String)>> {
    let Some(env) = take_listen_env()? else {
        return Ok(Vec::new());
    };
    // SAFETY: LISTEN_PID is our pid, so systemd (or an equivalent launcher) passed these fds to
    // this very process; the variables are now removed, so they cannot be taken twice.
    let fds = unsafe { take_fds(LISTEN_FDS_START, env.count)? };
    Ok(fds.into_iter().zip(env.names).collect())
}

/// `sd_listen_fds(1)`: the fds passed by socket activation (see [`listen_fds_with_names`]).
pub fn listen_fds() -> io::Result<Vec<OwnedFd>> {
    Ok(listen_fds_with_names()?
        .into_iter()
        .map(|(fd, _)| fd)
        .collect())
}

/// The first socket passed by socket activation as a `UnixListener`, or `None` when not
/// socket-activated. Further passed fds are closed (with a warning). Errors when the fd is not
/// a listening Unix stream socket (e.g. a unit with `ListenDatagram=` or `ListenStream=` on a
/// TCP port): see [`check_unix_stream_listener`].
///
/// The listener keeps the blocking mode systemd gave it (blocking, unless `NonBlocking=yes`).
/// When socket-activated, the socket file belongs to systemd: do not unlink it on shutdown.
pub fn listener_from_env() -> io::Result<Option<UnixListener>> {
    let mut fds = listen_fds_with_names()?;
    if fds.is_empty() {
        return Ok(None);
    }
    if fds.len() > 1 {
        log::warn!(
            "socket activation passed {} fds; using the first, closing the rest",
            fds.len()
        );
    }
    let (fd, name) = fds.swap_remove(0);
    drop(fds);
    let listener = check_unix_stream_listener(fd)
        .map_err(|e| io::Error::new(e.kind(), format!("socket activation fd {name:?}: {e}")))?;
    Ok(Some(listener))
}

/// Turn `fd` into a `UnixListener` after checking that it is a Unix-domain (`AF_UNIX`), stream,
/// listening socket.
///
/// Without `libc` there is no `getsockopt(SO_TYPE / SO_ACCEPTCONN)`; instead: the address family
/// comes from `getsockname` (std's `local_addr` rejects non-`AF_UNIX` sockets), the fd is checked
/// to be a socket with `stat`, and type and listening state come from `/proc/net/unix` (by socket
/// inode: `Type` 0001 = stream, `Flags` bit `0x10000` = `__SO_ACCEPTCON`). When `/proc` cannot be
/// read, the type/listening check is skipped (only the family is checked).
pub fn check_unix_stream_listener(fd: OwnedFd) -> io::Result<UnixListener> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let raw = fd.as_raw_fd();
    if let Ok(meta) = std::fs::metadata(format!("/proc/self/fd/{raw}")) {
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a socket"));
        }
        if let Some((sock_type, listening)) = proc_net_unix_lookup(meta.ino()) {
            if sock_type != 1 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("not a stream socket (type {sock_type}); use ListenStream="),
                ));
            }
            if !listening {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "socket is not listening",
                ));
            }
        }
    }
    let listener = UnixListener::from(fd);
    // getsockname: fails with "file descriptor did not correspond to a Unix socket" otherwise.
    listener.local_addr()?;
    Ok(listener)
}

/// `(type, listening)` of the Unix socket with inode `ino`, from `/proc/net/unix`; `None` when
/// the file cannot be read or has no such inode (e.g. another network namespace's socket).
fn proc_net_unix_lookup(ino: u64) -> Option<(u32, bool)> {
    let text = std::fs::read_to_string("/proc/net/unix").ok()?;
    parse_proc_net_unix(&text, ino)
}

/// Parse `/proc/net/unix` text: `Num RefCount Protocol Flags Type St Inode [Path]`.
fn parse_proc_net_unix(text: &str, ino: u64) -> Option<(u32, bool)> {
    const SO_ACCEPTCON: u32 = 0x10000;
    for line in text.lines().skip(1) {
        let cols: Vec<&str> = line.split_whitespace().collect();
        if cols.len() < 7 || cols[6].parse::<u64>().ok() != Some(ino) {
            continue;
        }
        let flags = u32::from_str_radix(cols[3], 16).ok()?;
        let sock_type = u32::from_str_radix(cols[4], 16).ok()?;
        return Some((sock_type, flags & SO_ACCEPTCON != 0));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::os::fd::{AsRawFd, IntoRawFd};

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
    }

    #[test]
    fn notify_socket_forms() {
        assert!(parse_notify_socket("/run/systemd/notify")
            .unwrap()
            .as_pathname()
            .is_some());
        let a = parse_notify_socket("@abc/def").unwrap();
        assert_eq!(a.as_abstract_name(), Some(&b"abc/def"[..]));
        assert_eq!(
            parse_notify_socket("vsock:2:1234").unwrap_err().kind(),
            io::ErrorKind::Unsupported
        );
        assert!(parse_notify_socket("relative/path").is_err());
    }

    #[test]
    fn notifier_path_and_abstract() {
        let dir = TempDir::new("sd-unit-notifier");
        let path = dir.join("notify.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        let n = Notifier::new(path.to_str().unwrap()).unwrap();
        n.send("READY=1").unwrap();
        n.send(&status_line("loading\nmodel")).unwrap();
        assert_eq!(recv(&rx), "READY=1");
        assert_eq!(recv(&rx), "STATUS=loading model");

        let name = format!("electra-edge-unit-{}", std::process::id());
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let rx2 = UnixDatagram::bind_addr(&addr).unwrap();
        Notifier::new(&format!("@{name}"))
            .unwrap()
            .send("STOPPING=1")
            .unwrap();
        assert_eq!(recv(&rx2), "STOPPING=1");
    }

    #[test]
    fn journal_helpers() {
        assert!(journal_stream_matches("8:12345", 8, 12345));
        assert!(!journal_stream_matches("8:12345", 8, 1));
        assert!(!journal_stream_matches("8:12345", 9, 12345));
        assert!(!journal_stream_matches("", 0, 0));
        assert!(!journal_stream_matches("x:y", 0, 0));
        assert_eq!(journal_priority(log::Level::Error), 3);
        assert_eq!(journal_priority(log::Level::Warn), 4);
        assert_eq!(journal_priority(log::Level::Info), 6);
        assert_eq!(journal_priority(log::Level::Trace), 7);
    }

    #[test]
    fn watchdog_env_parsing() {
        let me = 4242;
        assert_eq!(watchdog_interval_from(None, None, me), None);
        assert_eq!(watchdog_interval_from(Some("0"), None, me), None);
        assert_eq!(watchdog_interval_from(Some("x"), None, me), None);
        assert_eq!(
            watchdog_interval_from(Some("30000000"), None, me),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("4242"), me),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("1"), me),
            None
        );
        assert_eq!(
            watchdog_interval_from(Some("30000000"), Some("nope"), me),
            None
        );
        assert_eq!(
            ping_period(Duration::from_secs(30)),
            Duration::from_secs(15)
        );
        assert_eq!(
            ping_period(Duration::from_micros(1)),
            Duration::from_millis(1)
        );
    }

    #[test]
    fn listen_env_parsing() {
        let me = 77;
        assert_eq!(parse_listen_env(None, None, None, me).unwrap(), None);
        assert_eq!(parse_listen_env(Some("77"), None, None, me).unwrap(), None);
        assert_eq!(
            parse_listen_env(Some("78"), Some("1"), None, me).unwrap(),
            None
        );
        assert_eq!(
            parse_listen_env(Some("77"), Some("2"), None, me).unwrap(),
            Some(ListenEnv {
                count: 2,
                names: vec!["unknown".into(), "unknown".into()]
            })
        );
        assert_eq!(
            parse_listen_env(Some("77"), Some("2"), Some("a.socket:b"), me).unwrap(),
            Some(ListenEnv {
                count: 2,
                names: vec!["a.socket".into(), "b".into()]
            })
        );
        assert_eq!(
            parse_listen_env(Some("77"), Some("0"), Some(""), me)
                .unwrap()
                .unwrap()
                .count,
            0
        );
        assert!(parse_listen_env(Some("77"), Some("2"), Some("one"), me).is_err());
        assert!(parse_listen_env(Some("77"), Some("-1"), None, me).is_err());
        assert!(parse_listen_env(Some("x"), Some("1"), None, me).is_err());
        assert!(parse_listen_env(Some("77"), Some("99999999999"), None, me).is_err());
    }

    #[test]
    fn proc_net_unix_parsing() {
        let text = "Num       RefCount Protocol Flags    Type St Inode Path\n\
                    0000000000000000: 00000002 00000000 00010000 0001 01 12345 /run/x.sock\n\
                    0000000000000000: 00000002 00000000 00000000 0002 01 12346 /run/d.sock\n\
                    0000000000000000: 00000003 00000000 00000000 0001 03 12347\n";
        assert_eq!(parse_proc_net_unix(text, 12345), Some((1, true)));
        assert_eq!(parse_proc_net_unix(text, 12346), Some((2, false)));
        assert_eq!(parse_proc_net_unix(text, 12347), Some((1, false)));
        assert_eq!(parse_proc_net_unix(text, 1), None);
    }

    /// Take a real listening socket by number, as socket activation would, and use it.
    #[test]
    fn take_fds_real_listener() {
        use std::io::{Read, Write};
        let dir = TempDir::new("sd-unit-take");
        let path = dir.join("l.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let raw = listener.into_raw_fd(); // we give up ownership, as if it was passed to us
                                          // SAFETY: `raw` is an open fd that nothing else owns (into_raw_fd above).
        let fds = unsafe { take_fds(raw, 1) }.unwrap();
        assert_eq!(fds.len(), 1);
        assert_ne!(
            fds[0].as_raw_fd(),
            raw,
            "re-duplicated with F_DUPFD_CLOEXEC"
        );
        let flags =
            std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fds[0].as_raw_fd())).unwrap();
        let flags = flags
            .lines()
            .find_map(|l| l.strip_prefix("flags:"))
            .unwrap()
            .trim()
            .to_string();
        let flags = u32::from_str_radix(&flags, 8).unwrap();
        assert_ne!(flags & 0o2000000, 0, "O_CLOEXEC set");
        let l = check_unix_stream_listener(fds.into_iter().next().unwrap()).unwrap();
        let mut c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        c.write_all(b"hi").unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut buf = [0u8; 2];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
    }

    #[test]
    fn rejects_non_listening_and_datagram() {
        let dir = TempDir::new("sd-unit-reject");
        // A datagram socket.
        let d = UnixDatagram::bind(dir.join("d.sock")).unwrap();
        let err = check_unix_stream_listener(OwnedFd::from(d)).unwrap_err();
        assert!(err.to_string().contains("stream"), "{err}");
        // A connected (non-listening) stream socket.
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let err = check_unix_stream_listener(OwnedFd::from(a)).unwrap_err();
        assert!(err.to_string().contains("listening"), "{err}");
        // Not a socket at all.
        let f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(check_unix_stream_listener(OwnedFd::from(f)).is_err());
    }

    #[test]
    fn watchdog_pings_while_healthy_and_withholds_when_wedged() {
        let dir = TempDir::new("sd-unit-wd");
        let path = dir.join("n.sock");
        let rx = UnixDatagram::bind(&path).unwrap();
        rx.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let wd = Watchdog::start(
            Duration::from_millis(40), // pings every 20 ms
            Duration::from_millis(400),
            Notifier::new(path.to_str().unwrap()).unwrap(),
        );
        assert!(wd.is_enabled());
        let drain = |rx: &UnixDatagram| {
            rx.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 64];
            let mut n = 0;
            while rx.recv(&mut buf).is_ok() {
                n += 1;
            }
            rx.set_nonblocking(false).unwrap();
            n
        };
        // Idle: pings flow.
        assert_eq!(recv(&rx), "WATCHDOG=1");
        {
            let _busy = wd.busy();
            // Busy with progress: still pinging.
            drain(&rx);
            for _ in 0..5 {
                std::thread::sleep(Duration::from_millis(20));
                wd.ping();
            }
            assert!(wd.is_healthy());
            assert!(drain(&rx) >= 2, "pings while busy with progress");
            // Wedged: no progress past the stall limit -> pings stop.
            std::thread::sleep(Duration::from_millis(700));
            assert!(!wd.is_healthy());
            // Wait for the timer to notice (its next tick), then nothing more may arrive.
            let t0 = Instant::now();
            while !wd.is_withholding() {
                assert!(
                    t0.elapsed() < Duration::from_secs(5),
                    "timer never noticed the stall"
                );
                std::thread::sleep(Duration::from_millis(5));
            }
            drain(&rx); // what was sent before the stall
            let before = wd.pings_sent();
            std::thread::sleep(Duration::from_millis(120));
            assert_eq!(wd.pings_sent(), before, "no pings while wedged");
            assert_eq!(drain(&rx), 0, "no pings while wedged");
        }
        // Worker finished: healthy again, pings resume.
        assert!(wd.is_healthy());
        assert_eq!(recv(&rx), "WATCHDOG=1");
        let t0 = Instant::now();
        while wd.is_withholding() {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        wd.stop();
    }

    #[test]
    fn disabled_watchdog_is_a_noop() {
        let wd = Watchdog::disabled();
        assert!(!wd.is_enabled());
        let _b = wd.busy();
        wd.ping();
        assert_eq!(wd.pings_sent(), 0);
    }
}
