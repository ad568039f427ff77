//! Bookkeeping of sends awaiting their ack: which to write now, which to write again after a
//! reconnect or a retryable error, and which `ack` or `error` frame resolves which send. An ack
//! also turns its send into the `message` frame the sending connection no longer receives.
//! Sans-IO: time and randomness are arguments; `R` is whatever the driver answers the app with.
//!
//! Memory: one entry (with its body, at most `MESSAGE_BODY_BYTES_MAX`) per send the app started
//! that is not resolved yet, and nothing once it is: an ack or a definite error removes the
//! entry with every index into it (an ack moves the body into its message, not a copy). Only
//! the app bounds the number of entries. Dropping a `send` future does not cancel the send (its
//! outcome may already be unknown, so it is written again until acked), so an app that gives up
//! waiting, for example with a timeout, still holds one entry per such send until the server
//! answers it. What does not accumulate are the
//! responders of abandoned calls: sending the same `client_msg_id` again first drops the
//! responders nobody waits on, so retrying one send in a loop keeps one entry and at most the
//! live callers' responders. At most `in_flight_max` entries are written and unacked at once,
//! matching the server's per-connection limit, so the server never stops reading our frames
//! while we wait for acks.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use lanes_protocol::{
    AckFrame, ClientFrame, ClientMsgId, Content, ConversationId, ErrorFrame, MessageFrame, UserId,
};

use crate::backoff::full_jitter;
use crate::error::code_is_retryable;

/// The app's side of one send call.
pub(crate) trait Responder {
    /// True when nobody waits for the outcome any more (the app dropped its `send` future).
    fn is_abandoned(&self) -> bool;
}

/// Timing and limits of [`PendingSends`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingSettings {
    /// A send written this long ago without an ack means the connection is broken.
    pub(crate) ack_timeout: Duration,
    /// Backoff of a send after a retryable error.
    pub(crate) backoff_base: Duration,
    /// Cap of that backoff.
    pub(crate) backoff_max: Duration,
    /// Most sends written and unacked at once.
    pub(crate) in_flight_max: usize,
}

/// Where a pending send is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// To be written when connected and below `in_flight_max`.
    Queued,
    /// Written at this instant, no answer yet.
    InFlight(Instant),
    /// Answered with a retryable error; queued again at this instant.
    Waiting(Instant),
}

#[derive(Debug)]
struct Entry<R> {
    client_msg_id: ClientMsgId,
    conversation_id: ConversationId,
    /// What is sent: a message, or an edit, delete or reaction.
    content: Content,
    /// Usually one; more when the app sends the same `client_msg_id` again before it resolved.
    responders: Vec<R>,
    state: State,
    /// Retryable errors so far, for the backoff.
    retries: u32,
}

/// What an `ack` frame resolved.
#[derive(Debug)]
pub(crate) struct Acked<R> {
    /// Answer these with the ack.
    pub(crate) responders: Vec<R>,
    /// The acked send as a `message` frame, to deliver like one received live: the server does
    /// not send our own message back to the connection that sent it, the ack is its delivery.
    pub(crate) message: MessageFrame,
}

/// How an `error` frame relates to the pending sends.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ErrorMatch<R> {
    /// Not about one of our sends: the app should see it.
    Unrelated,
    /// About a send, which will be written again after a backoff.
    Retrying,
    /// A definite failure of a send: answer these responders with the error.
    Failed(Vec<R>),
}

/// The pending sends, keyed by `client_msg_id`, oldest first.
#[derive(Debug)]
pub(crate) struct PendingSends<R> {
    settings: PendingSettings,
    /// By order of first send, so resends after a reconnect keep the app's order.
    entries: BTreeMap<u64, Entry<R>>,
    orders: HashMap<ClientMsgId, u64>,
    queued: BTreeSet<u64>,
    in_flight: BTreeSet<(Instant, u64)>,
    waiting: BTreeSet<(Instant, u64)>,
    next_order: u64,
    connected: bool,
}

impl<R: Responder> PendingSends<R> {
    /// No sends, disconnected.
    pub(crate) fn new(settings: PendingSettings) -> PendingSends<R> {
        PendingSends {
            settings,
            entries: BTreeMap::new(),
            orders: HashMap::new(),
            queued: BTreeSet::new(),
            in_flight: BTreeSet::new(),
            waiting: BTreeSet::new(),
            next_order: 0,
            connected: false,
        }
    }

    /// Sends not resolved yet.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// The app asked to send. A `client_msg_id` that is already pending keeps its first
    /// conversation and body (the server would answer a retry with the original ack anyway) and
    /// gains a responder, replacing those whose callers stopped waiting.
    pub(crate) fn insert(
        &mut self,
        client_msg_id: ClientMsgId,
        conversation_id: ConversationId,
        content: Content,
        responder: R,
    ) {
        if let Some(entry) = self
            .orders
            .get(&client_msg_id)
            .and_then(|order| self.entries.get_mut(order))
        {
            entry
                .responders
                .retain(|responder| !responder.is_abandoned());
            entry.responders.push(responder);
            return;
        }
        let order = self.next_order;
        self.next_order += 1;
        self.orders.insert(client_msg_id.clone(), order);
        self.entries.insert(
            order,
            Entry {
                client_msg_id,
                conversation_id,
                content,
                responders: vec![responder],
                state: State::Queued,
                retries: 0,
            },
        );
        self.queued.insert(order);
    }

    /// A `welcome` arrived: sends may be written.
    pub(crate) fn handle_connected(&mut self) {
        self.connected = true;
    }

    /// The connection is gone: whatever was in flight has an unknown outcome and is written
    /// again, with the same id, on the next connection.
    pub(crate) fn handle_disconnected(&mut self) {
        self.connected = false;
        for (_, order) in std::mem::take(&mut self.in_flight) {
            if let Some(entry) = self.entries.get_mut(&order) {
                entry.state = State::Queued;
                self.queued.insert(order);
            }
        }
    }

    /// The next `send` frame to write now, oldest first.
    pub(crate) fn poll_write(&mut self, now: Instant) -> Option<ClientFrame> {
        if !self.connected || self.in_flight.len() >= self.settings.in_flight_max {
            return None;
        }
        let order = self.queued.pop_first()?;
        let entry = self.entries.get_mut(&order)?;
        entry.state = State::InFlight(now);
        self.in_flight.insert((now, order));
        Some(ClientFrame::lane_event(
            entry.client_msg_id.clone(),
            entry.conversation_id,
            entry.content.clone(),
        ))
    }

    /// An `ack` arrived: the responders of its send and the send as a message from `sender_id`
    /// (our user, as the last `welcome` said), if it is pending; `None` if not.
    ///
    /// The ack gives conversation, seq, ids and time; the pending send gives only the body. A
    /// retried `client_msg_id` the server had stored earlier gets the original ack, whose seq
    /// is usually at or below the cursor already: dedupe then drops the message. The body is
    /// this send's, which differs from the stored one only if the app reused a `client_msg_id`
    /// with another body.
    pub(crate) fn handle_ack(&mut self, ack: &AckFrame, sender_id: &UserId) -> Option<Acked<R>> {
        let order = self.orders.get(&ack.client_msg_id).copied()?;
        let entry = self.remove(order)?;
        let kind = entry.content.kind();
        let mut message = MessageFrame::new_message(
            ack.conversation_id,
            ack.seq,
            ack.message_id,
            sender_id.clone(),
            entry.client_msg_id,
            String::new(),
            ack.server_ts,
        );
        message.kind = kind;
        match entry.content {
            Content::Message { body, reply_to } => {
                message.body = body;
                message.reply_to = reply_to;
            }
            Content::Edit { target_seq, body } => {
                message.body = body;
                message.target_seq = Some(target_seq);
            }
            Content::Delete { target_seq } => message.target_seq = Some(target_seq),
            // Never pending: `Client::append` refuses system content.
            Content::System { body } => message.body = body,
            Content::Reaction {
                target_seq, emoji, ..
            } => {
                message.target_seq = Some(target_seq);
                message.emoji = Some(emoji);
            }
        }
        Some(Acked {
            responders: entry.responders,
            message,
        })
    }

    /// An `error` frame arrived. `fraction` is a random draw in `[0, 1]` for the backoff.
    pub(crate) fn handle_error(
        &mut self,
        error: &ErrorFrame,
        now: Instant,
        fraction: f64,
    ) -> ErrorMatch<R> {
        let Some(order) = error
            .request_id
            .as_deref()
            .and_then(|request_id| ClientMsgId::parse(request_id).ok())
            .and_then(|client_msg_id| self.orders.get(&client_msg_id).copied())
        else {
            return ErrorMatch::Unrelated;
        };
        if !code_is_retryable(error.code) {
            let responders = self
                .remove(order)
                .map_or_else(Vec::new, |entry| entry.responders);
            return ErrorMatch::Failed(responders);
        }
        let Some(entry) = self.entries.get_mut(&order) else {
            return ErrorMatch::Unrelated;
        };
        // Only the answer to the write in flight counts; a queued or waiting send is written
        // again anyway.
        if let State::InFlight(sent_at) = entry.state {
            self.in_flight.remove(&(sent_at, order));
            let delay = full_jitter(
                self.settings.backoff_base,
                self.settings.backoff_max,
                entry.retries,
                fraction,
            );
            entry.retries = entry.retries.saturating_add(1);
            // The server's hint (rate limits) is a floor under the backoff.
            let hint = Duration::from_millis(error.retry_after_ms.unwrap_or(0));
            let until = later(now, delay.max(hint));
            entry.state = State::Waiting(until);
            self.waiting.insert((until, order));
        }
        ErrorMatch::Retrying
    }

    /// Time passed: sends whose backoff ended are queued again. Returns true when a send has
    /// waited longer than `ack_timeout` for its ack, so the connection should be replaced.
    pub(crate) fn handle_timeout(&mut self, now: Instant) -> bool {
        while let Some(&(until, order)) = self.waiting.first() {
            if until > now {
                break;
            }
            self.waiting.pop_first();
            if let Some(entry) = self.entries.get_mut(&order) {
                entry.state = State::Queued;
                self.queued.insert(order);
            }
        }
        self.ack_deadline().is_some_and(|deadline| deadline <= now)
    }

    /// When [`PendingSends::handle_timeout`] should be called next.
    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        let retry = self.waiting.first().map(|(until, _)| *until);
        match (self.ack_deadline(), retry) {
            (Some(ack), Some(retry)) => Some(ack.min(retry)),
            (ack, retry) => ack.or(retry),
        }
    }

    /// Removes every send (the client is closing) and returns their responders.
    pub(crate) fn drain(&mut self) -> Vec<R> {
        self.orders.clear();
        self.queued.clear();
        self.in_flight.clear();
        self.waiting.clear();
        std::mem::take(&mut self.entries)
            .into_values()
            .flat_map(|entry| entry.responders)
            .collect()
    }

    fn ack_deadline(&self) -> Option<Instant> {
        let (sent_at, _) = self.in_flight.first()?;
        sent_at.checked_add(self.settings.ack_timeout)
    }

    /// Removes a send with every index into it.
    fn remove(&mut self, order: u64) -> Option<Entry<R>> {
        let entry = self.entries.remove(&order)?;
        self.orders.remove(&entry.client_msg_id);
        match entry.state {
            State::Queued => self.queued.remove(&order),
            State::InFlight(at) => self.in_flight.remove(&(at, order)),
            State::Waiting(at) => self.waiting.remove(&(at, order)),
        };
        Some(entry)
    }
}

/// `now + delay`, saturating at a year away for absurd configured delays.
fn later(now: Instant, delay: Duration) -> Instant {
    now.checked_add(delay)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 24 * 3600)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    use lanes_protocol::{ErrorCode, MessageId, Seq, UnixMillis};

    /// A responder named by a number, whose caller may stop waiting.
    #[derive(Debug)]
    struct TestResponder {
        id: u32,
        abandoned: Rc<Cell<bool>>,
    }

    impl Responder for TestResponder {
        fn is_abandoned(&self) -> bool {
            self.abandoned.get()
        }
    }

    fn ids(responders: Vec<TestResponder>) -> Vec<u32> {
        responders.iter().map(|responder| responder.id).collect()
    }

    /// Inputs; ids are `client_msg_id`s, responders are numbers, times are milliseconds.
    enum In {
        Send(&'static str, u32),
        /// Like `Send`, with another body than `body {id}`.
        SendOther(&'static str, u32),
        /// The caller behind this responder dropped its `send` future.
        Abandon(u32),
        Connected,
        Disconnected,
        Write(u64),
        Ack(&'static str),
        Error(Option<&'static str>, ErrorCode, u64),
        Timeout(u64),
        Deadline,
        Drain,
    }

    #[derive(Debug, PartialEq)]
    enum Out {
        None,
        Wrote(Vec<String>),
        Resolved(Vec<u32>),
        Failed(Vec<u32>),
        Retrying,
        Unrelated,
        /// An ack for no pending send.
        Unmatched,
        Reconnect(bool),
        Deadline(Option<u64>),
    }

    /// Settings used by every case: ack timeout 1 s, backoff 100 ms to 1 s, two in flight.
    const SETTINGS: PendingSettings = PendingSettings {
        ack_timeout: Duration::from_millis(1000),
        backoff_base: Duration::from_millis(100),
        backoff_max: Duration::from_millis(1000),
        in_flight_max: 2,
    };

    fn wrote(ids: &[&str]) -> Out {
        Out::Wrote(ids.iter().map(|id| (*id).to_owned()).collect())
    }

    /// The ack of `id`, in conversation 7 (not the send's 1: the ack decides).
    fn ack(id: &str) -> AckFrame {
        AckFrame {
            client_msg_id: ClientMsgId::parse(id).unwrap(),
            conversation_id: ConversationId(7),
            message_id: MessageId(42),
            seq: Seq(3),
            server_ts: UnixMillis(1234),
        }
    }

    fn alice() -> UserId {
        UserId::parse("alice").unwrap()
    }

    /// Runs the steps, comparing each step's outcome; the backoff draw is always 1.0 (the
    /// ceiling) so delays are predictable. Checks at the end that `remaining` sends are pending.
    fn check(steps: Vec<(In, Out)>, remaining: usize) {
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let mut pending: PendingSends<TestResponder> = PendingSends::new(SETTINGS);
        let mut abandoned: HashMap<u32, Rc<Cell<bool>>> = HashMap::new();
        for (index, (input, expected)) in steps.into_iter().enumerate() {
            let out = match input {
                In::Send(id, responder) | In::SendOther(id, responder) => {
                    let client_msg_id = ClientMsgId::parse(id).unwrap();
                    let flag = Rc::clone(abandoned.entry(responder).or_default());
                    let body = match input {
                        In::SendOther(..) => "other body".to_owned(),
                        _ => format!("body {id}"),
                    };
                    pending.insert(
                        client_msg_id,
                        ConversationId(1),
                        Content::Message {
                            body,
                            reply_to: None,
                        },
                        TestResponder {
                            id: responder,
                            abandoned: flag,
                        },
                    );
                    Out::None
                }
                In::Abandon(responder) => {
                    abandoned[&responder].set(true);
                    Out::None
                }
                In::Connected => {
                    pending.handle_connected();
                    Out::None
                }
                In::Disconnected => {
                    pending.handle_disconnected();
                    Out::None
                }
                In::Write(millis) => {
                    let mut wrote = Vec::new();
                    while let Some(frame) = pending.poll_write(at(millis)) {
                        let ClientFrame::Send {
                            client_msg_id,
                            body,
                            ..
                        } = frame
                        else {
                            panic!("only send frames are written");
                        };
                        assert_eq!(body, format!("body {client_msg_id}"));
                        wrote.push(String::from(client_msg_id));
                    }
                    Out::Wrote(wrote)
                }
                In::Ack(id) => match pending.handle_ack(&ack(id), &alice()) {
                    Some(Acked {
                        responders,
                        message,
                    }) => {
                        // Every pending send's body is `body {id}` (the first one sent).
                        let expected = MessageFrame::new_message(
                            ConversationId(7),
                            Seq(3),
                            MessageId(42),
                            alice(),
                            ClientMsgId::parse(id).unwrap(),
                            format!("body {id}"),
                            UnixMillis(1234),
                        );
                        assert_eq!(message, expected, "step {index}");
                        Out::Resolved(ids(responders))
                    }
                    None => Out::Unmatched,
                },
                In::Error(request_id, code, millis) => {
                    let error = ErrorFrame {
                        code,
                        message: "nope".into(),
                        request_id: request_id.map(str::to_owned),
                        retry_after_ms: None,
                    };
                    match pending.handle_error(&error, at(millis), 1.0) {
                        ErrorMatch::Unrelated => Out::Unrelated,
                        ErrorMatch::Retrying => Out::Retrying,
                        ErrorMatch::Failed(responders) => Out::Failed(ids(responders)),
                    }
                }
                In::Timeout(millis) => Out::Reconnect(pending.handle_timeout(at(millis))),
                In::Deadline => Out::Deadline(
                    pending
                        .poll_timeout()
                        .map(|deadline| deadline.duration_since(start).as_millis() as u64),
                ),
                In::Drain => Out::Resolved(ids(pending.drain())),
            };
            assert_eq!(out, expected, "step {index}");
            assert_indexes_agree(&pending, index);
        }
        assert_eq!(pending.len(), remaining, "pending sends left");
    }

    /// Every entry is indexed once by id and once by state, and nothing else is indexed: a
    /// resolved send leaves nothing behind.
    fn assert_indexes_agree(pending: &PendingSends<TestResponder>, index: usize) {
        assert_eq!(pending.orders.len(), pending.entries.len(), "step {index}");
        let states = pending.queued.len() + pending.in_flight.len() + pending.waiting.len();
        assert_eq!(states, pending.entries.len(), "step {index}");
        for (order, entry) in &pending.entries {
            assert_eq!(pending.orders.get(&entry.client_msg_id), Some(order));
            let indexed = match entry.state {
                State::Queued => pending.queued.contains(order),
                State::InFlight(at) => pending.in_flight.contains(&(at, *order)),
                State::Waiting(at) => pending.waiting.contains(&(at, *order)),
            };
            assert!(
                indexed,
                "step {index}: {entry:?} is not indexed by its state"
            );
        }
    }

    #[test]
    fn writes_when_connected_and_resolves_on_ack() {
        check(
            vec![
                (In::Send("a", 1), Out::None),
                (In::Send("b", 2), Out::None),
                (In::Write(0), wrote(&[])),
                (In::Deadline, Out::Deadline(None)),
                (In::Connected, Out::None),
                (In::Write(0), wrote(&["a", "b"])),
                (In::Ack("b"), Out::Resolved(vec![2])),
                (In::Ack("a"), Out::Resolved(vec![1])),
                (In::Ack("a"), Out::Unmatched),
            ],
            0,
        );
        // The same id twice: written once with the first body, both callers get the ack, and
        // the message carries the body that was written.
        check(
            vec![
                (In::Send("a", 1), Out::None),
                (In::SendOther("a", 2), Out::None),
                (In::Connected, Out::None),
                (In::Write(0), wrote(&["a"])),
                (In::Ack("a"), Out::Resolved(vec![1, 2])),
            ],
            0,
        );
    }

    #[test]
    fn limits_sends_in_flight() {
        check(
            vec![
                (In::Connected, Out::None),
                (In::Send("a", 1), Out::None),
                (In::Send("b", 2), Out::None),
                (In::Send("c", 3), Out::None),
                (In::Write(0), wrote(&["a", "b"])),
                (In::Write(1), wrote(&[])),
                (In::Ack("a"), Out::Resolved(vec![1])),
                (In::Write(2), wrote(&["c"])),
            ],
            2,
        );
    }

    #[test]
    fn resends_with_same_ids_after_reconnect() {
        check(
            vec![
                (In::Connected, Out::None),
                (In::Send("a", 1), Out::None),
                (In::Send("b", 2), Out::None),
                (In::Write(0), wrote(&["a", "b"])),
                (In::Disconnected, Out::None),
                (In::Deadline, Out::Deadline(None)),
                (In::Send("c", 3), Out::None),
                (In::Write(5), wrote(&[])),
                (In::Connected, Out::None),
                (In::Write(10), wrote(&["a", "b"])),
                (In::Ack("b"), Out::Resolved(vec![2])),
                (In::Write(11), wrote(&["c"])),
            ],
            2,
        );
    }

    #[test]
    fn ack_timeout_asks_for_reconnect() {
        check(
            vec![
                (In::Connected, Out::None),
                (In::Send("a", 1), Out::None),
                (In::Write(0), wrote(&["a"])),
                (In::Send("b", 2), Out::None),
                (In::Write(400), wrote(&["b"])),
                (In::Deadline, Out::Deadline(Some(1000))),
                (In::Timeout(999), Out::Reconnect(false)),
                (In::Ack("a"), Out::Resolved(vec![1])),
                (In::Deadline, Out::Deadline(Some(1400))),
                (In::Timeout(1400), Out::Reconnect(true)),
                (In::Disconnected, Out::None),
                (In::Timeout(5000), Out::Reconnect(false)),
            ],
            1,
        );
    }

    #[test]
    fn a_retry_after_hint_is_a_floor_under_the_backoff() {
        let mut pending: PendingSends<TestResponder> = PendingSends::new(SETTINGS);
        let start = Instant::now();
        pending.insert(
            ClientMsgId::parse("m").unwrap(),
            ConversationId(1),
            Content::Message {
                body: "hi".into(),
                reply_to: None,
            },
            TestResponder {
                id: 1,
                abandoned: Rc::default(),
            },
        );
        pending.handle_connected();
        assert!(pending.poll_write(start).is_some());
        let limited = ErrorFrame {
            code: ErrorCode::RateLimited,
            message: "slow down".into(),
            request_id: Some("m".into()),
            retry_after_ms: Some(5_000),
        };
        assert!(matches!(
            pending.handle_error(&limited, start, 1.0),
            ErrorMatch::Retrying
        ));
        // The backoff alone would allow a retry within 1 s (backoff_max); the hint says 5 s.
        let early = start + Duration::from_millis(4_900);
        pending.handle_timeout(early);
        assert!(pending.poll_write(early).is_none());
        assert!(pending.poll_timeout().unwrap() >= start + Duration::from_millis(5_000));
        let after = start + Duration::from_millis(5_001);
        pending.handle_timeout(after);
        assert!(pending.poll_write(after).is_some());
    }

    #[test]
    fn errors_fail_or_retry() {
        // Definite codes fail the send, whatever its state.
        check(
            vec![
                (In::Send("a", 1), Out::None),
                (In::Send("b", 2), Out::None),
                (In::Connected, Out::None),
                (In::Write(0), wrote(&["a", "b"])),
                (
                    In::Error(Some("a"), ErrorCode::NotFound, 1),
                    Out::Failed(vec![1]),
                ),
                (
                    In::Error(Some("b"), ErrorCode::MessageTooLarge, 1),
                    Out::Failed(vec![2]),
                ),
                (
                    In::Error(Some("b"), ErrorCode::MessageTooLarge, 1),
                    Out::Unrelated,
                ),
                (In::Error(None, ErrorCode::SlowConsumer, 1), Out::Unrelated),
                (
                    In::Error(Some("p1"), ErrorCode::BadFrame, 1),
                    Out::Unrelated,
                ),
                (
                    In::Error(Some("not printable \u{1}"), ErrorCode::BadFrame, 1),
                    Out::Unrelated,
                ),
            ],
            0,
        );
        // Retryable codes wait with exponential backoff, then write again with the same id.
        check(
            vec![
                (In::Connected, Out::None),
                (In::Send("a", 1), Out::None),
                (In::Write(0), wrote(&["a"])),
                (
                    In::Error(Some("a"), ErrorCode::StorageUnavailable, 0),
                    Out::Retrying,
                ),
                (In::Deadline, Out::Deadline(Some(100))),
                (In::Timeout(99), Out::Reconnect(false)),
                (In::Write(99), wrote(&[])),
                (In::Timeout(100), Out::Reconnect(false)),
                (In::Write(100), wrote(&["a"])),
                (
                    In::Error(Some("a"), ErrorCode::Internal, 100),
                    Out::Retrying,
                ),
                (In::Deadline, Out::Deadline(Some(300))),
                // A second answer for a send that is already waiting changes nothing.
                (
                    In::Error(Some("a"), ErrorCode::ShuttingDown, 150),
                    Out::Retrying,
                ),
                (In::Deadline, Out::Deadline(Some(300))),
                (In::Timeout(300), Out::Reconnect(false)),
                (In::Write(300), wrote(&["a"])),
                (
                    In::Error(Some("a"), ErrorCode::RateLimited, 300),
                    Out::Retrying,
                ),
                (In::Deadline, Out::Deadline(Some(700))),
                (In::Ack("a"), Out::Resolved(vec![1])),
                (In::Deadline, Out::Deadline(None)),
            ],
            0,
        );
    }

    #[test]
    fn abandoned_responders_do_not_accumulate() {
        // An app retrying one id with a timeout around each call: the callers that gave up are
        // dropped when the next call comes, and the send is still written and resolved once.
        check(
            vec![
                (In::Send("a", 1), Out::None),
                (In::Abandon(1), Out::None),
                (In::Send("a", 2), Out::None),
                (In::Abandon(2), Out::None),
                (In::Send("a", 3), Out::None),
                (In::Send("a", 4), Out::None),
                (In::Connected, Out::None),
                (In::Write(0), wrote(&["a"])),
                (In::Ack("a"), Out::Resolved(vec![3, 4])),
            ],
            0,
        );
        // A send whose only caller gave up stays pending and is still written until acked;
        // then nothing of it is left.
        check(
            vec![
                (In::Send("a", 1), Out::None),
                (In::Abandon(1), Out::None),
                (In::Connected, Out::None),
                (In::Write(0), wrote(&["a"])),
                (In::Disconnected, Out::None),
                (In::Connected, Out::None),
                (In::Write(1), wrote(&["a"])),
                (In::Ack("a"), Out::Resolved(vec![1])),
                (In::Ack("a"), Out::Unmatched),
            ],
            0,
        );
    }

    #[test]
    fn drain_returns_every_responder() {
        check(
            vec![
                (In::Send("a", 1), Out::None),
                (In::Send("b", 2), Out::None),
                (In::Send("b", 3), Out::None),
                (In::Connected, Out::None),
                (In::Write(0), wrote(&["a", "b"])),
                (In::Drain, Out::Resolved(vec![1, 2, 3])),
                (In::Write(1), wrote(&[])),
                (In::Deadline, Out::Deadline(None)),
            ],
            0,
        );
    }
}
