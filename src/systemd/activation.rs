//! Socket activation, `sd_listen_fds(3)` without libsystemd: `LISTEN_PID`, `LISTEN_FDS`
//! (fds start at 3), `LISTEN_FDNAMES`.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;

/// First file descriptor passed by socket activation (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

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
    use std::os::unix::net::UnixDatagram;

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
}
