//! WebSocket frames in both directions, and the stable error codes. JSON, tagged by `type`.

use serde::{Deserialize, Serialize};

use crate::ids::{ClientMsgId, ConversationId, MessageId, Seq, StoreEpoch, UnixMillis, UserId};

/// Where a client's copy of one conversation ends: it has every message up to and including `seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The last seq the client holds (gap-free from 1).
    pub seq: Seq,
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
    },
    /// Application-level keepalive; answered with `pong`.
    Ping {
        /// Echoed in the pong.
        #[serde(default)]
        request_id: Option<String>,
    },
}

/// A stored message, as delivered live, on catch-up and in history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Text.
    pub body: String,
    /// When it was committed.
    pub server_ts: UnixMillis,
}

/// Confirms that a send is durably stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
pub struct ErrorFrame {
    /// Stable machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation; may change between versions.
    pub message: String,
    /// The request this answers, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// A frame the server sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame {
    /// Authentication succeeded; catch-up follows, then `synced`.
    Welcome {
        /// Who the connection is.
        user_id: UserId,
        /// Identity of the server's store, to be sent back with cursors.
        epoch: StoreEpoch,
    },
    /// Catch-up is complete: everything the client missed has been sent; live frames follow.
    Synced,
    /// A message (live or catch-up).
    Message(MessageFrame),
    /// A send was durably stored.
    Ack(AckFrame),
    /// The user became a member of a conversation (created or added while connected).
    Joined {
        /// The conversation.
        conversation_id: ConversationId,
    },
    /// The user stopped being a member of a conversation (removed or left); no more frames
    /// of it follow.
    Left {
        /// The conversation.
        conversation_id: ConversationId,
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
