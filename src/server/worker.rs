//! Inference workers: take queued requests, answer them, hand the line to the writer.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::conn::Conn;
use super::Server;
use crate::dispatch;
use crate::protocol::Request;
use crate::systemd;

/// One queued inference.
pub(super) struct Job {
    pub(super) seq: u64,
    pub(super) request: Request,
    pub(super) conn: Arc<Conn>,
    pub(super) reply: Sender<(u64, String)>,
    pub(super) queued: Instant,
}

pub(super) fn worker(server: &Server, jobs: &Mutex<Receiver<Job>>, watchdog: &systemd::Watchdog) {
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
            dispatch::respond(&server.engine, request).unwrap_or_else(|e| {
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
