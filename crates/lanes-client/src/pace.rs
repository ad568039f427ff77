//! How often automatic delivery receipts go out (`ClientConfig::receipts_interval`). Time and
//! randomness come in as arguments, so the rule is tested without a clock or an RNG.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use lanes_protocol::{ConversationId, Seq};

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
    /// A batch that finds the pacer free waits a random part of one interval (`spreading`).
    spread: bool,
    /// The waiting batch has had its wait (a drawn one, or the rest of the last interval).
    waited: bool,
}

impl ReceiptPacer {
    /// A pacer for `interval` (zero: no pacing; above a day: a day).
    pub fn new(interval: Duration) -> ReceiptPacer {
        ReceiptPacer {
            interval: interval.min(INTERVAL_MAX),
            not_before: None,
            spread: false,
            waited: false,
        }
    }

    /// The same, but a batch that finds the pacer free (the first one, or the first after a
    /// quiet time) waits a random part of one interval too: for conversations where nobody
    /// watches delivery live (large ones), so that the message ending a quiet time, or what a
    /// reconnect catches up, is not confirmed by every member at once.
    pub fn spreading(interval: Duration) -> ReceiptPacer {
        ReceiptPacer {
            spread: true,
            ..ReceiptPacer::new(interval)
        }
    }

    /// When a batch waiting at `now` may go.
    pub fn due(&self, now: Instant) -> Instant {
        self.not_before.unwrap_or(now)
    }

    /// Whether a batch may go at `now`. If it may, it counts as sent, and the next waits
    /// `interval × (1 + fraction / 2)`, `fraction` being a random draw in `[0, 1]` (clamped).
    /// With `spreading`, a batch that finds the pacer free is told to wait
    /// `interval × fraction` first.
    pub fn try_send(&mut self, now: Instant, fraction: f64) -> bool {
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        if self.not_before.is_some_and(|at| now < at) {
            self.waited = true;
            return false;
        }
        if self.spread && !self.waited && fraction > 0.0 {
            self.not_before = Some(now + self.interval.mul_f64(fraction));
            self.waited = true;
            return false;
        }
        self.not_before = Some(now + self.interval.mul_f64(1.0 + fraction / 2.0));
        self.waited = false;
        true
    }

    /// A new connection: its first batch goes at once (with `spreading`, after its own wait).
    pub fn reset(&mut self) {
        self.not_before = None;
        self.waited = false;
    }
}

/// Positions received on this connection and not yet confirmed, one per conversation, in two
/// classes paced apart: ordinary conversations and large ones (`synced`'s `large`), where a
/// delivered position is shown to no one live and confirming it often only costs the server.
#[derive(Debug)]
pub(crate) struct Unconfirmed {
    ordinary: Waiting,
    large: Waiting,
    large_ids: HashSet<ConversationId>,
}

#[derive(Debug)]
struct Waiting {
    pacer: ReceiptPacer,
    positions: HashMap<ConversationId, Seq>,
}

impl Unconfirmed {
    pub(crate) fn new(interval: Duration, large_interval: Duration) -> Unconfirmed {
        let class = |pacer| Waiting {
            pacer,
            positions: HashMap::new(),
        };
        Unconfirmed {
            ordinary: class(ReceiptPacer::new(interval)),
            large: class(ReceiptPacer::spreading(large_interval)),
            large_ids: HashSet::new(),
        }
    }

    /// The server named the large conversations; what waits moves to its class.
    pub(crate) fn set_large(&mut self, ids: Vec<ConversationId>) {
        self.large_ids = ids.into_iter().collect();
        let waiting = std::mem::take(&mut self.ordinary.positions)
            .into_iter()
            .chain(std::mem::take(&mut self.large.positions));
        for (conversation_id, seq) in waiting {
            self.received(conversation_id, seq);
        }
    }

    /// The user joined a large conversation (`joined`'s `large`), or one grew past the bound
    /// (`large`).
    pub(crate) fn add_large(&mut self, conversation_id: ConversationId) {
        if self.large_ids.insert(conversation_id)
            && let Some(seq) = self.ordinary.positions.remove(&conversation_id)
        {
            self.received(conversation_id, seq);
        }
    }

    /// A group is within the bound again: the server tells its members online of membership
    /// changes (`member_added`, `member_removed`) only then. What waits moves back to the
    /// ordinary class.
    pub(crate) fn remove_large(&mut self, conversation_id: ConversationId) {
        if self.large_ids.remove(&conversation_id)
            && let Some(seq) = self.large.positions.remove(&conversation_id)
        {
            self.received(conversation_id, seq);
        }
    }

    /// `seq` of `conversation_id` arrived.
    pub(crate) fn received(&mut self, conversation_id: ConversationId, seq: Seq) {
        let class = if self.large_ids.contains(&conversation_id) {
            &mut self.large
        } else {
            &mut self.ordinary
        };
        let waiting = class.positions.entry(conversation_id).or_default();
        *waiting = (*waiting).max(seq);
    }

    /// The user read up to `seq`: a waiting position at or below it would say nothing new.
    pub(crate) fn read(&mut self, conversation_id: ConversationId, seq: Seq) {
        for class in [&mut self.ordinary, &mut self.large] {
            if class
                .positions
                .get(&conversation_id)
                .is_some_and(|waiting| *waiting <= seq)
            {
                class.positions.remove(&conversation_id);
            }
        }
    }

    /// When the next waiting positions may go, if any wait.
    pub(crate) fn due(&self, now: Instant) -> Option<Instant> {
        [&self.ordinary, &self.large]
            .into_iter()
            .filter(|class| !class.positions.is_empty())
            .map(|class| class.pacer.due(now))
            .min()
    }

    /// The positions to confirm at `now`: each class's, if its pacer lets them go (`fraction`:
    /// the random draw of `ReceiptPacer::try_send`).
    pub(crate) fn take_due(&mut self, now: Instant, fraction: f64) -> Vec<(ConversationId, Seq)> {
        let mut due = Vec::new();
        for class in [&mut self.ordinary, &mut self.large] {
            if !class.positions.is_empty() && class.pacer.try_send(now, fraction) {
                due.extend(class.positions.drain());
            }
        }
        due
    }

    /// A new connection: nothing waits, and the first positions go at once (in large
    /// conversations after a drawn wait).
    pub(crate) fn reset(&mut self) {
        for class in [&mut self.ordinary, &mut self.large] {
            class.positions.clear();
            class.pacer.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_conversations_are_confirmed_on_their_own_pace() {
        let start = Instant::now();
        let (small, large) = (ConversationId(1), ConversationId(2));
        let mut unconfirmed = Unconfirmed::new(Duration::from_secs(1), Duration::from_secs(30));
        unconfirmed.received(large, Seq(3));
        unconfirmed.set_large(vec![large]);
        unconfirmed.received(small, Seq(5));
        unconfirmed.received(small, Seq(4));
        assert_eq!(unconfirmed.due(start), Some(start));
        let mut first = unconfirmed.take_due(start, 0.0);
        first.sort();
        assert_eq!(first, vec![(small, Seq(5)), (large, Seq(3))]);
        unconfirmed.received(small, Seq(6));
        unconfirmed.received(large, Seq(7));
        let second = start + Duration::from_secs(1);
        assert_eq!(unconfirmed.due(start), Some(second));
        assert_eq!(unconfirmed.take_due(second, 0.0), vec![(small, Seq(6))]);
        assert_eq!(
            unconfirmed.due(second),
            Some(start + Duration::from_secs(30)),
            "only the large conversation waits, on its own interval"
        );
        assert!(
            unconfirmed
                .take_due(start + Duration::from_secs(29), 0.0)
                .is_empty()
        );
        unconfirmed.read(large, Seq(6));
        assert!(unconfirmed.due(second).is_some(), "read below what waits");
        unconfirmed.read(large, Seq(7));
        assert_eq!(unconfirmed.due(second), None);
        unconfirmed.received(large, Seq(8));
        unconfirmed.reset();
        assert_eq!(unconfirmed.due(second), None);
        unconfirmed.received(large, Seq(9));
        assert_eq!(unconfirmed.take_due(second, 0.0), vec![(large, Seq(9))]);
    }

    #[test]
    fn a_group_back_within_the_bound_is_confirmed_on_the_ordinary_pace() {
        let start = Instant::now();
        let group = ConversationId(2);
        let mut unconfirmed = Unconfirmed::new(Duration::from_secs(1), Duration::from_secs(30));
        unconfirmed.add_large(group);
        unconfirmed.received(group, Seq(3));
        // A large group's first position waits a random part of its interval: here half.
        assert!(unconfirmed.take_due(start, 0.5).is_empty());
        unconfirmed.remove_large(group);
        assert_eq!(unconfirmed.take_due(start, 0.5), vec![(group, Seq(3))]);
        unconfirmed.received(group, Seq(4));
        let later = start + Duration::from_millis(1250);
        assert_eq!(unconfirmed.take_due(later, 0.0), vec![(group, Seq(4))]);
    }

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

    #[test]
    fn a_spreading_pacer_draws_a_wait_when_it_is_free() {
        let secs = Duration::from_secs;
        let start = Instant::now();
        let mut pacer = ReceiptPacer::spreading(secs(30));
        assert_eq!(pacer.due(start), start, "nothing drawn yet");
        assert!(!pacer.try_send(start, 0.5));
        let first = start + secs(15);
        assert_eq!(pacer.due(start), first);
        assert!(!pacer.try_send(first - Duration::from_millis(1), 0.5));
        assert!(pacer.try_send(first, 0.0));
        assert_eq!(pacer.due(first), first + secs(30));
        // A batch arriving within the interval goes at its end, with no extra wait.
        assert!(!pacer.try_send(first + secs(10), 0.9));
        assert!(pacer.try_send(first + secs(30), 0.9));
        // After a quiet time the next batch waits a drawn part of an interval again.
        let quiet = first + secs(200);
        assert!(!pacer.try_send(quiet, 0.2));
        assert_eq!(pacer.due(quiet), quiet + secs(6));
        assert!(pacer.try_send(quiet + secs(6), 0.2));
        pacer.reset();
        assert!(!pacer.try_send(quiet, 0.1), "spread again after a reset");
        assert!(pacer.try_send(quiet + secs(3), 0.1));
    }
}
