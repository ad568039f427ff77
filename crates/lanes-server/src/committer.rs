//! `committer::run`: the single writer. It takes every pending send off its queue, commits them
//! as one batch (`store.append_batch`: one transaction, one fsync), and only then hands the
//! committed batch to the publisher, which publishes each new message to the hub and answers
//! each sender, in commit order, while the committer already commits the next batch. Answers
//! travel through the sending connection's own hub queue (`Hub::reply`), behind every message
//! published before.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::Utf8Bytes;
use lanes_core::CommitQueue;
use lanes_hub::{ConnectionId, Hub};
use lanes_protocol::codec::encode_server;
use lanes_protocol::{AckFrame, ErrorCode, ErrorFrame, MessageFrame, ServerFrame, limits};
use lanes_store::{AppendOutcome, AppendRejection, NewMessage, Store};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::now_millis;

/// Where the answer to a send goes.
pub(crate) enum Origin {
    /// A WebSocket connection of the sender: the answer goes into its hub queue, and the ack
    /// stands in for its copy of the message.
    Connection(ConnectionId),
    /// An HTTP request waiting for the answer.
    Http(oneshot::Sender<Result<AckFrame, ErrorFrame>>),
}

/// One send waiting to be committed.
pub(crate) struct CommitRequest {
    pub(crate) message: NewMessage,
    pub(crate) origin: Origin,
}

fn answer(
    hub: &Hub<Utf8Bytes>,
    message: &NewMessage,
    origin: Origin,
    outcome: Result<AckFrame, ErrorFrame>,
) {
    match origin {
        // The sender may have disconnected; its message is stored and it sees it on resume.
        Origin::Connection(connection_id) => {
            hub.reply(&message.sender_id, connection_id, outcome);
        }
        Origin::Http(responder) => {
            let _ = responder.send(outcome);
        }
    }
}

fn ack_of(frame: &MessageFrame) -> AckFrame {
    AckFrame {
        client_msg_id: frame.client_msg_id.clone(),
        conversation_id: frame.conversation_id,
        message_id: frame.message_id,
        seq: frame.seq,
        server_ts: frame.server_ts,
    }
}

/// Starts the committer on a thread of its own (it must never wait behind other blocking work,
/// and it does blocking work itself). The thread ends when every sender of `requests` is gone
/// and the queue is drained; `stopped` resolves when it ends, for whatever reason.
pub(crate) fn spawn(
    requests: mpsc::Receiver<CommitRequest>,
    store: Arc<dyn Store>,
    hub: Arc<Hub<Utf8Bytes>>,
    metrics: Arc<Metrics>,
    linger: Duration,
) -> std::io::Result<(std::thread::JoinHandle<()>, oneshot::Receiver<()>)> {
    let (stopped_sender, stopped) = oneshot::channel::<()>();
    let runtime = tokio::runtime::Handle::current();
    let (committed_sender, mut committed) = mpsc::channel(PUBLISH_QUEUE_BATCHES);
    let publisher_metrics = Arc::clone(&metrics);
    // A task on the runtime rather than a thread: waking thousands of connection tasks from a
    // worker puts them on its own run queue instead of the shared injection queue (measured,
    // docs/BENCHMARKS.md). A batch of a 10,000-member group holds the worker for milliseconds.
    let publisher = runtime.spawn(async move {
        // In commit order; ends when the committer is gone and everything is published.
        while let Some(batch) = committed.recv().await {
            publish(batch, &hub, &publisher_metrics);
        }
    });
    let thread = std::thread::Builder::new()
        .name("lanes-committer".into())
        .spawn(move || {
            // Dropped when the thread ends, even by a panic: the server then shuts down.
            let _stopped = stopped_sender;
            run(
                requests,
                store.as_ref(),
                &committed_sender,
                &metrics,
                linger,
                &runtime,
            );
            // Every committed batch is published and answered before the committer counts as
            // stopped (shutdown waits for it).
            drop(committed_sender);
            let _ = runtime.block_on(publisher);
        })?;
    Ok((thread, stopped))
}

/// Committed batches waiting for the publisher: it publishes one while the committer commits
/// the next; more than that and the committer waits (the publisher is behind).
const PUBLISH_QUEUE_BATCHES: usize = 2;

/// A committed batch, on its way to the publisher.
struct Committed {
    messages: Vec<NewMessage>,
    origins: Vec<Origin>,
    /// One per message, or why the whole batch failed.
    outcomes: Result<Vec<AppendOutcome>, String>,
}

/// `committer::run`: the single writer loop.
fn run(
    mut requests: mpsc::Receiver<CommitRequest>,
    store: &dyn Store,
    publisher: &mpsc::Sender<Committed>,
    metrics: &Metrics,
    linger: Duration,
    runtime: &tokio::runtime::Handle,
) {
    let mut queue = CommitQueue::new(limits::COMMIT_BATCH_LEN_MAX, linger);
    // Every sender is gone (the server is stopping): what lingers is committed at once, rather
    // than waited for in a loop whose `recv` no longer blocks.
    let mut closed = false;
    loop {
        if queue.is_empty() {
            match requests.blocking_recv() {
                Some(request) => queue.push(Instant::now(), request),
                None => return,
            }
        }
        // Everything that arrived while the previous batch was committing joins this one.
        while queue.len() < limits::COMMIT_BATCH_LEN_MAX {
            match requests.try_recv() {
                Ok(request) => queue.push(Instant::now(), request),
                Err(_) => break,
            }
        }
        let now = if closed {
            Instant::now() + linger
        } else {
            Instant::now()
        };
        match queue.poll_batch(now) {
            Some(batch) => {
                if publisher
                    .blocking_send(commit(batch, store, metrics))
                    .is_err()
                {
                    // The publisher died: nothing can be answered any more; stop the server.
                    tracing::error!("the publisher stopped; stopping the committer");
                    return;
                }
            }
            None => {
                let deadline = queue.poll_timeout().unwrap_or_else(Instant::now);
                // The timer is made inside `block_on`: it needs the runtime's context (made
                // outside, it panicked the committer whenever a batch lingered).
                let next = runtime.block_on(async {
                    tokio::time::timeout_at(deadline.into(), requests.recv()).await
                });
                match next {
                    Ok(Some(request)) => queue.push(Instant::now(), request),
                    Ok(None) => closed = true,
                    Err(_lingered) => {}
                }
            }
        }
    }
}

/// Commits one batch (one transaction, one fsync).
fn commit(batch: Vec<CommitRequest>, store: &dyn Store, metrics: &Metrics) -> Committed {
    let (messages, origins): (Vec<NewMessage>, Vec<Origin>) = batch
        .into_iter()
        .map(|request| (request.message, request.origin))
        .unzip();
    let started = Instant::now();
    let outcomes = store
        .append_batch(&messages, now_millis())
        .map_err(|err| err.to_string());
    match &outcomes {
        Ok(_) => {
            Metrics::add(&metrics.commits, 1);
            let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
            metrics.commit_micros.observe(micros);
            let sends = u64::try_from(messages.len()).unwrap_or(u64::MAX);
            metrics.commit_sends.observe(sends);
        }
        Err(_) => Metrics::add(&metrics.commit_failures, 1),
    }
    Committed {
        messages,
        origins,
        outcomes,
    }
}

/// Publishes a committed batch's new messages and answers its senders, in commit order.
fn publish(committed: Committed, hub: &Hub<Utf8Bytes>, metrics: &Metrics) {
    let Committed {
        messages,
        origins,
        outcomes,
    } = committed;
    let outcomes = match outcomes {
        Ok(outcomes) => outcomes,
        Err(err) => {
            tracing::error!("commit of {} sends failed: {err}", messages.len());
            for (message, origin) in messages.iter().zip(origins) {
                let answer = Err(ErrorFrame::new(
                    ErrorCode::StorageUnavailable,
                    "storage is unavailable; retry with the same client_msg_id",
                    Some(message.client_msg_id.to_string()),
                ));
                self::answer(hub, message, origin, answer);
            }
            return;
        }
    };
    assert_eq!(outcomes.len(), messages.len(), "one outcome per send");
    for ((outcome, message), origin) in outcomes.into_iter().zip(&messages).zip(origins) {
        let answer = match outcome {
            AppendOutcome::Appended(frame) => {
                // Every lane event (edits, deletes and reactions too) counts: each took a seq.
                Metrics::add(&metrics.messages_committed, 1);
                let ack = ack_of(&frame);
                let (conversation_id, seq) = (frame.conversation_id, frame.seq);
                let payload = Utf8Bytes::from(encode_server(&ServerFrame::Message(frame)));
                let connection = match &origin {
                    Origin::Connection(connection_id) => Some(*connection_id),
                    Origin::Http(_) => None,
                };
                hub.publish(conversation_id, seq, payload, connection);
                Ok(ack)
            }
            AppendOutcome::Duplicate(frame) => {
                Metrics::add(&metrics.duplicate_sends, 1);
                Ok(ack_of(&frame))
            }
            AppendOutcome::NotMember => Err(ErrorFrame::new(
                ErrorCode::NotFound,
                "conversation not found",
                Some(message.client_msg_id.to_string()),
            )),
            AppendOutcome::Rejected(rejection) => {
                let (code, text) = match rejection {
                    AppendRejection::NoSuchMessage => (
                        ErrorCode::InvalidField,
                        "target_seq or reply_to names no message of this conversation",
                    ),
                    AppendRejection::NotAuthor => (
                        ErrorCode::Forbidden,
                        "only the author may edit or delete a message",
                    ),
                    AppendRejection::Deleted => (ErrorCode::Conflict, "the message was deleted"),
                    AppendRejection::ReactionUnchanged => (
                        ErrorCode::Conflict,
                        "that reaction is already there (add) or not there (remove)",
                    ),
                };
                Err(ErrorFrame::new(
                    code,
                    text,
                    Some(message.client_msg_id.to_string()),
                ))
            }
        };
        self::answer(hub, message, origin, answer);
    }
}
