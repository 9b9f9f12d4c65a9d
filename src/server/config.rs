//! The server's limits and thread sizes, with their defaults.

use std::time::Duration;

use anyhow::{bail, Result};

use crate::engine::Engine;
use crate::protocol;

/// Limits and thread sizes of the server.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Inference threads.
    pub workers: usize,
    /// Open connections; one more gets a `busy` line and is closed.
    pub max_connections: usize,
    /// Longest request line kept in memory (newline excluded).
    pub max_line_bytes: usize,
    /// Inference requests waiting for a worker (all connections); at the cap, readers wait
    /// for a slot (first come, first served) and read nothing meanwhile.
    pub max_queue: usize,
    /// Bytes that requests and their typed answers may hold, all connections together, from
    /// the queue until the answer is written (each reserves its text, id and an answer of its
    /// length); at the cap, readers wait like at `max_queue`.
    pub max_held_bytes: u64,
    /// A request that waited longer than this for a queue slot or a worker gets `busy`.
    pub queue_timeout: Duration,
    /// Lines of one connection read but not yet answered; the reader waits at the cap.
    pub max_in_flight: usize,
    /// A connection with nothing in flight and no byte received for this long is closed.
    pub idle_timeout: Duration,
    /// A client that takes no answer bytes for this long is dropped.
    pub write_timeout: Duration,
    /// How often blocked readers and the accept loop look at the shutdown flag.
    pub poll_interval: Duration,
    /// After shutdown, a connection is still read until it has been quiet (no byte received,
    /// no answer owed) for this long, counted from the shutdown at the earliest: a client that
    /// connected just before the signal still gets its request in.
    pub drain_quiet: Duration,
    /// After shutdown, no connection is read for longer than this (a client that keeps
    /// sending does not hold the server up).
    pub drain_limit: Duration,
    /// Stack sizes, set explicitly on every thread the server starts.
    pub reader_stack: usize,
    pub writer_stack: usize,
    pub worker_stack: usize,
    /// The reload thread's: it loads and warms up a model (the start-up load runs on the main
    /// thread, whose stack is 8 MiB).
    pub reload_stack: usize,
    /// Bytes of the per-connection read and write buffers.
    pub read_buffer: usize,
    pub write_buffer: usize,
}

/// The defaults of `serve` (documented in `docs/serve.md`); `max_line_bytes` is the one for
/// the default `--max-chars` ([`ServerConfig::for_engine`] sets it from the engine's).
impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            workers: 1,
            max_connections: 64,
            max_line_bytes: protocol::max_line_bytes(crate::engine::DEFAULT_MAX_CHARS),
            max_queue: 64,
            // ~12 answers to 20,000-character texts with raw logits (0.62 MiB each on the small
            // model), thousands of short ones: the cap binds only under long-text floods.
            max_held_bytes: 8 << 20,
            max_in_flight: 4,
            queue_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            poll_interval: Duration::from_millis(100),
            // A client writes its line right after connecting; 1 s covers a slow board under
            // load. 5 s stays well inside the unit's TimeoutStopSec (30 s).
            drain_quiet: Duration::from_secs(1),
            drain_limit: Duration::from_secs(5),
            // A reader parses only lines whose tree is small (`FREE_PARSE_BYTES`), and
            // serde_json stops at 128 levels of nesting: 128 KiB holds that (a test sends a
            // 127-level id); bigger lines go to the parser thread (256 KiB).
            reader_stack: 128 * 1024,
            writer_stack: 64 * 1024,
            // tract runs on the worker's stack.
            worker_stack: 4 * 1024 * 1024,
            reload_stack: 8 * 1024 * 1024,
            read_buffer: 8 * 1024,
            write_buffer: 8 * 1024,
        }
    }
}

impl ServerConfig {
    /// The defaults for an engine: the line limit follows its `max_chars` like `run`'s.
    pub fn for_engine(engine: &Engine) -> ServerConfig {
        ServerConfig {
            max_line_bytes: protocol::max_line_bytes(engine.options.max_chars),
            ..ServerConfig::default()
        }
    }

    /// Rejects limits that cannot work (zero workers, connections, queue or in-flight).
    pub fn check(&self) -> Result<()> {
        if self.workers == 0 || self.max_connections == 0 || self.max_queue == 0 {
            bail!("--workers, --max-connections and --max-queue must be at least 1");
        }
        if self.max_in_flight == 0 || self.max_line_bytes == 0 || self.max_held_bytes == 0 {
            bail!("--max-in-flight, --max-line-bytes and --max-held-mib must be at least 1");
        }
        Ok(())
    }
}
