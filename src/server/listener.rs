//! Waiting on the listening socket and judging `accept` errors. The listener may be systemd's
//! (socket activation): nothing here changes it for its other holders.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::time::{Duration, Instant};

/// Waits until `listener` has a connection to accept (`Ok(true)`) or `timeout` passes
/// (`Ok(false)`). A listener that can no longer accept (shut down, closed, not listening) is an
/// error.
pub(super) fn wait_readable(listener: &UnixListener, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: `pfd` is one valid, initialised pollfd that lives across the call, and the count
    // passed is 1; the fd is owned by `listener`, which outlives the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        return if e.kind() == io::ErrorKind::Interrupted {
            Ok(false)
        } else {
            Err(e)
        };
    }
    if n == 0 {
        return Ok(false);
    }
    if pfd.revents & libc::POLLNVAL != 0 {
        return Err(io::Error::other("the listening socket is not open"));
    }
    // A listening socket reports POLLHUP only once it was shut down (then also POLLIN, yet a
    // non-blocking accept says EAGAIN: looping on it would spin).
    if pfd.revents & (libc::POLLHUP | libc::POLLERR) != 0 {
        return Err(io::Error::other(
            "the listening socket was shut down (it no longer accepts connections)",
        ));
    }
    Ok(true)
}

/// How long `accept` may keep failing with resource errors (EMFILE, ENOBUFS, ...) before the
/// server gives up and exits non-zero.
const ACCEPT_FAILING_LIMIT: Duration = Duration::from_secs(10);

/// Tells passing `accept` errors from a listener that is broken for good.
#[derive(Default)]
pub(super) struct AcceptFailures {
    failing_since: Option<Instant>,
}

pub(super) enum AcceptVerdict {
    /// Nothing to take after all (another process was faster, a signal, a client gone).
    Retry,
    /// Out of a resource for now: wait a little and try again.
    BackOff(io::Error),
    /// The listener cannot accept (EINVAL after shutdown(2), EBADF, ENOTSOCK), or resources have
    /// been short for [`ACCEPT_FAILING_LIMIT`].
    Fatal(io::Error),
}

impl AcceptFailures {
    pub(super) fn judge(&mut self, e: io::Error) -> AcceptVerdict {
        use io::ErrorKind::*;
        if matches!(e.kind(), WouldBlock | Interrupted | ConnectionAborted) {
            return AcceptVerdict::Retry;
        }
        let passing = matches!(
            e.raw_os_error(),
            Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM | libc::EPROTO)
        );
        if !passing {
            return AcceptVerdict::Fatal(e);
        }
        let since = *self.failing_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= ACCEPT_FAILING_LIMIT {
            AcceptVerdict::Fatal(io::Error::new(
                e.kind(),
                format!("{e} (accept failing for {:?})", since.elapsed()),
            ))
        } else {
            AcceptVerdict::BackOff(e)
        }
    }
}
