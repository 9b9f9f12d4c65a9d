//! Reloading the model while serving: SIGHUP, which `systemctl reload` sends through the unit's
//! `ExecReload=`.
//!
//! One reload thread waits for a request ([`Reload::request`], set by the SIGHUP handler) and
//! then, while the old model keeps answering:
//!
//! 1. tells systemd `RELOADING=1` with `MONOTONIC_USEC` and a `STATUS=` line;
//! 2. has the engine load its folder path again ([`Engine::reload`]: the path resolved anew, so a
//!    switched symlink loads the other folder; load, warm-up, self-check), runs the new model's
//!    full-size window and re-derives the budget ([`Budget::after_reload`]);
//! 3. swaps the handle with the queue locked ([`FairQueue::locked`](super::queue::FairQueue)):
//!    every request taken from the queue before the swap runs on the old model, every later one
//!    on the new; the old model is dropped when the last request running on it is answered;
//! 4. tells systemd `READY=1` with the new `STATUS=`;
//! 5. once the last request running on the old model is answered, drops it and hands the freed
//!    memory back to the system (glibc would keep it, and the next reload would come on top).
//!
//! A folder that fails at step 2 leaves the old model serving: one error line in the log, the
//! reason in `STATUS=`, and `READY=1`. Requests that come during a reload are coalesced into one
//! more reload after it; two never run at once. On shutdown a reload in progress is abandoned:
//! its model is not swapped in and no `READY=1` follows `STOPPING=1`.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{anyhow, Result};

use super::{Budget, Server};
use crate::engine::Engine;
use crate::procfs::{cgroup_memory_max, rss};
use crate::systemd;

/// A reload request: `main` sets it from SIGHUP, tests call [`Reload::request`]. Requests made
/// while a reload runs are coalesced into one more reload after it.
#[derive(Clone, Debug, Default)]
pub struct Reload(Arc<AtomicBool>);

impl Reload {
    pub fn new() -> Reload {
        Reload::default()
    }
    /// The flag itself, e.g. for `signal_hook::flag::register`.
    pub fn flag(&self) -> Arc<AtomicBool> {
        self.0.clone()
    }
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether a reload was requested since the last call (and clears the request).
    fn take(&self) -> bool {
        self.0.swap(false, Ordering::SeqCst)
    }
}

/// The model the server answers with, and the budget measured on it.
pub(super) struct Current {
    pub(super) engine: Arc<Engine>,
    pub(super) budget: Budget,
    /// 0 for the model loaded at start-up, one more per reload that swapped a model in.
    pub(super) generation: u64,
}

impl Current {
    /// The `STATUS=` text while this model serves.
    pub(super) fn status(&self) -> String {
        let e = &self.engine;
        let folder = if e.folder == e.dir {
            String::new()
        } else {
            format!(" -> {}", e.folder.display())
        };
        format!(
            "serving {}{folder} ({}), {}",
            e.dir.display(),
            e.task.name(),
            self.budget
        )
    }
}

/// The handle to the current model: read by every request, replaced by a reload.
pub(super) struct Slot(Mutex<Arc<Current>>);

impl Slot {
    pub(super) fn new(current: Current) -> Slot {
        Slot(Mutex::new(Arc::new(current)))
    }
    pub(super) fn get(&self) -> Arc<Current> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
    fn set(&self, current: Arc<Current>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = current;
    }
}

/// What the reload thread counts (for `stats`).
#[derive(Default)]
pub(super) struct ReloadStats {
    pub(super) reloads: AtomicU64,
    pub(super) failed: AtomicU64,
    pub(super) last_error: Mutex<Option<String>>,
}

/// The reload thread: one reload per request until the server shuts down.
pub(super) fn reloader(server: &Server, reload: &Reload) {
    loop {
        // The signal handler can only set a flag: look at it every poll interval.
        while !reload.take() {
            if server.shutdown.is_triggered() {
                return;
            }
            std::thread::sleep(server.config.poll_interval);
        }
        if server.shutdown.is_triggered() {
            return;
        }
        reload_once(server);
    }
}

fn reload_once(server: &Server) {
    let old = server.slot.get();
    let dir = old.engine.dir.display().to_string();
    {
        let stopping = server.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
        if *stopping {
            return;
        }
        let _ = systemd::reloading(&format!("reloading the model from {dir}"));
    }
    log::info!("reloading the model from {dir}");
    let started = Instant::now();
    let (rss_before, hwm_before) = rss();
    // A panic outside the model's own guards must not end the reload thread.
    let loaded = catch_unwind(AssertUnwindSafe(|| -> Result<(Engine, Budget)> {
        let engine = old.engine.reload()?;
        let (_, hwm_after_load) = rss();
        let budget = old.budget.after_reload(
            &engine,
            &server.config,
            rss_before,
            hwm_before,
            hwm_after_load,
        )?;
        Ok((engine, budget))
    }))
    .unwrap_or_else(|_| Err(anyhow!("loading the model panicked")));
    // Decided and told under the lifecycle lock: no READY=1 after STOPPING=1.
    let stopping = server.lifecycle.lock().unwrap_or_else(|e| e.into_inner());
    if *stopping {
        log::info!("shutting down: the reload in progress is abandoned");
        return;
    }
    match loaded {
        Ok((engine, budget)) => {
            let new = Arc::new(Current {
                engine: Arc::new(engine),
                budget,
                generation: old.generation + 1,
            });
            server.queue.locked(|| server.slot.set(new.clone()));
            server.reloads.reloads.fetch_add(1, Ordering::Relaxed);
            let status = new.status();
            log::info!(
                "reloaded in {:.2} s: {status}",
                started.elapsed().as_secs_f64()
            );
            if let Some(limit) = cgroup_memory_max().filter(|&l| new.budget.total > l) {
                log::warn!(
                    "the new model's budget of {:.1} MiB is over the cgroup's memory limit of \
                     {:.1} MiB: restart the service to fit the workers to it",
                    new.budget.total as f64 / (1 << 20) as f64,
                    limit as f64 / (1 << 20) as f64,
                );
            }
            let _ = systemd::ready_with_status(&status);
            drop(stopping);
            drop(new);
            release_when_unused(server, old);
        }
        Err(e) => {
            server.reloads.failed.fetch_add(1, Ordering::Relaxed);
            let why = format!(
                "reload of {dir} failed, still serving {}: {e:#}",
                old.engine.folder.display()
            );
            log::error!("{why}");
            *server
                .reloads
                .last_error
                .lock()
                .unwrap_or_else(|e| e.into_inner()) = Some(format!("{e:#}"));
            let _ = systemd::ready_with_status(&why);
            // what the failed load allocated
            release_free_heap();
        }
    }
}

/// Waits until `old` is no longer used by a request (each running request holds it), then drops
/// it and gives the allocator's free memory back. Gives up waiting on shutdown.
fn release_when_unused(server: &Server, old: Arc<Current>) {
    while Arc::strong_count(&old) > 1 && !server.shutdown.is_triggered() {
        std::thread::sleep(server.config.poll_interval / 10);
    }
    drop(old);
    release_free_heap();
}

/// Gives glibc's free memory back to the system (elsewhere a no-op).
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the kernel; it takes each arena's lock, so
    // it is safe while other threads allocate, and has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}
