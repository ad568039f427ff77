//! What both transports do after registering a user's connection with the hub: tell the hub
//! the user's conversations and read their heads, so that catch-up and live delivery meet
//! without a gap (the argument is in ARCHITECTURE.md, "Catch-up without a gap or a duplicate").

use std::sync::Arc;

use lanes_protocol::{ConversationId, ErrorCode, Seq, UserId};
use lanes_store::ReceiptRow;

use crate::error::ApiError;
use crate::{AppState, blocking};

/// Attempts to list a user's conversations while membership keeps changing under the listing.
const LISTING_ATTEMPTS_MAX: usize = 16;

/// What a listing reads besides the heads.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Extra {
    /// Nothing (a later long poll).
    Nothing,
    /// The large conversations (a first long poll: it carries no receipt positions).
    Large,
    /// The receipt positions and the large conversations, judged by one count (a WebSocket).
    ReceiptsAndLarge,
}

/// What a connection learns about its user's conversations when it subscribes.
pub(crate) struct Listing {
    /// Every conversation with its head.
    pub(crate) heads: Vec<(ConversationId, Seq)>,
    /// Receipt positions in them (`Extra::ReceiptsAndLarge`; in conversations over
    /// `realtime.receipts_members_max` members only the user's own), read after subscribing:
    /// later changes arrive through the hub.
    pub(crate) receipts: Vec<ReceiptRow>,
    /// The conversations over `realtime.receipts_members_max` members (unless
    /// `Extra::Nothing`), where clients confirm delivery rarely (`synced`'s `large`).
    pub(crate) large: Vec<ConversationId>,
}

/// Records the user's conversations in the hub (registered at `version`), then returns every
/// conversation with its head and what `extra` asks for, read after the hub delivers them, in
/// one trip to the blocking pool.
pub(crate) async fn listing(
    state: &AppState,
    user_id: &UserId,
    version: u64,
    extra: Extra,
) -> Result<Listing, ApiError> {
    // One trip to the blocking pool for the whole listing: connect storms are bound by these
    // hand-offs more than by the queries.
    let hub = Arc::clone(&state.hub);
    let receipts_members_max = state.config.realtime.receipts_members_max;
    let listed = user_id.clone();
    let heads = blocking(&state.store, move |store| {
        let mut version = version;
        for _ in 0..LISTING_ATTEMPTS_MAX {
            let listing = store.heads_of(&listed)?;
            let ids: Vec<ConversationId> = listing.iter().map(|(id, _)| *id).collect();
            match hub.set_conversations(&listed, version, &ids) {
                // The heads must be read again now that the hub delivers this user's
                // conversations: a message committed between the listing and
                // `set_conversations` was published to nobody here, and only a read taken
                // after subscribing is sure to include it.
                Ok(()) => {
                    let heads = store.heads_of(&listed)?;
                    let (receipts, large) = match extra {
                        Extra::Nothing => (Vec::new(), Vec::new()),
                        Extra::Large => {
                            (Vec::new(), store.larger_than(&ids, receipts_members_max)?)
                        }
                        Extra::ReceiptsAndLarge => {
                            store.sync_receipts_of(&listed, receipts_members_max)?
                        }
                    };
                    return Ok(Some(Listing {
                        heads,
                        receipts,
                        large,
                    }));
                }
                Err(current) => version = current,
            }
        }
        Ok(None)
    })
    .await?;
    heads.ok_or_else(|| ApiError::new(ErrorCode::Internal, "membership kept changing; retry"))
}
