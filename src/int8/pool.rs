//! One persistent thread pool for the int8 kernels (and the other ops that split work across
//! threads): no thread is spawned per matmul.
//!
//! [`Pool::run`]`(tasks, threads, f)` calls `f(0) .. f(tasks - 1)`, each exactly once, on the
//! calling thread and up to `threads - 1` pool threads, and returns when all calls are done
//! (scoped: `f` may borrow from the caller's stack). Tasks are claimed one at a time from an
//! atomic counter, so a thread that arrives late (descheduled on a busy host) simply does less.
//! The caller always works on its own tasks too, so a run makes progress even when every pool
//! thread is busy with other callers' runs (several requests at once share the pool).
//!
//! Size: the pool's threads are started on first use, as many as the largest `threads` any run
//! asked for, minus one (the caller); [`default_threads`] is the number of cores available to
//! the process (`std::thread::available_parallelism`: affinity mask and cgroup CPU quota).
//! Idle pool threads spin for a few microseconds (back-to-back matmuls), then sleep on a
//! condition variable.
//!
//! A panic inside `f` is caught on the thread that ran it and re-raised by `run` on the caller
//! once every task has finished.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks)]

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Most threads the pool starts, whatever is asked.
pub const MAX_THREADS: usize = 256;

/// How long an idle pool thread polls for new work before it sleeps.
const SPIN: Duration = Duration::from_micros(50);

/// The cores available to this process (affinity mask, cgroup quota), at least 1.
pub fn default_threads() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// One run's shared state. `f` points at the caller's closure with its lifetime erased: it is
/// only called for a claimed index `< tasks`, and every such call finishes before `done`
/// reaches `tasks`, which `run` waits for before it returns (and the closure is dropped).
struct Run {
    f: *const (dyn Fn(usize) + Sync),
    tasks: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Pool threads that may still join this run.
    helpers: AtomicUsize,
    panicked: AtomicBool,
    finished: Mutex<bool>,
    finished_cv: Condvar,
}

// SAFETY: the only non-Send/Sync field is `f`, a pointer to a `Sync` closure; it is called
// concurrently from several threads (allowed: `Sync`) and only while the caller of `run` keeps
// the closure alive (see `Run`).
unsafe impl Send for Run {}
// SAFETY: as for `Send`: shared access to `f` only calls a `Sync` closure.
unsafe impl Sync for Run {}

impl Run {
    /// Claims and runs tasks until none is left.
    fn work(&self) {
        loop {
            let i = self.next.fetch_add(1, Ordering::Relaxed);
            if i >= self.tasks {
                return;
            }
            // SAFETY: i < tasks was claimed by this thread, so `done` cannot reach `tasks`
            // before this call returns: the caller of `run` is still waiting, and the closure
            // behind `f` is alive.
            let f = unsafe { &*self.f };
            if catch_unwind(AssertUnwindSafe(|| f(i))).is_err() {
                self.panicked.store(true, Ordering::Relaxed);
            }
            if self.done.fetch_add(1, Ordering::AcqRel) + 1 == self.tasks {
                *self.finished.lock().unwrap_or_else(|e| e.into_inner()) = true;
                self.finished_cv.notify_all();
            }
        }
    }

    fn has_unclaimed(&self) -> bool {
        self.next.load(Ordering::Relaxed) < self.tasks
    }
}

struct Shared {
    queue: Mutex<VecDeque<Arc<Run>>>,
    wake: Condvar,
    /// Runs in the queue (read without the lock by spinning threads).
    pending: AtomicUsize,
    /// Set when the pool is dropped: idle threads exit.
    shutdown: AtomicBool,
}

/// A persistent pool of worker threads (see the module docs).
pub struct Pool {
    shared: Arc<Shared>,
    started: Mutex<usize>,
}

impl Default for Pool {
    fn default() -> Self {
        Pool::new()
    }
}

impl Pool {
    /// An empty pool; threads start on first use.
    pub fn new() -> Pool {
        Pool {
            shared: Arc::new(Shared {
                queue: Mutex::new(VecDeque::new()),
                wake: Condvar::new(),
                pending: AtomicUsize::new(0),
                shutdown: AtomicBool::new(false),
            }),
            started: Mutex::new(0),
        }
    }

    /// The process-wide pool.
    pub fn global() -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        POOL.get_or_init(Pool::new)
    }

    /// Pool threads started so far.
    pub fn started(&self) -> usize {
        *self.started.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts pool threads until there are at least `n` (at most [`MAX_THREADS`]). A thread
    /// that cannot be started is logged and the pool makes do with fewer.
    fn ensure(&self, n: usize) {
        let n = n.min(MAX_THREADS);
        let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        while *started < n {
            let shared = self.shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("int8-pool-{}", *started))
                .spawn(move || worker(&shared));
            match spawned {
                Ok(_) => *started += 1,
                Err(e) => {
                    log::warn!("thread pool: cannot start a thread: {e}");
                    break;
                }
            }
        }
    }

    /// Calls `f(i)` for every `i` in `0..tasks` on the calling thread and up to `threads - 1`
    /// pool threads; returns when all calls have returned. `threads <= 1` or `tasks <= 1`
    /// runs everything on the calling thread. A panic in `f` is re-raised here.
    pub fn run<F: Fn(usize) + Sync>(&self, tasks: usize, threads: usize, f: F) {
        let helpers = threads.saturating_sub(1).min(tasks.saturating_sub(1));
        if helpers == 0 {
            (0..tasks).for_each(f);
            return;
        }
        self.ensure(helpers.max(default_threads() - 1));
        let f: &(dyn Fn(usize) + Sync) = &f;
        // SAFETY: only the lifetime is erased (same fat-pointer layout); `Run::work` calls `f`
        // only until `done == tasks`, which this function waits for below, so no call outlives
        // the borrow of `f`.
        let f: *const (dyn Fn(usize) + Sync + 'static) = unsafe { std::mem::transmute(f) };
        let run = Arc::new(Run {
            f,
            tasks,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            helpers: AtomicUsize::new(helpers),
            panicked: AtomicBool::new(false),
            finished: Mutex::new(false),
            finished_cv: Condvar::new(),
        });
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            q.push_back(run.clone());
            self.shared.pending.fetch_add(1, Ordering::Release);
        }
        for _ in 0..helpers {
            self.shared.wake.notify_one();
        }
        run.work();
        // nothing left to claim: take the run off the queue if no pool thread did
        {
            let mut q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(pos) = q.iter().position(|r| Arc::ptr_eq(r, &run)) {
                q.remove(pos);
                self.shared.pending.fetch_sub(1, Ordering::Release);
            }
        }
        // wait for the tasks that pool threads claimed: spin briefly, then sleep
        let t0 = Instant::now();
        while run.done.load(Ordering::Acquire) < tasks && t0.elapsed() < SPIN {
            std::hint::spin_loop();
        }
        let mut fin = run.finished.lock().unwrap_or_else(|e| e.into_inner());
        while run.done.load(Ordering::Acquire) < tasks && !*fin {
            fin = run.finished_cv.wait(fin).unwrap_or_else(|e| e.into_inner());
        }
        drop(fin);
        if run.panicked.load(Ordering::Relaxed) {
            panic!("a thread-pool task panicked");
        }
    }
}

impl Drop for Pool {
    /// Lets the pool's threads exit once idle (the global pool is never dropped).
    fn drop(&mut self) {
        let _q = self.shared.queue.lock().unwrap_or_else(|e| e.into_inner());
        self.shared.shutdown.store(true, Ordering::Release);
        self.shared.wake.notify_all();
    }
}

/// The threads worth using for `units` units of work when each thread should get at least
/// `min_units` of them: between 1 and `threads` (and never more than `units`). Below that a
/// pool wake-up costs about what it saves (and on a busy host a descheduled helper that
/// claimed a task makes the caller wait). Unit tests (`cfg(test)`) ignore `min_units`, so
/// that small inputs exercise the split.
pub(crate) fn threads_for(units: usize, threads: usize, min_units: usize) -> usize {
    let useful = if cfg!(test) {
        units
    } else {
        units / min_units.max(1)
    };
    threads.min(useful).min(units).max(1)
}

/// Units per task when `units` are split over `threads` threads: about two tasks per thread
/// (a thread that starts late takes fewer), all units in one task for one thread.
pub(crate) fn units_per_task(units: usize, threads: usize) -> usize {
    if threads <= 1 {
        units.max(1)
    } else {
        units.div_ceil(2 * threads).max(1)
    }
}

/// Calls `f(i, item)` for every item of `items` (`i`: its index), as tasks of the global
/// pool on up to `threads` threads, each item moved into the task that takes it (so items
/// can be disjoint `&mut` chunks of one output). One item or one thread: all on the caller.
pub(crate) fn for_each_item<I: Send, F: Fn(usize, I) + Sync>(items: Vec<I>, threads: usize, f: F) {
    if threads <= 1 || items.len() <= 1 {
        for (i, item) in items.into_iter().enumerate() {
            f(i, item);
        }
        return;
    }
    let slots: Vec<Mutex<Option<I>>> = items.into_iter().map(|i| Mutex::new(Some(i))).collect();
    Pool::global().run(slots.len(), threads, |i| {
        let item = slots[i]
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .expect("a pool task runs once");
        f(i, item);
    });
}

/// Takes a run with unclaimed tasks and a free helper slot off the queue front, dropping
/// runs that have nothing left for pool threads.
fn take(q: &mut VecDeque<Arc<Run>>, pending: &AtomicUsize) -> Option<Arc<Run>> {
    while let Some(run) = q.front() {
        if run.has_unclaimed() {
            let h = run.helpers.load(Ordering::Relaxed);
            if h > 0 {
                run.helpers.store(h - 1, Ordering::Relaxed); // under the queue lock
                let run = run.clone();
                if h == 1 {
                    q.pop_front();
                    pending.fetch_sub(1, Ordering::Release);
                }
                return Some(run);
            }
        }
        q.pop_front();
        pending.fetch_sub(1, Ordering::Release);
    }
    None
}

fn worker(shared: &Shared) {
    loop {
        // spin a little: the next matmul usually follows within microseconds
        let t0 = Instant::now();
        while shared.pending.load(Ordering::Acquire) == 0 && t0.elapsed() < SPIN {
            std::hint::spin_loop();
        }
        let run = {
            let mut q = shared.queue.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(run) = take(&mut q, &shared.pending) {
                    break run;
                }
                if shared.shutdown.load(Ordering::Acquire) {
                    return;
                }
                q = shared.wake.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        run.work();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_task_runs_once_and_borrows_work() {
        let pool = Pool::new();
        for threads in [1, 2, 3, 8] {
            for tasks in [0, 1, 2, 5, 64, 1000] {
                let hits: Vec<AtomicU64> = (0..tasks).map(|_| AtomicU64::new(0)).collect();
                let sum = AtomicU64::new(0);
                pool.run(tasks, threads, |i| {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                    sum.fetch_add(i as u64, Ordering::Relaxed);
                });
                assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
                let n = tasks as u64;
                assert_eq!(sum.into_inner(), n * n.saturating_sub(1) / 2);
            }
        }
        assert_eq!(pool.started(), 7.max(default_threads() - 1));
    }

    #[test]
    fn tasks_run_on_several_threads() {
        let pool = Pool::new();
        let ids = Mutex::new(std::collections::HashSet::new());
        // each task waits until a second thread has shown up (or a generous timeout)
        let seen = AtomicUsize::new(0);
        pool.run(2, 2, |_| {
            ids.lock().unwrap().insert(std::thread::current().id());
            seen.fetch_add(1, Ordering::SeqCst);
            let t0 = Instant::now();
            while seen.load(Ordering::SeqCst) < 2 && t0.elapsed() < Duration::from_secs(10) {
                std::thread::yield_now();
            }
        });
        assert_eq!(ids.into_inner().unwrap().len(), 2);
    }

    #[test]
    fn concurrent_callers_share_the_pool() {
        let pool = Pool::new();
        std::thread::scope(|s| {
            for c in 0..4u64 {
                let pool = &pool;
                s.spawn(move || {
                    for round in 0..50u64 {
                        let sum = AtomicU64::new(0);
                        pool.run(17, 3, |i| {
                            sum.fetch_add(i as u64 * c + round, Ordering::Relaxed);
                        });
                        assert_eq!(sum.into_inner(), 136 * c + 17 * round);
                    }
                });
            }
        });
    }

    #[test]
    fn items_split_disjoint_chunks_of_one_output() {
        for threads in [1, 2, 3] {
            for len in [0, 1, 5, 64, 1001] {
                let mut out = vec![0usize; len];
                let per = units_per_task(len, threads);
                let chunks: Vec<(usize, &mut [usize])> = out.chunks_mut(per).enumerate().collect();
                for_each_item(chunks, threads, |i, (c, chunk)| {
                    assert_eq!(i, c);
                    for (j, v) in chunk.iter_mut().enumerate() {
                        *v += c * per + j + 1;
                    }
                });
                assert!(out.iter().enumerate().all(|(j, &v)| v == j + 1));
            }
        }
        // (unit tests: every unit may get a thread; at most `threads`, at least 1)
        assert_eq!(threads_for(0, 4, 100), 1);
        assert_eq!(threads_for(3, 4, 100), 3);
        assert_eq!(threads_for(1000, 2, 100), 2);
        assert_eq!(units_per_task(10, 1), 10);
        assert_eq!(units_per_task(10, 2), 3);
        assert_eq!(units_per_task(1, 3), 1);
    }

    #[test]
    fn a_panicking_task_is_reraised_after_all_finish() {
        let pool = Pool::new();
        let finished = AtomicUsize::new(0);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(8, 2, |i| {
                if i == 3 {
                    panic!("task 3");
                }
                finished.fetch_add(1, Ordering::SeqCst);
            })
        }));
        assert!(r.is_err());
        assert_eq!(finished.load(Ordering::SeqCst), 7);
        // the pool still works
        let n = AtomicUsize::new(0);
        pool.run(10, 2, |_| {
            n.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(n.into_inner(), 10);
    }
}
