//! The group-commit queue: collects pending items and yields them as one batch when the batch is
//! full or the oldest item has waited `linger`. With a linger of zero, a batch is whatever arrived
//! while the previous commit was running, which is what keeps latency low under light load.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Pending items waiting for the next commit.
#[derive(Debug)]
pub struct CommitQueue<T> {
    items: VecDeque<T>,
    oldest_at: Option<Instant>,
    batch_len_max: usize,
    linger: Duration,
}

impl<T> CommitQueue<T> {
    /// A queue yielding batches of at most `batch_len_max` items.
    pub fn new(batch_len_max: usize, linger: Duration) -> CommitQueue<T> {
        assert!(batch_len_max > 0, "a batch must hold at least one item");
        CommitQueue {
            items: VecDeque::new(),
            oldest_at: None,
            batch_len_max,
            linger,
        }
    }

    /// Adds an item that arrived at `now`.
    pub fn push(&mut self, now: Instant, item: T) {
        if self.items.is_empty() {
            self.oldest_at = Some(now);
        }
        self.items.push_back(item);
    }

    /// Number of items waiting.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// True when a batch should be cut now (full, or lingered long enough).
    pub fn is_ready(&self, now: Instant) -> bool {
        match self.oldest_at {
            None => false,
            Some(oldest) => {
                self.items.len() >= self.batch_len_max || now.duration_since(oldest) >= self.linger
            }
        }
    }

    /// When the current items must be committed at the latest.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.oldest_at.map(|oldest| oldest + self.linger)
    }

    /// Cuts a batch if one is ready at `now`.
    pub fn poll_batch(&mut self, now: Instant) -> Option<Vec<T>> {
        if !self.is_ready(now) {
            return None;
        }
        let take = self.items.len().min(self.batch_len_max);
        let batch: Vec<T> = self.items.drain(..take).collect();
        self.oldest_at = if self.items.is_empty() {
            None
        } else {
            // The rest already waited; commit them next without further linger.
            Some(now - self.linger)
        };
        Some(batch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(
        batch_len_max: usize,
        linger_micros: u64,
        pushes: &[u64],
        at: u64,
        expected: &[Option<usize>],
    ) {
        let start = Instant::now();
        let mut queue = CommitQueue::new(batch_len_max, Duration::from_micros(linger_micros));
        for (index, offset) in pushes.iter().enumerate() {
            queue.push(start + Duration::from_micros(*offset), index);
        }
        let now = start + Duration::from_micros(at);
        let got: Vec<Option<usize>> = expected
            .iter()
            .map(|_| queue.poll_batch(now).map(|batch| batch.len()))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn batching() {
        // No linger: everything pending goes at once.
        check(10, 0, &[0, 0, 0], 0, &[Some(3), None]);
        // Full batches are cut before the linger expires; the rest follows.
        check(2, 1000, &[0, 0, 0], 0, &[Some(2), Some(1), None]);
        // Linger not yet expired.
        check(10, 1000, &[0, 10], 500, &[None]);
        check(10, 1000, &[0, 10], 1000, &[Some(2), None]);
        check(10, 0, &[], 0, &[None]);
    }
}
