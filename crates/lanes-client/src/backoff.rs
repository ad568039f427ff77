//! Exponential backoff with full jitter, for reconnects and for repeating sends and history
//! fetches. Randomness comes in as an argument, so the arithmetic is tested without an RNG.

use std::time::Duration;

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
pub(crate) fn full_jitter(base: Duration, max: Duration, attempt: u32, fraction: f64) -> Duration {
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
}
