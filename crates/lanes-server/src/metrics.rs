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
    /// How long each group commit took (the store's transaction and fsync), in microseconds.
    pub(crate) commit_micros: Histogram<CommitMicros, 12>,
    /// How many sends each group commit carried.
    pub(crate) commit_sends: Histogram<CommitSends, 14>,
}

/// What a histogram is: its name, help, `N` bucket bounds and the unit it renders them in.
pub(crate) trait Buckets<const N: usize> {
    const NAME: &'static str;
    const HELP: &'static str;
    /// Upper bounds of the buckets, ascending.
    const BOUNDS: [u64; N];
    /// Observed values and bounds are divided by this when rendered (1,000,000: µs as seconds).
    const UNIT: f64;
}

#[derive(Debug)]
pub(crate) struct CommitMicros;

impl Buckets<12> for CommitMicros {
    const NAME: &'static str = "lanes_commit_duration_seconds";
    const HELP: &'static str = "Time of each group commit: the store's transaction and its fsync.";
    const BOUNDS: [u64; 12] = [
        100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000,
    ];
    const UNIT: f64 = 1_000_000.0;
}

#[derive(Debug)]
pub(crate) struct CommitSends;

impl Buckets<14> for CommitSends {
    const NAME: &'static str = "lanes_commit_batch_sends";
    const HELP: &'static str = "Sends carried by each group commit.";
    const BOUNDS: [u64; 14] = [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192,
    ];
    const UNIT: f64 = 1.0;
}

/// A Prometheus histogram with fixed buckets: one atomic per bucket, no lock, no allocation.
#[derive(Debug)]
pub(crate) struct Histogram<B, const N: usize> {
    /// Observations per bucket (not cumulative); beyond the last bound only `count` grows.
    buckets: [AtomicU64; N],
    count: AtomicU64,
    sum: AtomicU64,
    kind: std::marker::PhantomData<B>,
}

impl<B, const N: usize> Default for Histogram<B, N> {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            count: AtomicU64::new(0),
            sum: AtomicU64::new(0),
            kind: std::marker::PhantomData,
        }
    }
}

impl<B: Buckets<N>, const N: usize> Histogram<B, N> {
    pub(crate) fn observe(&self, value: u64) {
        if let Some(bucket) = B::BOUNDS.iter().position(|bound| value <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(value, Ordering::Relaxed);
    }

    /// Renders the histogram with cumulative `le` buckets.
    fn render(&self, out: &mut String) {
        let (name, unit) = (B::NAME, B::UNIT);
        let _ = writeln!(out, "# HELP {name} {}\n# TYPE {name} histogram", B::HELP);
        let mut cumulative = 0;
        for (bound, bucket) in B::BOUNDS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let le = *bound as f64 / unit;
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let sum = self.sum.load(Ordering::Relaxed) as f64 / unit;
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"+Inf\"}} {count}\n{name}_sum {sum}\n{name}_count {count}"
        );
    }
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
        self.commit_micros.render(&mut out);
        self.commit_sends.render(&mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct TestSeconds;

    impl Buckets<4> for TestSeconds {
        const NAME: &'static str = "t_seconds";
        const HELP: &'static str = "help";
        const BOUNDS: [u64; 4] = [1_000, 10_000, 100_000, 1_000_000];
        const UNIT: f64 = 1_000_000.0;
    }

    #[test]
    fn histogram_renders_cumulative_buckets_in_the_unit() {
        let histogram = Histogram::<TestSeconds, 4>::default();
        for micros in [500, 1_000, 7_000, 2_000_000] {
            histogram.observe(micros);
        }
        let mut out = String::new();
        histogram.render(&mut out);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines,
            [
                "# HELP t_seconds help",
                "# TYPE t_seconds histogram",
                "t_seconds_bucket{le=\"0.001\"} 2",
                "t_seconds_bucket{le=\"0.01\"} 3",
                "t_seconds_bucket{le=\"0.1\"} 3",
                "t_seconds_bucket{le=\"1\"} 3",
                "t_seconds_bucket{le=\"+Inf\"} 4",
                "t_seconds_sum 2.0085",
                "t_seconds_count 4",
            ]
        );
    }
}
