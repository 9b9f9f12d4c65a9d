//! `sd_notify(3)` without libsystemd: datagrams to `$NOTIFY_SOCKET`.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

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
/// [`Watchdog`](super::Watchdog) thread keep working; our child processes, if any, would
/// inherit it.
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

/// `RELOADING=1`, `MONOTONIC_USEC` (now, on `CLOCK_MONOTONIC`) and `STATUS=msg` in one
/// datagram: a reload has begun. Follow it with [`ready_with_status`] when the reload ends,
/// whatever its outcome. systemd >= 253 requires `MONOTONIC_USEC` with `RELOADING=1` (for
/// `Type=notify-reload`, to tell this reload from an earlier one); older versions ignore it.
pub fn reloading(msg: &str) -> io::Result<bool> {
    notify(&reloading_state(monotonic_usec()?, msg))
}

/// The datagram of [`reloading`] for a reload that began at `usec` on `CLOCK_MONOTONIC`.
pub fn reloading_state(usec: u64, msg: &str) -> String {
    format!("RELOADING=1\nMONOTONIC_USEC={usec}\n{}", status_line(msg))
}

/// `CLOCK_MONOTONIC` now, in microseconds (what systemd's `MONOTONIC_USEC=` is measured on;
/// std's `Instant` reads the same clock but does not expose its value).
pub fn monotonic_usec() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec that outlives the call, and CLOCK_MONOTONIC is
    // a clock every Linux kernel has; clock_gettime writes only into `ts`.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1_000)
}

/// `STOPPING=1`: shutdown has begun.
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `WATCHDOG=1`: one keep-alive ping. Prefer [`Watchdog`](super::Watchdog), which only pings
/// while the workers make progress.
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
#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

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
    fn reloading_carries_the_monotonic_clock_and_a_status() {
        let before = std::time::Instant::now();
        let a = monotonic_usec().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        let b = monotonic_usec().unwrap();
        // the clock std's Instant reads: the same elapsed time, to a millisecond
        let elapsed = before.elapsed().as_micros() as u64;
        assert!(
            b > a && b - a <= elapsed + 1_000 && b - a + 1_000 >= 20_000,
            "{a} {b}"
        );
        assert_eq!(
            reloading_state(1_234_567, "reloading\nthe model"),
            "RELOADING=1\nMONOTONIC_USEC=1234567\nSTATUS=reloading the model"
        );
    }
}
