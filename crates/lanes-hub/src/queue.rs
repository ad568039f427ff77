//! A connection's bounded event queue. Unlike a channel it allocates nothing until events
//! arrive: an idle connection's queue costs a few dozen bytes, not a pre-allocated block, and
//! waiting on it keeps only the receiver's waker (the wait itself is 16 bytes of a connection's
//! future, not a `Notified`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Poll, Waker};

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
    /// The receiver waiting for an item, if it is.
    waiting: Option<Waker>,
}

impl<T> State<T> {
    /// The next item. A drained queue gives its memory back: after a burst it would otherwise
    /// keep room for thousands of events for the connection's whole life.
    fn pop(&mut self) -> Option<T> {
        let item = self.items.pop_front();
        if self.items.is_empty() && self.items.capacity() > 0 {
            self.items = VecDeque::new();
        }
        item
    }
}

struct Shared<T> {
    /// Held only to push, pop or register a waker; never across an await.
    state: Mutex<State<T>>,
    capacity: usize,
}

/// The hub's end: offers events without waiting. Dropping it closes the queue.
pub(crate) struct QueueSender<T> {
    shared: Arc<Shared<T>>,
}

/// The connection's end.
pub struct QueueReceiver<T> {
    shared: Arc<Shared<T>>,
}

impl<T> std::fmt::Debug for QueueSender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueSender")
    }
}

impl<T> std::fmt::Debug for QueueReceiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QueueReceiver")
    }
}

/// A queue holding at most `capacity` items.
pub(crate) fn queue<T>(capacity: usize) -> (QueueSender<T>, QueueReceiver<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State {
            items: VecDeque::new(),
            closed: false,
            waiting: None,
        }),
        capacity,
    });
    (
        QueueSender {
            shared: Arc::clone(&shared),
        },
        QueueReceiver { shared },
    )
}

fn lock<T>(shared: &Shared<T>) -> std::sync::MutexGuard<'_, State<T>> {
    // Push and pop cannot leave the deque half-changed, so a poisoned lock is still consistent.
    shared.state.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<T> QueueSender<T> {
    /// Adds `item` unless the queue is full; `false` when it is.
    pub(crate) fn try_send(&self, item: T) -> bool {
        self.try_send_within(item, self.shared.capacity)
    }

    /// Adds `item` unless the queue holds `limit` items or more (capped at the capacity).
    pub(crate) fn try_send_within(&self, item: T, limit: usize) -> bool {
        let waiting = {
            let mut state = lock(&self.shared);
            if state.items.len() >= limit.min(self.shared.capacity) {
                return false;
            }
            state.items.push_back(item);
            state.waiting.take()
        };
        wake(waiting);
        true
    }
}

impl<T> Drop for QueueSender<T> {
    fn drop(&mut self) {
        let waiting = {
            let mut state = lock(&self.shared);
            state.closed = true;
            state.waiting.take()
        };
        wake(waiting);
    }
}

/// Wakes the receiver taken from the state, outside the lock: it takes the lock at once.
fn wake(waiting: Option<Waker>) {
    if let Some(waker) = waiting {
        waker.wake();
    }
}

impl<T> QueueReceiver<T> {
    /// The next item; `None` once the queue is closed and empty. Cancel-safe.
    pub fn recv(&mut self) -> impl Future<Output = Option<T>> + '_ {
        std::future::poll_fn(|cx| self.poll_recv(cx))
    }

    /// `recv` as a poll: the next item, or `Pending` with `cx`'s waker registered.
    pub fn poll_recv(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<T>> {
        let mut state = lock(&self.shared);
        if let Some(item) = state.pop() {
            return Poll::Ready(Some(item));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        // Registered under the lock that pushes take, so no push is missed.
        match &mut state.waiting {
            Some(waker) => waker.clone_from(cx.waker()),
            none => *none = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        lock(&self.shared).pop()
    }

    /// Items queued now.
    pub fn len(&self) -> usize {
        lock(&self.shared).items.len()
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_fifo_that_closes_when_the_sender_goes() {
        let (sender, mut receiver) = queue(2);
        assert!(sender.try_send(1));
        assert!(sender.try_send(2));
        assert!(!sender.try_send(3), "full");
        assert_eq!(receiver.len(), 2);
        assert_eq!(receiver.try_recv(), Some(1));
        assert!(sender.try_send(4));
        drop(sender);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let drained: Vec<Option<i32>> = runtime.block_on(async {
            vec![
                receiver.recv().await,
                receiver.recv().await,
                receiver.recv().await,
            ]
        });
        assert_eq!(drained, [Some(2), Some(4), None]);
        assert!(receiver.is_empty());
        assert_eq!(
            lock(&receiver.shared).items.capacity(),
            0,
            "a drained queue keeps no room"
        );
    }

    #[test]
    fn a_waiting_receiver_is_woken() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async {
            let (sender, mut receiver) = queue(8);
            let waiter = tokio::spawn(async move { receiver.recv().await });
            tokio::task::yield_now().await;
            assert!(sender.try_send(7));
            assert_eq!(waiter.await.unwrap(), Some(7));
        });
    }

    #[test]
    fn a_waiting_receiver_is_woken_by_the_close() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        runtime.block_on(async {
            let (sender, mut receiver) = queue::<i32>(8);
            let waiter = tokio::spawn(async move { receiver.recv().await });
            tokio::task::yield_now().await;
            drop(sender);
            assert_eq!(waiter.await.unwrap(), None);
        });
    }
}
