//! Exponential backoff with full jitter, for reconnects and for repeating sends and history
//! fetches. Randomness and time come in as arguments, so the arithmetic is tested without an
//! RNG or a clock.

use std::time::{Duration, Instant};

/// How long a connection must stay up before losing it counts as a fresh start (the reconnect
/// backoff starts again from `base`). Shorter-lived connections keep growing the backoff, so a
/// server that welcomes us and then drops us at once is not hammered.
pub(crate) const CONNECTION_STABLE_AFTER: Duration = Duration::from_secs(5);

/// The upper bound of the delay before retry number `attempt` (from 0):
/// `min(max, base * 2^attempt)`, saturating instead of overflowing.
pub(crate) fn ceiling(base: Duration, max: Duration, attempt: u32) -> Duration {
    let doubled = 1u32
        .checked_shl(attempt)
        .and_then(|factor| base.checked_mul(factor));
    match doubled {
        Some(delay) => delay.min(max),
        None => max,
    }
}

/// "Full jitter": a delay drawn uniformly from `[0, ceiling]`, where `fraction` is the random
/// draw in `[0, 1]` (out-of-range or NaN draws are clamped, never a panic).
pub fn full_jitter(base: Duration, max: Duration, attempt: u32, fraction: f64) -> Duration {
    let ceiling = ceiling(base, max, attempt);
    let fraction = if fraction.is_finite() {
        fraction.clamp(0.0, 1.0)
    } else {
        0.0
    };
    Duration::try_from_secs_f64(ceiling.as_secs_f64() * fraction)
        .map_or(ceiling, |delay| delay.min(ceiling))
}

/// Counts consecutive failures and turns each into the next delay.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    /// Starts at attempt 0.
    pub(crate) fn new(base: Duration, max: Duration) -> Backoff {
        Backoff {
            base,
            max,
            attempt: 0,
        }
    }

    /// The delay before the next try, given a random `fraction` in `[0, 1]`; counts the attempt.
    pub(crate) fn next_delay(&mut self, fraction: f64) -> Duration {
        let delay = full_jitter(self.base, self.max, self.attempt, fraction);
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// After a success: the next failure waits at most `base` again.
    pub(crate) fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// The backoff between connect attempts. A `welcome` alone is not a success: only a connection
/// that stayed up for [`CONNECTION_STABLE_AFTER`] resets the attempt count when it is lost.
#[derive(Debug, Clone)]
pub(crate) struct ReconnectBackoff {
    backoff: Backoff,
    /// When the current connection was welcomed; `None` while not connected.
    up_since: Option<Instant>,
}

impl ReconnectBackoff {
    /// Starts at attempt 0, not connected.
    pub(crate) fn new(base: Duration, max: Duration) -> ReconnectBackoff {
        ReconnectBackoff {
            backoff: Backoff::new(base, max),
            up_since: None,
        }
    }

    /// A connection was welcomed at `now`.
    pub(crate) fn handle_welcome(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    /// The connection, or a connect attempt, failed at `now`: the delay before the next attempt,
    /// given a random `fraction` in `[0, 1]`.
    pub(crate) fn next_delay(&mut self, now: Instant, fraction: f64) -> Duration {
        let stayed_up = self.up_since.take().is_some_and(|up_since| {
            now.saturating_duration_since(up_since) >= CONNECTION_STABLE_AFTER
        });
        if stayed_up {
            self.backoff.reset();
        }
        self.backoff.next_delay(fraction)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    fn check(base: Duration, max: Duration, attempt: u32, fraction: f64, expected: Duration) {
        assert_eq!(
            full_jitter(base, max, attempt, fraction),
            expected,
            "base {base:?} max {max:?} attempt {attempt} fraction {fraction}"
        );
    }

    #[test]
    fn grows_exponentially_up_to_max() {
        check(BASE, MAX, 0, 1.0, ms(50));
        check(BASE, MAX, 1, 1.0, ms(100));
        check(BASE, MAX, 3, 1.0, ms(400));
        check(BASE, MAX, 6, 1.0, ms(3200));
        check(BASE, MAX, 7, 1.0, MAX);
        check(BASE, MAX, 31, 1.0, MAX);
        check(BASE, MAX, 32, 1.0, MAX);
        check(BASE, MAX, u32::MAX, 1.0, MAX);
        check(ms(10), ms(5), 0, 1.0, ms(5));
    }

    #[test]
    fn jitter_is_uniform_below_the_ceiling() {
        check(BASE, MAX, 0, 0.0, Duration::ZERO);
        check(BASE, MAX, 2, 0.5, ms(100));
        check(BASE, MAX, 10, 0.25, ms(1250));
        check(BASE, MAX, 2, 7.0, ms(200));
        check(BASE, MAX, 2, -1.0, Duration::ZERO);
        check(BASE, MAX, 2, f64::NAN, Duration::ZERO);
        check(Duration::MAX, Duration::MAX, 3, 1.0, Duration::MAX);
    }

    #[test]
    fn attempts_count_and_reset() {
        let mut backoff = Backoff::new(BASE, MAX);
        let delays: Vec<Duration> = (0..4).map(|_| backoff.next_delay(1.0)).collect();
        check(BASE, MAX, 0, 1.0, delays[0]);
        check(BASE, MAX, 3, 1.0, delays[3]);
        backoff.reset();
        check(BASE, MAX, 0, 1.0, backoff.next_delay(1.0));
    }

    /// Welcomes at `up` and losses at `down` (seconds), in order: the delay ceilings drawn.
    fn check_reconnects(steps: &[(Option<u64>, u64)], expected: &[Duration]) {
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let mut reconnect = ReconnectBackoff::new(BASE, MAX);
        let delays: Vec<Duration> = steps
            .iter()
            .map(|&(up, down)| {
                if let Some(up) = up {
                    reconnect.handle_welcome(at(up));
                }
                reconnect.next_delay(at(down), 1.0)
            })
            .collect();
        assert_eq!(delays, expected, "{steps:?}");
    }

    #[test]
    fn reconnect_backoff_resets_only_after_a_stable_connection() {
        // Failed attempts, then welcomes that are dropped at once: the backoff keeps growing.
        check_reconnects(
            &[(None, 0), (None, 0), (Some(0), 1), (Some(1), 5)],
            &[ms(50), ms(100), ms(200), ms(400)],
        );
        // A connection that stayed up 5 s starts over from `base`; failed attempts after it
        // grow again.
        check_reconnects(
            &[(None, 0), (None, 0), (Some(0), 5), (None, 5), (Some(5), 20)],
            &[ms(50), ms(100), ms(50), ms(100), ms(50)],
        );
    }
}
