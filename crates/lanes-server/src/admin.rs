//! The admin API for an application's backend, authenticated with an API key from
//! `[admin] api_keys`: create users and conversations, add members, post system messages,
//! without a user session. Each action runs the same code as its user-facing twin.

use axum::Json;
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{FromRequestParts, Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use lanes_protocol::http::{
    AddMember, AdminCreateConversation, AdminCreateUser, AdminPost, AdminUser, Conversation,
    ConversationKind, CreateGroup, ErrorBody, Role,
};
use lanes_protocol::{AckFrame, Content, ConversationId, ErrorCode, SYSTEM_USER_ID, UserId};
use lanes_store::StoredUser;
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::openapi::{AdminOff, BadRequest, NotFound, PayloadTooLarge, Unauthorized, Unavailable};
use crate::{AppState, actions, blocking, http, now_millis};

/// A request that carried a configured API key.
pub(crate) struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, ApiError> {
        let keys = &state.config.admin.api_keys;
        if keys.is_empty() {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "the admin API is off: set [admin] api_keys",
            ));
        }
        let presented = http::bearer(&parts.headers).ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "missing Authorization: Bearer <api key>",
            )
        })?;
        // Digests are compared, so the time taken says nothing about the keys.
        let digest = Sha256::digest(presented.as_bytes());
        if keys
            .iter()
            .any(|key| Sha256::digest(key.as_bytes()) == digest)
        {
            Ok(Admin)
        } else {
            Err(ApiError::new(ErrorCode::Unauthorized, "unknown API key"))
        }
    }
}

/// `POST /v1/admin/users`
///
/// A user for the application, with a password for users who also log in with one. Ids starting
/// with `@` are reserved.
#[utoipa::path(
    post,
    path = "/v1/admin/users",
    tag = "admin",
    operation_id = "admin_create_user",
    summary = "Create a user",
    security(("admin_api_key" = [])),
    request_body = AdminCreateUser,
    responses(
        (status = 201, description = "Created", body = AdminUser),
        BadRequest,
        Unauthorized,
        AdminOff,
        (status = 409, description = "`conflict`: the user exists", body = ErrorBody),
        PayloadTooLarge,
        Unavailable,
    )
)]
pub(crate) async fn create_user(
    State(state): State<AppState>,
    _admin: Admin,
    body: Result<Json<AdminCreateUser>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    crate::auth::check_user_id(&request.user_id)?;
    let password_hash = match request.password {
        Some(password) => Some(state.auth.hash_new_password(password).await?),
        None => None,
    };
    let user = StoredUser {
        user_id: request.user_id.clone(),
        password_hash,
    };
    let now = now_millis();
    let created = blocking(&state.store, move |store| store.create_user(&user, now)).await?;
    if !created {
        return Err(ApiError::new(ErrorCode::Conflict, "the user exists"));
    }
    let body = AdminUser {
        user_id: request.user_id,
    };
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// `POST /v1/admin/conversations`
///
/// A direct conversation of exactly two `members`, or a group named `name` owned by `owner`.
#[utoipa::path(
    post,
    path = "/v1/admin/conversations",
    tag = "admin",
    operation_id = "admin_create_conversation",
    summary = "Create a conversation",
    security(("admin_api_key" = [])),
    request_body = AdminCreateConversation,
    responses(
        (
            status = 201,
            description = "Created, as its first member or owner sees it",
            body = Conversation
        ),
        (
            status = 200,
            description = "The direct conversation already existed",
            body = Conversation
        ),
        BadRequest,
        Unauthorized,
        AdminOff,
        NotFound,
        PayloadTooLarge,
        Unavailable,
    )
)]
pub(crate) async fn create_conversation(
    State(state): State<AppState>,
    _admin: Admin,
    body: Result<Json<AdminCreateConversation>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    match request.kind {
        ConversationKind::Direct => {
            let [a, b]: [UserId; 2] = request.members.try_into().map_err(|_| {
                ApiError::new(
                    ErrorCode::InvalidField,
                    "a direct conversation has exactly two members",
                )
            })?;
            if request.name.is_some() || request.owner.is_some() {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    "a direct conversation has no name and no owner",
                ));
            }
            http::direct_of(&state, a, b).await
        }
        ConversationKind::Group => {
            let (Some(name), Some(owner)) = (request.name, request.owner) else {
                return Err(ApiError::new(
                    ErrorCode::InvalidField,
                    "a group needs a name and an owner",
                ));
            };
            let group = CreateGroup {
                name,
                members: request.members,
            };
            http::group_of(&state, owner, group).await
        }
    }
}

/// `POST /v1/admin/conversations/{id}/members`
///
/// As `member` (the default) or `admin`. Adding a member again changes nothing.
#[utoipa::path(
    post,
    path = "/v1/admin/conversations/{id}/members",
    tag = "admin",
    operation_id = "admin_add_member",
    summary = "Add a member to a group",
    security(("admin_api_key" = [])),
    params(("id" = ConversationId, Path, description = "The group")),
    request_body = AddMember,
    responses(
        (status = 204, description = "The user is a member"),
        BadRequest,
        Unauthorized,
        (
            status = 403,
            description = "`forbidden`: the admin API is off, or the conversation is direct",
            body = ErrorBody
        ),
        NotFound,
        (status = 409, description = "`conflict`: the group is full", body = ErrorBody),
        PayloadTooLarge,
        Unavailable,
    )
)]
pub(crate) async fn add_member(
    State(state): State<AppState>,
    _admin: Admin,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Json<AddMember>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let Path(id) = path?;
    let conversation_id = ConversationId(id);
    let Json(request) = body?;
    let role = request.role.unwrap_or(Role::Member);
    if role == Role::Owner {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "a conversation has one owner",
        ));
    }
    // The admin acts as the group's owner (a direct conversation has none: its first member
    // acts, and the store answers that direct conversations have fixed members).
    let info = blocking(&state.store, move |store| {
        store.conversation_info(conversation_id)
    })
    .await?
    .ok_or_else(ApiError::not_found)?;
    let actor = info
        .members
        .iter()
        .find(|(_, role)| *role == Role::Owner)
        .or_else(|| info.members.first())
        .map(|(user_id, _)| user_id.clone())
        .ok_or_else(ApiError::not_found)?;
    http::add_member_as(&state, actor, conversation_id, request.user_id, role).await
}

/// `POST /v1/admin/conversations/{id}/messages`
///
/// A lane event of kind `system` from the reserved user `@system`, who needs no membership.
#[utoipa::path(
    post,
    path = "/v1/admin/conversations/{id}/messages",
    tag = "admin",
    operation_id = "admin_post",
    summary = "Post a system message",
    security(("admin_api_key" = [])),
    params(("id" = ConversationId, Path, description = "The conversation")),
    request_body = AdminPost,
    responses(
        (status = 200, description = "The ack, after the commit", body = AckFrame),
        BadRequest,
        Unauthorized,
        AdminOff,
        NotFound,
        (status = 409, description = "`conflict`: the client_msg_id is a system message of another conversation", body = ErrorBody),
        PayloadTooLarge,
        Unavailable,
    )
)]
pub(crate) async fn post(
    State(state): State<AppState>,
    _admin: Admin,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Json<AdminPost>, JsonRejection>,
) -> Result<Json<AckFrame>, ApiError> {
    let Path(id) = path?;
    let Json(request) = body?;
    let sender = UserId::parse(SYSTEM_USER_ID)
        .map_err(|_| ApiError::new(ErrorCode::Internal, "the system user id is invalid"))?;
    let conversation_id = ConversationId(id);
    let Json(ack) = actions::append(
        &state,
        sender,
        request.client_msg_id,
        conversation_id,
        Content::System { body: request.body },
    )
    .await?;
    // Every post shares `@system`'s ids: an id used before in another conversation is not a
    // retry of this post, and answering its ack would report a post that never happened.
    if ack.conversation_id != conversation_id {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!(
                "client_msg_id {} is a system message of conversation {} already",
                ack.client_msg_id, ack.conversation_id.0
            ),
        ));
    }
    Ok(Json(ack))
}
