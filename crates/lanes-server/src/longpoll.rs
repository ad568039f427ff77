//! The long-poll transport: `GET /v1/events` (cursors in the query) and `POST /v1/events`
//! (cursors in a body). One poll registers with the hub like a WebSocket connection, catches up
//! from the client's cursors (answering at once when anything was missed), and otherwise waits
//! on its hub queue until an event, the timeout, or shutdown. The cursors have the WebSocket's
//! meaning, so a client can switch transports at any point without loss or duplicates.
//! A waiting poll holds a hub registration and this future: no thread.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::ws::Utf8Bytes;
use axum::extract::{Query, State};
use lanes_core::{Admission, Cursors};
use lanes_hub::{ConnectionId, Event, Hub};
use lanes_protocol::codec::encode_server;
use lanes_protocol::http::{EventsPage, PollRequest};
use lanes_protocol::{
    ConversationId, Cursor, ErrorCode, PresenceState, Seq, ServerFrame, StoreEpoch, UserId, limits,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::auth::Authenticator;
use crate::error::ApiError;
use crate::http::Caller;
use crate::openapi::{BadRequest, PayloadTooLarge, Unauthorized, Unavailable};
use crate::presence::Presence;
use crate::subscribe::Extra;
use crate::{AppState, blocking};

/// Default wait of a poll with nothing to return.
const TIMEOUT_DEFAULT_MS: u64 = 25_000;
/// Longest wait a client may ask for.
const TIMEOUT_MAX_MS: u64 = 60_000;
/// Events returned by one poll at most; the client polls again for the rest.
const EVENTS_MAX: usize = limits::PAGE_LEN_MAX;
/// Bytes of events one poll returns at most (but always one event): 500 of the largest
/// messages are tens of megabytes, held until the client has read the answer.
const EVENT_BYTES_MAX: usize = 1024 * 1024;

/// `GET /v1/events` query: `cursors=12:40,13:7&epoch=…&timeout_ms=25000&presence=away`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PollQuery {
    /// The client's cursors as `conversation_id:seq` pairs, comma-separated.
    #[param(example = "12:40,13:7")]
    cursors: Option<String>,
    /// The epoch the cursors came from.
    epoch: Option<String>,
    /// Longest wait for an event, in milliseconds (default 25,000, at most 60,000; 0 answers at
    /// once).
    timeout_ms: Option<u64>,
    /// This client's presence while it polls (`online` by default).
    presence: Option<PresenceState>,
    /// Also name the user's large conversations (`large`): for a client's first poll.
    sync: Option<bool>,
}

/// The response: events as the hub encoded them (shared with WebSocket connections). Its shape
/// is `EventsPage`, which the document names.
#[derive(Serialize)]
pub(crate) struct Page {
    events: Vec<Box<RawValue>>,
    epoch: StoreEpoch,
    cursors: Vec<Cursor>,
    user_id: UserId,
    receipts_members_max: usize,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    large: Vec<ConversationId>,
}

fn parse_cursors(text: &str) -> Result<Vec<Cursor>, ApiError> {
    let invalid = || {
        ApiError::new(
            ErrorCode::InvalidField,
            "cursors must look like 12:40,13:7 (conversation_id:seq, comma-separated)",
        )
    };
    let cursors: Vec<Cursor> = text
        .split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (conversation, seq) = part.split_once(':').ok_or_else(invalid)?;
            Ok(Cursor {
                conversation_id: ConversationId(conversation.parse().map_err(|_| invalid())?),
                seq: Seq(seq.parse().map_err(|_| invalid())?),
            })
        })
        .collect::<Result<_, ApiError>>()?;
    Ok(cursors)
}

/// `GET /v1/events`
///
/// Answers at once with what the client missed since its cursors (at most 500 events), else as
/// soon as something happens, else empty after `timeout_ms` or when the server shuts down. Poll
/// again with the returned cursors and epoch.
#[utoipa::path(
    get,
    path = "/v1/events",
    tag = "events",
    operation_id = "poll",
    summary = "Long-poll for events",
    security(("user_token" = [])),
    params(PollQuery),
    responses(
        (
            status = 200,
            description = "Events, and the cursors to poll with next",
            body = EventsPage
        ),
        BadRequest,
        Unauthorized,
        Unavailable,
    )
)]
pub(crate) async fn poll_get(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<Json<Page>, ApiError> {
    let Query(query) = query?;
    let request = PollRequest {
        cursors: parse_cursors(query.cursors.as_deref().unwrap_or(""))?,
        epoch: query.epoch.map(StoreEpoch),
        timeout_ms: query.timeout_ms,
        presence: query.presence,
        sync: query.sync.unwrap_or(false),
    };
    let credential = Authenticator::credential(&caller.token);
    poll(state, caller.user_id, credential, request)
        .await
        .map(Json)
}

/// `POST /v1/events`
///
/// `GET /v1/events` with the request in a body, for clients with many cursors.
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "events",
    operation_id = "poll_post",
    summary = "Long-poll for events (cursors in the body)",
    security(("user_token" = [])),
    request_body = PollRequest,
    responses(
        (
            status = 200,
            description = "Events, and the cursors to poll with next",
            body = EventsPage
        ),
        BadRequest,
        Unauthorized,
        PayloadTooLarge,
        Unavailable,
    )
)]
pub(crate) async fn poll_post(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<PollRequest>, JsonRejection>,
) -> Result<Json<Page>, ApiError> {
    let Json(request) = body?;
    let credential = Authenticator::credential(&caller.token);
    poll(state, caller.user_id, credential, request)
        .await
        .map(Json)
}

/// Unregisters the poll however it ends (answered, timed out, or dropped by a client that went
/// away).
struct Registration {
    hub: Arc<Hub<Utf8Bytes>>,
    presence: Arc<Presence>,
    user_id: UserId,
    connection_id: ConnectionId,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.hub.unregister(&self.user_id, self.connection_id);
        self.presence
            .disconnected(&self.user_id, self.connection_id);
    }
}

/// What one poll collects.
struct Collected {
    cursors: Cursors,
    events: Vec<Box<RawValue>>,
    /// The events' encoded size.
    bytes: usize,
}

impl Collected {
    fn push(&mut self, text: &str) -> Result<(), ApiError> {
        let raw = RawValue::from_string(text.to_owned())
            .map_err(|_| ApiError::new(ErrorCode::Internal, "an event did not encode"))?;
        self.bytes += text.len();
        self.events.push(raw);
        Ok(())
    }

    fn full(&self) -> bool {
        self.events.len() >= EVENTS_MAX || self.bytes >= EVENT_BYTES_MAX
    }
}

async fn poll(
    state: AppState,
    user_id: UserId,
    credential: u64,
    request: PollRequest,
) -> Result<Page, ApiError> {
    if request.cursors.len() > limits::HELLO_CURSORS_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("at most {} cursors", limits::HELLO_CURSORS_MAX),
        ));
    }
    let timeout_ms = request.timeout_ms.unwrap_or(TIMEOUT_DEFAULT_MS);
    if timeout_ms > TIMEOUT_MAX_MS {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("timeout_ms must be at most {TIMEOUT_MAX_MS}"),
        ));
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    // Cursors from another store would skip messages that reuse their seqs: start over.
    let cursors = if request.epoch.as_ref() == Some(&state.epoch) {
        Cursors::from_cursors(request.cursors)
    } else {
        Cursors::default()
    };
    // Polls count with the user's WebSockets: each holds a registration and, answered, up to
    // `EVENT_BYTES_MAX` until its client reads it.
    let connections_max = state.config.websocket.connections_per_user_max;
    if state.hub.connections_of(&user_id) >= connections_max {
        return Err(ApiError::rate_limited(
            "open connections and polls for this user",
            Duration::from_secs(1),
        ));
    }
    let mut subscription = state.hub.register_with_credential(&user_id, credential);
    let _registration = Registration {
        hub: Arc::clone(&state.hub),
        presence: Arc::clone(&state.presence),
        user_id: user_id.clone(),
        connection_id: subscription.connection_id,
    };
    // Its session was logged out between the token check and the registration: no answer.
    if state.hub.is_revoked(credential) {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the session was revoked; log in again",
        ));
    }
    state
        .presence
        .connected(&user_id, subscription.connection_id);
    if request.presence == Some(PresenceState::Away) {
        state
            .presence
            .set_away(&user_id, subscription.connection_id, true);
    }
    // A first poll (`sync`) also learns the large conversations.
    let extra = if request.sync {
        Extra::Large
    } else {
        Extra::Nothing
    };
    let listing = crate::subscribe::listing(&state, &user_id, subscription.version, extra).await?;
    let (heads, large) = (listing.heads, listing.large);
    let mut collected = Collected {
        cursors,
        events: Vec::new(),
        bytes: 0,
    };
    for (conversation_id, head) in heads {
        if collected.full() {
            break;
        }
        if collected.cursors.held(conversation_id) < head {
            catch_up(&state, &user_id, conversation_id, &mut collected).await?;
        }
    }
    let mut shutdown = state.shutdown.clone();
    let stopping = *shutdown.borrow_and_update();
    if collected.events.is_empty() && !stopping {
        loop {
            tokio::select! {
                event = subscription.receiver.recv() => {
                    // None: dropped as a slow consumer; answer with what there is.
                    let Some(event) = event else { break };
                    handle(&state, &user_id, event, &mut collected).await?;
                    // Take whatever else is already queued, then answer.
                    while !collected.full() {
                        let Some(event) = subscription.receiver.try_recv() else { break };
                        handle(&state, &user_id, event, &mut collected).await?;
                    }
                    if !collected.events.is_empty() {
                        break;
                    }
                }
                () = tokio::time::sleep_until(deadline) => break,
                // The only change is to "stopping" (or the sender is gone): answer now.
                _ = shutdown.changed() => break,
            }
        }
    }
    Ok(Page {
        events: collected.events,
        epoch: state.epoch.clone(),
        cursors: collected.cursors.to_cursors(),
        user_id,
        receipts_members_max: state.config.realtime.receipts_members_max,
        large,
    })
}

async fn handle(
    state: &AppState,
    user_id: &UserId,
    event: Event<Utf8Bytes>,
    collected: &mut Collected,
) -> Result<(), ApiError> {
    match event {
        Event::Message {
            conversation_id,
            seq,
            payload,
        } => match collected.cursors.admit_live(conversation_id, seq) {
            Admission::Write => collected.push(payload.as_str())?,
            Admission::Duplicate => {}
            Admission::Gap => catch_up(state, user_id, conversation_id, collected).await?,
        },
        Event::Joined {
            conversation_id,
            large,
        } => {
            let joined = ServerFrame::Joined {
                conversation_id,
                large,
            };
            collected.push(&encode_server(&joined))?;
            catch_up(state, user_id, conversation_id, collected).await?;
        }
        Event::Left(conversation_id) => {
            collected.push(&encode_server(&ServerFrame::Left { conversation_id }))?;
        }
        Event::Signal(payload) => collected.push(payload.as_str())?,
        // Sends over HTTP are answered in their own request, never through a poll.
        // The poll's own wait on the shutdown signal answers it.
        Event::Committed(_) | Event::ShuttingDown => {}
        Event::Revoked => {
            return Err(ApiError::new(
                ErrorCode::Unauthorized,
                "the session was revoked; log in again",
            ));
        }
    }
    Ok(())
}

/// Adds the stored messages of `conversation_id` after the cursor, up to the poll's limit.
async fn catch_up(
    state: &AppState,
    user_id: &UserId,
    conversation_id: ConversationId,
    collected: &mut Collected,
) -> Result<(), ApiError> {
    while !collected.full() {
        let after = collected.cursors.held(conversation_id);
        let viewer = user_id.clone();
        let limit = EVENTS_MAX - collected.events.len();
        let page = blocking(&state.store, move |store| {
            store.messages_after(&viewer, conversation_id, after, limit)
        })
        .await?;
        // No longer a member: nothing more to send; `left` comes from the hub.
        let Some(page) = page else { return Ok(()) };
        let short = page.len() < limit;
        for message in page {
            // Full by size: the cursor stays at the last message taken, the next poll goes on.
            if collected.full() {
                return Ok(());
            }
            if collected
                .cursors
                .admit_caught_up(conversation_id, message.seq)
            {
                collected.push(&encode_server(&ServerFrame::Message(message)))?;
            }
        }
        if short {
            break;
        }
    }
    Ok(())
}
