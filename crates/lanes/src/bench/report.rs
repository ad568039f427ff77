//! One run's results: a human summary and one JSON object, with latency percentiles.

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

use super::CpuTime;

/// Latencies in microseconds, 1 µs to 60 s at 3 significant digits.
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).unwrap_or_else(|err| {
        unreachable!("constant histogram bounds are valid: {err}");
    })
}

/// p50/p99/p999/max in milliseconds.
pub(crate) fn latency_ms(histogram: &Histogram<u64>) -> Value {
    let ms = |micros: u64| (micros as f64 / 1000.0 * 1000.0).round() / 1000.0;
    json!({
        "count": histogram.len(),
        "p50": ms(histogram.value_at_quantile(0.50)),
        "p99": ms(histogram.value_at_quantile(0.99)),
        "p999": ms(histogram.value_at_quantile(0.999)),
        "max": ms(histogram.max()),
    })
}

/// The outcome of one scenario run.
pub(crate) struct Report {
    scenario: &'static str,
    fields: Map<String, Value>,
    failed: bool,
}

impl Report {
    pub(crate) fn new(scenario: &'static str, params: Value) -> Report {
        let mut fields = Map::new();
        fields.insert("scenario".into(), json!(scenario));
        fields.insert("params".into(), params);
        fields.insert(
            "date".into(),
            json!(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|elapsed| elapsed.as_secs())
                    .unwrap_or(0)
            ),
        );
        Report {
            scenario,
            fields,
            failed: false,
        }
    }

    pub(crate) fn set(&mut self, key: &str, value: Value) {
        self.fields.insert(key.to_owned(), value);
    }

    /// A fan-out's outcome: per message the time until its last copy arrived (µs), the copies
    /// received of the `expected`, over `elapsed_secs`. Returns the copies lost.
    pub(crate) fn set_reach(
        &mut self,
        reach_micros: impl ExactSizeIterator<Item = u64>,
        deliveries: u64,
        expected: u64,
        elapsed_secs: f64,
    ) -> u64 {
        self.set("messages", json!(reach_micros.len()));
        let mut reach = histogram();
        for micros in reach_micros {
            // Out of range only beyond the histogram's 60 s, which no run lasts.
            let _ = reach.record(micros.max(1));
        }
        self.set("deliveries", json!(deliveries));
        self.set(
            "deliveries_per_s",
            json!((deliveries as f64 / elapsed_secs).round()),
        );
        self.set("reach_all_ms", latency_ms(&reach));
        let lost = expected.saturating_sub(deliveries);
        self.set("lost", json!(lost));
        lost
    }

    /// `key`: user and system CPU µs per item between two readings, when both were taken.
    pub(crate) fn set_cpu(
        &mut self,
        key: &str,
        before: Option<CpuTime>,
        after: Option<CpuTime>,
        items: u64,
    ) {
        if let (Some(before), Some(after)) = (before, after) {
            self.set(key, after.per_item_since(&before, items));
        }
    }

    /// Marks the run failed (lost or duplicated messages).
    pub(crate) fn fail(&mut self) {
        self.failed = true;
    }

    pub(crate) fn failed(&self) -> bool {
        self.failed
    }

    pub(crate) fn print(&self) {
        eprintln!("== lanes bench {} ==", self.scenario);
        for (key, value) in &self.fields {
            if key != "scenario" {
                eprintln!("{key:>24}: {value}");
            }
        }
        println!("{}", Value::Object(self.fields.clone()));
    }
}
