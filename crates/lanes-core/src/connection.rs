//! One client connection as a state machine: frames and timeouts in, frames to write, sends to
//! commit and closes out. Both transports drive it; chat rules live here, not in the glue.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lanes_protocol::codec::DecodeError;
use lanes_protocol::frames::close_code;
use lanes_protocol::{
    AckFrame, ClientFrame, ConversationId, Cursor, ErrorCode, ErrorFrame, PresenceState, Seq,
    ServerFrame, StoreEpoch, TypingState, UserId, limits,
};

use crate::cursors::{Admission, Cursors};
use crate::validate::{self, Limits, ValidSend};

/// Timing and limits of a connection.
#[derive(Debug, Clone)]
pub struct ConnectionConfig {
    /// How long a new connection may take to send a valid `hello`.
    pub hello_timeout: Duration,
    /// How often the server pings an idle peer.
    pub ping_interval: Duration,
    /// How long the peer may stay silent (no frame, no pong) before it is closed.
    pub idle_timeout: Duration,
    /// Most sends awaiting their ack.
    pub inflight_sends_max: usize,
    /// Message limits.
    pub limits: Limits,
    /// The server's store epoch; cursors from another epoch are ignored.
    pub epoch: StoreEpoch,
    /// Told to the client in `welcome`: beyond this many members, a conversation's receipts
    /// are the user's own only.
    pub receipts_members_max: usize,
}

impl ConnectionConfig {
    /// Defaults for `epoch`.
    pub fn new(epoch: StoreEpoch) -> ConnectionConfig {
        ConnectionConfig {
            hello_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(20),
            idle_timeout: Duration::from_secs(60),
            inflight_sends_max: limits::INFLIGHT_SENDS_MAX,
            limits: Limits::default(),
            epoch,
            receipts_members_max: limits::RECEIPTS_MEMBERS_DEFAULT,
        }
    }
}

/// How a peer broke the WebSocket layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// Framing rules (reserved bits, unmasked client frame, bad opcode, bad fragmentation).
    Protocol,
    /// A text frame whose payload is not UTF-8.
    InvalidUtf8,
}

/// What the transport must do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Write this frame.
    Write(ServerFrame),
    /// Check this token, then call `handle_authenticated` or `handle_auth_rejected`.
    Authenticate {
        /// Session token or JWT.
        token: String,
    },
    /// Hand this send to the committer, then call `handle_committed` with the outcome.
    Commit(ValidSend),
    /// Move the user's receipt positions forward (`Seq::ZERO`: unchanged); fire and forget.
    Marker {
        /// The conversation.
        conversation_id: ConversationId,
        /// Received up to here.
        delivered: Seq,
        /// Read up to here.
        read: Seq,
    },
    /// Tell the conversation's online members the user is typing (or stopped).
    Typing {
        /// The conversation.
        conversation_id: ConversationId,
        /// Start or stop.
        state: TypingState,
    },
    /// This connection's presence changed (online or away).
    Presence(PresenceState),
    /// Replace this connection's presence subscriptions.
    WatchPresence(Vec<UserId>),
    /// Send a transport-level ping.
    Ping,
    /// Close the connection with this code; nothing more is read or written after it.
    Close {
        /// WebSocket close code.
        code: u16,
        /// Short reason.
        reason: &'static str,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    AwaitingHello { deadline: Instant },
    Authenticating { deadline: Instant },
    CatchingUp { user_id: UserId },
    Live { user_id: UserId },
    Closed,
}

/// The state of one connection.
#[derive(Debug)]
pub struct Connection {
    /// Shared by every connection of the server: one allocation, not one per connection.
    config: Arc<ConnectionConfig>,
    state: State,
    /// Per conversation, the last seq the client holds: its cursor at `hello`, then advanced by
    /// every message written.
    delivered: Cursors,
    inflight_sends: usize,
    /// Shutting down: read nothing more, close once every pending ack is written.
    draining: bool,
    last_received_at: Instant,
    next_ping_at: Instant,
    /// When the credential it authenticated with expires: the connection closes then.
    expires_at: Option<Instant>,
    outputs: VecDeque<Output>,
}

impl Connection {
    /// A connection accepted at `now`.
    pub fn new(now: Instant, config: Arc<ConnectionConfig>) -> Connection {
        let deadline = now + config.hello_timeout;
        let next_ping_at = now + config.ping_interval;
        Connection {
            config,
            state: State::AwaitingHello { deadline },
            delivered: Cursors::default(),
            inflight_sends: 0,
            draining: false,
            last_received_at: now,
            next_ping_at,
            expires_at: None,
            outputs: VecDeque::new(),
        }
    }

    /// The authenticated user, once there is one.
    pub fn user_id(&self) -> Option<&UserId> {
        match &self.state {
            State::CatchingUp { user_id } | State::Live { user_id } => Some(user_id),
            _ => None,
        }
    }

    /// True once the connection is closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// True while the transport may read more client frames (backpressure on unacked sends).
    pub fn wants_read(&self) -> bool {
        !self.is_closed() && !self.draining && self.inflight_sends < self.config.inflight_sends_max
    }

    /// Anything at all arrived from the peer (frame, ping, pong) at `now`.
    pub fn handle_received(&mut self, now: Instant) {
        self.last_received_at = now;
    }

    /// A text frame that did not decode.
    pub fn handle_decode_error(&mut self, now: Instant, error: DecodeError) {
        self.handle_received(now);
        self.write_error(ErrorCode::BadFrame, error.message, error.request_id);
    }

    /// A binary frame: Lanes speaks JSON text only.
    pub fn handle_binary(&mut self, now: Instant) {
        self.handle_received(now);
        self.write_error(
            ErrorCode::BadFrame,
            "binary frames are not supported; send JSON text frames".into(),
            None,
        );
    }

    /// The peer sent a frame larger than `limits::FRAME_BYTES_MAX`: a broken size contract,
    /// so the connection is closed with 1009 after saying why.
    pub fn handle_oversized(&mut self, now: Instant) {
        self.handle_received(now);
        self.write_error(
            ErrorCode::PayloadTooLarge,
            format!("frames are limited to {} bytes", limits::FRAME_BYTES_MAX),
            None,
        );
        self.close(1009, "frame too large");
    }

    /// The peer broke the WebSocket protocol itself (bad framing, reserved bits, unmasked
    /// frame: close 1002) or sent a text frame that is not UTF-8 (close 1007). Nothing it sent
    /// can be trusted after that, so the connection is closed after saying why.
    pub fn handle_violation(&mut self, now: Instant, violation: Violation) {
        self.handle_received(now);
        let (code, reason) = match violation {
            Violation::Protocol => (1002, "websocket protocol error"),
            Violation::InvalidUtf8 => (1007, "text frame is not valid UTF-8"),
        };
        self.write_error(ErrorCode::BadFrame, reason.into(), None);
        self.close(code, reason);
    }

    /// A decoded client frame.
    pub fn handle_frame(&mut self, now: Instant, frame: ClientFrame) {
        self.handle_received(now);
        let frame = match frame {
            ClientFrame::Hello {
                token,
                cursors,
                epoch,
            } => return self.handle_hello(token, cursors, epoch),
            ClientFrame::Ping { request_id } => {
                self.outputs
                    .push_back(Output::Write(ServerFrame::Pong { request_id }));
                return;
            }
            frame if self.user_id().is_none() => {
                let request_id = frame
                    .into_lane_event()
                    .ok()
                    .map(|(id, _, _)| id.to_string());
                self.write_error(
                    ErrorCode::Unauthorized,
                    "send a valid hello first".into(),
                    request_id,
                );
                return;
            }
            frame => frame,
        };
        let frame = match frame.into_lane_event() {
            Ok((client_msg_id, conversation_id, content)) => {
                let request_id = client_msg_id.to_string();
                match validate::send(client_msg_id, conversation_id, content, &self.config.limits) {
                    Ok(valid) => {
                        self.inflight_sends += 1;
                        self.outputs.push_back(Output::Commit(valid));
                    }
                    Err(rejection) => {
                        self.write_error(rejection.code(), rejection.message(), Some(request_id))
                    }
                }
                return;
            }
            Err(frame) => frame,
        };
        match frame {
            ClientFrame::Received {
                conversation_id,
                seq,
            } => self.handle_marker(conversation_id, seq, false),
            ClientFrame::Read {
                conversation_id,
                seq,
            } => self.handle_marker(conversation_id, seq, true),
            ClientFrame::Typing {
                conversation_id,
                state,
            } => self.outputs.push_back(Output::Typing {
                conversation_id,
                state,
            }),
            ClientFrame::Presence { state } => {
                if state == PresenceState::Offline {
                    self.write_error(
                        ErrorCode::InvalidField,
                        "state must be online or away; offline is decided by the server".into(),
                        None,
                    );
                } else {
                    self.outputs.push_back(Output::Presence(state));
                }
            }
            ClientFrame::WatchPresence { mut user_ids } => {
                user_ids.sort();
                user_ids.dedup();
                if user_ids.len() > limits::PRESENCE_WATCH_MAX {
                    self.write_error(
                        ErrorCode::InvalidField,
                        format!(
                            "at most {} users may be watched",
                            limits::PRESENCE_WATCH_MAX
                        ),
                        None,
                    );
                } else {
                    self.outputs.push_back(Output::WatchPresence(user_ids));
                }
            }
            ClientFrame::Hello { .. }
            | ClientFrame::Ping { .. }
            | ClientFrame::Send { .. }
            | ClientFrame::Edit { .. }
            | ClientFrame::Delete { .. }
            | ClientFrame::React { .. } => {
                unreachable!("handled above")
            }
        }
    }

    /// `received` / `read`: only up to what this connection holds of the conversation (which
    /// is never past its head); the store keeps positions monotonic.
    fn handle_marker(&mut self, conversation_id: ConversationId, seq: Seq, read: bool) {
        let held = self.delivered(conversation_id);
        if seq == Seq::ZERO || seq > held {
            self.write_error(
                ErrorCode::InvalidField,
                format!(
                    "seq {seq} is not a message this connection holds of conversation \
                     {conversation_id} (it holds 1..={held})"
                ),
                None,
            );
            return;
        }
        self.outputs.push_back(Output::Marker {
            conversation_id,
            delivered: seq,
            read: if read { seq } else { Seq::ZERO },
        });
    }

    fn handle_hello(&mut self, token: String, cursors: Vec<Cursor>, epoch: Option<StoreEpoch>) {
        let State::AwaitingHello { deadline } = self.state else {
            self.write_error(ErrorCode::BadFrame, "hello was already sent".into(), None);
            return;
        };
        if cursors.len() > limits::HELLO_CURSORS_MAX {
            self.write_error(
                ErrorCode::InvalidField,
                format!("at most {} cursors", limits::HELLO_CURSORS_MAX),
                None,
            );
            return;
        }
        // Cursors from another store would skip messages that reuse their seqs: start over.
        self.delivered = if epoch.as_ref() == Some(&self.config.epoch) {
            Cursors::from_cursors(cursors)
        } else {
            Cursors::default()
        };
        self.state = State::Authenticating { deadline };
        self.outputs.push_back(Output::Authenticate { token });
    }

    /// The token of the last `Authenticate` belongs to `user_id`. Catch-up starts.
    pub fn handle_authenticated(&mut self, user_id: UserId) {
        if !matches!(self.state, State::Authenticating { .. }) {
            return;
        }
        self.outputs.push_back(Output::Write(ServerFrame::Welcome {
            user_id: user_id.clone(),
            epoch: self.config.epoch.clone(),
            receipts_members_max: self.config.receipts_members_max,
        }));
        self.state = State::CatchingUp { user_id };
    }

    /// The credential the connection authenticated with expires at `at`: the connection is
    /// closed then (`unauthorized`, 4001), and the client logs in again.
    pub fn set_expiry(&mut self, at: Instant) {
        self.expires_at = Some(at);
    }

    /// The token of the last `Authenticate` was refused; the client may try another `hello`.
    pub fn handle_auth_rejected(&mut self, message: String) {
        let State::Authenticating { deadline } = self.state else {
            return;
        };
        self.delivered.clear();
        self.state = State::AwaitingHello { deadline };
        self.write_error(ErrorCode::Unauthorized, message, None);
    }

    /// Where catch-up of `conversation_id` starts: the last seq the client holds.
    pub fn delivered(&self, conversation_id: ConversationId) -> Seq {
        self.delivered.held(conversation_id)
    }

    /// See [`Cursors::admit_live`].
    pub fn admit_live(&mut self, conversation_id: ConversationId, seq: Seq) -> Admission {
        self.delivered.admit_live(conversation_id, seq)
    }

    /// See [`Cursors::admit_caught_up`].
    pub fn admit_caught_up(&mut self, conversation_id: ConversationId, seq: Seq) -> bool {
        self.delivered.admit_caught_up(conversation_id, seq)
    }

    /// Catch-up after `hello` is complete; live frames follow. `large`: the user's
    /// conversations over `receipts_members_max` members (see `ServerFrame::Synced`).
    pub fn handle_synced(&mut self, large: Vec<ConversationId>) {
        if let State::CatchingUp { user_id } = &self.state {
            self.state = State::Live {
                user_id: user_id.clone(),
            };
            self.outputs
                .push_back(Output::Write(ServerFrame::Synced { large }));
        }
    }

    /// The user became a member of `conversation_id` while connected (`large`: see
    /// `ServerFrame::Joined`).
    pub fn handle_joined(&mut self, conversation_id: ConversationId, large: bool) {
        self.outputs.push_back(Output::Write(ServerFrame::Joined {
            conversation_id,
            large,
        }));
    }

    /// The user stopped being a member of `conversation_id`. What was delivered is kept, so a
    /// later re-join on this connection never resends it.
    pub fn handle_left(&mut self, conversation_id: ConversationId) {
        self.outputs
            .push_back(Output::Write(ServerFrame::Left { conversation_id }));
    }

    /// The committer's answer to one `Output::Commit`.
    pub fn handle_committed(&mut self, outcome: Result<AckFrame, ErrorFrame>) {
        assert!(self.inflight_sends > 0, "a commit outcome without a commit");
        self.inflight_sends -= 1;
        let frame = match outcome {
            Ok(ack) => {
                // The ack is this connection's copy of its own message: it counts as delivered
                // when it is the next seq (an older seq is a retried send's original).
                if ack.seq == self.delivered(ack.conversation_id).next() {
                    self.delivered.admit_caught_up(ack.conversation_id, ack.seq);
                }
                ServerFrame::Ack(ack)
            }
            Err(error) => ServerFrame::Error(error),
        };
        self.outputs.push_back(Output::Write(frame));
        if self.draining && self.inflight_sends == 0 {
            self.close_for_shutdown();
        }
    }

    /// The credential this connection authenticated with was revoked (logout).
    pub fn handle_revoked(&mut self) {
        self.write_error(
            ErrorCode::Unauthorized,
            "the session was revoked; log in again".into(),
            None,
        );
        self.close(close_code::UNAUTHORIZED, "session revoked");
    }

    /// The hub dropped this connection because its queue overflowed.
    pub fn handle_slow_consumer(&mut self) {
        self.write_error(
            ErrorCode::SlowConsumer,
            "this connection's queue overflowed; reconnect and resume from your cursors".into(),
            None,
        );
        self.close(close_code::SLOW_CONSUMER, "slow consumer");
    }

    /// The server is shutting down: stop reading, write the acks of sends already handed to
    /// the committer, then tell the client to reconnect and close.
    pub fn handle_shutdown(&mut self) {
        if self.draining || self.is_closed() {
            return;
        }
        self.draining = true;
        if self.inflight_sends == 0 {
            self.close_for_shutdown();
        }
    }

    fn close_for_shutdown(&mut self) {
        self.write_error(
            ErrorCode::ShuttingDown,
            "server is shutting down; reconnect shortly".into(),
            None,
        );
        self.close(1001, "server shutting down");
    }

    /// Time passed; fires whichever deadline is due.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.state {
            State::Closed => {}
            State::AwaitingHello { deadline } | State::Authenticating { deadline } => {
                if now >= deadline {
                    self.write_error(
                        ErrorCode::Unauthorized,
                        "no valid hello in time".into(),
                        None,
                    );
                    self.close(close_code::UNAUTHORIZED, "no valid hello");
                }
            }
            State::CatchingUp { .. } | State::Live { .. } => {
                if self.expires_at.is_some_and(|at| now >= at) {
                    self.write_error(
                        ErrorCode::Unauthorized,
                        "the session expired; log in again".into(),
                        None,
                    );
                    self.close(close_code::UNAUTHORIZED, "session expired");
                } else if now.duration_since(self.last_received_at) >= self.config.idle_timeout {
                    self.close(close_code::IDLE_TIMEOUT, "idle timeout");
                } else if now >= self.next_ping_at {
                    self.next_ping_at = now + self.config.ping_interval;
                    self.outputs.push_back(Output::Ping);
                }
            }
        }
    }

    /// The next instant `handle_timeout` must be called at.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Closed => None,
            State::AwaitingHello { deadline } | State::Authenticating { deadline } => {
                Some(deadline)
            }
            State::CatchingUp { .. } | State::Live { .. } => {
                let next = self
                    .next_ping_at
                    .min(self.last_received_at + self.config.idle_timeout);
                Some(self.expires_at.map_or(next, |at| next.min(at)))
            }
        }
    }

    /// The next thing to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        let output = self.outputs.pop_front();
        if output.is_none() && self.outputs.capacity() > 0 {
            // Drained: an idle connection keeps no room for outputs (hundreds of bytes each;
            // see docs/BENCHMARKS.md).
            self.outputs = VecDeque::new();
        }
        output
    }

    fn write_error(&mut self, code: ErrorCode, message: String, request_id: Option<String>) {
        self.outputs
            .push_back(Output::Write(ServerFrame::Error(ErrorFrame {
                code,
                message,
                request_id,
                retry_after_ms: None,
            })));
    }

    fn close(&mut self, code: u16, reason: &'static str) {
        if self.state != State::Closed {
            self.state = State::Closed;
            self.outputs.push_back(Output::Close { code, reason });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanes_protocol::ClientMsgId;

    fn epoch() -> StoreEpoch {
        StoreEpoch("e1".into())
    }

    fn drain(connection: &mut Connection) -> Vec<Output> {
        std::iter::from_fn(|| connection.poll_output()).collect()
    }

    fn hello(token: &str, cursors: Vec<Cursor>, epoch: Option<StoreEpoch>) -> ClientFrame {
        ClientFrame::Hello {
            token: token.into(),
            cursors,
            epoch,
        }
    }

    fn send(id: &str, body: &str) -> ClientFrame {
        ClientFrame::Send {
            client_msg_id: ClientMsgId::parse(id).unwrap(),
            conversation_id: ConversationId(1),
            body: body.into(),
            reply_to: None,
        }
    }

    fn error_code(output: &Output) -> Option<ErrorCode> {
        match output {
            Output::Write(ServerFrame::Error(error)) => Some(error.code),
            _ => None,
        }
    }

    /// Runs `inputs` against a fresh connection and compares the outputs' shapes.
    fn check(inputs: Vec<ClientFrame>, authenticate_as: Option<&str>, expected: &[&str]) {
        let now = Instant::now();
        let mut connection = Connection::new(now, Arc::new(ConnectionConfig::new(epoch())));
        let mut got = Vec::new();
        for frame in inputs {
            connection.handle_frame(now, frame);
            for output in drain(&mut connection) {
                if let Output::Authenticate { .. } = output {
                    match authenticate_as {
                        Some(user) => connection.handle_authenticated(UserId::parse(user).unwrap()),
                        None => connection.handle_auth_rejected("bad token".into()),
                    }
                }
                got.push(describe(&output));
                got.extend(drain(&mut connection).iter().map(describe));
            }
        }
        assert_eq!(got, expected);
    }

    fn describe(output: &Output) -> String {
        match output {
            Output::Write(ServerFrame::Error(error)) => format!("error:{}", error.code.as_str()),
            Output::Write(frame) => {
                let text = lanes_protocol::codec::encode_server(frame);
                let value: serde_json::Value = serde_json::from_str(&text).unwrap();
                format!("write:{}", value["type"].as_str().unwrap())
            }
            Output::Authenticate { .. } => "authenticate".into(),
            Output::Commit(send) => format!("commit:{}", send.client_msg_id),
            Output::Marker {
                delivered, read, ..
            } => format!("marker:{delivered}/{read}"),
            Output::Typing { state, .. } => format!("typing:{state:?}"),
            Output::Presence(state) => format!("presence:{state:?}"),
            Output::WatchPresence(users) => format!("watch:{}", users.len()),
            Output::Ping => "ping".into(),
            Output::Close { code, .. } => format!("close:{code}"),
        }
    }

    #[test]
    fn a_drained_connection_keeps_no_room_for_outputs() {
        let now = Instant::now();
        let mut connection = Connection::new(now, Arc::new(ConnectionConfig::new(epoch())));
        connection.handle_frame(now, hello("t", Vec::new(), None));
        assert!(connection.outputs.capacity() > 0);
        assert_eq!(drain(&mut connection).len(), 1);
        assert_eq!(connection.outputs.capacity(), 0);
    }

    #[test]
    fn frames() {
        check(
            vec![hello("t", vec![], None), send("a", "hi")],
            Some("alice"),
            &["authenticate", "write:welcome", "commit:a"],
        );
        check(vec![send("a", "hi")], None, &["error:unauthorized"]);
        check(
            vec![hello("bad", vec![], None)],
            None,
            &["authenticate", "error:unauthorized"],
        );
        check(
            vec![hello("t", vec![], None), hello("t", vec![], None)],
            Some("alice"),
            &["authenticate", "write:welcome", "error:bad_frame"],
        );
        check(
            vec![
                hello("t", vec![], None),
                send("a", &"x".repeat(20_000)),
                send("b", " "),
            ],
            Some("alice"),
            &[
                "authenticate",
                "write:welcome",
                "error:message_too_large",
                "error:invalid_field",
            ],
        );
        check(
            vec![ClientFrame::Ping { request_id: None }],
            None,
            &["write:pong"],
        );
        let too_many: Vec<Cursor> = (0..=limits::HELLO_CURSORS_MAX as u64)
            .map(|id| Cursor {
                conversation_id: ConversationId(id),
                seq: Seq(1),
            })
            .collect();
        check(
            vec![hello("t", too_many, None), hello("t", vec![], None)],
            Some("alice"),
            &["error:invalid_field", "authenticate", "write:welcome"],
        );
    }

    #[test]
    fn lane_events_receipts_typing_and_presence() {
        let id = |text: &str| ClientMsgId::parse(text).unwrap();
        let conversation_id = ConversationId(1);
        let cursor = Cursor {
            conversation_id,
            seq: Seq(4),
        };
        let watch = |count: usize| ClientFrame::WatchPresence {
            user_ids: (0..count)
                .map(|i| UserId::parse(&format!("u{i}")).unwrap())
                .collect(),
        };
        check(
            vec![
                hello("t", vec![cursor], Some(epoch())),
                ClientFrame::Edit {
                    client_msg_id: id("e"),
                    conversation_id,
                    target_seq: Seq(1),
                    body: "new".into(),
                },
                ClientFrame::Delete {
                    client_msg_id: id("d"),
                    conversation_id,
                    target_seq: Seq::ZERO,
                },
                ClientFrame::React {
                    client_msg_id: id("r"),
                    conversation_id,
                    target_seq: Seq(1),
                    emoji: "👍".into(),
                    remove: false,
                },
                ClientFrame::React {
                    client_msg_id: id("x"),
                    conversation_id,
                    target_seq: Seq(1),
                    emoji: ":+1:".into(),
                    remove: false,
                },
                ClientFrame::Received {
                    conversation_id,
                    seq: Seq(4),
                },
                ClientFrame::Read {
                    conversation_id,
                    seq: Seq(3),
                },
                // Beyond what this connection holds, and seq 0: refused.
                ClientFrame::Read {
                    conversation_id,
                    seq: Seq(5),
                },
                ClientFrame::Received {
                    conversation_id,
                    seq: Seq::ZERO,
                },
                ClientFrame::Typing {
                    conversation_id,
                    state: TypingState::Start,
                },
                ClientFrame::Presence {
                    state: PresenceState::Away,
                },
                ClientFrame::Presence {
                    state: PresenceState::Offline,
                },
                watch(3),
                watch(limits::PRESENCE_WATCH_MAX + 1),
            ],
            Some("alice"),
            &[
                "authenticate",
                "write:welcome",
                "commit:e",
                "error:invalid_field",
                "commit:r",
                "error:invalid_field",
                "marker:4/0",
                "marker:3/3",
                "error:invalid_field",
                "error:invalid_field",
                "typing:Start",
                "presence:Away",
                "error:invalid_field",
                "watch:3",
                "error:invalid_field",
            ],
        );
        check(
            vec![ClientFrame::Typing {
                conversation_id,
                state: TypingState::Stop,
            }],
            None,
            &["error:unauthorized"],
        );
    }

    #[test]
    fn cursors_only_count_in_the_same_epoch() {
        let cursor = Cursor {
            conversation_id: ConversationId(1),
            seq: Seq(5),
        };
        for (client_epoch, expected) in [
            (Some(epoch()), Seq(5)),
            (None, Seq(0)),
            (Some(StoreEpoch("old".into())), Seq(0)),
        ] {
            let now = Instant::now();
            let mut connection = Connection::new(now, Arc::new(ConnectionConfig::new(epoch())));
            connection.handle_frame(now, hello("t", vec![cursor.clone()], client_epoch));
            assert_eq!(connection.delivered(ConversationId(1)), expected);
        }
    }

    #[test]
    fn duplicates_between_catch_up_and_live_are_dropped() {
        let now = Instant::now();
        let mut connection = Connection::new(now, Arc::new(ConnectionConfig::new(epoch())));
        let conversation = ConversationId(3);
        let admitted: Vec<Admission> = [1, 2, 2, 1, 3, 5]
            .iter()
            .map(|seq| connection.admit_live(conversation, Seq(*seq)))
            .collect::<Vec<_>>();
        use Admission::*;
        assert_eq!(admitted, [Write, Write, Duplicate, Duplicate, Write, Gap]);
        assert_eq!(connection.delivered(conversation), Seq(3));
        // Catch-up from the store fills the gap; the live frame that exposed it is then old.
        assert!(connection.admit_caught_up(conversation, Seq(4)));
        assert!(connection.admit_caught_up(conversation, Seq(5)));
        assert_eq!(connection.admit_live(conversation, Seq(5)), Duplicate);
        // Leaving and re-joining keeps what was delivered.
        connection.handle_left(conversation);
        assert_eq!(connection.delivered(conversation), Seq(5));
    }

    #[test]
    fn backpressure_on_unacked_sends() {
        let now = Instant::now();
        let mut config = ConnectionConfig::new(epoch());
        config.inflight_sends_max = 2;
        let mut connection = Connection::new(now, Arc::new(config));
        connection.handle_frame(now, hello("t", vec![], None));
        connection.handle_authenticated(UserId::parse("alice").unwrap());
        connection.handle_frame(now, send("a", "1"));
        assert!(connection.wants_read());
        connection.handle_frame(now, send("b", "2"));
        assert!(!connection.wants_read());
        connection.handle_committed(Err(ErrorFrame {
            code: ErrorCode::NotFound,
            message: "no".into(),
            request_id: Some("a".into()),
            retry_after_ms: None,
        }));
        assert!(connection.wants_read());
        let outputs = drain(&mut connection);
        assert_eq!(
            outputs.last().and_then(error_code),
            Some(ErrorCode::NotFound)
        );
    }

    #[test]
    fn shutdown_writes_pending_acks_before_closing() {
        let now = Instant::now();
        let mut connection = Connection::new(now, Arc::new(ConnectionConfig::new(epoch())));
        connection.handle_frame(now, hello("t", vec![], None));
        connection.handle_authenticated(UserId::parse("alice").unwrap());
        connection.handle_frame(now, send("a", "1"));
        drain(&mut connection);
        connection.handle_shutdown();
        assert!(!connection.wants_read());
        assert!(drain(&mut connection).is_empty(), "waits for the ack");
        connection.handle_committed(Err(ErrorFrame {
            code: ErrorCode::StorageUnavailable,
            message: "x".into(),
            request_id: Some("a".into()),
            retry_after_ms: None,
        }));
        let outputs: Vec<String> = drain(&mut connection).iter().map(describe).collect();
        assert_eq!(
            outputs,
            [
                "error:storage_unavailable",
                "error:shutting_down",
                "close:1001"
            ]
        );
    }

    #[test]
    fn timeouts() {
        let start = Instant::now();
        let config = ConnectionConfig::new(epoch());
        // No hello: closed with 4001 at the deadline, not before.
        let mut connection = Connection::new(start, Arc::new(config.clone()));
        connection.handle_timeout(start + Duration::from_secs(9));
        assert!(drain(&mut connection).is_empty());
        assert_eq!(
            connection.poll_timeout(),
            Some(start + Duration::from_secs(10))
        );
        connection.handle_timeout(start + Duration::from_secs(10));
        let outputs = drain(&mut connection);
        assert_eq!(error_code(&outputs[0]), Some(ErrorCode::Unauthorized));
        assert_eq!(
            outputs[1],
            Output::Close {
                code: 4001,
                reason: "no valid hello"
            }
        );

        // Authenticated: pinged every 20 s, closed after 60 s of silence.
        let mut connection = Connection::new(start, Arc::new(config));
        connection.handle_frame(start, hello("t", vec![], None));
        connection.handle_authenticated(UserId::parse("alice").unwrap());
        drain(&mut connection);
        connection.handle_timeout(start + Duration::from_secs(20));
        assert_eq!(drain(&mut connection), vec![Output::Ping]);
        connection.handle_received(start + Duration::from_secs(30));
        connection.handle_timeout(start + Duration::from_secs(70));
        assert_eq!(drain(&mut connection), vec![Output::Ping]);
        connection.handle_timeout(start + Duration::from_secs(90));
        assert_eq!(
            drain(&mut connection),
            vec![Output::Close {
                code: 4009,
                reason: "idle timeout"
            }]
        );
        assert!(connection.is_closed());
    }
}
