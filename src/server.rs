//! `electra-edge serve`: the JSON-lines contract of `run` over a Unix socket, for many clients
//! at once, inside a memory budget stated up front.
//!
//! See `docs/serve.md` for the user-facing description (protocol, limits, budget formula with
//! measured numbers). In short:
//!
//! - **Threads.** One accept loop (the caller's thread); per connection a *reader* (reads
//!   bounded lines, parses, answers commands and errors at once, queues inference) and a
//!   *writer* (writes answers back in request order, with a write timeout); `workers` inference
//!   threads fed by one bounded queue (`sync_channel(max_queue)`, full -> `busy`). The engine is
//!   shared read-only (`Arc<Engine>`). Every thread's stack size is set explicitly.
//! - **Order.** Each line of a connection gets a sequence number; the writer keeps answers that
//!   finished early until their turn. At most `max_in_flight` lines per connection are between
//!   "read" and "written": the reader stops reading from a client whose answers are not being
//!   taken, so a client that never reads costs at most `max_in_flight` answers, and after
//!   `write_timeout` without progress its connection is dropped (and counted).
//! - **Limits.** Connections over `max_connections` get one `busy` line and are closed; lines
//!   longer than `max_line_bytes` are read to their end without being kept and get `too_large`
//!   (the connection stays usable); texts over the engine's `max_chars` get `too_large`; a
//!   connection without a request or pending answer for `idle_timeout` is closed.
//! - **Budget.** [`Budget::measure`] runs one full-size window through the model (the peak of a
//!   window), reads `VmHWM`, and adds the worst case every limit allows; see [`Budget`].
//! - **Lifecycle.** [`serve`] returns when its [`Shutdown`] is triggered (by SIGTERM/SIGINT in
//!   `main`): it stops accepting, stops reading new lines, answers every line already read,
//!   and returns a [`ServeReport`]. [`SocketFile`] binds the path (replacing a stale socket file,
//!   refusing a live one) and removes it when dropped.
//!
//! Micro-batching (`--batch`) is not implemented: the graphs are typed with batch 1 (tract
//! cannot type the exports' mask arithmetic with a symbolic batch), so there is nothing to
//! batch into.

use std::collections::BTreeMap;
use std::io::{self, BufReader, Read, Write};
use std::net::Shutdown as NetShutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Map, Value};

use crate::engine::Engine;
use crate::protocol::{
    self, response_line, BoundedLine, Command, ErrorCode, ErrorReply, Line, Request, RequestOptions,
};
use crate::systemd;

const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Engine>();
};

/// Default limits of `serve` (see `docs/serve.md`).
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;
pub const DEFAULT_MAX_QUEUE: usize = 64;
pub const DEFAULT_MAX_IN_FLIGHT: usize = 4;
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits and thread sizes of the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Inference threads.
    pub workers: usize,
    /// Open connections; one more gets a `busy` line and is closed.
    pub max_connections: usize,
    /// Longest request line kept in memory (newline excluded).
    pub max_line_bytes: usize,
    /// Inference requests waiting for a worker (all connections); more get `busy`.
    pub max_queue: usize,
    /// Lines of one connection read but not yet answered; the reader waits at the cap.
    pub max_in_flight: usize,
    /// A connection with nothing in flight and no byte received for this long is closed.
    pub idle_timeout: Duration,
    /// A client that takes no answer bytes for this long is dropped.
    pub write_timeout: Duration,
    /// How often blocked readers and the accept loop look at the shutdown flag.
    pub poll_interval: Duration,
    /// Stack sizes, set explicitly on every thread the server starts.
    pub reader_stack: usize,
    pub writer_stack: usize,
    pub worker_stack: usize,
    /// Bytes of the per-connection read buffer.
    pub read_buffer: usize,
}

impl ServerConfig {
    /// Safe defaults for an engine: the line limit follows its `max_chars` like `run`.
    pub fn for_engine(engine: &Engine) -> ServerConfig {
        ServerConfig {
            workers: 1,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_line_bytes: crate::run::max_line_bytes(engine.options.max_chars),
            max_queue: DEFAULT_MAX_QUEUE,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            poll_interval: Duration::from_millis(100),
            // serde_json stops at 128 levels of nesting: a reader needs little stack.
            reader_stack: 256 * 1024,
            writer_stack: 64 * 1024,
            // tract runs on the worker's stack.
            worker_stack: 4 * 1024 * 1024,
            read_buffer: 8 * 1024,
        }
    }

    fn check(&self) -> Result<()> {
        if self.workers == 0 || self.max_connections == 0 || self.max_queue == 0 {
            bail!("--workers, --max-connections and --max-queue must be at least 1");
        }
        if self.max_in_flight == 0 || self.max_line_bytes == 0 {
            bail!("--max-in-flight and --max-line-bytes must be at least 1");
        }
        Ok(())
    }
}

/// A shutdown trigger: `main` sets it from SIGTERM/SIGINT, tests call [`Shutdown::trigger`].
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown::default()
    }
    /// The flag itself, e.g. for `signal_hook::flag::register`.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
    pub fn trigger(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    pub fn is_triggered(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

// ---------------------------------------------------------------------------------------------
// Memory

/// `VmRSS` and `VmHWM` of this process in bytes (0 when `/proc` is not readable).
pub fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kb| kb * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// The fixed memory budget: what the process needs at most for the worst case the limits
/// allow. All values in bytes.
///
/// ```text
/// total = base
///       + (workers - 1) * window_peak
///       + workers * (worker_stack + request_state)
///       + max_connections * per_connection
///       + max_queue * (max_line_bytes + 128 * MAX_ID_BYTES)
///       + parsing
///       + slack
/// per_connection = reader_stack + writer_stack + read_buffer + max_line_bytes
///                + max_in_flight * max_response
/// request_state  = 4 * max_response        (tokens, window outputs, the answer's JSON tree)
/// parsing        = max_connections * FREE_PARSE_BYTES + 128 * max_line_bytes
/// slack          = (everything above) / 8  (allocator arenas and fragmentation)
/// ```
///
/// `parsing`: a JSON line becomes a tree of up to ~100 times its size while it is parsed (a
/// line of `[0],[0],...` does). Lines whose tree may exceed `FREE_PARSE_BYTES` (estimated from
/// their structure, see [`json_tree_bound`]) are parsed one at a time on one thread (one
/// allocator arena keeps their freed memory, not one per connection); a request's `id` is kept
/// only up to `MAX_ID_BYTES` serialized (it is echoed in every answer).
///
/// `base` is `VmHWM` after the model is loaded and one full-size window (the longest the model
/// runs) went through it with every answer option on: weights, plan, tokenizer and one window's
/// peak activations. `window_peak` is how much that one run raised the high-water mark (each
/// further worker can hold one). `max_response` is the longest answer line, scaled from that
/// run's answer to `max_chars` characters.
#[derive(Clone, Debug, PartialEq)]
pub struct Budget {
    pub model_file: u64,
    pub base: u64,
    pub window_peak: u64,
    pub max_response: u64,
    pub request_state: u64,
    pub per_connection: u64,
    pub connections: u64,
    pub workers: u64,
    pub queue: u64,
    pub parsing: u64,
    pub slack: u64,
    pub total: u64,
}

impl Budget {
    /// Runs one full window through `engine` and computes the budget for `config`.
    pub fn measure(engine: &Engine, config: &ServerConfig) -> Result<Budget> {
        let chars = engine.window_capacity();
        let text: String = "我爱北京天安门，今天天气很好。"
            .chars()
            .cycle()
            .take(chars)
            .collect();
        let options = RequestOptions {
            raw: Some(true),
            tokens: Some(true),
            ..RequestOptions::default()
        };
        let (rss_before, _) = rss();
        let body = engine
            .answer(&text, &options)
            .context("full-window warm-up failed")?;
        let answer_len = response_line(Some(&json!(u64::MAX)), body).len() as u64;
        let (_, hwm) = rss();
        let model_file = engine.model.path.metadata().map_or(0, |m| m.len());
        let max_chars = engine.options.max_chars as u64;
        let max_response = (answer_len * max_chars)
            .div_ceil(chars as u64)
            .max(answer_len)
            + 1024;
        Ok(Budget::compute(
            config,
            model_file,
            hwm,
            hwm.saturating_sub(rss_before),
            max_response,
        ))
    }

    /// The formula of [`Budget`], from measured `base`, `window_peak` and `max_response`.
    pub fn compute(
        config: &ServerConfig,
        model_file: u64,
        base: u64,
        window_peak: u64,
        max_response: u64,
    ) -> Budget {
        let c = config;
        let line = c.max_line_bytes as u64;
        let request_state = 4 * max_response;
        let per_connection = (c.reader_stack + c.writer_stack + c.read_buffer) as u64
            + line
            + c.max_in_flight as u64 * max_response;
        let connections = c.max_connections as u64 * per_connection;
        let workers = (c.workers as u64 - 1) * window_peak
            + c.workers as u64 * (c.worker_stack as u64 + request_state);
        let queue = c.max_queue as u64 * (line + JSON_AMPLIFICATION * MAX_ID_BYTES as u64);
        let parsing =
            c.max_connections as u64 * FREE_PARSE_BYTES as u64 + JSON_AMPLIFICATION * line;
        let slack = (base + workers + connections + queue + parsing) / 8;
        Budget {
            model_file,
            base,
            window_peak,
            max_response,
            request_state,
            per_connection,
            connections,
            workers,
            queue,
            slack,
            parsing,
            total: base + workers + connections + queue + parsing + slack,
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "total": self.total,
            "model_file": self.model_file,
            "base": self.base,
            "window_peak": self.window_peak,
            "max_response": self.max_response,
            "request_state": self.request_state,
            "per_connection": self.per_connection,
            "connections": self.connections,
            "workers": self.workers,
            "queue": self.queue,
            "parsing": self.parsing,
            "slack": self.slack,
        })
    }
}

impl std::fmt::Display for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        write!(
            f,
            "memory budget {:.1} MiB = base {:.1} (model file {:.1}, window peak {:.1}) + workers {:.1} \
             + connections {:.1} ({:.2} each, max answer {:.2}) + queue {:.1} + parsing {:.1} \
             + slack {:.1}",
            mib(self.total),
            mib(self.base),
            mib(self.model_file),
            mib(self.window_peak),
            mib(self.workers),
            mib(self.connections),
            mib(self.per_connection),
            mib(self.max_response),
            mib(self.queue),
            mib(self.parsing),
            mib(self.slack),
        )
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing within the budget

/// Lines whose parse tree may be larger than this are parsed one at a time.
pub const FREE_PARSE_BYTES: usize = 64 * 1024;
/// Longest `id`, serialized; a longer one gets `too_large` (it is echoed in every answer).
pub const MAX_ID_BYTES: usize = 1024;
/// Upper bound of a parsed JSON tree's size over its text's (measured: ~93x for `[0],[0],...`).
const JSON_AMPLIFICATION: u64 = 128;

/// An upper bound of the memory `protocol::parse_line` may use for `line`: plain text is copied
/// once; JSON costs its bytes (strings, with vector growth) plus 256 bytes per value.
pub fn json_tree_bound(line: &[u8]) -> usize {
    if line.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return line.len();
    }
    let (mut in_string, mut escaped, mut values) = (false, false, 0usize);
    for &b in line {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
        } else {
            match b {
                b'"' => in_string = true,
                b'{' | b'[' | b',' | b':' => values += 1,
                _ => {}
            }
        }
    }
    2 * line.len() + 256 * values
}

/// `protocol::parse_line`, plus the server's `id` limit.
fn parse_checked(line: &[u8], limits: &protocol::Limits) -> Result<Line, ErrorReply> {
    let parsed = protocol::parse_line(line, limits)?;
    let id = match &parsed {
        Line::Infer(r) => r.id.as_ref(),
        Line::Command { id, .. } => id.as_ref(),
    };
    let id_bytes = id.map_or(0, |id| id.to_string().len());
    if id_bytes > MAX_ID_BYTES {
        return Err(ErrorReply::new(
            None,
            ErrorCode::TooLarge,
            format!("id of {id_bytes} bytes is longer than {MAX_ID_BYTES}"),
        ));
    }
    Ok(parsed)
}

type Parsed = (Vec<u8>, Result<Line, ErrorReply>);

/// A line for the parser thread, and where to send it back with its result.
struct ParseJob {
    line: Vec<u8>,
    limits: protocol::Limits,
    reply: SyncSender<Parsed>,
}

/// Parses lines whose tree may be big, one at a time, on one thread: their transient trees
/// then live in one allocator arena instead of one per connection thread (glibc keeps freed
/// memory per arena, so 64 readers parsing in turn would still keep 64 trees' worth).
struct ParseGate(Mutex<SyncSender<ParseJob>>);

impl ParseGate {
    fn start() -> Result<ParseGate> {
        let (tx, rx) = mpsc::sync_channel::<ParseJob>(0);
        std::thread::Builder::new()
            .name("big-line-parser".into())
            .stack_size(256 * 1024)
            .spawn(move || {
                while let Ok(job) = rx.recv() {
                    let result =
                        catch_unwind(AssertUnwindSafe(|| parse_checked(&job.line, &job.limits)))
                            .unwrap_or_else(|_| {
                                Err(ErrorReply::new(
                                    None,
                                    ErrorCode::Internal,
                                    "parser panicked",
                                ))
                            });
                    let _ = job.reply.send((job.line, result));
                }
            })
            .context("cannot start the parser thread")?;
        Ok(ParseGate(Mutex::new(tx)))
    }
}

/// Parses `buf` (on the parser thread when its tree may be big; `buf` comes back).
fn parse(
    server: &Server,
    buf: &mut Vec<u8>,
    limits: &protocol::Limits,
) -> Result<Line, ErrorReply> {
    if json_tree_bound(buf) <= FREE_PARSE_BYTES {
        return parse_checked(buf, limits);
    }
    let gate = server
        .parse_gate
        .0
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    let (reply, result) = mpsc::sync_channel(1);
    let job = ParseJob {
        line: std::mem::take(buf),
        limits: *limits,
        reply,
    };
    if let Err(mpsc::SendError(job)) = gate.send(job) {
        *buf = job.line;
        return Err(ErrorReply::new(
            None,
            ErrorCode::Internal,
            "the parser thread is gone",
        ));
    }
    match result.recv() {
        Ok((line, parsed)) => {
            *buf = line;
            parsed
        }
        Err(_) => Err(ErrorReply::new(
            None,
            ErrorCode::Internal,
            "the parser thread is gone",
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Socket file

/// A bound socket path, removed when dropped (only if it is still the socket we bound).
#[derive(Debug)]
pub struct SocketFile {
    pub path: PathBuf,
    ino: u64,
}

impl SocketFile {
    /// Binds `path`: a stale socket file (nobody accepts on it) is replaced, a live one is
    /// refused, anything that is not a socket is left alone and refused. Then sets the file's
    /// mode and, when given, its group.
    pub fn bind(path: &Path, mode: u32, group: Option<u32>) -> Result<(UnixListener, SocketFile)> {
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            if !meta.file_type().is_socket() {
                bail!(
                    "{} exists and is not a socket; not replacing it",
                    path.display()
                );
            }
            match UnixStream::connect(path) {
                Ok(_) => bail!(
                    "another server is already listening on {} (stop it first, or choose another --socket)",
                    path.display()
                ),
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    log::warn!("removing stale socket file {}", path.display());
                    std::fs::remove_file(path)
                        .with_context(|| format!("cannot remove stale {}", path.display()))?;
                }
                Err(e) => {
                    return Err(anyhow!(e)
                        .context(format!("cannot check existing socket {}", path.display())))
                }
            }
        }
        let listener =
            UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
        let file = SocketFile {
            path: path.to_owned(),
            ino: std::fs::metadata(path).map_or(0, |m| m.ino()),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
            .with_context(|| format!("cannot chmod {:o} {}", mode, path.display()))?;
        if let Some(gid) = group {
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("cannot chgrp {gid} {}", path.display()))?;
        }
        Ok((listener, file))
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.file_type().is_socket() && m.ino() == self.ino);
        if ours {
            if let Err(e) = std::fs::remove_file(&self.path) {
                log::warn!("cannot remove {}: {e}", self.path.display());
            }
        }
    }
}

/// A group given by name (looked up in `/etc/group`) or number.
pub fn parse_group(group: &str) -> Result<u32> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("cannot read /etc/group")?;
    groups
        .lines()
        .find_map(|l| {
            let mut fields = l.split(':');
            (fields.next() == Some(group))
                .then(|| fields.nth(1).and_then(|g| g.parse().ok()))
                .flatten()
        })
        .ok_or_else(|| anyhow!("no group named {group:?} in /etc/group"))
}

/// A socket mode in octal, e.g. `660` or `0660`.
pub fn parse_mode(mode: &str) -> Result<u32> {
    let m = u32::from_str_radix(mode.trim_start_matches("0o"), 8)
        .map_err(|_| anyhow!("socket mode {mode:?} is not an octal number like 0660"))?;
    if m > 0o777 {
        bail!("socket mode {mode:?} is not within 0..=0777");
    }
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// Counters

const RING: usize = 4096;

/// Latencies (microseconds, queue wait included) of the last `RING` inferences.
struct Latencies {
    ring: Box<[u32]>,
    next: usize,
    len: usize,
}

impl Latencies {
    fn record(&mut self, us: u32) {
        self.ring[self.next] = us;
        self.next = (self.next + 1) % RING;
        self.len = (self.len + 1).min(RING);
    }

    fn percentiles(&self, ps: &[f64]) -> Vec<f64> {
        let mut v = self.ring[..self.len].to_vec();
        v.sort_unstable();
        ps.iter()
            .map(|p| {
                if v.is_empty() {
                    0.0
                } else {
                    let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
                    v[i] as f64 / 1000.0
                }
            })
            .collect()
    }
}

struct Stats {
    started: Instant,
    requests: AtomicU64,
    inferences: AtomicU64,
    answered: AtomicU64,
    /// Per error code, indexed by `code as usize` (the order of [`ErrorCode::ALL`]).
    errors: [AtomicU64; ErrorCode::ALL.len()],
    connections: AtomicUsize,
    connections_total: AtomicU64,
    rejected: AtomicU64,
    dropped_slow: AtomicU64,
    idle_closed: AtomicU64,
    unanswered: AtomicU64,
    queue_depth: AtomicUsize,
    latencies: Mutex<Latencies>,
}

impl Stats {
    fn new() -> Stats {
        Stats {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            inferences: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            errors: Default::default(),
            connections: AtomicUsize::new(0),
            connections_total: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            dropped_slow: AtomicU64::new(0),
            idle_closed: AtomicU64::new(0),
            unanswered: AtomicU64::new(0),
            queue_depth: AtomicUsize::new(0),
            latencies: Mutex::new(Latencies {
                ring: vec![0; RING].into_boxed_slice(),
                next: 0,
                len: 0,
            }),
        }
    }

    fn error(&self, code: ErrorCode) {
        self.errors[code as usize].fetch_add(1, Ordering::Relaxed);
    }

    fn errors_json(&self) -> Map<String, Value> {
        ErrorCode::ALL
            .iter()
            .zip(&self.errors)
            .map(|(c, n)| {
                (
                    c.as_str().to_string(),
                    Value::from(n.load(Ordering::Relaxed)),
                )
            })
            .collect()
    }
}

/// What happened during one [`serve`] call.
#[derive(Clone, Debug, PartialEq)]
pub struct ServeReport {
    pub connections: u64,
    pub rejected_connections: u64,
    /// Request lines read (each is owed exactly one answer line).
    pub requests: u64,
    /// Answer lines written completely.
    pub answered: u64,
    /// Lines read whose answer could not be delivered (the client went away or stopped
    /// reading).
    pub unanswered: u64,
    pub dropped_slow_clients: u64,
    pub idle_closed: u64,
    pub errors: Map<String, Value>,
    pub budget: Budget,
    pub peak_rss: u64,
}

// ---------------------------------------------------------------------------------------------
// Server

struct Server {
    engine: Arc<Engine>,
    config: ServerConfig,
    budget: Budget,
    stats: Stats,
    shutdown: Shutdown,
    /// Parses lines whose tree may be big (see [`json_tree_bound`]).
    parse_gate: ParseGate,
}

impl Server {
    fn stats_body(&self) -> Map<String, Value> {
        let s = &self.stats;
        let (rss, hwm) = rss();
        let p = s
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .percentiles(&[50.0, 90.0, 99.0]);
        let c = &self.config;
        let body = json!({
            "stats": {
                "uptime_s": s.started.elapsed().as_secs_f64(),
                "model": self.engine.dir.display().to_string(),
                "task": self.engine.task.name(),
                "requests": s.requests.load(Ordering::Relaxed),
                "inferences": s.inferences.load(Ordering::Relaxed),
                "answered": s.answered.load(Ordering::Relaxed),
                "unanswered": s.unanswered.load(Ordering::Relaxed),
                "errors": s.errors_json(),
                "latency_ms": {"p50": p[0], "p90": p[1], "p99": p[2]},
                "queue_depth": s.queue_depth.load(Ordering::Relaxed),
                "connections": s.connections.load(Ordering::Relaxed),
                "connections_total": s.connections_total.load(Ordering::Relaxed),
                "rejected_connections": s.rejected.load(Ordering::Relaxed),
                "dropped_slow_clients": s.dropped_slow.load(Ordering::Relaxed),
                "idle_closed": s.idle_closed.load(Ordering::Relaxed),
                "rss": rss,
                "rss_peak": hwm,
                "budget": self.budget.to_json(),
                "limits": {
                    "workers": c.workers,
                    "max_connections": c.max_connections,
                    "max_line_bytes": c.max_line_bytes,
                    "max_chars": self.engine.options.max_chars,
                    "max_queue": c.max_queue,
                    "max_in_flight": c.max_in_flight,
                    "idle_timeout_s": c.idle_timeout.as_secs_f64(),
                    "write_timeout_s": c.write_timeout.as_secs_f64(),
                },
            }
        });
        match body {
            Value::Object(map) => map,
            _ => unreachable!(),
        }
    }
}

/// One queued inference.
struct Job {
    seq: u64,
    request: Request,
    conn: Arc<Conn>,
    reply: Sender<(u64, String)>,
    queued: Instant,
}

/// State shared by a connection's reader, writer and the workers holding its jobs.
struct Conn {
    /// Lines read (or being read) and not yet answered.
    in_flight: Mutex<usize>,
    slot_freed: Condvar,
    closed: AtomicBool,
    /// Milliseconds since `epoch` of the last byte received or answer written.
    last_activity: AtomicU64,
    epoch: Instant,
}

impl Conn {
    fn touch(&self) {
        self.last_activity
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    fn idle_for(&self) -> Duration {
        let last = self.last_activity.load(Ordering::Relaxed);
        Duration::from_millis((self.epoch.elapsed().as_millis() as u64).saturating_sub(last))
    }
    fn release(&self) {
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        self.slot_freed.notify_all();
    }
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let _n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        self.slot_freed.notify_all();
    }
}

/// Decrements the open-connection count when the connection's last thread ends.
struct ConnCount(Arc<Server>);

impl Drop for ConnCount {
    fn drop(&mut self) {
        self.0.stats.connections.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves `listener` until `shutdown` is triggered, then answers what was read and returns.
///
/// Before accepting, runs [`Budget::measure`] (the largest window through the model) and tells
/// systemd `READY=1`; on shutdown tells it `STOPPING=1`.
pub fn serve(
    engine: Arc<Engine>,
    listener: UnixListener,
    config: ServerConfig,
    shutdown: Shutdown,
) -> Result<ServeReport> {
    config.check()?;
    let _ = systemd::status("warming up at the largest window");
    let budget = Budget::measure(&engine, &config)?;
    log::info!("{budget}");
    serve_with_budget(engine, listener, config, shutdown, budget)
}

/// [`serve`] with a budget already measured (by [`Budget::measure`] on this engine).
pub fn serve_with_budget(
    engine: Arc<Engine>,
    listener: UnixListener,
    config: ServerConfig,
    shutdown: Shutdown,
    budget: Budget,
) -> Result<ServeReport> {
    config.check()?;
    let watchdog = systemd::Watchdog::from_env();
    let server = Arc::new(Server {
        engine,
        config,
        budget,
        stats: Stats::new(),
        shutdown,
        parse_gate: ParseGate::start()?,
    });
    let c = &server.config;

    let (queue, jobs) = mpsc::sync_channel::<Job>(c.max_queue);
    let jobs = Arc::new(Mutex::new(jobs));
    let mut workers = Vec::new();
    for i in 0..c.workers {
        let (server, jobs, watchdog) = (server.clone(), jobs.clone(), watchdog.clone());
        workers.push(
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .stack_size(c.worker_stack)
                .spawn(move || worker(&server, &jobs, &watchdog))
                .context("cannot start a worker thread")?,
        );
    }

    // The accept loop waits in poll(2) on the listener with a timeout of `poll_interval`, so a
    // new connection is taken at once and a shutdown (a signal handler can only set a flag) is
    // seen within one interval. The listener may be systemd's (socket activation): it is never
    // shut down or otherwise changed for its other holders, only closed here; systemd keeps
    // listening on its own copy and hands it to the next instance.
    listener
        .set_nonblocking(true)
        .context("cannot make the listener non-blocking")?;
    let _ = systemd::ready_with_status(&format!(
        "serving {} ({}), {}",
        server.engine.dir.display(),
        server.engine.task.name(),
        server.budget
    ));
    let mut conns: Vec<JoinHandle<()>> = Vec::new();
    let mut accept_failures = AcceptFailures::default();
    let fatal = loop {
        if server.shutdown.is_triggered() {
            break None;
        }
        match wait_readable(&listener, c.poll_interval) {
            Ok(false) => continue,
            Ok(true) => {}
            Err(e) => break Some(e),
        }
        match listener.accept() {
            Ok((stream, _)) => {
                accept_failures = AcceptFailures::default();
                conns.retain(|h| !h.is_finished());
                accept(&server, stream, &queue, &mut conns);
            }
            Err(e) => match accept_failures.judge(e) {
                AcceptVerdict::Retry => {}
                AcceptVerdict::BackOff(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    log::warn!("accept failed: {e}");
                    std::thread::sleep(c.poll_interval);
                }
                AcceptVerdict::Fatal(e) => break Some(e),
            },
        }
    };
    if let Some(e) = &fatal {
        // Stop like on SIGTERM (answer what was read), then fail so that systemd restarts us:
        // a listener that cannot accept must not look like a healthy, idle service.
        log::error!("the listening socket failed: {e}; stopping");
        server.shutdown.trigger();
    }
    let _ = systemd::stopping();
    log::info!("shutting down: answering what was read");
    drop(listener);
    drop(queue);
    for h in conns {
        let _ = h.join();
    }
    for h in workers {
        let _ = h.join();
    }
    watchdog.stop();
    let s = &server.stats;
    let report = ServeReport {
        connections: s.connections_total.load(Ordering::SeqCst),
        rejected_connections: s.rejected.load(Ordering::SeqCst),
        requests: s.requests.load(Ordering::SeqCst),
        answered: s.answered.load(Ordering::SeqCst),
        unanswered: s.unanswered.load(Ordering::SeqCst),
        dropped_slow_clients: s.dropped_slow.load(Ordering::SeqCst),
        idle_closed: s.idle_closed.load(Ordering::SeqCst),
        errors: s.errors_json(),
        budget: server.budget.clone(),
        peak_rss: rss().1,
    };
    match fatal {
        Some(e) => Err(anyhow::Error::new(e).context(format!(
            "the listening socket failed (after answering {} of {} requests)",
            report.answered, report.requests
        ))),
        None => Ok(report),
    }
}

/// Waits until `listener` has a connection to accept (`Ok(true)`) or `timeout` passes
/// (`Ok(false)`). A listener that can no longer accept (shut down, closed, not listening) is an
/// error.
fn wait_readable(listener: &UnixListener, timeout: Duration) -> io::Result<bool> {
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
struct AcceptFailures {
    failing_since: Option<Instant>,
}

enum AcceptVerdict {
    /// Nothing to take after all (another process was faster, a signal, a client gone).
    Retry,
    /// Out of a resource for now: wait a little and try again.
    BackOff(io::Error),
    /// The listener cannot accept (EINVAL after shutdown(2), EBADF, ENOTSOCK), or resources have
    /// been short for [`ACCEPT_FAILING_LIMIT`].
    Fatal(io::Error),
}

impl AcceptFailures {
    fn judge(&mut self, e: io::Error) -> AcceptVerdict {
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

fn reject(server: &Server, mut stream: UnixStream, message: &str) {
    server.stats.rejected.fetch_add(1, Ordering::Relaxed);
    server.stats.error(ErrorCode::Busy);
    let line = ErrorReply::new(None, ErrorCode::Busy, message).to_line() + "\n";
    let _ = stream.set_write_timeout(Some(Duration::from_millis(200)));
    let _ = stream.write_all(line.as_bytes());
    let _ = stream.shutdown(NetShutdown::Both);
}

fn accept(
    server: &Arc<Server>,
    stream: UnixStream,
    queue: &SyncSender<Job>,
    conns: &mut Vec<JoinHandle<()>>,
) {
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
    let (reply, replies) = mpsc::channel::<(u64, String)>();
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
        let (server, queue, conn) = (server.clone(), queue.clone(), conn.clone());
        std::thread::Builder::new()
            .name("conn-reader".into())
            .stack_size(c.reader_stack)
            .spawn(move || {
                read_loop(&server, &conn, read_half, &queue, reply);
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
            if self.server.shutdown.is_triggered() {
                return Err(io::Error::other("shutting down"));
            }
            if self.conn.closed.load(Ordering::SeqCst) {
                return Err(io::Error::other("connection closed"));
            }
            let waiting_for_answers = *self
                .conn
                .in_flight
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                > 1;
            if !waiting_for_answers && self.conn.idle_for() >= self.server.config.idle_timeout {
                self.server
                    .stats
                    .idle_closed
                    .fetch_add(1, Ordering::Relaxed);
                return Err(io::Error::new(io::ErrorKind::TimedOut, "idle"));
            }
        }
    }
}

fn read_loop(
    server: &Server,
    conn: &Arc<Conn>,
    stream: UnixStream,
    queue: &SyncSender<Job>,
    reply: Sender<(u64, String)>,
) {
    let c = &server.config;
    let limits = server.engine.limits();
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
        if server.shutdown.is_triggered() || conn.closed.load(Ordering::SeqCst) {
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
        let immediate = match read {
            BoundedLine::TooLong { bytes } => {
                Some(protocol::line_too_long(bytes, c.max_line_bytes))
            }
            BoundedLine::Line => match parse(server, &mut buf, &limits) {
                Err(reply) => Some(reply),
                Ok(Line::Command { id, cmd }) => {
                    let body = match cmd {
                        Command::Ping => protocol::pong_body(),
                        Command::Stats => server.stats_body(),
                    };
                    if reply.send((seq, response_line(id.as_ref(), body))).is_err() {
                        server.stats.unanswered.fetch_add(1, Ordering::Relaxed);
                    }
                    None
                }
                Ok(Line::Infer(request)) => {
                    server.stats.queue_depth.fetch_add(1, Ordering::SeqCst);
                    let job = Job {
                        seq,
                        request,
                        conn: conn.clone(),
                        reply: reply.clone(),
                        queued: Instant::now(),
                    };
                    match queue.try_send(job) {
                        Ok(()) => None,
                        Err(e) => {
                            server.stats.queue_depth.fetch_sub(1, Ordering::SeqCst);
                            let (job, why) = match e {
                                TrySendError::Full(job) => (
                                    job,
                                    format!("queue full ({} requests waiting)", c.max_queue),
                                ),
                                TrySendError::Disconnected(job) => {
                                    (job, "the server is shutting down".to_string())
                                }
                            };
                            Some(ErrorReply::new(job.request.id, ErrorCode::Busy, why))
                        }
                    }
                }
            },
        };
        if let Some(error) = immediate {
            server.stats.error(error.code);
            if reply.send((seq, error.to_line())).is_err() {
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

fn write_loop(
    server: &Server,
    conn: &Conn,
    mut stream: UnixStream,
    replies: Receiver<(u64, String)>,
) {
    let mut next = 0u64;
    let mut pending: BTreeMap<u64, String> = BTreeMap::new();
    'outer: while let Ok((seq, line)) = replies.recv() {
        pending.insert(seq, line);
        while let Some(line) = pending.remove(&next) {
            let mut out = line.into_bytes();
            out.push(b'\n');
            if let Err(e) = stream.write_all(&out) {
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

fn worker(server: &Server, jobs: &Mutex<Receiver<Job>>, watchdog: &systemd::Watchdog) {
    loop {
        let job = {
            let jobs = jobs.lock().unwrap_or_else(|e| e.into_inner());
            jobs.recv()
        };
        let Ok(job) = job else { return };
        server.stats.queue_depth.fetch_sub(1, Ordering::SeqCst);
        if job.conn.closed.load(Ordering::SeqCst) {
            server.stats.unanswered.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let request = &job.request;
        let line = {
            let _busy = watchdog.busy();
            catch_unwind(AssertUnwindSafe(|| server.engine.respond(request)))
                .unwrap_or_else(|_| {
                    log::error!("request panicked");
                    Err(ErrorReply::new(
                        request.id.clone(),
                        ErrorCode::Internal,
                        "inference panicked",
                    ))
                })
                .unwrap_or_else(|e| {
                    server.stats.error(e.code);
                    e.to_line()
                })
        };
        server.stats.inferences.fetch_add(1, Ordering::Relaxed);
        let us = job.queued.elapsed().as_micros().min(u32::MAX as u128) as u32;
        server
            .stats
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(us);
        if job.reply.send((job.seq, line)).is_err() {
            server.stats.unanswered.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Command line

fn seconds(s: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(s).map_err(|_| anyhow!("{what} of {s} seconds is not valid"))
}

/// `electra-edge serve`: socket activation or `--socket`, signals, load, [`serve`], clean-up.
pub fn run_cli(args: &crate::cli::ServeArgs) -> Result<()> {
    // First, while single-threaded: a socket passed by systemd.
    let activated = if args.print_budget {
        None
    } else {
        systemd::listener_from_env().context("socket activation")?
    };
    let shutdown = Shutdown::new();
    for signal in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        // A second signal while shutting down exits at once (status 1).
        signal_hook::flag::register_conditional_shutdown(signal, 1, shutdown.flag())
            .context("cannot install signal handlers")?;
        signal_hook::flag::register(signal, shutdown.flag())
            .context("cannot install signal handlers")?;
    }
    let mode = parse_mode(&args.socket_mode)?;
    let group = args.socket_group.as_deref().map(parse_group).transpose()?;
    // Bind before the (slow) load: a live server is refused at once, and clients that connect
    // during the load wait in the backlog.
    let (listener, socket_file) = match (args.print_budget, activated, &args.socket) {
        (true, _, _) => (None, None),
        (false, Some(listener), _) => (Some(listener), None),
        (false, None, Some(path)) => {
            let (listener, file) = SocketFile::bind(path, mode, group)?;
            (Some(listener), Some(file))
        }
        (false, None, None) => bail!("--socket PATH is required (no socket passed by systemd)"),
    };
    let _ = systemd::status("loading model");
    let engine = Engine::load(&args.model.model, args.model.engine_options())?;
    let mut config = ServerConfig::for_engine(&engine);
    config.workers = args.workers;
    config.max_connections = args.max_connections;
    if let Some(bytes) = args.max_line_bytes {
        config.max_line_bytes = bytes;
    }
    config.max_queue = args.max_queue;
    config.max_in_flight = args.max_in_flight;
    config.idle_timeout = seconds(args.idle_timeout, "--idle-timeout")?;
    config.write_timeout = seconds(args.write_timeout, "--write-timeout")?;
    config.check()?;
    let _ = systemd::status("warming up at the largest window");
    let budget = Budget::measure(&engine, &config)?;
    let Some(listener) = listener else {
        println!("{}", budget.to_json());
        eprintln!("electra-edge: {budget}");
        return Ok(());
    };
    let where_ = socket_file.as_ref().map_or_else(
        || "the socket passed by systemd".to_string(),
        |f| f.path.display().to_string(),
    );
    eprintln!("electra-edge: serving on {where_}; {budget}");
    let report = serve_with_budget(Arc::new(engine), listener, config, shutdown, budget)?;
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    eprintln!(
        "electra-edge: stopped: {} connections ({} rejected), {} requests, {} answered, \
         {} unanswered, {} slow clients dropped; peak RSS {:.1} MiB, budget {:.1} MiB",
        report.connections,
        report.rejected_connections,
        report.requests,
        report.answered,
        report.unanswered,
        report.dropped_slow_clients,
        mib(report.peak_rss),
        mib(report.budget.total),
    );
    drop(socket_file);
    Ok(())
}
