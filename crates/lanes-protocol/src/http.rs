//! JSON bodies of the HTTP API (`/v1/...`). Routes and examples are in docs/PROTOCOL.md.

use serde::{Deserialize, Serialize};

use crate::frames::{
    Cursor, ErrorCode, MessageFrame, PresenceState, Receipt, ServerFrame, TypingState, UserPresence,
};
use crate::ids::{ClientMsgId, ConversationId, Seq, StoreEpoch, UnixMillis, UserId};

/// `POST /v1/register` and `POST /v1/login`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The username, which becomes the user id.
    pub username: String,
    /// The password.
    pub password: String,
}

/// A new session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Session {
    /// Who logged in.
    pub user_id: UserId,
    /// Opaque bearer token; send it as `Authorization: Bearer …` and in the WebSocket `hello`.
    pub token: String,
    /// When the token stops working.
    pub expires_at: UnixMillis,
}

/// `POST /v1/conversations/direct`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateDirect {
    /// The other user.
    pub user_id: UserId,
}

/// `POST /v1/conversations/group`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateGroup {
    /// Display name.
    pub name: String,
    /// Initial members besides the creator, who becomes the owner.
    #[serde(default)]
    pub members: Vec<UserId>,
}

/// `POST /v1/conversations/{id}/members`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AddMember {
    /// Who to add.
    pub user_id: UserId,
    /// Their role; `member` when absent. Only the owner may add admins.
    #[serde(default)]
    pub role: Option<Role>,
}

/// What a member may do in a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Created the group; manages members and admins.
    Owner,
    /// Manages members.
    Admin,
    /// Reads and sends.
    Member,
}

impl Role {
    /// The role as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    /// Parses the stored form.
    pub fn parse(value: &str) -> Option<Role> {
        match value {
            "owner" => Some(Role::Owner),
            "admin" => Some(Role::Admin),
            "member" => Some(Role::Member),
            _ => None,
        }
    }
}

/// Direct (two users, fixed) or group (named, managed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ConversationKind {
    /// Exactly two users; the same pair always gets the same conversation.
    Direct,
    /// A named group with an owner.
    Group,
}

impl ConversationKind {
    /// The kind as stored and sent.
    pub fn as_str(self) -> &'static str {
        match self {
            ConversationKind::Direct => "direct",
            ConversationKind::Group => "group",
        }
    }

    /// Parses the stored form.
    pub fn parse(value: &str) -> Option<ConversationKind> {
        match value {
            "direct" => Some(ConversationKind::Direct),
            "group" => Some(ConversationKind::Group),
            _ => None,
        }
    }
}

/// A member of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Member {
    /// The user.
    pub user_id: UserId,
    /// Their role.
    pub role: Role,
}

/// A conversation as one member sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Conversation {
    /// Its id.
    pub conversation_id: ConversationId,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Group name; absent for direct conversations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Seq of the newest message (0 when empty).
    pub head_seq: Seq,
    /// The newest message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_message: Option<MessageFrame>,
    /// Messages from others after the caller's read marker.
    pub unread_count: u64,
    /// Where the viewer marked the conversation read.
    #[serde(default)]
    pub read_seq: Seq,
    /// Members, with roles, in joining order. In `GET /v1/conversations` at most
    /// `limits::MEMBERS_LISTED_MAX`: the viewer first, then the others by user id.
    pub members: Vec<Member>,
    /// How many members it has (all of them, also where `members` lists fewer).
    #[serde(default)]
    pub member_count: u64,
    /// When it was created.
    pub created_at: UnixMillis,
}

/// `GET /v1/conversations`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ConversationList {
    /// Newest activity first.
    pub conversations: Vec<Conversation>,
    /// With `limit`, when more follow: pass it as `after` for the next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `GET /v1/conversations/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct History {
    /// Ascending by seq, whichever direction was asked.
    pub messages: Vec<MessageFrame>,
    /// True when more messages exist beyond this page in the direction asked.
    pub has_more: bool,
}

/// `GET /v1/conversations/{id}/members`: a page of members in user id order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MemberPage {
    /// Ascending by user id.
    pub members: Vec<Member>,
    /// True when more members follow: ask again with `after` = the last user id here.
    pub has_more: bool,
}

/// `GET`/`PUT /v1/me/settings`: the user's preferences.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// Other members do not see how far this user has read (they still see delivery).
    pub hide_read_receipts: bool,
}

/// `POST /v1/conversations/{id}/messages`: send a message (acked after the commit).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SendMessage {
    /// Makes the send idempotent.
    pub client_msg_id: ClientMsgId,
    /// Text.
    pub body: String,
    /// The seq of the message this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Seq>,
}

/// `POST /v1/conversations/{id}/messages/{seq}/edit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EditMessage {
    /// Makes the edit idempotent.
    pub client_msg_id: ClientMsgId,
    /// The new text.
    pub body: String,
}

/// `POST /v1/conversations/{id}/messages/{seq}/delete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct DeleteMessage {
    /// Makes the delete idempotent.
    pub client_msg_id: ClientMsgId,
}

/// `POST /v1/conversations/{id}/messages/{seq}/reactions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct React {
    /// Makes the reaction idempotent.
    pub client_msg_id: ClientMsgId,
    /// One emoji.
    pub emoji: String,
    /// Take the reaction back instead of adding it.
    #[serde(default)]
    pub remove: bool,
}

/// `POST /v1/conversations/{id}/received` and `/read`: a receipt position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Position {
    /// Up to here.
    pub seq: Seq,
}

/// `GET /v1/conversations/{id}/receipts`: every member's positions, as the caller may see them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReceiptList {
    /// Members with any position.
    pub receipts: Vec<Receipt>,
}

/// `POST /v1/conversations/{id}/typing`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetTyping {
    /// Start or stop.
    pub state: TypingState,
}

/// `POST /v1/presence`: the state of every current connection of the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SetPresence {
    /// `online` or `away`.
    pub state: PresenceState,
}

/// `GET /v1/presence?user_ids=…`: those of the users who share a conversation with the caller.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceList {
    /// Their presence now.
    pub users: Vec<UserPresence>,
}

/// `POST /v1/events`: the long-poll request as a body (for clients with many cursors).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// The client's cursors (as in `hello`).
    #[serde(default)]
    pub cursors: Vec<Cursor>,
    /// The epoch the cursors came from.
    #[serde(default)]
    pub epoch: Option<StoreEpoch>,
    /// Longest wait for an event, in milliseconds (default 25,000, at most 60,000).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// This client's presence while it polls (`online` by default).
    #[serde(default)]
    pub presence: Option<PresenceState>,
    /// Also name the user's large conversations in the answer (`large`, as `synced` does on a
    /// WebSocket): for a client's first poll.
    #[serde(default)]
    pub sync: bool,
}

/// `GET`/`POST /v1/events`: what happened since the cursors, in the order a WebSocket would
/// have delivered it, and the cursors to poll with next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventsPage {
    /// `message`, `joined`, `left`, `receipts`, `typing` and `presence` frames; empty when the
    /// poll timed out.
    pub events: Vec<ServerFrame>,
    /// The server's store epoch: send it back with the cursors.
    pub epoch: StoreEpoch,
    /// The client's cursors after these events.
    pub cursors: Vec<Cursor>,
    /// Who the poll is (the `welcome` of this transport).
    pub user_id: UserId,
    /// As in `welcome`: beyond this many members, a conversation's receipts are the user's own.
    #[serde(default = "crate::frames::receipts_members_default")]
    pub receipts_members_max: usize,
    /// When the poll asked (`sync`): the user's conversations over `receipts_members_max`
    /// members, as in `synced`. Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub large: Vec<ConversationId>,
}

/// `POST /v1/admin/users` (API key): create a user for the application.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AdminCreateUser {
    /// The user id (ids starting with `@` are reserved).
    pub user_id: UserId,
    /// A password, for users who also log in with one; absent for users who only use the
    /// application's JWTs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// The answer to `POST /v1/admin/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AdminUser {
    /// The user created.
    pub user_id: UserId,
}

/// `POST /v1/admin/conversations` (API key): a direct conversation of exactly two `members`, or
/// a group named `name` owned by `owner` with `members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AdminCreateConversation {
    /// Direct or group.
    pub kind: ConversationKind,
    /// Direct: the two users. Group: the members besides the owner.
    #[serde(default)]
    pub members: Vec<UserId>,
    /// Group only: its name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Group only: its owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<UserId>,
}

/// `POST /v1/admin/conversations/{id}/messages` (API key): a `system` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AdminPost {
    /// Makes the post idempotent (per server: every system message shares one sender).
    pub client_msg_id: ClientMsgId,
    /// Text.
    pub body: String,
}

/// Every HTTP error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    /// Stable code (same set as WebSocket error frames).
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// With `rate_limited`: when to try again (also in the `Retry-After` header, in seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}
