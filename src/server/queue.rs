//! The inference queue: bounded, first come first served across connections. A reader whose
//! request finds the queue full waits for a slot in arrival order (backpressure: it stops
//! reading meanwhile, as at `max_in_flight`), up to the request's deadline.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Why a push did not enqueue.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Refused {
    /// The deadline passed while waiting for a slot.
    Timeout,
    /// The caller gave up (its connection closed).
    Cancelled,
    /// The queue is closed (the server stopped).
    Closed,
}

struct State<T> {
    items: VecDeque<T>,
    /// Tickets of the pushers waiting for a slot, in arrival order.
    waiting: VecDeque<u64>,
    next_ticket: u64,
    closed: bool,
}

pub(super) struct FairQueue<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
    capacity: usize,
}

impl<T> FairQueue<T> {
    pub(super) fn new(capacity: usize) -> FairQueue<T> {
        FairQueue {
            state: Mutex::new(State {
                items: VecDeque::with_capacity(capacity),
                waiting: VecDeque::new(),
                next_ticket: 0,
                closed: false,
            }),
            changed: Condvar::new(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enqueues `item` when there is room and every earlier waiter has been served. Waits at
    /// most until `deadline`; `cancelled` is looked at every `poll` while waiting. The item
    /// comes back with the reason when it was not enqueued.
    pub(super) fn push(
        &self,
        item: T,
        deadline: Instant,
        poll: Duration,
        cancelled: impl Fn() -> bool,
    ) -> Result<(), (T, Refused)> {
        let mut s = self.lock();
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.waiting.push_back(ticket);
        loop {
            let refused = if s.closed {
                Some(Refused::Closed)
            } else if s.waiting.front() == Some(&ticket) && s.items.len() < self.capacity {
                s.waiting.pop_front();
                s.items.push_back(item);
                drop(s);
                // a worker for the item, and the next waiter (there may be room for it too)
                self.changed.notify_all();
                return Ok(());
            } else if cancelled() {
                Some(Refused::Cancelled)
            } else if Instant::now() >= deadline {
                Some(Refused::Timeout)
            } else {
                None
            };
            if let Some(why) = refused {
                s.waiting.retain(|&t| t != ticket);
                drop(s);
                self.changed.notify_all();
                return Err((item, why));
            }
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(poll)
                .max(Duration::from_millis(1));
            s = self
                .changed
                .wait_timeout(s, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The oldest item; waits while the queue is empty. `None` once it is closed and empty.
    pub(super) fn pop(&self) -> Option<T> {
        let mut s = self.lock();
        loop {
            if let Some(item) = s.items.pop_front() {
                drop(s);
                self.changed.notify_all();
                return Some(item);
            }
            if s.closed {
                return None;
            }
            s = self.changed.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    /// No more pushes; `pop` drains what is queued, then returns `None`.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.changed.notify_all();
    }

    /// Items waiting for a worker.
    pub(super) fn len(&self) -> usize {
        self.lock().items.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const POLL: Duration = Duration::from_millis(5);

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(30)
    }

    #[test]
    fn bounded_fifo_and_close() {
        let q = FairQueue::new(2);
        q.push(1, far(), POLL, || false).unwrap();
        q.push(2, far(), POLL, || false).unwrap();
        // full: a push with a near deadline times out and gets its item back
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(q.push(3, soon, POLL, || false), Err((3, Refused::Timeout)));
        assert_eq!(
            q.push(3, far(), POLL, || true),
            Err((3, Refused::Cancelled))
        );
        assert_eq!(q.len(), 2);
        assert_eq!(q.pop(), Some(1));
        q.push(3, far(), POLL, || false).unwrap();
        q.close();
        assert_eq!(q.push(4, far(), POLL, || false), Err((4, Refused::Closed)));
        assert_eq!((q.pop(), q.pop(), q.pop()), (Some(2), Some(3), None));
    }

    /// Waiting pushers get their slots in arrival order, whatever thread they run on.
    #[test]
    fn waiting_pushers_are_served_in_arrival_order() {
        let q = Arc::new(FairQueue::new(1));
        q.push(0, far(), POLL, || false).unwrap();
        let mut pushers = vec![];
        for i in 1..=8 {
            let pusher = q.clone();
            pushers.push(std::thread::spawn(move || {
                pusher.push(i, far(), POLL, || false).unwrap()
            }));
            // each one is waiting before the next starts
            let deadline = Instant::now() + Duration::from_secs(10);
            while q.lock().waiting.len() < i {
                assert!(Instant::now() < deadline, "pusher {i} never waited");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let popped: Vec<usize> = (0..=8).map(|_| q.pop().unwrap()).collect();
        assert_eq!(popped, (0..=8).collect::<Vec<_>>());
        for p in pushers {
            p.join().unwrap();
        }
    }
}
