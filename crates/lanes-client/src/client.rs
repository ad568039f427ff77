//! The live client: [`Client`] (a cheap handle to a background task), [`Events`] (what the task
//! delivers) and [`ClientConfig`].

use std::fmt;
use std::fmt::Write as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use lanes_protocol::limits::MESSAGE_BODY_BYTES_MAX;
use lanes_protocol::{
    AckFrame, ClientFrame, ClientMsgId, Content, ConversationId, Cursor, ErrorCode, ErrorFrame,
    MessageFrame, PresenceState, Receipt, Seq, StoreEpoch, TypingState, UserId, UserPresence,
};
use tokio::sync::{mpsc, oneshot};

use crate::delivery::Delivery;
use crate::driver::{
    BUFFERED_FRAMES_MAX, COMMANDS_LEN_MAX, Command, Driver, EVENTS_LEN_MAX, Settings, connect_once,
    ws_url,
};
use crate::error::ClientError;
use crate::http_api::HttpApi;
use crate::resume::ResumePoint;

/// How to connect, and where to resume from.
#[derive(Clone)]
pub struct ClientConfig {
    /// The server's HTTP base URL, like `http://127.0.0.1:8080`.
    pub base_url: String,
    /// A session token or an application JWT.
    pub token: String,
    /// Resume point from [`Client::cursors`] (empty: every conversation from the start).
    pub cursors: Vec<Cursor>,
    /// The epoch the cursors came from ([`Client::epoch`]).
    pub epoch: Option<StoreEpoch>,
    /// First reconnect delay ceiling; doubles per failed attempt (default 50 ms).
    pub backoff_base: Duration,
    /// Largest reconnect delay ceiling (default 5 s).
    pub backoff_max: Duration,
    /// A send unacked for this long means a broken connection: reconnect and send again
    /// (default 10 s).
    pub ack_timeout: Duration,
    /// Confirm receipt (`received`) of every message delivered to this device, batched per
    /// conversation, so senders see "delivered" (default true).
    pub auto_receipts: bool,
    /// With `auto_receipts`, at most one batch of `received` frames per interval (default 1 s;
    /// each wait is lengthened by up to half of it at random, so a group's members do not
    /// confirm in step): the first goes at once, what arrives meanwhile is confirmed at the
    /// wait's end, one frame per conversation. Zero confirms after every read, which in a busy
    /// group means a frame to the server for nearly every message received. Intervals above a
    /// day count as a day.
    pub receipts_interval: Duration,
    /// The same in the conversations the server calls large (`synced`'s `large`, `joined`'s,
    /// or a `large` frame: more than `receipts_members_max` members; default 30 s). There a
    /// delivered position is shown to no one live, and every member confirming every second
    /// would cost the server a frame per member per second.
    pub receipts_interval_large: Duration,
    /// WebSocket, long-polling, or (default) WebSocket with a fall back to long-polling when
    /// the upgrade is refused (a proxy or network that blocks WebSockets).
    pub transport: Transport,
    /// While long-polling, how often the presence of watched users is asked for (default
    /// 15 s; over a WebSocket the server pushes it).
    pub presence_poll_interval: Duration,
}

/// How the client reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// A WebSocket; if the upgrade is answered with plain HTTP (blocked), long-polling instead,
    /// for the rest of the client's life.
    #[default]
    Auto,
    /// Only a WebSocket.
    WebSocket,
    /// Only long-polling (`POST /v1/events`, and HTTP for everything sent). Presence is not
    /// pushed to long-polling clients: `watch_presence` asks `GET /v1/presence` at once and
    /// then every `presence_poll_interval`, reporting what changed.
    LongPoll,
}

impl ClientConfig {
    /// Defaults: no resume point, backoff 50 ms to 5 s, ack timeout 10 s, receipts confirmed
    /// at most once a second (every 30 s in large conversations).
    pub fn new(base_url: &str, token: &str) -> ClientConfig {
        ClientConfig {
            base_url: base_url.to_owned(),
            token: token.to_owned(),
            cursors: Vec::new(),
            epoch: None,
            backoff_base: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            ack_timeout: Duration::from_secs(10),
            auto_receipts: true,
            receipts_interval: Duration::from_secs(1),
            receipts_interval_large: Duration::from_secs(30),
            transport: Transport::Auto,
            presence_poll_interval: Duration::from_secs(15),
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("base_url", &self.base_url)
            .field("token", &"<redacted>")
            .field("cursors", &self.cursors.len())
            .field("epoch", &self.epoch)
            .field("backoff_base", &self.backoff_base)
            .field("backoff_max", &self.backoff_max)
            .field("ack_timeout", &self.ack_timeout)
            .field("auto_receipts", &self.auto_receipts)
            .field("receipts_interval", &self.receipts_interval)
            .field("receipts_interval_large", &self.receipts_interval_large)
            .field("transport", &self.transport)
            .field("presence_poll_interval", &self.presence_poll_interval)
            .finish()
    }
}

/// What happens on the live connection, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A connection was welcomed (the first one and every reconnect).
    Connected {
        /// Who we are.
        user_id: UserId,
        /// The server's store epoch. When it changed, every conversation is delivered again
        /// from seq 1.
        epoch: StoreEpoch,
        /// In conversations with more members than this, receipts carry only our own
        /// positions (everyone's: `HttpApi::receipts`).
        receipts_members_max: usize,
    },
    /// Catch-up after a (re)connect is done: everything missed has been delivered.
    Synced,
    /// A message: each `(conversation, seq)` exactly once, in seq order per conversation,
    /// without gaps (within one epoch, and one membership: see [`Event::Left`]). Our own sends
    /// are among them, with our `sender_id`: the server does not send a message back to the
    /// connection that sent it, so its ack is turned into this event.
    Message(MessageFrame),
    /// We became a member of a conversation while connected; its messages follow from seq 1.
    Joined(ConversationId),
    /// We stopped being a member of a conversation. Its cursor is forgotten (it leaves
    /// [`Client::cursors`] and the next `hello`), so if we join it again its messages are
    /// delivered again from seq 1.
    Left(ConversationId),
    /// Someone else became a member of one of our groups (pushed in groups of at most
    /// `receipts_members_max` members; larger ones: [`HttpApi::members`]).
    MemberAdded {
        /// The group.
        conversation_id: ConversationId,
        /// Who joined.
        user_id: UserId,
        /// Their role.
        role: lanes_protocol::http::Role,
        /// Members now.
        member_count: usize,
    },
    /// Someone else stopped being a member of one of our groups (removed, or left), pushed as
    /// [`Event::MemberAdded`] is.
    MemberRemoved {
        /// The group.
        conversation_id: ConversationId,
        /// Who left.
        user_id: UserId,
        /// Members now.
        member_count: usize,
    },
    /// The connection was lost; the client is reconnecting.
    Disconnected {
        /// What happened, for humans.
        reason: String,
    },
    /// Receipt positions of a conversation's members (all after a connect, then changes).
    Receipts {
        /// The conversation.
        conversation_id: ConversationId,
        /// The positions.
        receipts: Vec<Receipt>,
    },
    /// A member started or stopped typing.
    Typing {
        /// The conversation.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
        /// Start or stop.
        state: TypingState,
    },
    /// Presence of watched users (see [`Client::watch_presence`]).
    Presence(Vec<UserPresence>),
    /// An `error` frame not tied to one of our sends (such as `slow_consumer`), or the
    /// refusal of a reconnect (such as `rate_limited`). A reconnect refused as `unauthorized`
    /// (an expired or revoked token) is final: pending sends fail with that error, this event
    /// is the last one, and [`Events::next`] then returns `None`.
    ServerError(ErrorFrame),
}

/// A handle to the live connection. Cheap to clone; all clones drive the same background task,
/// which stops when [`Client::close`] is called or every handle is dropped.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    /// Shared with `Events`, which advances it; held only for a copy or an update.
    resume: Arc<Mutex<ResumePoint>>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("closed", &self.commands.is_closed())
            .finish_non_exhaustive()
    }
}

/// Receives the [`Event`]s of a [`Client`].
pub struct Events {
    receiver: mpsc::Receiver<Event>,
    resume: Arc<Mutex<ResumePoint>>,
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events").finish_non_exhaustive()
    }
}

impl Events {
    /// The next event; `None` once the client is closed. Taking a `Message` advances
    /// [`Client::cursors`].
    pub async fn next(&mut self) -> Option<Event> {
        let event = self.receiver.recv().await?;
        self.resume
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(&event);
        Some(event)
    }
}

impl Client {
    /// Connects, sends `hello` and waits for `welcome`. Fails with `ClientError::Api` (code
    /// `unauthorized`) when the token is refused, and with `ClientError::Transport` when the
    /// connection fails or no welcome comes within 10 s. After that, the background task
    /// reconnects by itself, with backoff, until [`Client::close`] or until a reconnect is
    /// refused as `unauthorized` (see [`Event::ServerError`]).
    pub async fn connect(config: ClientConfig) -> Result<(Client, Events), ClientError> {
        let settings = Settings {
            ws_url: ws_url(&config.base_url),
            token: config.token.clone(),
            backoff_base: config.backoff_base,
            backoff_max: config.backoff_max,
            ack_timeout: config.ack_timeout,
            auto_receipts: config.auto_receipts,
            receipts_interval: config.receipts_interval,
            receipts_interval_large: config.receipts_interval_large,
            transport: config.transport,
            presence_poll_interval: config.presence_poll_interval,
        };
        let http = HttpApi::new(&config.base_url).with_token(&config.token);
        let resume = ResumePoint::new(&config.cursors, config.epoch.clone());
        let delivery = Delivery::new(config.cursors, config.epoch, BUFFERED_FRAMES_MAX);
        let (welcomed, polling) = connect_once(
            settings.clone(),
            http.clone(),
            delivery.cursors(),
            delivery.epoch().cloned(),
            config.transport == Transport::LongPoll,
        )
        .await?;

        let (commands_tx, commands_rx) = mpsc::channel(COMMANDS_LEN_MAX);
        let (events_tx, events_rx) = mpsc::channel(EVENTS_LEN_MAX);
        let driver = Driver::new(
            settings,
            http,
            delivery,
            welcomed,
            polling,
            commands_rx,
            events_tx,
        );
        tokio::spawn(driver.run());
        let resume = Arc::new(Mutex::new(resume));
        let client = Client {
            commands: commands_tx,
            resume: Arc::clone(&resume),
        };
        let events = Events {
            receiver: events_rx,
            resume,
        };
        Ok((client, events))
    }

    /// Sends `body` with a fresh random `client_msg_id` and resolves with its ack. See
    /// [`Client::send_with_id`].
    pub async fn send(
        &self,
        conversation_id: ConversationId,
        body: &str,
    ) -> Result<AckFrame, ClientError> {
        self.send_with_id(conversation_id, new_client_msg_id(), body)
            .await
    }

    /// Sends `body` and resolves with its ack. Until then the send is retried with the same
    /// `client_msg_id` across reconnects and after `storage_unavailable`, `internal`,
    /// `shutting_down` and `rate_limited` errors; any other `error` answering it fails it with
    /// `ClientError::Api`.
    ///
    /// A body longer than `MESSAGE_BODY_BYTES_MAX` bytes (the protocol's maximum, which no
    /// server accepts) fails at once with `ClientError::Api` (status 0, `message_too_large`)
    /// and is never sent. A server configured with a lower limit answers `message_too_large`
    /// itself, which fails the send the same way.
    ///
    /// Once acked, the message is also delivered as an [`Event::Message`], in its place among
    /// the conversation's messages (once, even when a retry's ack names a seq already
    /// delivered).
    ///
    /// Dropping the future does not cancel the send: it is still written, with the same id,
    /// until acked. Every pending send is kept in memory until resolved, so the app bounds that
    /// memory by the sends it starts, including those it stopped waiting for.
    pub async fn send_with_id(
        &self,
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        body: &str,
    ) -> Result<AckFrame, ClientError> {
        check_body_len(body)?;
        let content = Content::Message {
            body: body.to_owned(),
            reply_to: None,
        };
        self.append(conversation_id, client_msg_id, content).await
    }

    /// Sends a lane event (a message, reply, edit, delete or reaction) with the guarantees of
    /// [`Client::send_with_id`]: retried under `client_msg_id` until acked, and delivered as an
    /// [`Event::Message`] of its kind once acked.
    pub async fn append(
        &self,
        conversation_id: ConversationId,
        client_msg_id: ClientMsgId,
        content: Content,
    ) -> Result<AckFrame, ClientError> {
        match &content {
            Content::Message { body, .. } | Content::Edit { body, .. } => check_body_len(body)?,
            Content::System { .. } => {
                return Err(ClientError::Api {
                    status: 0,
                    code: ErrorCode::InvalidField,
                    message: "system messages are posted with the admin API".into(),
                });
            }
            Content::Delete { .. } | Content::Reaction { .. } => {}
        }
        let (responder, outcome) = oneshot::channel();
        self.commands
            .send(Command::Send {
                client_msg_id,
                conversation_id,
                content,
                responder,
            })
            .await
            .map_err(|_| ClientError::Closed)?;
        outcome.await.map_err(|_| ClientError::Closed)?
    }

    /// Replies to the message at `reply_to`.
    pub async fn reply(
        &self,
        conversation_id: ConversationId,
        reply_to: Seq,
        body: &str,
    ) -> Result<AckFrame, ClientError> {
        let content = Content::Message {
            body: body.to_owned(),
            reply_to: Some(reply_to),
        };
        self.append(conversation_id, new_client_msg_id(), content)
            .await
    }

    /// Replaces the text of our message at `target_seq`.
    pub async fn edit(
        &self,
        conversation_id: ConversationId,
        target_seq: Seq,
        body: &str,
    ) -> Result<AckFrame, ClientError> {
        let content = Content::Edit {
            target_seq,
            body: body.to_owned(),
        };
        self.append(conversation_id, new_client_msg_id(), content)
            .await
    }

    /// Deletes our message at `target_seq` (its text is erased on the server).
    pub async fn delete(
        &self,
        conversation_id: ConversationId,
        target_seq: Seq,
    ) -> Result<AckFrame, ClientError> {
        self.append(
            conversation_id,
            new_client_msg_id(),
            Content::Delete { target_seq },
        )
        .await
    }

    /// Adds (`add`) or takes back an emoji reaction on the message at `target_seq`.
    pub async fn react(
        &self,
        conversation_id: ConversationId,
        target_seq: Seq,
        emoji: &str,
        add: bool,
    ) -> Result<AckFrame, ClientError> {
        let content = Content::Reaction {
            target_seq,
            emoji: emoji.to_owned(),
            add,
        };
        self.append(conversation_id, new_client_msg_id(), content)
            .await
    }

    /// Marks the conversation read up to `seq` (a seq this device received). Not answered;
    /// dropped when disconnected (mark again after [`Event::Synced`]).
    pub async fn mark_read(
        &self,
        conversation_id: ConversationId,
        seq: Seq,
    ) -> Result<(), ClientError> {
        self.signal(ClientFrame::Read {
            conversation_id,
            seq,
        })
        .await
    }

    /// Says we started or stopped typing. Not answered; dropped when disconnected.
    pub async fn set_typing(
        &self,
        conversation_id: ConversationId,
        typing: bool,
    ) -> Result<(), ClientError> {
        let state = if typing {
            TypingState::Start
        } else {
            TypingState::Stop
        };
        self.signal(ClientFrame::Typing {
            conversation_id,
            state,
        })
        .await
    }

    /// Says this device is in use (`Online`) or not (`Away`).
    pub async fn set_presence(&self, state: PresenceState) -> Result<(), ClientError> {
        self.signal(ClientFrame::Presence { state }).await
    }

    /// Follows the presence of these users (replacing the previous list, also after
    /// reconnects): an [`Event::Presence`] with all of them, then with changes.
    pub async fn watch_presence(&self, user_ids: Vec<UserId>) -> Result<(), ClientError> {
        self.commands
            .send(Command::Watch(user_ids))
            .await
            .map_err(|_| ClientError::Closed)
    }

    async fn signal(&self, frame: ClientFrame) -> Result<(), ClientError> {
        self.commands
            .send(Command::Signal(frame))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// Cursors (the highest seq per conversation) as of the events taken from
    /// [`Events::next`]; persist them with [`Client::epoch`] to resume later.
    pub fn cursors(&self) -> Vec<Cursor> {
        self.resume
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cursors()
    }

    /// The store epoch the [`Client::cursors`] belong to.
    pub fn epoch(&self) -> Option<StoreEpoch> {
        self.resume
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .epoch()
    }

    /// Closes the connection and stops reconnecting. Pending sends fail with
    /// `ClientError::Closed`, and [`Events::next`] returns `None` after the events already
    /// queued.
    pub async fn close(&self) {
        let (done, closed) = oneshot::channel();
        if self.commands.send(Command::Close { done }).await.is_ok() {
            let _ = closed.await;
        }
    }
}

/// Refuses, before it is queued, a body no server accepts. Such a send must never be written: a
/// frame that large makes the server close the connection (1009) without naming the send, and
/// the send would then be written again first on every reconnect, forever.
fn check_body_len(body: &str) -> Result<(), ClientError> {
    if body.len() > MESSAGE_BODY_BYTES_MAX {
        return Err(ClientError::Api {
            status: 0,
            code: ErrorCode::MessageTooLarge,
            message: format!(
                "body is {} bytes, limit {MESSAGE_BODY_BYTES_MAX}",
                body.len()
            ),
        });
    }
    Ok(())
}

/// 16 random bytes as 32 hex digits.
fn new_client_msg_id() -> ClientMsgId {
    let bytes: [u8; 16] = rand::random();
    let mut hex = String::with_capacity(32);
    for byte in bytes {
        let _ = write!(hex, "{byte:02x}");
    }
    match ClientMsgId::parse(&hex) {
        Ok(client_msg_id) => client_msg_id,
        Err(err) => unreachable!("32 hex digits are a valid client_msg_id: {err}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_msg_ids_are_fresh_hex() {
        let first = new_client_msg_id();
        let second = new_client_msg_id();
        assert_eq!(first.as_str().len(), 32);
        assert!(first.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(first, second);
    }

    fn check(body_len: usize, refused: bool) {
        let body = "é".repeat(body_len / 2) + &"x".repeat(body_len % 2);
        assert_eq!(body.len(), body_len);
        match check_body_len(&body) {
            Ok(()) => assert!(!refused, "{body_len} bytes were accepted"),
            Err(ClientError::Api {
                status: 0,
                code: ErrorCode::MessageTooLarge,
                message,
            }) => {
                assert!(refused, "{body_len} bytes were refused");
                assert!(message.contains(&body_len.to_string()), "{message}");
            }
            Err(err) => panic!("unexpected error {err:?}"),
        }
    }

    #[test]
    fn oversized_bodies_are_refused() {
        check(0, false);
        check(MESSAGE_BODY_BYTES_MAX, false);
        // Bytes, not characters, count.
        check(MESSAGE_BODY_BYTES_MAX + 1, true);
        check(4 * MESSAGE_BODY_BYTES_MAX, true);
    }

    #[test]
    fn config_defaults_and_redaction() {
        let config = ClientConfig::new("http://h:1", "secret");
        assert_eq!(config.backoff_base, Duration::from_millis(50));
        assert_eq!(config.backoff_max, Duration::from_secs(5));
        assert_eq!(config.ack_timeout, Duration::from_secs(10));
        assert!(config.cursors.is_empty() && config.epoch.is_none());
        assert!(!format!("{config:?}").contains("secret"));
    }
}
