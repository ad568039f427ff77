//! Size and count limits shared by server, store and client. Units come last in each name.
//!
//! These are defaults; the server configuration may lower (never raise past the protocol maxima)
//! the per-deployment ones. Related limits are asserted against each other at compile time.

/// Largest message body accepted by default, in bytes of UTF-8.
pub const MESSAGE_BODY_BYTES_DEFAULT: usize = 16 * 1024;
/// Hard protocol maximum for a message body; configuration may not exceed it.
pub const MESSAGE_BODY_BYTES_MAX: usize = 64 * 1024;
/// Largest WebSocket frame (and message) the server reads. Leaves room for JSON escaping
/// (a body of N bytes may encode to up to 6N bytes as `\uXXXX`) plus the envelope.
pub const FRAME_BYTES_MAX: usize = 6 * MESSAGE_BODY_BYTES_MAX + 4 * 1024;
/// Longest client-generated message id, in bytes.
pub const CLIENT_MSG_ID_BYTES_MAX: usize = 64;
/// Longest user id / username, in bytes.
pub const USER_ID_BYTES_MAX: usize = 64;
/// Shortest password accepted at registration, in characters.
pub const PASSWORD_CHARS_MIN: usize = 8;
/// Longest password accepted, in bytes (argon2 cost is per byte; refuse absurd inputs).
pub const PASSWORD_BYTES_MAX: usize = 1024;
/// Longest group name, in bytes.
pub const GROUP_NAME_BYTES_MAX: usize = 256;
/// Most members a group may have, by default.
pub const GROUP_MEMBERS_DEFAULT: usize = 10_000;
/// Most members a conversation lists in `GET /v1/conversations`: a listing must not cost every
/// member of every large group (10,000 members made 500 KB); the same in
/// `GET /v1/conversations/{id}`. `member_count` has them all, and
/// `GET /v1/conversations/{id}/members` pages them (this many by default).
pub const MEMBERS_LISTED_MAX: usize = 100;
/// Largest conversation whose members are sent each other's receipt positions, by default.
/// In a larger one every position change would go to every member (members² per message):
/// members get only their own positions and ask for the others' when they want them.
pub const RECEIPTS_MEMBERS_DEFAULT: usize = 100;
/// `unread_count` stops counting here ("1000 or more"): counting is a scan of the unread
/// messages, and a listing must not cost a conversation's whole history.
pub const UNREAD_COUNT_MAX: u64 = 1000;
/// Most cursors a `hello` frame may carry (a client with more conversations lets the rest be
/// caught up from the start and drops what it already holds).
pub const HELLO_CURSORS_MAX: usize = 5_000;
/// Bytes one cursor may take in a `hello` frame, both numbers at their longest.
const HELLO_CURSOR_BYTES_MAX: usize =
    r#"{"conversation_id":18446744073709551615,"seq":18446744073709551615},"#.len();
/// Largest page of messages returned by history or catch-up.
pub const PAGE_LEN_MAX: usize = 500;
/// Default page of messages returned by history when the client does not say.
pub const PAGE_LEN_DEFAULT: usize = 100;
/// Largest page of `GET /v1/conversations` when a `limit` is given (without one: all).
pub const CONVERSATIONS_PAGE_MAX: usize = 500;
/// Largest page of `GET /v1/conversations/{id}/members` (default `MEMBERS_LISTED_MAX`).
pub const MEMBERS_PAGE_MAX: usize = 1_000;
/// Most sends one connection may have waiting for their ack; further frames are not read
/// until acks come back (backpressure instead of an unbounded queue).
pub const INFLIGHT_SENDS_MAX: usize = 256;
/// Frames queued for one connection before it is declared a slow consumer.
pub const CONNECTION_QUEUE_LEN_MAX: usize = 4096;
/// Most items one group commit may carry. Under full load (`lanes bench pairs`, 1,000 users,
/// window 10) commits settle near 3,500 sends; a cap of 2,048 cut them short and cost ~5% of
/// throughput (docs/BENCHMARKS.md, seventh session).
pub const COMMIT_BATCH_LEN_MAX: usize = 8192;
/// Longest reaction emoji, in bytes (the longest ZWJ sequences are ~35).
pub const EMOJI_BYTES_MAX: usize = 64;
/// Most users one connection may watch the presence of.
pub const PRESENCE_WATCH_MAX: usize = 256;
/// Largest HTTP request body accepted, in bytes.
pub const HTTP_BODY_BYTES_MAX: usize = FRAME_BYTES_MAX;

// Related limits are checked against each other at compile time.
const _: () = {
    assert!(MESSAGE_BODY_BYTES_DEFAULT <= MESSAGE_BODY_BYTES_MAX);
    assert!(
        FRAME_BYTES_MAX > 6 * MESSAGE_BODY_BYTES_MAX,
        "a frame must fit the largest body fully escaped"
    );
    assert!(PAGE_LEN_DEFAULT <= PAGE_LEN_MAX);
    assert!(
        HELLO_CURSORS_MAX * HELLO_CURSOR_BYTES_MAX + 16 * 1024 < FRAME_BYTES_MAX,
        "a hello with every allowed cursor must fit in a frame"
    );
    assert!(INFLIGHT_SENDS_MAX <= COMMIT_BATCH_LEN_MAX);
};
