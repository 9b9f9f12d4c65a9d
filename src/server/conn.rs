//! One connection: accept (or refuse), its reader (bounded lines, routing, queueing) and its
//! writer (answers back in request order, with a write timeout).

use std::collections::BTreeMap;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::net::Shutdown as NetShutdown;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::queue::{Held, Refused};
use super::Server;
use crate::dispatch::{self, Routed};
use crate::protocol::{self, ErrorCode, ErrorReply, Limits, Request};
use crate::tasks::Response;

/// One queued inference.
pub(super) struct Job {
    pub(super) seq: u64,
    pub(super) request: Request,
    pub(super) conn: Arc<Conn>,
    pub(super) reply: Sender<(u64, Reply)>,
    /// When the request was read.
    pub(super) queued: Instant,
}

/// What a connection's writer gets for one request line, in any order (it writes them in
/// request order).
pub(super) enum Reply {
    /// A finished line (commands, errors).
    Line(String),
    /// A typed answer, serialized while it is written: held as numbers and offsets it is a
    /// fraction of its JSON (the budget counts it so).
    Answer(Box<Answered>),
}

/// A request and its typed answer, until the writer has written it; dropping it gives the
/// request's reservation back to the queue.
pub(super) struct Answered {
    pub(super) request: Request,
    pub(super) response: Response,
    pub(super) _held: Held<Job>,
}

/// State shared by a connection's reader, writer and the workers holding its jobs.
pub(super) struct Conn {
    /// Lines read (or being read) and not yet answered.
    pub(super) in_flight: Mutex<usize>,
    pub(super) slot_freed: Condvar,
    pub(super) closed: AtomicBool,
    /// Milliseconds since `epoch` of the last byte received or answer written.
    pub(super) last_activity: AtomicU64,
    pub(super) epoch: Instant,
}

impl Conn {
    pub(super) fn touch(&self) {
        self.last_activity
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let last = self.last_activity.load(Ordering::Relaxed);
        Duration::from_millis((self.epoch.elapsed().as_millis() as u64).saturating_sub(last))
    }
    pub(super) fn release(&self) {
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        self.slot_freed.notify_all();
    }
    pub(super) fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        self.slot_freed.notify_all();
    }
}

/// Decrements the open-connection count when the connection's last thread ends.
pub(super) struct ConnCount(Arc<Server>);

impl Drop for ConnCount {
    fn drop(&mut self) {
        self.0.stats.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

fn reject(server: &Server, mut stream: UnixStream, message: &str) {
    server.stats.rejected.fetch_add(1, Ordering::Relaxed);
    server.stats.error(ErrorCode::Busy);
    let line = ErrorReply::new(None, ErrorCode::Busy, message).to_line() + "\n";
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = stream.write_all(line.as_bytes());
    let _ = stream.shutdown(NetShutdown::Both);
}

pub(super) fn accept(server: &Arc<Server>, stream: UnixStream, conns: &mut Vec<JoinHandle<()>>) {
    let c = &server.config;
    // Accepted sockets do not inherit O_NONBLOCK on Linux; make sure anyway.
    if stream.set_nonblocking(false).is_err() {
        return;
    }
    let open = server.stats.connections.load(Ordering::SeqCst);
    if open >= c.max_connections {
        return reject(
            server,
            stream,
            &format!("too many connections (limit {})", c.max_connections),
        );
    }
    let (Ok(read_half), Ok(write_half)) = (stream.try_clone(), stream.try_clone()) else {
        return reject(server, stream, "cannot set up the connection");
    };
    let _ = read_half.set_read_timeout(Some(c.poll_interval));
    let _ = write_half.set_write_timeout(Some(c.write_timeout));
    server.stats.connections.fetch_add(1, Ordering::SeqCst);
    server
        .stats
        .connections_total
        .fetch_add(1, Ordering::Relaxed);
    let count = Arc::new(ConnCount(server.clone()));
    let conn = Arc::new(Conn {
        in_flight: Mutex::new(0),
        slot_freed: Condvar::new(),
        closed: AtomicBool::new(false),
        last_activity: AtomicU64::new(0),
        epoch: Instant::now(),
    });
    let (reply, replies) = mpsc::channel::<(u64, Reply)>();
    let writer = {
        let (server, conn, count) = (server.clone(), conn.clone(), count.clone());
        std::thread::Builder::new()
            .name("conn-writer".into())
            .stack_size(c.writer_stack)
            .spawn(move || {
                write_loop(&server, &conn, write_half, replies);
                drop(count);
            })
    };
    let writer = match writer {
        Ok(h) => h,
        Err(e) => {
            log::warn!("cannot start a connection thread: {e}");
            drop(count);
            return reject(server, stream, "cannot start a connection thread");
        }
    };
    let reader = {
        let (server, conn) = (server.clone(), conn.clone());
        std::thread::Builder::new()
            .name("conn-reader".into())
            .stack_size(c.reader_stack)
            .spawn(move || {
                read_loop(&server, &conn, read_half, reply);
                drop(count);
            })
    };
    match reader {
        Ok(h) => conns.push(h),
        Err(e) => {
            // The writer ends on its own: its channel's sender was dropped with the closure.
            log::warn!("cannot start a connection thread: {e}");
            conn.close();
            let _ = stream.shutdown(NetShutdown::Both);
        }
    }
    conns.push(writer);
}

/// The socket's read side, seen by `read_bounded_line`: read timeouts are polling ticks that
/// check shutdown, a dead writer and the idle timeout, and are never surfaced mid-line.
struct PollingReader<'a> {
    stream: UnixStream,
    server: &'a Server,
    conn: &'a Conn,
}

impl Read for PollingReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // A client that never pauses is cut off when the drain is over.
            let c = &self.server.config;
            if self
                .server
                .draining_for()
                .is_some_and(|d| d >= c.drain_limit)
            {
                return Err(io::Error::other("shutting down"));
            }
            match self.stream.read(buf) {
                Ok(n) => {
                    self.conn.touch();
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(e) => return Err(e),
            }
            if self.conn.closed.load(Ordering::SeqCst) {
                return Err(io::Error::other("connection closed"));
            }
            // The reader holds one in-flight slot itself while it reads.
            let waiting_for_answers = *self
                .conn
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                > 1;
            if waiting_for_answers {
                continue;
            }
            let idle = self.conn.idle_for();
            // On shutdown a connection is read on until it is quiet since the signal: a client
            // that connected just before it (accepted, its line not yet here) is still answered.
            if self
                .server
                .draining_for()
                .is_some_and(|d| idle.min(d) >= c.drain_quiet)
            {
                return Err(io::Error::other("shutting down"));
            }
            if idle >= c.idle_timeout {
                self.server
                    .stats
                    .idle_closed
                    .fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::new(io::ErrorKind::TimedOut, "idle"));
            }
        }
    }
}

fn read_loop(server: &Server, conn: &Arc<Conn>, stream: UnixStream, reply: Sender<(u64, Reply)>) {
    let c = &server.config;
    // A reload keeps the engine options, `max_chars` among them.
    let limits = Limits::new(server.current().engine.options.max_chars);
    conn.touch();
    let shutdown_handle = stream.try_clone().ok();
    let mut reader = BufReader::with_capacity(
        c.read_buffer,
        PollingReader {
            stream,
            server,
            conn,
        },
    );
    let mut buf = Vec::new();
    let mut seq = 0u64;
    loop {
        // Take an in-flight slot before reading: at the cap, stop reading from this client.
        {
            let mut n = conn.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            while *n >= c.max_in_flight && !conn.closed.load(Ordering::SeqCst) {
                n = conn
                    .slot_freed
                    .wait_timeout(n, c.poll_interval)
                    .unwrap_or_else(|e| e.into_inner())
                    .0;
            }
            *n += 1;
        }
        // Not on shutdown alone: what the client sent before it goes quiet is still read (see
        // `PollingReader`).
        if conn.closed.load(Ordering::SeqCst) {
            conn.release();
            break;
        }
        let read = match protocol::read_bounded_line(&mut reader, &mut buf, c.max_line_bytes) {
            Ok(Some(read)) => read,
            Ok(None) | Err(_) => {
                conn.release();
                break;
            }
        };
        server.stats.requests.fetch_add(1, Ordering::Relaxed);
        let routed = dispatch::route(read, c.max_line_bytes, || {
            server.parse_gate.parse(&mut buf, &limits)
        });
        let immediate = match routed {
            Routed::Error(reply) => Some(reply),
            Routed::Reply(line) => {
                if reply.send((seq, Reply::Line(line))).is_err() {
                    server.stats.unanswered.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            Routed::Stats(id) => {
                let line = protocol::response_line(id.as_ref(), server.stats_body());
                if reply.send((seq, Reply::Line(line))).is_err() {
                    server.stats.unanswered.fetch_add(1, Ordering::Relaxed);
                }
                None
            }
            Routed::Infer(request) => {
                let queued = Instant::now();
                let bytes = server.current().budget.request_bytes(&request);
                let job = Job {
                    seq,
                    request,
                    conn: conn.clone(),
                    reply: reply.clone(),
                    queued,
                };
                // Backpressure: with the queue full this reader waits for a slot (first come,
                // first served across connections) and reads nothing meanwhile.
                let closed = || conn.closed.load(Ordering::SeqCst);
                match server.queue.push(
                    job,
                    bytes,
                    queued + c.queue_timeout,
                    c.poll_interval,
                    closed,
                ) {
                    Ok(()) => None,
                    Err((job, why)) => {
                        let why = match why {
                            Refused::Timeout => format!(
                                "no room in the queue (--max-queue, --max-held-mib) for {} s (--queue-timeout)",
                                c.queue_timeout.as_secs_f64()
                            ),
                            Refused::Cancelled => "the connection closed".to_string(),
                            Refused::Closed => "the server is shutting down".to_string(),
                        };
                        Some(ErrorReply::new(job.request.id, ErrorCode::Busy, why))
                    }
                }
            }
        };
        if let Some(error) = immediate {
            server.stats.error(error.code);
            if reply.send((seq, Reply::Line(error.to_line()))).is_err() {
                server.stats.unanswered.fetch_add(1, Ordering::Relaxed);
            }
        }
        seq += 1;
        // A long line leaves a big buffer behind; keep idle connections small.
        if buf.capacity() > 64 * 1024 {
            buf = Vec::new();
        }
    }
    // No more lines: the writer ends once the queued answers are written. Unblock a client
    // still sending by closing our read side.
    if let Some(s) = shutdown_handle {
        let _ = s.shutdown(NetShutdown::Read);
    }
}

/// Writes one reply line; a typed answer is serialized straight into the (buffered) socket.
fn write_reply(out: &mut BufWriter<&UnixStream>, reply: Reply) -> io::Result<()> {
    match reply {
        Reply::Line(line) => out.write_all(line.as_bytes())?,
        Reply::Answer(answered) => {
            let (request, response) = (&answered.request, &answered.response);
            protocol::write_answer(&mut *out, request.id.as_ref(), &request.text, response)?
        }
    }
    out.write_all(b"\n")?;
    out.flush()
}

fn write_loop(server: &Server, conn: &Conn, stream: UnixStream, replies: Receiver<(u64, Reply)>) {
    let mut next = 0u64;
    let mut pending: BTreeMap<u64, Reply> = BTreeMap::new();
    let mut out = BufWriter::with_capacity(server.config.write_buffer, &stream);
    'outer: while let Ok((seq, reply)) = replies.recv() {
        pending.insert(seq, reply);
        while let Some(reply) = pending.remove(&next) {
            if let Err(e) = write_reply(&mut out, reply) {
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) {
                    log::warn!(
                        "dropping a client that took no answer for {:?}",
                        server.config.write_timeout
                    );
                    server.stats.dropped_slow.fetch_add(1, Ordering::Relaxed);
                }
                server.stats.unanswered.fetch_add(1, Ordering::Relaxed);
                break 'outer;
            }
            server.stats.answered.fetch_add(1, Ordering::Relaxed);
            conn.touch();
            next += 1;
            conn.release();
        }
    }
    // what is still buffered for a client that stopped reading is dropped, not flushed
    let _ = out.into_parts();
    conn.close();
    let _ = stream.shutdown(NetShutdown::Both);
    // Whatever is still owed cannot be delivered; count it (jobs of a closed connection are
    // skipped by the workers, and their senders end this loop).
    server
        .stats
        .unanswered
        .fetch_add(pending.len() as u64, Ordering::Relaxed);
    drop(pending);
    while replies.recv().is_ok() {
        server.stats.unanswered.fetch_add(1, Ordering::Relaxed);
    }
}
