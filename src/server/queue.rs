//! The inference queue: bounded, first come first served across connections. A request is
//! admitted when there is a slot and its bytes fit under the cap on what all requests and their
//! answers may hold (`--max-held-mib`): its [`Held`] reservation lasts until its answer is
//! written. A reader whose request does not fit waits in arrival order (backpressure: it stops
//! reading meanwhile, as at `max_in_flight`), up to the request's deadline.

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
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
    /// Queued items with the bytes reserved for each.
    items: VecDeque<(T, u64)>,
    /// Tickets of the pushers waiting for a slot, in arrival order.
    waiting: VecDeque<u64>,
    next_ticket: u64,
    closed: bool,
    /// Bytes reserved by queued items and by [`Held`] reservations still alive.
    held: u64,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    changed: Condvar,
    capacity: usize,
    max_held: u64,
}

impl<T> Shared<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(super) struct FairQueue<T> {
    shared: Arc<Shared<T>>,
}

/// The bytes reserved for one popped item; given back (and the next waiter woken) when dropped,
/// which the server does once the item's answer is written or dropped.
pub(super) struct Held<T> {
    shared: Arc<Shared<T>>,
    bytes: u64,
}

impl<T> Drop for Held<T> {
    fn drop(&mut self) {
        let mut s = self.shared.lock();
        s.held = s.held.saturating_sub(self.bytes);
        drop(s);
        self.shared.changed.notify_all();
    }
}

impl<T> FairQueue<T> {
    /// At most `capacity` queued items, and at most `max_held` bytes reserved by queued and
    /// popped-but-not-dropped items.
    pub(super) fn new(capacity: usize, max_held: u64) -> FairQueue<T> {
        FairQueue {
            shared: Arc::new(Shared {
                state: Mutex::new(State {
                    items: VecDeque::with_capacity(capacity),
                    waiting: VecDeque::new(),
                    next_ticket: 0,
                    closed: false,
                    held: 0,
                }),
                changed: Condvar::new(),
                capacity: capacity.max(1),
                max_held: max_held.max(1),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State<T>> {
        self.shared.lock()
    }

    /// Enqueues `item`, reserving `bytes` (at most the whole cap), when there is a slot, the
    /// bytes fit and every earlier waiter has been served. Waits at most until `deadline`;
    /// `cancelled` is looked at every `poll` while waiting. The item comes back with the reason
    /// when it was not enqueued.
    pub(super) fn push(
        &self,
        item: T,
        bytes: u64,
        deadline: Instant,
        poll: Duration,
        cancelled: impl Fn() -> bool,
    ) -> Result<(), (T, Refused)> {
        let bytes = bytes.min(self.shared.max_held);
        let mut s = self.lock();
        let ticket = s.next_ticket;
        s.next_ticket += 1;
        s.waiting.push_back(ticket);
        loop {
            let refused = if s.closed {
                Some(Refused::Closed)
            } else if s.waiting.front() == Some(&ticket)
                && s.items.len() < self.shared.capacity
                && s.held + bytes <= self.shared.max_held
            {
                s.waiting.pop_front();
                s.items.push_back((item, bytes));
                s.held += bytes;
                drop(s);
                // a worker for the item, and the next waiter (there may be room for it too)
                self.shared.changed.notify_all();
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
                self.shared.changed.notify_all();
                return Err((item, why));
            }
            let wait = deadline
                .saturating_duration_since(Instant::now())
                .min(poll)
                .max(Duration::from_millis(1));
            s = self
                .shared
                .changed
                .wait_timeout(s, wait)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// The oldest item and its reservation, and what `stamp` returned; waits while the queue is
    /// empty. `None` once it is closed and empty. `stamp` is called while the queue is still
    /// locked, as the item is taken: with a value changed only inside [`FairQueue::locked`],
    /// every item taken before the change sees the old value and every later one the new.
    pub(super) fn pop_stamped<S>(&self, stamp: impl Fn() -> S) -> Option<(T, Held<T>, S)> {
        let mut s = self.lock();
        loop {
            if let Some((item, bytes)) = s.items.pop_front() {
                let stamped = stamp();
                drop(s);
                self.shared.changed.notify_all();
                let held = Held {
                    shared: self.shared.clone(),
                    bytes,
                };
                return Some((item, held, stamped));
            }
            if s.closed {
                return None;
            }
            s = self
                .shared
                .changed
                .wait(s)
                .unwrap_or_else(|e| e.into_inner());
        }
    }

    /// Runs `f` with the queue locked: no item is taken (and none added) while it runs.
    pub(super) fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        let _s = self.lock();
        f()
    }

    /// No more pushes; `pop` drains what is queued, then returns `None`.
    pub(super) fn close(&self) {
        self.lock().closed = true;
        self.shared.changed.notify_all();
    }

    /// Items waiting for a worker.
    pub(super) fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Bytes reserved now (queued, being answered, or answered and not yet written).
    pub(super) fn held(&self) -> u64 {
        self.lock().held
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

    impl<T> FairQueue<T> {
        /// A push of one byte.
        fn push_n(
            &self,
            item: T,
            deadline: Instant,
            poll: Duration,
            cancelled: impl Fn() -> bool,
        ) -> Result<(), (T, Refused)> {
            self.push(item, 1, deadline, poll, cancelled)
        }

        /// The oldest item and its reservation.
        fn pop(&self) -> Option<(T, Held<T>)> {
            self.pop_stamped(|| ()).map(|(item, held, ())| (item, held))
        }
    }

    /// Pops an item and gives its bytes back at once.
    fn pop<T>(q: &FairQueue<T>) -> Option<T> {
        q.pop().map(|(item, _held)| item)
    }

    #[test]
    fn bounded_fifo_and_close() {
        let q = FairQueue::new(2, 1 << 20);
        q.push_n(1, far(), POLL, || false).unwrap();
        q.push_n(2, far(), POLL, || false).unwrap();
        // full: a push with a near deadline times out and gets its item back
        let soon = Instant::now() + Duration::from_millis(30);
        assert_eq!(
            q.push_n(3, soon, POLL, || false),
            Err((3, Refused::Timeout))
        );
        assert_eq!(
            q.push_n(3, far(), POLL, || true),
            Err((3, Refused::Cancelled))
        );
        assert_eq!(q.len(), 2);
        assert_eq!(pop(&q), Some(1));
        q.push_n(3, far(), POLL, || false).unwrap();
        q.close();
        assert_eq!(
            q.push_n(4, far(), POLL, || false),
            Err((4, Refused::Closed))
        );
        assert_eq!((pop(&q), pop(&q), pop(&q)), (Some(2), Some(3), None));
    }

    /// Waiting pushers get their slots in arrival order, whatever thread they run on.
    #[test]
    fn waiting_pushers_are_served_in_arrival_order() {
        let q = Arc::new(FairQueue::new(1, 1 << 20));
        q.push_n(0, far(), POLL, || false).unwrap();
        let mut pushers = vec![];
        for i in 1..=8 {
            let pusher = q.clone();
            pushers.push(std::thread::spawn(move || {
                pusher.push_n(i, far(), POLL, || false).unwrap()
            }));
            // each one is waiting before the next starts
            let deadline = Instant::now() + Duration::from_secs(10);
            while q.lock().waiting.len() < i {
                assert!(Instant::now() < deadline, "pusher {i} never waited");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let popped: Vec<usize> = (0..=8).map(|_| pop(&q).unwrap()).collect();
        assert_eq!(popped, (0..=8).collect::<Vec<_>>());
        for p in pushers {
            p.join().unwrap();
        }
    }

    /// Bytes are held from the push until the popped item's reservation is dropped; a waiter
    /// whose bytes do not fit waits (and blocks later, smaller ones: first come, first served).
    #[test]
    fn held_bytes_are_capped_and_given_back_when_dropped() {
        let q = Arc::new(FairQueue::new(10, 100));
        q.push(1, 60, far(), POLL, || false).unwrap();
        assert_eq!(q.held(), 60);
        let (one, held_one) = q.pop().unwrap();
        assert_eq!((one, q.held()), (1, 60), "popped but not yet written");
        let soon = || Instant::now() + Duration::from_millis(30);
        assert_eq!(
            q.push(2, 50, soon(), POLL, || false),
            Err((2, Refused::Timeout))
        );
        // a request bigger than the whole cap is served alone, not never
        let big = {
            let q = q.clone();
            std::thread::spawn(move || q.push(3, 1_000, far(), POLL, || false))
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while q.lock().waiting.is_empty() {
            assert!(Instant::now() < deadline, "the big push never waited");
            std::thread::sleep(Duration::from_millis(1));
        }
        // a small one behind the waiting big one waits too (arrival order)
        assert_eq!(
            q.push(4, 1, soon(), POLL, || false),
            Err((4, Refused::Timeout))
        );
        drop(held_one);
        big.join().unwrap().unwrap();
        assert_eq!(q.held(), 100);
        let (three, held_three) = q.pop().unwrap();
        assert_eq!(three, 3);
        drop(held_three);
        assert_eq!(q.held(), 0);
        q.push(5, 40, far(), POLL, || false).unwrap();
        q.push(6, 60, far(), POLL, || false).unwrap();
        assert_eq!((q.len(), q.held()), (2, 100));
    }

    /// A value changed inside `locked` splits the items in queue order: those taken before the
    /// change are stamped with the old value, those taken after with the new one, whichever
    /// thread takes them.
    #[test]
    fn stamps_follow_the_queue_order() {
        use std::sync::atomic::{AtomicU64, Ordering};
        let q = Arc::new(FairQueue::new(1000, 1 << 30));
        let version = Arc::new(AtomicU64::new(0));
        for i in 0..1000 {
            q.push_n(i, far(), POLL, || false).unwrap();
        }
        let takers: Vec<_> = (0..4)
            .map(|_| {
                let (q, version) = (q.clone(), version.clone());
                std::thread::spawn(move || {
                    let mut got = vec![];
                    while let Some((i, _held, v)) = q.pop_stamped(|| version.load(Ordering::SeqCst))
                    {
                        got.push((i, v));
                        // slow takers: the change comes while items are queued and taken
                        std::thread::sleep(Duration::from_micros(100));
                    }
                    got
                })
            })
            .collect();
        while q.len() > 500 {
            std::thread::yield_now();
        }
        q.locked(|| version.store(1, Ordering::SeqCst));
        q.close();
        let mut all: Vec<(usize, u64)> =
            takers.into_iter().flat_map(|t| t.join().unwrap()).collect();
        all.sort();
        assert_eq!(all.len(), 1000);
        let first_new = all.iter().position(|&(_, v)| v == 1).unwrap_or(all.len());
        assert!(
            first_new > 0 && first_new < 1000,
            "the change fell between items"
        );
        assert!(
            all[first_new..].iter().all(|&(_, v)| v == 1),
            "an item taken after the change saw the old value"
        );
    }
}
