//! The one place where our transformer ops use threads: `tasks` independent jobs split over
//! up to `threads` threads with `std::thread::scope` (the calling thread takes the first
//! share). When the int8 side's persistent pool lands, this function is the one to point at
//! it.

/// Runs `f(t)` for every `t` in `0..tasks`, on up to `threads` threads (1 = all on the
/// calling thread). Each thread gets a contiguous range of tasks.
pub(crate) fn for_each_task<F: Fn(usize) + Sync>(tasks: usize, threads: usize, f: F) {
    let threads = threads.clamp(1, tasks.max(1));
    if threads == 1 {
        (0..tasks).for_each(&f);
        return;
    }
    let per = tasks.div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let mut t0 = per;
        while t0 < tasks {
            let t1 = (t0 + per).min(tasks);
            s.spawn(move || (t0..t1).for_each(f));
            t0 = t1;
        }
        (0..per.min(tasks)).for_each(f);
    });
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
