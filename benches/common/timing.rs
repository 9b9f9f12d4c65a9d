//! Timing shared by the kernel benchmarks (included with `#[path]`).

use std::time::{Duration, Instant};

/// Best (minimum) seconds per call over calls until `budget` is spent (at least 5 calls): the
/// host is shared, the minimum is the most stable statistic. With `cpu`, the calling thread's
/// CPU time rather than wall time (not counting time the thread was descheduled: only
/// meaningful for one thread).
pub fn time(budget: Duration, cpu: bool, mut f: impl FnMut()) -> f64 {
    f();
    let (mut best, mut calls) = (f64::MAX, 0);
    let start = Instant::now();
    let clock = || {
        if cpu {
            electra_edge::cputime::thread_s()
        } else {
            None
        }
    };
    while calls < 5 || (start.elapsed() < budget && calls < 10_000) {
        let (t, c) = (Instant::now(), clock());
        f();
        let took = match (c, clock()) {
            (Some(c0), Some(c1)) => c1 - c0,
            _ => t.elapsed().as_secs_f64(),
        };
        best = best.min(took);
        calls += 1;
    }
    best
}
