//! Delivery and read receipts: positions, not events. Connections hand `received`/`read`
//! positions to one writer task, which merges what arrives within `receipts_flush_ms` (the
//! highest position per member wins), stores it in one transaction (`Store::advance_markers`:
//! monotonic, clamped to the head) and only then tells each conversation's online members, in
//! one `receipts` frame per conversation. Positions a failed store did not take are kept and
//! tried again (with the next flush, or after `RETRY_AFTER`). A member who hides read receipts
//! has the read position left out of what the others receive. In a conversation of more than
//! `receipts_members_max` members, a position goes only to its own user's devices, and only a
//! read one (which syncs unread counts): sent to everyone, each message's receipts would cost
//! members² frame entries.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use lanes_hub::{Delivery, Hub};
use lanes_protocol::codec::encode_server;
use lanes_protocol::{ConversationId, Receipt, Seq, ServerFrame, UserId};
use lanes_store::{MarkerUpdate, ReceiptRow, Store};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Positions queued for the writer before connections wait.
const QUEUE_LEN_MAX: usize = 16 * 1024;

/// Starts the writer task; positions sent to the returned channel are stored and announced.
pub(crate) fn spawn(
    store: Arc<dyn Store>,
    hub: Arc<Hub<Utf8Bytes>>,
    metrics: Arc<Metrics>,
    flush: Duration,
    members_max: usize,
) -> mpsc::Sender<MarkerUpdate> {
    let (sender, receiver) = mpsc::channel(QUEUE_LEN_MAX);
    tokio::spawn(run(receiver, store, hub, metrics, flush, members_max));
    sender
}

/// How long positions a failed store kept wait before the next try when no new ones come.
const RETRY_AFTER: Duration = Duration::from_secs(1);

async fn run(
    mut updates: mpsc::Receiver<MarkerUpdate>,
    store: Arc<dyn Store>,
    hub: Arc<Hub<Utf8Bytes>>,
    metrics: Arc<Metrics>,
    flush: Duration,
    members_max: usize,
) {
    // Positions a failed store kept, tried again with the next flush: clients send a position
    // again only when a newer message arrives, so in a quiet conversation a dropped one would
    // stay lost (a stale read marker and unread count on every device).
    let mut kept: Vec<MarkerUpdate> = Vec::new();
    loop {
        let first = if kept.is_empty() {
            match updates.recv().await {
                Some(update) => Some(update),
                None => break,
            }
        } else {
            tokio::select! {
                update = updates.recv() => update,
                () = tokio::time::sleep(RETRY_AFTER) => None,
            }
        };
        // The server is stopping: one last try for what was kept.
        let closing = first.is_none() && updates.is_closed();
        tokio::time::sleep(flush).await;
        let mut merged: HashMap<(ConversationId, UserId), (Seq, Seq)> = HashMap::new();
        let mut merge = |update: MarkerUpdate| {
            let entry = merged
                .entry((update.conversation_id, update.user_id))
                .or_default();
            entry.0 = entry.0.max(update.delivered);
            entry.1 = entry.1.max(update.read);
        };
        kept.drain(..).for_each(&mut merge);
        first.into_iter().for_each(&mut merge);
        while let Ok(update) = updates.try_recv() {
            merge(update);
        }
        let batch: Vec<MarkerUpdate> = merged
            .into_iter()
            .map(
                |((conversation_id, user_id), (delivered, read))| MarkerUpdate {
                    conversation_id,
                    user_id,
                    delivered,
                    read,
                },
            )
            .collect();
        let store = Arc::clone(&store);
        let stored = tokio::task::spawn_blocking(move || {
            let stored = store.advance_markers(&batch).and_then(|changed| {
                let mut touched: Vec<ConversationId> =
                    changed.iter().map(|row| row.conversation_id).collect();
                touched.sort_unstable();
                touched.dedup();
                let large = store.larger_than(&touched, members_max)?;
                Ok((changed, large))
            });
            (batch, stored)
        })
        .await;
        match stored {
            Ok((batch, Ok((changed, large)))) => {
                Metrics::add(&metrics.receipt_commits, 1);
                announce(&hub, changed, &large, &reads_in(&batch, &large));
            }
            Ok((batch, Err(err))) => {
                tracing::error!("storing receipt positions failed (kept, tried again): {err}");
                if !closing {
                    kept = batch;
                }
            }
            Err(err) => tracing::error!("receipt task failed: {err}"),
        }
    }
}

/// Per conversation, the users who sent a read position in this flush.
type Reads = HashMap<ConversationId, HashSet<UserId>>;

/// The readers of the flush in the `large` conversations only: there a position goes back only
/// to its user's own devices, and only a read one (they sync unread counts by it). Nothing is
/// built when no conversation of the flush is large, the common case.
fn reads_in(batch: &[MarkerUpdate], large: &[ConversationId]) -> Reads {
    let mut reads = Reads::new();
    if large.is_empty() {
        return reads;
    }
    for update in batch {
        if update.read > Seq::ZERO && large.contains(&update.conversation_id) {
            reads
                .entry(update.conversation_id)
                .or_default()
                .insert(update.user_id.clone());
        }
    }
    reads
}

/// Tells each conversation's online members the positions that changed; in the `large`
/// conversations each member only their own, and only when it read (`reads`).
fn announce(
    hub: &Hub<Utf8Bytes>,
    changed: Vec<ReceiptRow>,
    large: &[ConversationId],
    reads: &Reads,
) {
    let mut by_conversation: BTreeMap<ConversationId, Vec<ReceiptRow>> = BTreeMap::new();
    for row in changed {
        by_conversation
            .entry(row.conversation_id)
            .or_default()
            .push(row);
    }
    for (conversation_id, rows) in by_conversation {
        if large.contains(&conversation_id) {
            let own: HashMap<&UserId, Utf8Bytes> = rows
                .iter()
                .filter(|row| {
                    reads
                        .get(&conversation_id)
                        .is_some_and(|readers| readers.contains(&row.user_id))
                })
                .map(|row| {
                    let frame = frame(
                        conversation_id,
                        std::slice::from_ref(row),
                        Some(&row.user_id),
                    );
                    (&row.user_id, Utf8Bytes::from(encode_server(&frame)))
                })
                .collect();
            if !own.is_empty() {
                hub.signal(
                    conversation_id,
                    |user_id| own.get(user_id).cloned(),
                    Delivery::Reliable,
                );
            }
            continue;
        }
        let encode = |viewer: Option<&UserId>| {
            Utf8Bytes::from(encode_server(&frame(conversation_id, &rows, viewer)))
        };
        let public = encode(None);
        // A member who hides read positions still sees their own (other devices sync by it).
        let personal: HashMap<&UserId, Utf8Bytes> = rows
            .iter()
            .filter(|row| row.hide_read)
            .map(|row| (&row.user_id, encode(Some(&row.user_id))))
            .collect();
        hub.signal(
            conversation_id,
            |user_id| Some(personal.get(user_id).unwrap_or(&public).clone()),
            Delivery::Reliable,
        );
    }
}

/// The `receipts` frame of one conversation's rows as `viewer` may see them (`None`: as any
/// other member sees them).
pub(crate) fn frame(
    conversation_id: ConversationId,
    rows: &[ReceiptRow],
    viewer: Option<&UserId>,
) -> ServerFrame {
    ServerFrame::Receipts {
        conversation_id,
        receipts: rows
            .iter()
            .map(|row| Receipt {
                user_id: row.user_id.clone(),
                delivered_seq: row.delivered_seq,
                read_seq: (!row.hide_read || Some(&row.user_id) == viewer).then_some(row.read_seq),
            })
            .collect(),
    }
}
