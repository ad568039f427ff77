//! Rust client SDK for Lanes: the HTTP API ([`HttpApi`]) and a live WebSocket client
//! ([`Client`]) that retries sends (and replies, edits, deletes, reactions), resumes from cursors,
//! dedupes deliveries, confirms receipt, and carries read markers, typing and presence.
//!
//! ```no_run
//! # async fn demo() -> Result<(), lanes_client::ClientError> {
//! use lanes_client::{Client, ClientConfig, Event, HttpApi};
//!
//! let session = HttpApi::new("http://127.0.0.1:8080").login("alice", "password1").await?;
//! let (client, mut events) =
//!     Client::connect(ClientConfig::new("http://127.0.0.1:8080", &session.token)).await?;
//! let ack = client.send(lanes_client::ConversationId(12), "hi").await?;
//! println!("stored as seq {}", ack.seq);
//! while let Some(event) = events.next().await {
//!     if let Event::Message(message) = event {
//!         println!("{}: {}", message.sender_id, message.body);
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! The decisions (backoff, dedupe and gap filling, pending-send bookkeeping) live in sans-IO
//! modules with plain unit tests; `driver` is the IO glue around them.

mod backoff;
mod client;
mod delivery;
mod driver;
mod error;
mod http_api;
mod pace;
mod pending;
mod resume;

pub use backoff::full_jitter;
pub use client::{Client, ClientConfig, Event, Events, Transport};
pub use error::ClientError;
pub use http_api::HttpApi;
pub use lanes_protocol::http::{
    Conversation, ConversationKind, History, Member, Role, Session, Settings,
};
pub use lanes_protocol::{
    AckFrame, ClientMsgId, Content, ConversationId, Cursor, ErrorCode, ErrorFrame, EventKind,
    MessageFrame, PresenceState, Reaction, Receipt, Seq, StoreEpoch, TypingState, UserId,
    UserPresence,
};
pub use pace::ReceiptPacer;
