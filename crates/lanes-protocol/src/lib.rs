//! Lanes wire types: the frames and HTTP bodies clients and servers exchange, ids, error codes,
//! and the limits every input is checked against. No IO and no async here.

pub mod codec;
pub mod frames;
pub mod http;
pub mod ids;
pub mod limits;

pub use frames::{
    AckFrame, ClientFrame, Content, Cursor, ErrorCode, ErrorFrame, EventKind, MessageFrame,
    PresenceState, Reaction, Receipt, SYSTEM_USER_ID, ServerFrame, TypingState, UserPresence,
};
pub use ids::{ClientMsgId, ConversationId, MessageId, Seq, StoreEpoch, UnixMillis, UserId};
