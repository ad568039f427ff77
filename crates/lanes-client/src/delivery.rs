//! Dedupe, order and gap tracking of incoming messages: decides which message frames reach the
//! app (each `(conversation, seq)` once, in seq order, gap-free) and when a gap must be filled
//! from history. Our own sends come in here as messages too, made from their acks (the server
//! does not send them back to the connection that sent them). Sans-IO: the driver feeds frames
//! and history pages in and carries out the outputs.
//!
//! Memory: one `Lane` per conversation seen and not left since (a few words each; `left` drops
//! it) plus at most `buffered_len_max` out-of-order frames across all conversations. Frames beyond that bound are
//! dropped and fetched again from history, which holds every delivered message (the server
//! delivers nothing before it is durable).

use std::collections::{BTreeMap, HashMap, VecDeque};

use lanes_protocol::http::History;
use lanes_protocol::{ConversationId, Cursor, MessageFrame, Seq, StoreEpoch};
use tracing::warn;

/// What the driver must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DeliveryOutput {
    /// Hand this message to the app.
    Deliver(MessageFrame),
    /// Fetch history after `after` and pass the page to [`Delivery::handle_history`].
    Fetch(Fetch),
}

/// A history request. `lane_id` lets a page requested by a lane that is gone since (after an
/// epoch change, or `left` and perhaps `joined` again) be recognised and ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fetch {
    pub(crate) lane_id: u64,
    pub(crate) conversation_id: ConversationId,
    pub(crate) after: Seq,
}

#[derive(Debug)]
struct Lane {
    /// Unique among the lanes this `Delivery` ever created.
    id: u64,
    /// The highest seq handed to the app; everything up to it was handed over, in order.
    delivered: Seq,
    /// The highest seq seen from any source. `delivered < seen_max` means a gap to fill.
    seen_max: Seq,
    /// Frames above a gap, waiting for it to be filled.
    buffer: BTreeMap<Seq, MessageFrame>,
    /// A history fetch for this lane is outstanding.
    fetching: bool,
}

impl Lane {
    fn new(id: u64) -> Lane {
        Lane {
            id,
            delivered: Seq::ZERO,
            seen_max: Seq::ZERO,
            buffer: BTreeMap::new(),
            fetching: false,
        }
    }
}

/// Per-conversation cursors, the out-of-order buffer and the store epoch they belong to.
#[derive(Debug)]
pub(crate) struct Delivery {
    epoch: Option<StoreEpoch>,
    lanes: HashMap<ConversationId, Lane>,
    buffered_len: usize,
    buffered_len_max: usize,
    /// The id of the last lane created.
    lane_id_last: u64,
    output: VecDeque<DeliveryOutput>,
}

impl Delivery {
    /// Starts from the app's resume point.
    pub(crate) fn new(
        cursors: Vec<Cursor>,
        epoch: Option<StoreEpoch>,
        buffered_len_max: usize,
    ) -> Delivery {
        let mut delivery = Delivery {
            epoch,
            lanes: HashMap::new(),
            buffered_len: 0,
            buffered_len_max,
            lane_id_last: 0,
            output: VecDeque::new(),
        };
        for cursor in cursors {
            let lane = lane(
                &mut delivery.lanes,
                &mut delivery.lane_id_last,
                cursor.conversation_id,
            );
            lane.delivered = lane.delivered.max(cursor.seq);
            lane.seen_max = lane.delivered;
        }
        delivery
    }

    /// The cursors to send in `hello`: the highest seq delivered per conversation.
    pub(crate) fn cursors(&self) -> Vec<Cursor> {
        let mut cursors: Vec<Cursor> = self
            .lanes
            .iter()
            .filter(|(_, lane)| lane.delivered > Seq::ZERO)
            .map(|(conversation_id, lane)| Cursor {
                conversation_id: *conversation_id,
                seq: lane.delivered,
            })
            .collect();
        cursors.sort_by_key(|cursor| cursor.conversation_id);
        cursors
    }

    /// The epoch the cursors belong to.
    pub(crate) fn epoch(&self) -> Option<&StoreEpoch> {
        self.epoch.as_ref()
    }

    /// A `welcome` arrived. When its epoch differs from ours, the server ignores our cursors and
    /// replays everything, so all dedupe state restarts from zero. Returns whether it did.
    pub(crate) fn handle_welcome(&mut self, epoch: StoreEpoch) -> bool {
        let reset = epoch_changed(self.epoch.as_ref(), &epoch);
        if reset {
            self.lanes.clear();
            self.buffered_len = 0;
            self.output
                .retain(|output| !matches!(output, DeliveryOutput::Fetch(_)));
        }
        self.epoch = Some(epoch);
        reset
    }

    /// A `message` frame arrived (catch-up or live).
    pub(crate) fn handle_message(&mut self, message: MessageFrame) {
        let conversation_id = message.conversation_id;
        let lane = lane(&mut self.lanes, &mut self.lane_id_last, conversation_id);
        accept(
            lane,
            message,
            &mut self.buffered_len,
            self.buffered_len_max,
            &mut self.output,
        );
        self.request_fetch_if_gap(conversation_id);
    }

    /// An `ack` arrived that matches no pending send, so there is no body to make its message
    /// from. Its seq is stored all the same, and the sending connection gets no `message` frame
    /// for it: history fills it like any gap, rather than the next frame or reconnect.
    pub(crate) fn handle_stored_seq(&mut self, conversation_id: ConversationId, seq: Seq) {
        let lane = lane(&mut self.lanes, &mut self.lane_id_last, conversation_id);
        if seq > lane.delivered {
            lane.seen_max = lane.seen_max.max(seq);
        }
        self.request_fetch_if_gap(conversation_id);
    }

    /// A `left` frame arrived: no more frames of this conversation will come, and history would
    /// answer `not_found`. Its lane (cursor, buffer, outstanding fetch) is dropped, so that
    /// `hello` does not carry the cursors of every conversation ever left. If we join it again,
    /// the server catches it up from seq 0 and a new lane delivers it from there.
    pub(crate) fn handle_left(&mut self, conversation_id: ConversationId) {
        if let Some(lane) = self.lanes.remove(&conversation_id) {
            self.buffered_len -= lane.buffer.len();
        }
        self.output.retain(|output| {
            !matches!(output, DeliveryOutput::Fetch(fetch) if fetch.conversation_id == conversation_id)
        });
    }

    /// The answer to a [`DeliveryOutput::Fetch`]: a page of history, or `None` when the fetch
    /// failed definitely. Giving up on a gap loses nothing: the app's cursor stays below it, and
    /// the next live frame or the next reconnect's catch-up brings the missing seqs again.
    pub(crate) fn handle_history(&mut self, fetch: &Fetch, history: Option<History>) {
        let Some(lane) = self
            .lanes
            .get_mut(&fetch.conversation_id)
            .filter(|lane| lane.id == fetch.lane_id)
        else {
            return;
        };
        lane.fetching = false;
        let Some(history) = history else {
            abandon_gap(lane, &mut self.buffered_len);
            return;
        };
        let delivered_before = lane.delivered;
        for message in history.messages {
            if message.conversation_id == fetch.conversation_id {
                accept(
                    lane,
                    message,
                    &mut self.buffered_len,
                    self.buffered_len_max,
                    &mut self.output,
                );
            }
        }
        if lane.delivered == delivered_before && lane.delivered < lane.seen_max {
            // The server has nothing after our cursor although we saw later seqs: fetching
            // again would loop. Wait for the next frame or reconnect instead.
            warn!(
                conversation_id = fetch.conversation_id.0,
                delivered = lane.delivered.0,
                seen = lane.seen_max.0,
                "history did not fill a gap; waiting for catch-up"
            );
            abandon_gap(lane, &mut self.buffered_len);
        }
        self.request_fetch_if_gap(fetch.conversation_id);
    }

    /// The next thing to do, if any.
    pub(crate) fn poll_output(&mut self) -> Option<DeliveryOutput> {
        self.output.pop_front()
    }

    fn request_fetch_if_gap(&mut self, conversation_id: ConversationId) {
        let Some(lane) = self.lanes.get_mut(&conversation_id) else {
            return;
        };
        if lane.delivered < lane.seen_max && !lane.fetching {
            lane.fetching = true;
            self.output.push_back(DeliveryOutput::Fetch(Fetch {
                lane_id: lane.id,
                conversation_id,
                after: lane.delivered,
            }));
        }
    }
}

/// True when a welcome's epoch means our cursors are from another store. With no stored epoch
/// (a first connect without a saved resume point) the cursors are kept: the server decides, and
/// replayed seqs at or below a cursor are dropped as duplicates.
pub(crate) fn epoch_changed(stored: Option<&StoreEpoch>, welcome: &StoreEpoch) -> bool {
    stored.is_some_and(|stored| stored != welcome)
}

/// The lane of a conversation, created (with the next id) when it is new.
fn lane<'a>(
    lanes: &'a mut HashMap<ConversationId, Lane>,
    lane_id_last: &mut u64,
    conversation_id: ConversationId,
) -> &'a mut Lane {
    lanes.entry(conversation_id).or_insert_with(|| {
        *lane_id_last += 1;
        Lane::new(*lane_id_last)
    })
}

/// Delivers `message` if it is the next seq, buffers it if it is beyond a gap, drops it if it is
/// a duplicate; then delivers whatever the buffer now continues.
fn accept(
    lane: &mut Lane,
    message: MessageFrame,
    buffered_len: &mut usize,
    buffered_len_max: usize,
    output: &mut VecDeque<DeliveryOutput>,
) {
    let seq = message.seq;
    if seq <= lane.delivered {
        return;
    }
    lane.seen_max = lane.seen_max.max(seq);
    if seq != lane.delivered.next() {
        if lane.buffer.contains_key(&seq) {
            return;
        }
        if *buffered_len >= buffered_len_max {
            // Over budget: drop this lane's buffer too, and let history bring it all in order.
            *buffered_len -= lane.buffer.len();
            lane.buffer.clear();
            return;
        }
        lane.buffer.insert(seq, message);
        *buffered_len += 1;
        return;
    }
    lane.delivered = seq;
    output.push_back(DeliveryOutput::Deliver(message));
    while let Some(entry) = lane.buffer.first_entry() {
        let next = *entry.key();
        if next > lane.delivered.next() {
            break;
        }
        let buffered = entry.remove();
        *buffered_len -= 1;
        if next == lane.delivered.next() {
            lane.delivered = next;
            output.push_back(DeliveryOutput::Deliver(buffered));
        }
    }
}

fn abandon_gap(lane: &mut Lane, buffered_len: &mut usize) {
    *buffered_len -= lane.buffer.len();
    lane.buffer.clear();
    lane.seen_max = lane.delivered;
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanes_protocol::{ClientMsgId, MessageId, UnixMillis, UserId};

    /// One input to the state machine; conversations and seqs are plain numbers.
    enum In {
        Msg(u64, u64),
        /// An ack for no pending send: conversation, seq.
        StoredSeq(u64, u64),
        Welcome(&'static str),
        Left(u64),
        /// A history page for the conversation's latest fetch: seqs, has_more.
        History(u64, Vec<u64>, bool),
        HistoryFailed(u64),
    }

    /// One output.
    #[derive(Debug, Clone, PartialEq)]
    enum Out {
        Deliver(u64, u64),
        Fetch(u64, u64),
    }

    fn message(conversation: u64, seq: u64) -> MessageFrame {
        MessageFrame::new_message(
            ConversationId(conversation),
            Seq(seq),
            MessageId(conversation * 1000 + seq),
            UserId::parse("alice").unwrap(),
            ClientMsgId::parse(&format!("m{conversation}-{seq}")).unwrap(),
            format!("body {seq}"),
            UnixMillis(0),
        )
    }

    fn seqs(range: std::ops::RangeInclusive<u64>) -> Vec<u64> {
        range.collect()
    }

    fn delivers(conversation: u64, range: std::ops::RangeInclusive<u64>) -> Vec<Out> {
        range.map(|seq| Out::Deliver(conversation, seq)).collect()
    }

    /// Runs `steps` from the resume point `cursors`/`epoch`, checking the outputs of each step
    /// and the cursors at the end. The latest fetch per conversation answers `History` inputs,
    /// so a fetch from before an epoch change stays stale.
    fn check(
        cursors: &[(u64, u64)],
        epoch: Option<&str>,
        buffered_len_max: usize,
        steps: Vec<(In, Vec<Out>)>,
        final_cursors: &[(u64, u64)],
    ) {
        let cursors = cursors
            .iter()
            .map(|&(conversation, seq)| Cursor {
                conversation_id: ConversationId(conversation),
                seq: Seq(seq),
            })
            .collect();
        let mut delivery = Delivery::new(
            cursors,
            epoch.map(|epoch| StoreEpoch(epoch.into())),
            buffered_len_max,
        );
        let mut fetches: HashMap<u64, Fetch> = HashMap::new();
        for (index, (input, expected)) in steps.into_iter().enumerate() {
            match input {
                In::Msg(conversation, seq) => delivery.handle_message(message(conversation, seq)),
                In::StoredSeq(conversation, seq) => {
                    delivery.handle_stored_seq(ConversationId(conversation), Seq(seq));
                }
                In::Welcome(epoch) => {
                    delivery.handle_welcome(StoreEpoch(epoch.into()));
                }
                In::Left(conversation) => delivery.handle_left(ConversationId(conversation)),
                In::History(conversation, seqs, has_more) => {
                    let fetch = fetches[&conversation].clone();
                    let messages = seqs.iter().map(|seq| message(conversation, *seq)).collect();
                    delivery.handle_history(&fetch, Some(History { messages, has_more }));
                }
                In::HistoryFailed(conversation) => {
                    let fetch = fetches[&conversation].clone();
                    delivery.handle_history(&fetch, None);
                }
            }
            let mut outputs = Vec::new();
            while let Some(output) = delivery.poll_output() {
                outputs.push(match output {
                    DeliveryOutput::Deliver(message) => {
                        assert_eq!(message.body, format!("body {}", message.seq));
                        Out::Deliver(message.conversation_id.0, message.seq.0)
                    }
                    DeliveryOutput::Fetch(fetch) => {
                        let out = Out::Fetch(fetch.conversation_id.0, fetch.after.0);
                        fetches.insert(fetch.conversation_id.0, fetch);
                        out
                    }
                });
            }
            assert_eq!(outputs, expected, "step {index}");
        }
        let cursors: Vec<(u64, u64)> = delivery
            .cursors()
            .iter()
            .map(|cursor| (cursor.conversation_id.0, cursor.seq.0))
            .collect();
        assert_eq!(cursors, final_cursors, "final cursors");
        assert_eq!(
            delivery.buffered_len,
            delivery
                .lanes
                .values()
                .map(|lane| lane.buffer.len())
                .sum::<usize>(),
            "buffered_len agrees with the buffers"
        );
    }

    #[test]
    fn delivers_in_order_and_drops_duplicates() {
        check(
            &[],
            None,
            100,
            vec![
                (In::Msg(1, 1), vec![Out::Deliver(1, 1)]),
                (In::Msg(1, 2), vec![Out::Deliver(1, 2)]),
                (In::Msg(1, 2), vec![]),
                (In::Msg(1, 1), vec![]),
                (In::Msg(2, 1), vec![Out::Deliver(2, 1)]),
            ],
            &[(1, 2), (2, 1)],
        );
        check(
            &[(1, 5), (1, 3)],
            Some("e1"),
            100,
            vec![
                (In::Welcome("e1"), vec![]),
                (In::Msg(1, 4), vec![]),
                (In::Msg(1, 5), vec![]),
                (In::Msg(1, 6), vec![Out::Deliver(1, 6)]),
            ],
            &[(1, 6)],
        );
    }

    #[test]
    fn fills_gaps_from_history() {
        // A gap: later live frames wait in the buffer while history fills it.
        check(
            &[],
            None,
            100,
            vec![
                (In::Msg(1, 1), vec![Out::Deliver(1, 1)]),
                (In::Msg(1, 4), vec![Out::Fetch(1, 1)]),
                (In::Msg(1, 5), vec![]),
                (In::History(1, seqs(2..=4), false), delivers(1, 2..=5)),
                (In::Msg(1, 6), vec![Out::Deliver(1, 6)]),
            ],
            &[(1, 6)],
        );
        // Live frames fill the gap before history answers; the page is then all duplicates.
        check(
            &[],
            None,
            100,
            vec![
                (In::Msg(1, 3), vec![Out::Fetch(1, 0)]),
                (In::Msg(1, 1), vec![Out::Deliver(1, 1)]),
                (In::Msg(1, 2), vec![Out::Deliver(1, 2), Out::Deliver(1, 3)]),
                (In::History(1, seqs(1..=3), false), vec![]),
            ],
            &[(1, 3)],
        );
        // A long gap takes several pages; the buffer continues the last one.
        check(
            &[],
            None,
            100,
            vec![
                (In::Msg(1, 9), vec![Out::Fetch(1, 0)]),
                (
                    In::History(1, seqs(1..=4), true),
                    [delivers(1, 1..=4), vec![Out::Fetch(1, 4)]].concat(),
                ),
                (In::History(1, seqs(5..=8), true), delivers(1, 5..=9)),
            ],
            &[(1, 9)],
        );
        // Gaps in two conversations are filled independently.
        check(
            &[],
            None,
            100,
            vec![
                (In::Msg(1, 2), vec![Out::Fetch(1, 0)]),
                (In::Msg(2, 3), vec![Out::Fetch(2, 0)]),
                (In::History(2, seqs(1..=2), false), delivers(2, 1..=3)),
                (In::History(1, seqs(1..=1), false), delivers(1, 1..=2)),
            ],
            &[(1, 2), (2, 3)],
        );
    }

    #[test]
    fn stored_seqs_without_a_message_are_fetched() {
        check(
            &[(2, 4)],
            None,
            100,
            vec![
                (In::Msg(1, 1), vec![Out::Deliver(1, 1)]),
                // At or below the cursor: nothing to do.
                (In::StoredSeq(1, 1), vec![]),
                (In::StoredSeq(2, 3), vec![]),
                // Above it: a gap like any other, filled from history.
                (In::StoredSeq(1, 2), vec![Out::Fetch(1, 1)]),
                (In::Msg(1, 3), vec![]),
                (In::History(1, seqs(2..=3), false), delivers(1, 2..=3)),
                (In::StoredSeq(3, 1), vec![Out::Fetch(3, 0)]),
                (In::History(3, seqs(1..=1), false), delivers(3, 1..=1)),
            ],
            &[(1, 3), (2, 4), (3, 1)],
        );
    }

    #[test]
    fn buffer_overflow_falls_back_to_history() {
        check(
            &[],
            None,
            2,
            vec![
                (In::Msg(1, 5), vec![Out::Fetch(1, 0)]),
                (In::Msg(1, 6), vec![]),
                // Third frame over a budget of 2: the buffer is dropped.
                (In::Msg(1, 7), vec![]),
                (
                    In::History(1, seqs(1..=4), false),
                    [delivers(1, 1..=4), vec![Out::Fetch(1, 4)]].concat(),
                ),
                (In::History(1, seqs(5..=7), false), delivers(1, 5..=7)),
            ],
            &[(1, 7)],
        );
        // Another conversation's frames do not fit either while the budget is used up.
        check(
            &[],
            None,
            1,
            vec![
                (In::Msg(1, 3), vec![Out::Fetch(1, 0)]),
                (In::Msg(2, 3), vec![Out::Fetch(2, 0)]),
                (
                    In::History(2, seqs(1..=2), false),
                    [delivers(2, 1..=2), vec![Out::Fetch(2, 2)]].concat(),
                ),
                (In::History(2, seqs(3..=3), false), delivers(2, 3..=3)),
                (In::History(1, seqs(1..=2), false), delivers(1, 1..=3)),
            ],
            &[(1, 3), (2, 3)],
        );
    }

    #[test]
    fn gives_up_on_gaps_history_cannot_fill() {
        // A failed fetch drops the buffer; the next frame asks again.
        check(
            &[],
            None,
            100,
            vec![
                (In::Msg(1, 3), vec![Out::Fetch(1, 0)]),
                (In::HistoryFailed(1), vec![]),
                (In::Msg(1, 4), vec![Out::Fetch(1, 0)]),
                (In::History(1, seqs(1..=4), false), delivers(1, 1..=4)),
            ],
            &[(1, 4)],
        );
        // A page that makes no progress does not loop.
        check(
            &[(1, 2)],
            None,
            100,
            vec![
                (In::Msg(1, 5), vec![Out::Fetch(1, 2)]),
                (In::History(1, vec![], true), vec![]),
                (In::Msg(1, 3), vec![Out::Deliver(1, 3)]),
            ],
            &[(1, 3)],
        );
        // After `left`, the gap is forgotten and the failing fetch changes nothing.
        check(
            &[],
            None,
            100,
            vec![
                (In::Msg(1, 1), vec![Out::Deliver(1, 1)]),
                (In::Msg(1, 3), vec![Out::Fetch(1, 1)]),
                (In::Left(1), vec![]),
                (In::HistoryFailed(1), vec![]),
            ],
            &[],
        );
    }

    #[test]
    fn left_forgets_the_conversation() {
        // The cursor of a conversation we left is not carried in the next `hello`; one we join
        // again is delivered from the server's catch-up, from seq 1.
        check(
            &[(3, 9)],
            None,
            100,
            vec![
                (In::Msg(1, 1), vec![Out::Deliver(1, 1)]),
                (In::Msg(1, 2), vec![Out::Deliver(1, 2)]),
                (In::Msg(2, 1), vec![Out::Deliver(2, 1)]),
                (In::Left(1), vec![]),
                (In::Left(3), vec![]),
                (In::Left(4), vec![]),
                (In::Msg(1, 1), vec![Out::Deliver(1, 1)]),
                (In::Msg(1, 2), vec![Out::Deliver(1, 2)]),
                (In::Left(1), vec![]),
            ],
            &[(2, 1)],
        );
        // Buffered frames go with the lane, and a page fetched for the old lane is ignored by
        // the lane of the next membership, which fetches for itself.
        check(
            &[],
            None,
            100,
            vec![
                (In::Msg(1, 1), vec![Out::Deliver(1, 1)]),
                (In::Msg(1, 3), vec![Out::Fetch(1, 1)]),
                (In::Msg(1, 4), vec![]),
                (In::Left(1), vec![]),
                (In::Msg(1, 1), vec![Out::Deliver(1, 1)]),
                (In::History(1, seqs(2..=4), false), vec![]),
                (In::Msg(1, 3), vec![Out::Fetch(1, 1)]),
                (In::History(1, seqs(2..=3), false), delivers(1, 2..=3)),
            ],
            &[(1, 3)],
        );
    }

    #[test]
    fn epoch_change_resets_cursors() {
        check(
            &[(1, 5), (2, 2)],
            Some("old"),
            100,
            vec![
                (In::Welcome("old"), vec![]),
                (In::Msg(1, 5), vec![]),
                (In::Welcome("new"), vec![]),
                (In::Msg(1, 1), vec![Out::Deliver(1, 1)]),
                (In::Welcome("new"), vec![]),
                (In::Msg(1, 1), vec![]),
            ],
            &[(1, 1)],
        );
        // Without a stored epoch the cursors are kept and replayed seqs dropped.
        check(
            &[(1, 5)],
            None,
            100,
            vec![
                (In::Welcome("e1"), vec![]),
                (In::Msg(1, 1), vec![]),
                (In::Msg(1, 6), vec![Out::Deliver(1, 6)]),
            ],
            &[(1, 6)],
        );
        // A page fetched before the change is stale and ignored.
        check(
            &[],
            Some("old"),
            100,
            vec![
                (In::Msg(1, 3), vec![Out::Fetch(1, 0)]),
                (In::Welcome("new"), vec![]),
                (In::History(1, seqs(1..=3), false), vec![]),
                (In::Msg(1, 1), vec![Out::Deliver(1, 1)]),
            ],
            &[(1, 1)],
        );
    }
}
