//! Counters and latencies, and the answer to `{"cmd":"stats"}`.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use serde_json::{json, Map, Value};

use super::Server;
use crate::procfs::rss;
use crate::protocol::ErrorCode;

const RING: usize = 4096;

/// Latencies (microseconds, queue wait included) of the last `RING` inferences.
pub(super) struct Latencies {
    ring: Box<[u32]>,
    next: usize,
    len: usize,
}

impl Latencies {
    pub(super) fn record(&mut self, us: u32) {
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

pub(super) struct Stats {
    pub(super) started: Instant,
    pub(super) requests: AtomicU64,
    pub(super) inferences: AtomicU64,
    pub(super) answered: AtomicU64,
    /// Per error code, indexed by `code as usize` (the order of [`ErrorCode::ALL`]).
    pub(super) errors: [AtomicU64; ErrorCode::ALL.len()],
    pub(super) connections: AtomicUsize,
    pub(super) connections_total: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) dropped_slow: AtomicU64,
    pub(super) idle_closed: AtomicU64,
    pub(super) unanswered: AtomicU64,
    pub(super) latencies: Mutex<Latencies>,
}

impl Stats {
    pub(super) fn new() -> Stats {
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
            latencies: Mutex::new(Latencies {
                ring: vec![0; RING].into_boxed_slice(),
                next: 0,
                len: 0,
            }),
        }
    }

    pub(super) fn error(&self, code: ErrorCode) {
        self.errors[code as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn errors_json(&self) -> Map<String, Value> {
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

impl Server {
    /// The body of the answer to `{"cmd":"stats"}`.
    pub(super) fn stats_body(&self) -> Map<String, Value> {
        let s = &self.stats;
        let (rss, hwm) = rss();
        let p = s
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .percentiles(&[50.0, 90.0, 99.0]);
        let c = &self.config;
        let current = self.current();
        let engine = &current.engine;
        let last_reload_error = self
            .reloads
            .last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let body = json!({
            "stats": {
                "uptime_s": s.started.elapsed().as_secs_f64(),
                "model": engine.dir.display().to_string(),
                "model_folder": engine.folder.display().to_string(),
                "model_generation": current.generation,
                "reloads": self.reloads.reloads.load(Ordering::Relaxed),
                "reloads_failed": self.reloads.failed.load(Ordering::Relaxed),
                "last_reload_error": last_reload_error,
                "task": engine.task.name(),
                "requests": s.requests.load(Ordering::Relaxed),
                "inferences": s.inferences.load(Ordering::Relaxed),
                "answered": s.answered.load(Ordering::Relaxed),
                "unanswered": s.unanswered.load(Ordering::Relaxed),
                "errors": s.errors_json(),
                "latency_ms": {"p50": p[0], "p90": p[1], "p99": p[2]},
                "queue_depth": self.queue.len(),
                "held_bytes": self.queue.held(),
                "connections": s.connections.load(Ordering::Relaxed),
                "connections_total": s.connections_total.load(Ordering::Relaxed),
                "rejected_connections": s.rejected.load(Ordering::Relaxed),
                "dropped_slow_clients": s.dropped_slow.load(Ordering::Relaxed),
                "idle_closed": s.idle_closed.load(Ordering::Relaxed),
                "rss": rss,
                "rss_peak": hwm,
                "budget": current.budget.to_json(),
                "limits": {
                    "workers": c.workers,
                    "max_connections": c.max_connections,
                    "max_line_bytes": c.max_line_bytes,
                    "max_held_bytes": c.max_held_bytes,
                    "max_chars": engine.options.max_chars,
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
