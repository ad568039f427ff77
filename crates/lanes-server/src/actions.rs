//! Every WebSocket action over plain HTTP+JSON, for clients that cannot keep a WebSocket open:
//! lane events (send, edit, delete, react), receipts, typing and presence. A lane event takes the
//! WebSocket's path through validation and the committer and is answered with its ack after the
//! commit; the same rules answer with the same error codes, as HTTP statuses.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use lanes_protocol::http::{
    DeleteMessage, EditMessage, Position, PresenceList, React, ReceiptList, SendMessage,
    SetPresence, SetTyping,
};
use lanes_protocol::{
    AckFrame, ClientMsgId, Content, ConversationId, ErrorCode, PresenceState, Seq, ServerFrame,
    UserId, limits,
};
use lanes_store::{MarkerUpdate, NewMessage};
use serde::Deserialize;
use tokio::sync::oneshot;

use crate::committer::{CommitRequest, Origin};
use crate::error::ApiError;
use crate::http::Caller;
use crate::{AppState, blocking};

fn conversation_and_seq(
    path: Result<Path<(u64, u64)>, PathRejection>,
) -> Result<(ConversationId, Seq), ApiError> {
    let Path((conversation, seq)) = path?;
    Ok((ConversationId(conversation), Seq(seq)))
}

fn conversation(path: Result<Path<u64>, PathRejection>) -> Result<ConversationId, ApiError> {
    let Path(id) = path?;
    Ok(ConversationId(id))
}

/// Validates, commits and waits for the outcome of one lane event.
pub(crate) async fn append(
    state: &AppState,
    sender_id: UserId,
    client_msg_id: ClientMsgId,
    conversation_id: ConversationId,
    content: Content,
) -> Result<Json<AckFrame>, ApiError> {
    let valid = lanes_core::validate::send(
        client_msg_id,
        conversation_id,
        content,
        &state.connection_config.limits,
    )
    .map_err(|rejection| ApiError::new(rejection.code(), rejection.message()))?;
    if let Content::Message { .. } = valid.content {
        state.typing.stop(&sender_id, conversation_id);
    }
    let (responder, outcome) = oneshot::channel();
    let request = CommitRequest {
        message: NewMessage {
            sender_id,
            client_msg_id: valid.client_msg_id,
            conversation_id,
            content: valid.content,
        },
        origin: Origin::Http(responder),
    };
    let stopping = || {
        ApiError::new(
            ErrorCode::ShuttingDown,
            "the server is stopping; retry with the same client_msg_id",
        )
    };
    state.commits.send(request).await.map_err(|_| stopping())?;
    match outcome.await {
        Ok(Ok(ack)) => Ok(Json(ack)),
        Ok(Err(error)) => Err(ApiError::new(error.code, error.message)),
        Err(_) => Err(stopping()),
    }
}

/// `POST /v1/conversations/{id}/messages`
pub(crate) async fn send(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Json<SendMessage>, JsonRejection>,
) -> Result<Json<AckFrame>, ApiError> {
    let conversation_id = conversation(path)?;
    let Json(send) = body?;
    let content = Content::Message {
        body: send.body,
        reply_to: send.reply_to,
    };
    append(
        &state,
        caller.user_id,
        send.client_msg_id,
        conversation_id,
        content,
    )
    .await
}

/// `POST /v1/conversations/{id}/messages/{seq}/edit`
pub(crate) async fn edit(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(u64, u64)>, PathRejection>,
    body: Result<Json<EditMessage>, JsonRejection>,
) -> Result<Json<AckFrame>, ApiError> {
    let (conversation_id, target_seq) = conversation_and_seq(path)?;
    let Json(edit) = body?;
    let content = Content::Edit {
        target_seq,
        body: edit.body,
    };
    append(
        &state,
        caller.user_id,
        edit.client_msg_id,
        conversation_id,
        content,
    )
    .await
}

/// `POST /v1/conversations/{id}/messages/{seq}/delete`
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(u64, u64)>, PathRejection>,
    body: Result<Json<DeleteMessage>, JsonRejection>,
) -> Result<Json<AckFrame>, ApiError> {
    let (conversation_id, target_seq) = conversation_and_seq(path)?;
    let Json(delete) = body?;
    append(
        &state,
        caller.user_id,
        delete.client_msg_id,
        conversation_id,
        Content::Delete { target_seq },
    )
    .await
}

/// `POST /v1/conversations/{id}/messages/{seq}/reactions`
pub(crate) async fn react(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(u64, u64)>, PathRejection>,
    body: Result<Json<React>, JsonRejection>,
) -> Result<Json<AckFrame>, ApiError> {
    let (conversation_id, target_seq) = conversation_and_seq(path)?;
    let Json(react) = body?;
    let content = Content::Reaction {
        target_seq,
        emoji: react.emoji,
        add: !react.remove,
    };
    append(
        &state,
        caller.user_id,
        react.client_msg_id,
        conversation_id,
        content,
    )
    .await
}

/// The head of a conversation `user_id` is a member of; `not_found` otherwise.
async fn head_as_member(
    state: &AppState,
    user_id: &UserId,
    conversation_id: ConversationId,
) -> Result<Seq, ApiError> {
    let viewer = user_id.clone();
    let view = blocking(&state.store, move |store| {
        store.conversation_for(conversation_id, &viewer)
    })
    .await?
    .ok_or_else(ApiError::not_found)?;
    Ok(view.head_seq)
}

/// Checks a receipt position like the WebSocket does (1 to the head) and queues it.
async fn mark(
    state: &AppState,
    user_id: UserId,
    conversation_id: ConversationId,
    seq: Seq,
    read: bool,
) -> Result<StatusCode, ApiError> {
    let head = head_as_member(state, &user_id, conversation_id).await?;
    if seq == Seq::ZERO || seq > head {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("seq must be 1 to the conversation's head ({head})"),
        ));
    }
    let update = MarkerUpdate {
        conversation_id,
        user_id,
        delivered: seq,
        read: if read { seq } else { Seq::ZERO },
    };
    state
        .receipts
        .send(update)
        .await
        .map_err(|_| ApiError::new(ErrorCode::ShuttingDown, "the server is stopping; retry"))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/conversations/{id}/received`
pub(crate) async fn received(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Json<Position>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let conversation_id = conversation(path)?;
    let Json(position) = body?;
    mark(&state, caller.user_id, conversation_id, position.seq, false).await
}

/// `POST /v1/conversations/{id}/read`
pub(crate) async fn read(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Json<Position>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let conversation_id = conversation(path)?;
    let Json(position) = body?;
    mark(&state, caller.user_id, conversation_id, position.seq, true).await
}

/// `GET /v1/conversations/{id}/receipts`
pub(crate) async fn receipts(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Json<ReceiptList>, ApiError> {
    let conversation_id = conversation(path)?;
    head_as_member(&state, &caller.user_id, conversation_id).await?;
    let viewer = caller.user_id.clone();
    let rows = blocking(&state.store, move |store| store.receipts_of(&viewer)).await?;
    let rows: Vec<_> = rows
        .into_iter()
        .filter(|row| row.conversation_id == conversation_id)
        .collect();
    let ServerFrame::Receipts { receipts, .. } =
        crate::receipts::frame(conversation_id, &rows, Some(&caller.user_id))
    else {
        unreachable!("receipts::frame builds a receipts frame");
    };
    Ok(Json(ReceiptList { receipts }))
}

/// `POST /v1/conversations/{id}/typing`
pub(crate) async fn typing(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Json<SetTyping>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let conversation_id = conversation(path)?;
    let Json(typing) = body?;
    head_as_member(&state, &caller.user_id, conversation_id).await?;
    state
        .typing
        .update_member(&caller.user_id, conversation_id, typing.state)
        .map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/presence`
pub(crate) async fn set_presence(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<SetPresence>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Json(presence) = body?;
    if presence.state == PresenceState::Offline {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "state must be online or away; offline is decided by the server",
        ));
    }
    state
        .presence
        .set_away_all(&caller.user_id, presence.state == PresenceState::Away);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/presence?user_ids=bob,carol`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PresenceQuery {
    user_ids: String,
}

/// `GET /v1/presence`
pub(crate) async fn get_presence(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<PresenceQuery>, QueryRejection>,
) -> Result<Json<PresenceList>, ApiError> {
    let Query(query) = query?;
    let mut user_ids = query
        .user_ids
        .split(',')
        .filter(|id| !id.is_empty())
        .map(|id| {
            UserId::parse(id).map_err(|err| ApiError::new(ErrorCode::InvalidField, err.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    user_ids.sort();
    user_ids.dedup();
    if user_ids.len() > limits::PRESENCE_WATCH_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("at most {} users", limits::PRESENCE_WATCH_MAX),
        ));
    }
    let users = state.presence.peek(&caller.user_id, user_ids, None).await?;
    Ok(Json(PresenceList { users }))
}
