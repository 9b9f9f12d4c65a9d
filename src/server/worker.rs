//! Inference workers: take queued requests in order, answer them (the typed answer goes to the
//! connection's writer, which serializes it while writing), count and time them.

use super::conn::{Answered, Job, Reply};
use super::queue::FairQueue;
use super::Server;
use crate::dispatch;
use crate::protocol::{ErrorCode, ErrorReply};
use crate::systemd;
use std::sync::atomic::Ordering;

pub(super) fn worker(server: &Server, queue: &FairQueue<Job>, watchdog: &systemd::Watchdog) {
    let timeout = server.config.queue_timeout;
    // The model is taken with the job, in queue order: a reload's swap splits the queue into
    // the requests before it (old model) and after it (new model).
    while let Some((job, held, current)) = queue.pop_stamped(|| server.current()) {
        if job.conn.closed.load(Ordering::SeqCst) {
            server.stats.unanswered.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let request = job.request;
        let waited = job.queued.elapsed();
        let reply = if waited > timeout {
            server.stats.error(ErrorCode::Busy);
            Reply::Line(
                ErrorReply::new(
                    request.id.clone(),
                    ErrorCode::Busy,
                    format!(
                        "waited {:.1} s for a worker, longer than --queue-timeout {} s",
                        waited.as_secs_f64(),
                        timeout.as_secs_f64()
                    ),
                )
                .to_line(),
            )
        } else {
            let _busy = watchdog.busy();
            // progress per model window: a long text is not a wedged worker
            match dispatch::infer_with(&current.engine, &request, &mut || watchdog.ping()) {
                Ok(response) => Reply::Answer(Box::new(Answered {
                    request,
                    response,
                    _held: held,
                })),
                Err(e) => {
                    server.stats.error(e.code);
                    Reply::Line(e.to_line())
                }
            }
        };
        server.stats.inferences.fetch_add(1, Ordering::Relaxed);
        let us = job.queued.elapsed().as_micros().min(u32::MAX as u128) as u32;
        server
            .stats
            .latencies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(us);
        if job.reply.send((job.seq, reply)).is_err() {
            server.stats.unanswered.fetch_add(1, Ordering::Relaxed);
        }
    }
}
