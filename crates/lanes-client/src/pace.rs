//! How often automatic delivery receipts go out (`ClientConfig::receipts_interval`). Time and
//! randomness come in as arguments, so the rule is tested without a clock or an RNG.

use std::time::{Duration, Instant};

/// The longest interval taken as it is (a day): longer ones could overflow the clock.
const INTERVAL_MAX: Duration = Duration::from_secs(24 * 3600);

/// Paces batches of `received` frames: the first goes at once, each later one at least 1 to 1.5
/// intervals after the one before (the extra part drawn at random, so that a group's members,
/// who all receive the same messages, do not confirm in step). One `received` per message would
/// have each member of a busy group send the server as many frames as it receives.
#[derive(Debug, Clone)]
pub struct ReceiptPacer {
    interval: Duration,
    not_before: Option<Instant>,
}

impl ReceiptPacer {
    /// A pacer for `interval` (zero: no pacing; above a day: a day).
    pub fn new(interval: Duration) -> ReceiptPacer {
        ReceiptPacer {
            interval: interval.min(INTERVAL_MAX),
            not_before: None,
        }
    }

    /// When a batch waiting at `now` may go.
    pub fn due(&self, now: Instant) -> Instant {
        self.not_before.unwrap_or(now)
    }

    /// Whether a batch may go at `now`. If it may, it counts as sent, and the next waits
    /// `interval × (1 + fraction / 2)`, `fraction` being a random draw in `[0, 1]` (clamped).
    pub fn try_send(&mut self, now: Instant, fraction: f64) -> bool {
        if self.not_before.is_some_and(|at| now < at) {
            return false;
        }
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.not_before = Some(now + self.interval.mul_f64(1.0 + fraction / 2.0));
        true
    }

    /// A new connection: its first batch goes at once.
    pub fn reset(&mut self) {
        self.not_before = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_at_once_then_one_to_one_and_a_half_intervals_apart() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut pacer = ReceiptPacer::new(second);
        assert_eq!(pacer.due(start), start);
        assert!(pacer.try_send(start, 1.0));
        assert_eq!(pacer.due(start), start + Duration::from_millis(1500));
        assert!(!pacer.try_send(start + Duration::from_millis(1499), 0.0));
        assert!(pacer.try_send(start + Duration::from_millis(1500), 0.0));
        assert_eq!(pacer.due(start), start + Duration::from_millis(2500));
        pacer.reset();
        assert!(pacer.try_send(start + Duration::from_millis(1600), f64::NAN));
        assert_eq!(pacer.due(start), start + Duration::from_millis(2600));
        let mut unpaced = ReceiptPacer::new(Duration::ZERO);
        assert!(unpaced.try_send(start, 1.0) && unpaced.try_send(start, 1.0));
        let mut huge = ReceiptPacer::new(Duration::MAX);
        assert!(huge.try_send(start, 1.0), "no overflow");
        assert_eq!(huge.due(start), start + INTERVAL_MAX.mul_f64(1.5));
    }
}
