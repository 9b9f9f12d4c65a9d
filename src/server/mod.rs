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
//!   shared read-only (`Arc<Engine>`, behind a handle a reload swaps); one reload thread. Every
//!   thread's stack size is set explicitly.
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
//! - **Reload.** A [`Reload`] request (SIGHUP in `main`) loads the model folder again beside the
//!   serving model and swaps it in between requests; a folder that fails keeps the old model
//!   serving (see the `reload` module).
//! - **Lifecycle.** [`serve`] returns when its [`Shutdown`] is triggered (by SIGTERM/SIGINT in
//!   `main`): it stops accepting, reads each open connection until it is quiet
//!   (`drain_quiet`, at most `drain_limit` in all), answers every line read, and returns a
//!   [`ServeReport`]. [`SocketFile`] binds the path (replacing a stale socket file,
//!   refusing a live one) and removes it when dropped.
//!
//! Micro-batching (`--batch`) is not implemented: the graphs are typed with batch 1 (tract
//! cannot type the exports' mask arithmetic with a symbolic batch), so there is nothing to
//! batch into.

mod budget;
mod config;
mod conn;
mod gate;
mod listener;
mod queue;
mod reload;
mod socket;
mod stats;
mod worker;

use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{Map, Value};

pub use budget::Budget;
pub use budget::Measured;
pub use config::ServerConfig;
pub use gate::{json_tree_bound, max_tree_bytes, FREE_PARSE_BYTES};
pub use reload::Reload;
pub use socket::{parse_group, parse_mode, SocketFile};

use crate::engine::Engine;
use crate::procfs::rss;
use crate::systemd;
use conn::accept;
use conn::Job;
use gate::ParseGate;
use listener::{wait_readable, AcceptFailures, AcceptVerdict};
use queue::FairQueue;
use reload::{Current, ReloadStats, Slot};
use stats::Stats;

const _: () = {
    const fn shared<T: Send + Sync>() {}
    shared::<Engine>();
};

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

/// What the server's threads share.
pub(super) struct Server {
    /// The model answering now, with its budget; a reload replaces it.
    slot: Slot,
    config: ServerConfig,
    stats: Stats,
    reloads: ReloadStats,
    /// Set (under this lock) when shutdown begins: the reload thread sends `READY=1` only while
    /// it is not, so systemd never sees `READY=1` after `STOPPING=1`.
    lifecycle: std::sync::Mutex<bool>,
    shutdown: Shutdown,
    /// Parses lines whose tree may be big (see [`json_tree_bound`]).
    parse_gate: ParseGate,
    /// Inference requests waiting for a worker.
    queue: FairQueue<Job>,
    /// When the server first saw its shutdown flag (the drain's clock).
    draining_since: OnceLock<Instant>,
}

impl Server {
    /// The model answering now (each request takes it from the queue with its job: see
    /// [`FairQueue::pop_stamped`]).
    fn current(&self) -> Arc<Current> {
        self.slot.get()
    }

    /// How long the shutdown has lasted, `None` while serving. Readers use it to drain: a
    /// connection is read until the drain has lasted `drain_limit`, or, with no answer owed,
    /// until it has been quiet for `drain_quiet` since the later of its last activity and the
    /// shutdown (the idle timeout, shortened).
    fn draining_for(&self) -> Option<Duration> {
        self.shutdown
            .is_triggered()
            .then(|| self.draining_since.get_or_init(Instant::now).elapsed())
    }
}

/// Serves `listener` until `shutdown` is triggered, then drains the open connections (see
/// [`ServerConfig::drain_quiet`]), answers what was read and returns. Each `reload` request
/// loads the model folder again and swaps it in (see [`Reload`]).
///
/// Before accepting, runs [`Budget::measure`] (the largest window through the model) and tells
/// systemd `READY=1`; on shutdown tells it `STOPPING=1`.
pub fn serve(
    engine: Arc<Engine>,
    listener: UnixListener,
    config: ServerConfig,
    shutdown: Shutdown,
    reload: Reload,
) -> Result<ServeReport> {
    config.check()?;
    let _ = systemd::status("warming up at the largest window");
    let budget = Budget::measure(&engine, &config, None)?;
    log::info!("{budget}");
    serve_with_budget(engine, listener, config, shutdown, reload, budget)
}

/// [`serve`] with a budget already measured (by [`Budget::measure`] on this engine).
pub fn serve_with_budget(
    engine: Arc<Engine>,
    listener: UnixListener,
    config: ServerConfig,
    shutdown: Shutdown,
    reload: Reload,
    budget: Budget,
) -> Result<ServeReport> {
    config.check()?;
    let watchdog = systemd::Watchdog::from_env();
    let parse_gate = ParseGate::start(config.max_line_bytes)?;
    let queue = FairQueue::new(config.max_queue, config.max_held_bytes);
    let server = Arc::new(Server {
        slot: Slot::new(Current {
            engine,
            budget,
            generation: 0,
        }),
        config,
        stats: Stats::new(),
        reloads: ReloadStats::default(),
        lifecycle: std::sync::Mutex::new(false),
        shutdown,
        parse_gate,
        queue,
        draining_since: OnceLock::new(),
    });
    let c = &server.config;

    let mut workers = Vec::new();
    for i in 0..c.workers {
        let (server, watchdog) = (server.clone(), watchdog.clone());
        workers.push(
            std::thread::Builder::new()
                .name(format!("worker-{i}"))
                .stack_size(c.worker_stack)
                .spawn(move || worker::worker(&server, &server.queue, &watchdog))
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
    let _ = systemd::ready_with_status(&server.current().status());
    // After READY=1: a SIGHUP that came during start-up reloads now, and systemd sees its
    // RELOADING=1 after the start's READY=1.
    let reloader = {
        let server = server.clone();
        std::thread::Builder::new()
            .name("reload".into())
            .stack_size(c.reload_stack)
            .spawn(move || reload::reloader(&server, &reload))
            .map_err(|e| log::warn!("cannot start the reload thread ({e}): SIGHUP will do nothing"))
            .ok()
    };
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
                accept(&server, stream, &mut conns);
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
    server.draining_since.get_or_init(Instant::now);
    {
        let mut stopping = server.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        *stopping = true;
        let _ = systemd::stopping();
    }
    log::info!(
        "shutting down: reading open connections until they are quiet, answering what was read"
    );
    drop(listener);
    for h in conns {
        let _ = h.join();
    }
    // every connection ended, so every queued request was answered: the workers may go
    server.queue.close();
    for h in workers {
        let _ = h.join();
    }
    // A reload still loading is abandoned (it swaps nothing in once shutdown began); wait for
    // it within the drain limit, then leave it to end with the process.
    if let Some(reloader) = reloader {
        while !reloader.is_finished()
            && server
                .draining_for()
                .is_some_and(|d| d < server.config.drain_limit)
        {
            std::thread::sleep(server.config.poll_interval);
        }
        if reloader.is_finished() {
            let _ = reloader.join();
        } else {
            log::warn!("shutting down while a reload is still loading its model");
        }
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
        budget: server.current().budget.clone(),
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
