//! The `Store` trait every backend implements, its fault type, and the conformance suite that
//! defines what a store does. Synchronous: callers run it on blocking threads, and the single
//! writer (`committer`) owns the ordering.

pub mod conformance;

use lanes_protocol::http::{Conversation, ConversationKind, Member, Role, Settings};
use lanes_protocol::{
    ClientMsgId, Content, ConversationId, MessageFrame, Seq, StoreEpoch, UnixMillis, UserId,
};

/// Something outside our control failed. Rejections (the caller's fault) are not here.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be used right now (IO error, disk full, locked, corrupt).
    /// For `append_batch` the outcome is unknown and the sends must be retried by id.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

/// A lane event (message, edit, delete, reaction) waiting to be committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Author.
    pub sender_id: UserId,
    /// Idempotency key.
    pub client_msg_id: ClientMsgId,
    /// Target.
    pub conversation_id: ConversationId,
    /// What to append.
    pub content: Content,
}

/// Why `append_batch` refused a lane event that refers to another message. Nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendRejection {
    /// `target_seq` or `reply_to` names no message of the conversation (beyond the head, or
    /// another kind of event).
    NoSuchMessage,
    /// Only the author may edit or delete a message.
    NotAuthor,
    /// The target message was deleted.
    Deleted,
    /// The reaction is already there (add) or is not there (remove).
    ReactionUnchanged,
}

/// Where a page of `Store::conversations_page` ends: its last conversation and that
/// conversation's last activity (the listing's order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListingCursor {
    /// The newest event's time, or the creation for none yet.
    pub activity: UnixMillis,
    /// The conversation.
    pub conversation_id: ConversationId,
}

/// A member's receipt positions to move forward (never backwards; a seq beyond the head is
/// clamped to the head).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarkerUpdate {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The member.
    pub user_id: UserId,
    /// Received up to here (`Seq::ZERO`: unchanged).
    pub delivered: Seq,
    /// Read up to here (`Seq::ZERO`: unchanged); implies received.
    pub read: Seq,
}

/// A member's receipt positions as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceiptRow {
    /// The conversation.
    pub conversation_id: ConversationId,
    /// The member.
    pub user_id: UserId,
    /// Received up to here.
    pub delivered_seq: Seq,
    /// Read up to here.
    pub read_seq: Seq,
    /// The member hides read positions from others.
    pub hide_read: bool,
}

/// What `append_batch` did with one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppendOutcome {
    /// Stored now, with the next seq of its conversation.
    Appended(MessageFrame),
    /// (sender, client_msg_id) was already stored: this is the original, nothing new was written.
    Duplicate(MessageFrame),
    /// The sender is not a member of the conversation (or it does not exist): nothing written.
    NotMember,
    /// The event refers to a message it may not apply to: nothing written.
    Rejected(AppendRejection),
}

/// Result of changing membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipChange {
    /// The membership changed.
    Changed,
    /// Nothing to do (already a member, or not one).
    Unchanged,
}

/// What managing membership on someone's behalf did. Everything but `Changed` wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManageOutcome {
    /// The membership changed.
    Changed,
    /// Nothing to do: already a member (add).
    Unchanged,
    /// The actor is not a member, or the conversation does not exist.
    NotFound,
    /// Direct conversations have fixed members.
    Direct,
    /// The actor's role may not do this to that role.
    Forbidden,
    /// The group already has the most members allowed.
    Full,
    /// The user to add does not exist.
    UnknownUser,
    /// The user to remove is not a member.
    NotMember,
}

/// Whether a member with the first role may add or remove one with the second.
pub type MayManage = fn(Role, Role) -> bool;

/// Whether `actor` may remove `target` from a conversation of `kind`, given their roles in it
/// (`None`: not a member). `Changed` means allowed. Backends apply it inside the removal's
/// transaction; callers may apply it to a read first to refuse early.
pub fn decide_removal(
    kind: ConversationKind,
    actor_role: Option<Role>,
    target_role: Option<Role>,
    removing_self: bool,
    may_manage: MayManage,
) -> ManageOutcome {
    match (actor_role, target_role) {
        (None, _) => ManageOutcome::NotFound,
        _ if kind == ConversationKind::Direct => ManageOutcome::Direct,
        _ if removing_self => ManageOutcome::Changed,
        (_, None) => ManageOutcome::NotMember,
        (Some(actor), Some(target)) if !may_manage(actor, target) => ManageOutcome::Forbidden,
        _ => ManageOutcome::Changed,
    }
}

/// A user as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    /// Id.
    pub user_id: UserId,
    /// Argon2id PHC string; `None` for users who only authenticate with application JWTs.
    pub password_hash: Option<String>,
}

/// One conversation's identity, kind and members (no per-viewer fields).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationInfo {
    /// Id.
    pub conversation_id: ConversationId,
    /// Direct or group.
    pub kind: ConversationKind,
    /// Members with roles, in join order.
    pub members: Vec<(UserId, Role)>,
}

/// The durable state of Lanes. Every method is one transaction.
pub trait Store: Send + Sync + 'static {
    /// The store's identity, fixed at creation.
    fn epoch(&self) -> StoreEpoch;

    /// Creates a user. `Ok(false)` if the id is taken.
    fn create_user(&self, user: &StoredUser, now: UnixMillis) -> Result<bool, StoreError>;
    /// Creates a password-less user unless it exists (users known from application JWTs).
    fn ensure_user(&self, user_id: &UserId, now: UnixMillis) -> Result<(), StoreError>;
    /// Looks a user up.
    fn user(&self, user_id: &UserId) -> Result<Option<StoredUser>, StoreError>;
    /// The user's settings (defaults for an unknown user).
    fn settings(&self, user_id: &UserId) -> Result<Settings, StoreError>;
    /// Replaces the user's settings.
    fn set_settings(&self, user_id: &UserId, settings: &Settings) -> Result<(), StoreError>;
    /// Records when users were last connected.
    fn record_last_seen(&self, seen: &[(UserId, UnixMillis)]) -> Result<(), StoreError>;
    /// Those of `candidates` who share a conversation with `viewer` (and `viewer` itself, if
    /// listed), with when they were last seen.
    fn presence_visible(
        &self,
        viewer: &UserId,
        candidates: &[UserId],
    ) -> Result<Vec<(UserId, Option<UnixMillis>)>, StoreError>;

    /// Records a session token by its hash.
    fn create_session(
        &self,
        token_hash: &[u8; 32],
        user_id: &UserId,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<(), StoreError>;
    /// The user of an unexpired, unrevoked session, and when it expires.
    fn session_user(
        &self,
        token_hash: &[u8; 32],
        now: UnixMillis,
    ) -> Result<Option<(UserId, UnixMillis)>, StoreError>;
    /// Revokes a session. Revoking an unknown session is not an error.
    fn revoke_session(&self, token_hash: &[u8; 32]) -> Result<(), StoreError>;

    /// The direct conversation of two distinct users, created if needed (`true` when created).
    fn create_direct(
        &self,
        a: &UserId,
        b: &UserId,
        now: UnixMillis,
    ) -> Result<(ConversationId, bool), StoreError>;
    /// A new group owned by `owner`, with `members` (existing users) as members.
    fn create_group(
        &self,
        owner: &UserId,
        name: &str,
        members: &[UserId],
        now: UnixMillis,
    ) -> Result<ConversationId, StoreError>;
    /// Kind and members of a conversation.
    fn conversation_info(
        &self,
        conversation_id: ConversationId,
    ) -> Result<Option<ConversationInfo>, StoreError>;
    /// The conversation as `viewer` sees it (`None` unless `viewer` is a member), listing at
    /// most `limits::MEMBERS_LISTED_MAX` members as `conversations_of` does (`members_page`
    /// has the rest).
    fn conversation_for(
        &self,
        conversation_id: ConversationId,
        viewer: &UserId,
    ) -> Result<Option<Conversation>, StoreError>;
    /// Up to `limit` members of the conversation with user ids after `after` (from the first
    /// without), in user id order; `None` unless `viewer` is a member (checked in the same read
    /// transaction).
    fn members_page(
        &self,
        conversation_id: ConversationId,
        viewer: &UserId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Option<Vec<Member>>, StoreError>;
    /// Every conversation of `user_id`, newest activity first, each listing at most
    /// `limits::MEMBERS_LISTED_MAX` members (`user_id` first, then by user id) and counting all.
    fn conversations_of(&self, user_id: &UserId) -> Result<Vec<Conversation>, StoreError> {
        self.conversations_page(user_id, None, usize::MAX)
            .map(|(conversations, _)| conversations)
    }
    /// Up to `limit` of them, from after `after` (in the same order, newest activity first,
    /// then the higher id), and where the page ends when more follow.
    fn conversations_page(
        &self,
        user_id: &UserId,
        after: Option<ListingCursor>,
        limit: usize,
    ) -> Result<(Vec<Conversation>, Option<ListingCursor>), StoreError>;
    /// Every conversation of `user_id` with its head seq (for catch-up).
    fn heads_of(&self, user_id: &UserId) -> Result<Vec<(ConversationId, Seq)>, StoreError>;
    /// How many conversations `user_id` is a member of.
    fn conversation_count(&self, user_id: &UserId) -> Result<usize, StoreError>;
    /// Adds a member with a role.
    fn add_member(
        &self,
        conversation_id: ConversationId,
        user_id: &UserId,
        role: Role,
        now: UnixMillis,
    ) -> Result<MembershipChange, StoreError>;
    /// Removes a member. When the owner goes, the longest-standing admin (else member) becomes
    /// owner.
    fn remove_member(
        &self,
        conversation_id: ConversationId,
        user_id: &UserId,
    ) -> Result<MembershipChange, StoreError>;

    /// Adds `user_id` as `role` on behalf of `actor`, deciding in the same transaction that the
    /// actor's current role allows it (`may_manage`), that the user exists, and that the group
    /// holds fewer than `members_max`: a concurrent demotion or add cannot slip past the check.
    #[allow(clippy::too_many_arguments)]
    fn add_member_as(
        &self,
        actor: &UserId,
        conversation_id: ConversationId,
        user_id: &UserId,
        role: Role,
        members_max: usize,
        may_manage: MayManage,
        now: UnixMillis,
    ) -> Result<ManageOutcome, StoreError>;
    /// Removes `target` on behalf of `actor` (anyone may remove themselves), deciding in the same
    /// transaction that the actor's current role allows it. The owner's leaving hands ownership
    /// on as in `remove_member`.
    fn remove_member_as(
        &self,
        actor: &UserId,
        conversation_id: ConversationId,
        target: &UserId,
        may_manage: MayManage,
    ) -> Result<ManageOutcome, StoreError>;

    /// `append_batch`: commits the batch in one transaction with one fsync, assigning each
    /// conversation's next seqs in batch order. Outcomes are in batch order. An edit replaces
    /// its target's text; a delete erases the text of its target and of the target's edits;
    /// reactions add or remove one (user, emoji) of their target. Events that refer to a message
    /// are checked against it in the same transaction (`AppendRejection`).
    fn append_batch(
        &self,
        batch: &[NewMessage],
        now: UnixMillis,
    ) -> Result<Vec<AppendOutcome>, StoreError>;
    /// Moves receipt positions forward in one transaction, for members only. Returns the rows
    /// that changed, as they are now.
    fn advance_markers(&self, updates: &[MarkerUpdate]) -> Result<Vec<ReceiptRow>, StoreError>;
    /// Receipt positions (of members with `delivered_seq` > 0) in every conversation of
    /// `user_id` (or only in `conversation`, if `user_id` is a member), by conversation: every
    /// member's in conversations of at most `members_max` members, only the user's own in
    /// larger ones (`usize::MAX`: every member's everywhere).
    fn receipts_of(
        &self,
        user_id: &UserId,
        conversation: Option<ConversationId>,
        members_max: usize,
    ) -> Result<Vec<ReceiptRow>, StoreError>;
    /// `receipts_of(user_id, None, members_max)` and, judged by the same count, the user's
    /// conversations of more than `members_max` members (what a connection's sync needs).
    fn sync_receipts_of(
        &self,
        user_id: &UserId,
        members_max: usize,
    ) -> Result<(Vec<ReceiptRow>, Vec<ConversationId>), StoreError>;
    /// Which of `conversations` have more than `members_max` members. Counts at most
    /// `members_max + 1` members of each, so large groups cost no more than small ones.
    fn larger_than(
        &self,
        conversations: &[ConversationId],
        members_max: usize,
    ) -> Result<Vec<ConversationId>, StoreError>;

    /// Up to `limit` messages with seq > `after`, ascending; `None` unless `viewer` is a member
    /// (checked in the same read transaction, so a removed member reads nothing after removal).
    fn messages_after(
        &self,
        viewer: &UserId,
        conversation_id: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Option<Vec<MessageFrame>>, StoreError>;
    /// Up to `limit` messages with seq < `before`, the newest of them, ascending; `None` unless
    /// `viewer` is a member.
    fn messages_before(
        &self,
        viewer: &UserId,
        conversation_id: ConversationId,
        before: Seq,
        limit: usize,
    ) -> Result<Option<Vec<MessageFrame>>, StoreError>;
}
