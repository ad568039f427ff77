//! A connection's bounded event queue. Unlike a channel it allocates nothing until events
//! arrive: an idle connection's queue costs a few dozen bytes, not a pre-allocated block.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

struct State<T> {
    items: VecDeque<T>,
    closed: bool,
}

struct Shared<T> {
    /// Held only to push or pop one item; never across an await.
    state: Mutex<State<T>>,
    notify: Notify,
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
        }),
        notify: Notify::new(),
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
        {
            let mut state = lock(&self.shared);
            if state.items.len() >= limit.min(self.shared.capacity) {
                return false;
            }
            state.items.push_back(item);
        }
        self.shared.notify.notify_one();
        true
    }
}

impl<T> Drop for QueueSender<T> {
    fn drop(&mut self) {
        lock(&self.shared).closed = true;
        self.shared.notify.notify_one();
    }
}

impl<T> QueueReceiver<T> {
    /// The next item; `None` once the queue is closed and empty.
    pub async fn recv(&mut self) -> Option<T> {
        loop {
            {
                let mut state = lock(&self.shared);
                if let Some(item) = state.items.pop_front() {
                    return Some(item);
                }
                if state.closed {
                    return None;
                }
            }
            // notify_one stores a permit when nobody waits, so a push between the check above
            // and this await is not missed.
            self.shared.notify.notified().await;
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<T> {
        lock(&self.shared).items.pop_front()
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
}
