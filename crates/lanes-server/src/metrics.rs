//! Counters the server keeps about itself, served at `GET /metrics` in the Prometheus text
//! format. Plain atomics: nothing here allocates or locks on the message path.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// The server's counters and gauges.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) commits: AtomicU64,
    pub(crate) commit_failures: AtomicU64,
    pub(crate) messages_committed: AtomicU64,
    pub(crate) duplicate_sends: AtomicU64,
    pub(crate) connections_opened: AtomicU64,
    pub(crate) connections_current: AtomicU64,
    pub(crate) write_timeouts: AtomicU64,
    pub(crate) receipt_commits: AtomicU64,
    pub(crate) typing_events: AtomicU64,
    pub(crate) presence_updates: AtomicU64,
}

impl Metrics {
    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }

    /// Renders every metric; `extra` adds values owned elsewhere (hub, configuration).
    pub(crate) fn render(
        &self,
        durability_full: bool,
        slow_consumers: u64,
        online_users: usize,
    ) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
            );
        };
        let get = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        metric(
            "lanes_commits_total",
            "counter",
            "Group commits (one transaction and fsync each).",
            get(&self.commits),
        );
        metric(
            "lanes_receipt_commits_total",
            "counter",
            "Transactions that stored receipt positions.",
            get(&self.receipt_commits),
        );
        metric(
            "lanes_typing_events_total",
            "counter",
            "Typing starts and stops announced (never stored).",
            get(&self.typing_events),
        );
        metric(
            "lanes_presence_frames_total",
            "counter",
            "Coalesced presence frames sent to watching connections.",
            get(&self.presence_updates),
        );
        metric(
            "lanes_commit_failures_total",
            "counter",
            "Group commits that failed (storage unavailable).",
            get(&self.commit_failures),
        );
        metric(
            "lanes_messages_committed_total",
            "counter",
            "Messages stored.",
            get(&self.messages_committed),
        );
        metric(
            "lanes_duplicate_sends_total",
            "counter",
            "Sends answered with the original ack.",
            get(&self.duplicate_sends),
        );
        metric(
            "lanes_connections_opened_total",
            "counter",
            "WebSocket connections accepted.",
            get(&self.connections_opened),
        );
        metric(
            "lanes_connections",
            "gauge",
            "Open WebSocket connections.",
            get(&self.connections_current),
        );
        metric(
            "lanes_online_users",
            "gauge",
            "Users with at least one authenticated connection.",
            online_users as u64,
        );
        metric(
            "lanes_slow_consumers_total",
            "counter",
            "Connections dropped because their queue overflowed.",
            slow_consumers,
        );
        metric(
            "lanes_write_timeouts_total",
            "counter",
            "Connections dropped because a write to the peer stalled.",
            get(&self.write_timeouts),
        );
        metric(
            "lanes_durability_full",
            "gauge",
            "1 when every commit is fsync'd (synchronous=FULL), 0 when relaxed.",
            u64::from(durability_full),
        );
        out
    }
}
