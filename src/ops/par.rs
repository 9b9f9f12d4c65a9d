//! The one place where our transformer ops use threads: `tasks` independent jobs on the
//! persistent pool of the int8 matmuls ([`crate::int8::pool`]), the calling thread included.

/// Runs `f(t)` for every `t` in `0..tasks`, on up to `threads` threads (1 = all on the
/// calling thread).
pub(crate) fn for_each_task<F: Fn(usize) + Sync>(tasks: usize, threads: usize, f: F) {
    crate::int8::pool::Pool::global().run(tasks, threads, f);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_task_runs_once() {
        for (tasks, threads) in [(0, 2), (1, 4), (5, 2), (8, 3), (3, 1)] {
            let seen: Vec<AtomicUsize> = (0..tasks).map(|_| AtomicUsize::new(0)).collect();
            for_each_task(tasks, threads, |t| {
                seen[t].fetch_add(1, Ordering::Relaxed);
            });
            assert!(seen.iter().all(|c| c.load(Ordering::Relaxed) == 1));
        }
    }
}
