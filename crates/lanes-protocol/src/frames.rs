//! WebSocket frames in both directions, and the stable error codes. JSON, tagged by `type`.

use serde::{Deserialize, Serialize};

use crate::ids::{ClientMsgId, ConversationId, MessageId, Seq, StoreEpoch, UnixMillis, UserId};

/// Where a client's copy of one conversation ends: it has every message up to and including `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Cursor {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The last seq the client holds (gap-free from 1).
    pub seq: Seq,
}

/// What a `welcome` (or a poll page) from a server that does not say means.
pub(crate) fn receipts_members_default() -> usize {
    crate::limits::RECEIPTS_MEMBERS_DEFAULT
}

/// A frame a client sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientFrame {
    /// First frame on every connection: authenticate and say what the client already holds.
    /// Conversations missing from `cursors` are caught up from the start.
    Hello {
        /// A session token or an application JWT.
        token: String,
        /// The client's cursors.
        #[serde(default)]
        cursors: Vec<Cursor>,
        /// The store epoch the cursors came from; when it differs from the server's, the
        /// cursors are ignored and the client is caught up from the start.
        #[serde(default)]
        epoch: Option<StoreEpoch>,
    },
    /// Send a text message.
    Send {
        /// Makes the send idempotent.
        client_msg_id: ClientMsgId,
        /// Where to send.
        conversation_id: ConversationId,
        /// UTF-8 text.
        body: String,
        /// The seq of the message this one answers.
        #[serde(default)]
        reply_to: Option<Seq>,
    },
    /// Replace the text of one of the user's own messages. A lane event with its own seq.
    Edit {
        /// Makes the edit idempotent.
        client_msg_id: ClientMsgId,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message to edit.
        target_seq: Seq,
        /// The new text.
        body: String,
    },
    /// Delete one of the user's own messages: its text (and its edits' texts) are erased from
    /// storage, its seq stays as a tombstone. A lane event with its own seq.
    Delete {
        /// Makes the delete idempotent.
        client_msg_id: ClientMsgId,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message to delete.
        target_seq: Seq,
    },
    /// Add (or, with `remove`, take back) an emoji reaction. A lane event with its own seq.
    React {
        /// Makes the reaction idempotent.
        client_msg_id: ClientMsgId,
        /// The conversation.
        conversation_id: ConversationId,
        /// The message reacted to.
        target_seq: Seq,
        /// One emoji (a single Unicode emoji, skin tones and ZWJ sequences included).
        emoji: String,
        /// Take the reaction back instead of adding it.
        #[serde(default)]
        remove: bool,
    },
    /// This device holds every message of the conversation up to `seq` (delivery receipt).
    Received {
        /// The conversation.
        conversation_id: ConversationId,
        /// Received up to here.
        seq: Seq,
    },
    /// The user has read the conversation up to `seq`. Never moves backwards: an older seq is
    /// a no-op. Implies `received` up to the same seq.
    Read {
        /// The conversation.
        conversation_id: ConversationId,
        /// Read up to here.
        seq: Seq,
    },
    /// The user started or stopped typing. Ephemeral: never stored.
    Typing {
        /// The conversation.
        conversation_id: ConversationId,
        /// Start or stop.
        state: TypingState,
    },
    /// This device's presence as its user chose it (`online` or `away`).
    Presence {
        /// `online` or `away`; `offline` is the server's to decide.
        state: PresenceState,
    },
    /// Replace this connection's presence subscriptions with these users. Users who share no
    /// conversation with the caller are silently left out.
    WatchPresence {
        /// The users whose presence the client shows.
        user_ids: Vec<UserId>,
    },
    /// Application-level keepalive; answered with `pong`.
    Ping {
        /// Echoed in the pong.
        #[serde(default)]
        request_id: Option<String>,
    },
}

/// What a lane event is. Every one has its own seq in its conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A text message (possibly a reply).
    #[default]
    Message,
    /// A new text for the message at `target_seq`.
    Edit,
    /// The message at `target_seq` was deleted.
    Delete,
    /// `emoji` was added to the message at `target_seq` by the sender.
    ReactionAdd,
    /// The sender took `emoji` back from the message at `target_seq`.
    ReactionRemove,
    /// A message from the application (admin API), sent as `SYSTEM_USER_ID`.
    System,
}

/// The sender of `system` events. User ids starting with `@` are reserved for the server.
pub const SYSTEM_USER_ID: &str = "@system";

impl EventKind {
    /// The kind as stored and on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Message => "message",
            EventKind::Edit => "edit",
            EventKind::Delete => "delete",
            EventKind::ReactionAdd => "reaction_add",
            EventKind::ReactionRemove => "reaction_remove",
            EventKind::System => "system",
        }
    }

    /// The kind named `name`, if any.
    pub fn parse(name: &str) -> Option<EventKind> {
        [
            EventKind::Message,
            EventKind::Edit,
            EventKind::Delete,
            EventKind::ReactionAdd,
            EventKind::ReactionRemove,
            EventKind::System,
        ]
        .into_iter()
        .find(|kind| kind.as_str() == name)
    }
}

/// What a client asks to append to a conversation's lane (validated, before the store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A text message, possibly replying to the message at `reply_to`.
    Message {
        /// Text.
        body: String,
        /// The message answered.
        reply_to: Option<Seq>,
    },
    /// A new text for the sender's message at `target_seq`.
    Edit {
        /// The message edited.
        target_seq: Seq,
        /// New text.
        body: String,
    },
    /// Deletes the sender's message at `target_seq`.
    Delete {
        /// The message deleted.
        target_seq: Seq,
    },
    /// A message from the application, stored as from `SYSTEM_USER_ID` without membership.
    /// Only the admin API creates it.
    System {
        /// Text.
        body: String,
    },
    /// Adds or removes the sender's `emoji` reaction on the message at `target_seq`.
    Reaction {
        /// The message reacted to.
        target_seq: Seq,
        /// The emoji.
        emoji: String,
        /// Add (true) or remove (false).
        add: bool,
    },
}

impl Content {
    /// The event kind this content becomes.
    pub fn kind(&self) -> EventKind {
        match self {
            Content::Message { .. } => EventKind::Message,
            Content::Edit { .. } => EventKind::Edit,
            Content::Delete { .. } => EventKind::Delete,
            Content::Reaction { add: true, .. } => EventKind::ReactionAdd,
            Content::Reaction { add: false, .. } => EventKind::ReactionRemove,
            Content::System { .. } => EventKind::System,
        }
    }
}

/// The users who reacted to a message with one emoji.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// Who reacted with it, in id order.
    pub user_ids: Vec<UserId>,
}

impl ClientFrame {
    /// The lane-event frames (send, edit, delete, react) as id, conversation and content; any
    /// other frame back as it was.
    pub fn into_lane_event(self) -> Result<(ClientMsgId, ConversationId, Content), ClientFrame> {
        Ok(match self {
            ClientFrame::Send {
                client_msg_id,
                conversation_id,
                body,
                reply_to,
            } => (
                client_msg_id,
                conversation_id,
                Content::Message { body, reply_to },
            ),
            ClientFrame::Edit {
                client_msg_id,
                conversation_id,
                target_seq,
                body,
            } => (
                client_msg_id,
                conversation_id,
                Content::Edit { target_seq, body },
            ),
            ClientFrame::Delete {
                client_msg_id,
                conversation_id,
                target_seq,
            } => (
                client_msg_id,
                conversation_id,
                Content::Delete { target_seq },
            ),
            ClientFrame::React {
                client_msg_id,
                conversation_id,
                target_seq,
                emoji,
                remove,
            } => (
                client_msg_id,
                conversation_id,
                Content::Reaction {
                    target_seq,
                    emoji,
                    add: !remove,
                },
            ),
            frame => return Err(frame),
        })
    }

    /// The frame that appends `content`, the inverse of `into_lane_event`. System content has no
    /// frame of its own (only the admin API posts it) and is sent as a plain message.
    pub fn lane_event(
        client_msg_id: ClientMsgId,
        conversation_id: ConversationId,
        content: Content,
    ) -> ClientFrame {
        match content {
            Content::Message { body, reply_to } => ClientFrame::Send {
                client_msg_id,
                conversation_id,
                body,
                reply_to,
            },
            Content::System { body } => ClientFrame::Send {
                client_msg_id,
                conversation_id,
                body,
                reply_to: None,
            },
            Content::Edit { target_seq, body } => ClientFrame::Edit {
                client_msg_id,
                conversation_id,
                target_seq,
                body,
            },
            Content::Delete { target_seq } => ClientFrame::Delete {
                client_msg_id,
                conversation_id,
                target_seq,
            },
            Content::Reaction {
                target_seq,
                emoji,
                add,
            } => ClientFrame::React {
                client_msg_id,
                conversation_id,
                target_seq,
                emoji,
                remove: !add,
            },
        }
    }
}

/// A stored lane event (a message, or an edit, delete or reaction of one), as delivered live,
/// on catch-up and in history. A `message` read from the store carries its current state
/// (`body` after edits, `edited_at`, `deleted`, `reactions`); the events that changed it follow
/// in seq order, and applying them again leaves the same state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MessageFrame {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Position in the conversation.
    pub seq: Seq,
    /// Global id.
    pub message_id: MessageId,
    /// Author.
    pub sender_id: UserId,
    /// The author's idempotency key.
    pub client_msg_id: ClientMsgId,
    /// What this event is.
    #[serde(default)]
    pub kind: EventKind,
    /// Text of a message or edit; empty for deletes, reactions and deleted messages.
    pub body: String,
    /// When it was committed.
    pub server_ts: UnixMillis,
    /// The message an edit, delete or reaction applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_seq: Option<Seq>,
    /// The message a message replies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Seq>,
    /// The emoji of a reaction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// When a message was last edited (state read from the store).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<UnixMillis>,
    /// The message (or the message an edit applies to) was deleted: its text is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// A message's reactions (state read from the store).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
}

impl MessageFrame {
    /// A plain text message as it is committed.
    pub fn new_message(
        conversation_id: ConversationId,
        seq: Seq,
        message_id: MessageId,
        sender_id: UserId,
        client_msg_id: ClientMsgId,
        body: String,
        server_ts: UnixMillis,
    ) -> MessageFrame {
        MessageFrame {
            conversation_id,
            seq,
            message_id,
            sender_id,
            client_msg_id,
            kind: EventKind::Message,
            body,
            server_ts,
            target_seq: None,
            reply_to: None,
            emoji: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
        }
    }
}

/// Typing started or stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum TypingState {
    /// Typing; expires by itself unless refreshed.
    Start,
    /// Stopped (said so, sent the message, or expired).
    Stop,
}

/// A user's presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// Connected, and at least one device is in use.
    Online,
    /// Connected, but every device said it is away.
    Away,
    /// No connection (after a grace period).
    Offline,
}

/// One member's receipt position in a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Receipt {
    /// The member.
    pub user_id: UserId,
    /// A device of theirs received every message up to here.
    pub delivered_seq: Seq,
    /// They read up to here; absent when they hide read receipts (except from themselves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read_seq: Option<Seq>,
}

/// One user's presence as a watcher sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UserPresence {
    /// The user.
    pub user_id: UserId,
    /// Online, away or offline.
    pub state: PresenceState,
    /// When they were last connected (offline users), if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<UnixMillis>,
}

/// Confirms that a send is durably stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AckFrame {
    /// The send this acknowledges.
    pub client_msg_id: ClientMsgId,
    /// The conversation.
    pub conversation_id: ConversationId,
    /// Global id of the stored message.
    pub message_id: MessageId,
    /// Position in the conversation.
    pub seq: Seq,
    /// When it was committed.
    pub server_ts: UnixMillis,
}

/// A typed error. `request_id` echoes the `client_msg_id` of a send, or the `request_id` of
/// another frame, when the request carried one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorFrame {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation; may change between versions.
    pub message: String,
    /// The request this answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// With `rate_limited`: when to try again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

impl ErrorFrame {
    /// An error answering `request_id` (if any), with no retry hint.
    pub fn new(code: ErrorCode, message: impl Into<String>, request_id: Option<String>) -> Self {
        ErrorFrame {
            code,
            message: message.into(),
            request_id,
            retry_after_ms: None,
        }
    }
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Authentication succeeded; catch-up follows, then `synced`.
    Welcome {
        /// Who the connection is.
        user_id: UserId,
        /// Identity of the server's store, to be sent back with cursors.
        epoch: StoreEpoch,
        /// In conversations with more members than this, `receipts` frames carry only the
        /// user's own positions (the others': `GET /v1/conversations/{id}/receipts`).
        #[serde(default = "receipts_members_default")]
        receipts_members_max: usize,
    },
    /// Catch-up is complete: everything the client missed has been sent; live frames follow.
    Synced {
        /// The user's conversations of more than `receipts_members_max` members at this point:
        /// a delivered position there is shown to no one live, so clients confirm delivery
        /// there rarely (the SDK and the web client: at most about every 30 s). Absent when
        /// there are none. Later: a conversation joined is marked in its `joined`, one that
        /// grows past the bound is named by a `large` frame.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        large: Vec<ConversationId>,
    },
    /// A message (live or catch-up).
    Message(MessageFrame),
    /// A send was durably stored.
    Ack(AckFrame),
    /// The user became a member of a conversation (created or added while connected).
    Joined {
        /// The conversation.
        conversation_id: ConversationId,
        /// It has more than `receipts_members_max` members: as in `synced`'s `large`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        large: bool,
    },
    /// A conversation of the user grew past `receipts_members_max` members while the user was
    /// connected: from now on as in `synced`'s `large`. Sent once, as the add that crossed the
    /// bound is stored, to every member online then; not sent when a group shrinks back.
    Large {
        /// The conversation.
        conversation_id: ConversationId,
    },
    /// Someone else became a member of one of the user's groups. Sent to the members online in
    /// groups of at most `receipts_members_max` members (the add that takes a group past it is
    /// announced by `large`; larger groups' changes are not pushed: page
    /// `GET /v1/conversations/{id}/members`).
    MemberAdded {
        /// The group.
        conversation_id: ConversationId,
        /// Who joined.
        user_id: UserId,
        /// Their role.
        role: crate::http::Role,
        /// Members now.
        member_count: usize,
    },
    /// Someone else stopped being a member of one of the user's groups (removed, or left),
    /// announced as `member_added` is. Roles that change with it (an owner leaving hands the
    /// group on) are in the group's view.
    MemberRemoved {
        /// The group.
        conversation_id: ConversationId,
        /// Who left.
        user_id: UserId,
        /// Members now.
        member_count: usize,
    },
    /// The user stopped being a member of a conversation (removed or left); no more frames
    /// of it follow.
    Left {
        /// The conversation.
        conversation_id: ConversationId,
    },
    /// Receipt positions in a conversation: every member's (with any) after `hello`, then the
    /// ones that changed. Positions only move forward.
    Receipts {
        /// The conversation.
        conversation_id: ConversationId,
        /// The positions.
        receipts: Vec<Receipt>,
    },
    /// A member started or stopped typing (never stored). A `start` that is not refreshed
    /// within the server's typing TTL is followed by a `stop`.
    Typing {
        /// The conversation.
        conversation_id: ConversationId,
        /// Who.
        user_id: UserId,
        /// Start or stop.
        state: TypingState,
    },
    /// Presence of watched users: all of them after `watch_presence`, then those that changed
    /// (coalesced).
    Presence {
        /// The users.
        users: Vec<UserPresence>,
    },
    /// Answers `ping`.
    Pong {
        /// Echo of the ping's request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_id: Option<String>,
    },
    /// Something went wrong with a request, or the connection is about to close.
    Error(ErrorFrame),
}

/// Stable error codes, shared by WebSocket error frames and HTTP error bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame or body is not valid JSON, has an unknown type, or misses a field.
    BadFrame,
    /// A field has an invalid value (bad id, empty body, bad page size…).
    InvalidField,
    /// No valid credentials: missing, malformed, expired or revoked token, or wrong password.
    Unauthorized,
    /// Authenticated, but not allowed (for example, a non-admin removing a member).
    Forbidden,
    /// The conversation or user does not exist, or the caller may not know that it does.
    NotFound,
    /// The username is taken, or the request conflicts with the current state.
    Conflict,
    /// The message body is larger than the server's limit.
    MessageTooLarge,
    /// The frame or request body is larger than the protocol allows.
    PayloadTooLarge,
    /// Too many requests; retry later.
    RateLimited,
    /// The store could not commit; nothing was stored, retry with the same client_msg_id.
    StorageUnavailable,
    /// The connection could not keep up with its frames and is being closed; reconnect and resume.
    SlowConsumer,
    /// The server is shutting down; reconnect.
    ShuttingDown,
    /// A bug on the server's side.
    Internal,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::MessageTooLarge => "message_too_large",
            ErrorCode::PayloadTooLarge => "payload_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::SlowConsumer => "slow_consumer",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the code maps to.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadFrame | ErrorCode::InvalidField => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::Conflict => 409,
            ErrorCode::MessageTooLarge | ErrorCode::PayloadTooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::StorageUnavailable | ErrorCode::ShuttingDown => 503,
            ErrorCode::SlowConsumer | ErrorCode::Internal => 500,
        }
    }
}

/// WebSocket close codes Lanes uses besides the standard ones (1000, 1001, 1002, 1003, 1009, 1011).
pub mod close_code {
    /// No valid `hello` arrived in time.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The connection's queue overflowed.
    pub const SLOW_CONSUMER: u16 = 4008;
    /// The peer stopped answering heartbeats.
    pub const IDLE_TIMEOUT: u16 = 4009;
}
