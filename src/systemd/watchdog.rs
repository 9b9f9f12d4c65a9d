//! The systemd watchdog: `WATCHDOG_USEC`/`WATCHDOG_PID`, and [`Watchdog`], which turns progress
//! on the inference path into `WATCHDOG=1` pings.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::Notifier;

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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::os::unix::net::UnixDatagram;

    fn recv(sock: &UnixDatagram) -> String {
        let mut buf = [0u8; 4096];
        let n = sock.recv(&mut buf).unwrap();
        String::from_utf8(buf[..n].to_vec()).unwrap()
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
