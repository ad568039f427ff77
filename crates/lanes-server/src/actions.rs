//! Every WebSocket action over plain HTTP+JSON, for clients that cannot keep a WebSocket open:
//! lane events (send, edit, delete, react), receipts, typing and presence. A lane event takes the
//! WebSocket's path through validation and the committer and is answered with its ack after the
//! commit; the same rules answer with the same error codes, as HTTP statuses.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use lanes_protocol::http::{
    DeleteMessage, EditMessage, ErrorBody, Position, PresenceList, React, ReceiptList, SendMessage,
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
use crate::openapi::{
    BadRequest, NotFound, PayloadTooLarge, RateLimited, Unauthorized, Unavailable,
};
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

/// A user's lane event: rate-limited per user, then `append`.
async fn append_by_user(
    state: &AppState,
    sender_id: UserId,
    client_msg_id: ClientMsgId,
    conversation_id: ConversationId,
    content: Content,
) -> Result<Json<AckFrame>, ApiError> {
    state.rate_limits.send(&sender_id)?;
    append(state, sender_id, client_msg_id, conversation_id, content).await
}

/// Validates, commits and waits for the outcome of one lane event. Not rate-limited: users'
/// events come through `append_by_user`; the admin API's `@system` posts are not limited (its
/// key holder is trusted, and every backend's posts to every conversation share that sender).
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
///
/// A lane event: validated and committed like a WebSocket `send`; a retry with the same
/// `client_msg_id` gets the original ack.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/messages",
    tag = "actions",
    operation_id = "send",
    summary = "Send a message",
    security(("user_token" = [])),
    params(("id" = ConversationId, Path, description = "The conversation")),
    request_body = SendMessage,
    responses(
        (status = 200, description = "The ack, after the commit", body = AckFrame),
        BadRequest,
        Unauthorized,
        NotFound,
        PayloadTooLarge,
        Unavailable,
    )
)]
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
    append_by_user(
        &state,
        caller.user_id,
        send.client_msg_id,
        conversation_id,
        content,
    )
    .await
}

/// `POST /v1/conversations/{id}/messages/{seq}/edit`
///
/// A lane event with its own seq that replaces the text of the message at `seq`.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/messages/{seq}/edit",
    tag = "actions",
    operation_id = "edit",
    summary = "Edit one of the caller's messages",
    security(("user_token" = [])),
    params(
        ("id" = ConversationId, Path, description = "The conversation"),
        ("seq" = Seq, Path, description = "The message it applies to"),
    ),
    request_body = EditMessage,
    responses(
        (status = 200, description = "The ack, after the commit", body = AckFrame),
        BadRequest,
        Unauthorized,
        (
            status = 403,
            description = "`forbidden`: not the author of the message",
            body = ErrorBody
        ),
        NotFound,
        (status = 409, description = "`conflict`: the message was deleted", body = ErrorBody),
        PayloadTooLarge,
        Unavailable,
    )
)]
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
    append_by_user(
        &state,
        caller.user_id,
        edit.client_msg_id,
        conversation_id,
        content,
    )
    .await
}

/// `POST /v1/conversations/{id}/messages/{seq}/delete`
///
/// A lane event with its own seq: the text of the message at `seq` and of its edits is erased; its
/// seq stays as a tombstone.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/messages/{seq}/delete",
    tag = "actions",
    operation_id = "delete",
    summary = "Delete one of the caller's messages",
    security(("user_token" = [])),
    params(
        ("id" = ConversationId, Path, description = "The conversation"),
        ("seq" = Seq, Path, description = "The message it applies to"),
    ),
    request_body = DeleteMessage,
    responses(
        (status = 200, description = "The ack, after the commit", body = AckFrame),
        BadRequest,
        Unauthorized,
        (
            status = 403,
            description = "`forbidden`: not the author of the message",
            body = ErrorBody
        ),
        NotFound,
        (status = 409, description = "`conflict`: the message was deleted", body = ErrorBody),
        PayloadTooLarge,
        Unavailable,
    )
)]
pub(crate) async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(u64, u64)>, PathRejection>,
    body: Result<Json<DeleteMessage>, JsonRejection>,
) -> Result<Json<AckFrame>, ApiError> {
    let (conversation_id, target_seq) = conversation_and_seq(path)?;
    let Json(delete) = body?;
    append_by_user(
        &state,
        caller.user_id,
        delete.client_msg_id,
        conversation_id,
        Content::Delete { target_seq },
    )
    .await
}

/// `POST /v1/conversations/{id}/messages/{seq}/reactions`
///
/// A lane event with its own seq that adds (or, with `remove`, takes back) the caller's emoji on
/// the message at `seq`.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/messages/{seq}/reactions",
    tag = "actions",
    operation_id = "react",
    summary = "Add or remove a reaction",
    security(("user_token" = [])),
    params(
        ("id" = ConversationId, Path, description = "The conversation"),
        ("seq" = Seq, Path, description = "The message it applies to"),
    ),
    request_body = React,
    responses(
        (status = 200, description = "The ack, after the commit", body = AckFrame),
        BadRequest,
        Unauthorized,
        NotFound,
        (
            status = 409,
            description = "`conflict`: the message was deleted, or the reaction is already \
                           there (or, removing, not there)",
            body = ErrorBody
        ),
        PayloadTooLarge,
        Unavailable,
    )
)]
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
    append_by_user(
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
    state.rate_limits.receipt(&user_id)?;
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
///
/// A delivery receipt, like the WebSocket `received` frame: `seq` is 1 to the head; positions never
/// move backwards.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/received",
    tag = "actions",
    operation_id = "received",
    summary = "Confirm delivery up to a seq",
    security(("user_token" = [])),
    params(("id" = ConversationId, Path, description = "The conversation")),
    request_body = Position,
    responses(
        (status = 204, description = "Queued; stored and fanned out with the next receipts flush"),
        BadRequest,
        Unauthorized,
        NotFound,
        PayloadTooLarge,
        Unavailable,
    )
)]
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
///
/// A read marker, like the WebSocket `read` frame (implies received): `seq` is 1 to the head;
/// positions never move backwards.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/read",
    tag = "actions",
    operation_id = "read",
    summary = "Mark read up to a seq",
    security(("user_token" = [])),
    params(("id" = ConversationId, Path, description = "The conversation")),
    request_body = Position,
    responses(
        (status = 204, description = "Queued; stored and fanned out with the next receipts flush"),
        BadRequest,
        Unauthorized,
        NotFound,
        PayloadTooLarge,
        Unavailable,
    )
)]
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
///
/// Members who hide read receipts have no `read_seq` here, except for the caller.
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/receipts",
    tag = "actions",
    operation_id = "receipts",
    summary = "Every member's receipt positions",
    security(("user_token" = [])),
    params(("id" = ConversationId, Path, description = "The conversation")),
    responses(
        (
            status = 200,
            description = "The positions as the caller may see them",
            body = ReceiptList
        ),
        BadRequest,
        Unauthorized,
        NotFound,
        Unavailable,
    )
)]
pub(crate) async fn receipts(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Json<ReceiptList>, ApiError> {
    let conversation_id = conversation(path)?;
    head_as_member(&state, &caller.user_id, conversation_id).await?;
    let viewer = caller.user_id.clone();
    let rows = blocking(&state.store, move |store| {
        // Asked for explicitly: every member's, whatever the conversation's size.
        store.receipts_of(&viewer, Some(conversation_id), usize::MAX)
    })
    .await?;
    let ServerFrame::Receipts { receipts, .. } =
        crate::receipts::frame(conversation_id, &rows, Some(&caller.user_id))
    else {
        unreachable!("receipts::frame builds a receipts frame");
    };
    Ok(Json(ReceiptList { receipts }))
}

/// `POST /v1/conversations/{id}/typing`
///
/// Ephemeral, like the WebSocket `typing` frame: sent to the other online members, never stored.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/typing",
    tag = "actions",
    operation_id = "typing",
    summary = "Start or stop typing",
    security(("user_token" = [])),
    params(("id" = ConversationId, Path, description = "The conversation")),
    request_body = SetTyping,
    responses(
        (status = 204, description = "Announced to the other online members"),
        BadRequest,
        Unauthorized,
        NotFound,
        PayloadTooLarge,
        RateLimited,
        Unavailable,
    )
)]
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
///
/// Applies to every current connection and poll of the caller; `offline` is the server's to
/// decide (`400 invalid_field`).
#[utoipa::path(
    post,
    path = "/v1/presence",
    tag = "actions",
    operation_id = "set_presence",
    summary = "Set the caller's presence",
    security(("user_token" = [])),
    request_body = SetPresence,
    responses(
        (status = 204, description = "Applied"),
        BadRequest,
        Unauthorized,
        PayloadTooLarge,
    )
)]
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
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct PresenceQuery {
    /// Comma-separated user ids, at most 256.
    #[param(example = "bob,carol")]
    user_ids: String,
}

/// `GET /v1/presence`
///
/// Only users who share a conversation with the caller are listed; nothing is learned about
/// the others.
#[utoipa::path(
    get,
    path = "/v1/presence",
    tag = "actions",
    operation_id = "get_presence",
    summary = "The presence of some users",
    security(("user_token" = [])),
    params(PresenceQuery),
    responses(
        (status = 200, description = "Their presence now", body = PresenceList),
        BadRequest,
        Unauthorized,
        Unavailable,
    )
)]
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
