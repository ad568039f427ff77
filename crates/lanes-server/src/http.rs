//! The HTTP routes: accounts, conversations, membership and history. Each handler authenticates
//! with the bearer token, checks what only the caller's role decides, and leaves membership of
//! reads and writes to the store, which checks it in the same transaction.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use lanes_protocol::http::{
    AddMember, ConversationList, CreateDirect, CreateGroup, Credentials, History, Role, Settings,
};
use lanes_protocol::{ConversationId, ErrorCode, Seq, UserId, limits};
use lanes_store::{ManageOutcome, decide_removal};
use serde::Deserialize;

use lanes_core::membership::may_manage;

use crate::error::ApiError;
use crate::{AppState, actions, admin, blocking, longpoll, now_millis, ws};

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/v1/register", post(register))
        .route("/v1/login", post(login))
        .route("/v1/logout", post(logout))
        .route("/v1/me/settings", get(get_settings).put(put_settings))
        .route("/v1/conversations", get(list_conversations))
        .route("/v1/conversations/direct", post(create_direct))
        .route("/v1/conversations/group", post(create_group))
        .route("/v1/conversations/{id}", get(get_conversation))
        .route("/v1/conversations/{id}/members", post(add_member))
        .route(
            "/v1/conversations/{id}/members/{user_id}",
            delete(remove_member),
        )
        .route("/v1/conversations/{id}/leave", post(leave))
        .route(
            "/v1/conversations/{id}/messages",
            get(history).post(actions::send),
        )
        .route(
            "/v1/conversations/{id}/messages/{seq}/edit",
            post(actions::edit),
        )
        .route(
            "/v1/conversations/{id}/messages/{seq}/delete",
            post(actions::delete),
        )
        .route(
            "/v1/conversations/{id}/messages/{seq}/reactions",
            post(actions::react),
        )
        .route("/v1/conversations/{id}/received", post(actions::received))
        .route("/v1/conversations/{id}/read", post(actions::read))
        .route("/v1/conversations/{id}/receipts", get(actions::receipts))
        .route("/v1/conversations/{id}/typing", post(actions::typing))
        .route(
            "/v1/presence",
            get(actions::get_presence).post(actions::set_presence),
        )
        .route(
            "/v1/events",
            get(longpoll::poll_get).post(longpoll::poll_post),
        )
        .route("/v1/ws", get(ws::upgrade))
        .route("/v1/admin/users", post(admin::create_user))
        .route("/v1/admin/conversations", post(admin::create_conversation))
        .route(
            "/v1/admin/conversations/{id}/members",
            post(admin::add_member),
        )
        .route("/v1/admin/conversations/{id}/messages", post(admin::post))
        .merge(crate::web::router())
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(limits::HTTP_BODY_BYTES_MAX))
        .with_state(state)
}

/// The authenticated caller of a request, from `Authorization: Bearer <token>`.
pub(crate) struct Caller {
    pub(crate) user_id: UserId,
    pub(crate) token: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let token = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::trim)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "missing Authorization: Bearer token",
                )
            })?;
        let user_id = state.auth.authenticate(token).await?;
        Ok(Caller {
            user_id,
            token: token.to_owned(),
        })
    }
}

fn conversation_id(path: Result<Path<u64>, PathRejection>) -> Result<ConversationId, ApiError> {
    let Path(id) = path?;
    Ok(ConversationId(id))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

/// `GET /healthz`
async fn healthz(State(state): State<AppState>) -> Response {
    Json(serde_json::json!({
        "status": "ok",
        "durability": state.durability,
        "epoch": state.epoch,
    }))
    .into_response()
}

/// `GET /metrics`
async fn metrics(State(state): State<AppState>) -> Response {
    let body = state.metrics.render(
        state.durability == "full",
        state.hub.slow_consumers(),
        state.hub.stats().users,
    );
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        body,
    )
        .into_response()
}

/// `POST /v1/register`
async fn register(
    State(state): State<AppState>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(credentials) = body?;
    let session = state
        .auth
        .register(&credentials.username, &credentials.password)
        .await?;
    Ok((StatusCode::CREATED, Json(session)).into_response())
}

/// `POST /v1/login`
async fn login(
    State(state): State<AppState>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(credentials) = body?;
    let session = state
        .auth
        .login(&credentials.username, &credentials.password)
        .await?;
    Ok(Json(session).into_response())
}

/// `POST /v1/logout`
async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    state.auth.logout(&caller.token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/conversations`
async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Settings>, ApiError> {
    let settings = blocking(&state.store, move |store| store.settings(&caller.user_id)).await?;
    Ok(Json(settings))
}

async fn put_settings(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<Settings>, JsonRejection>,
) -> Result<Json<Settings>, ApiError> {
    let Json(settings) = body?;
    let stored = settings.clone();
    blocking(&state.store, move |store| {
        store.set_settings(&caller.user_id, &stored)
    })
    .await?;
    Ok(Json(settings))
}

async fn list_conversations(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<ConversationList>, ApiError> {
    let conversations = blocking(&state.store, move |store| {
        store.conversations_of(&caller.user_id)
    })
    .await?;
    Ok(Json(ConversationList { conversations }))
}

async fn require_users(state: &AppState, users: Vec<UserId>) -> Result<(), ApiError> {
    let missing = blocking(&state.store, move |store| {
        for user_id in users {
            if store.user(&user_id)?.is_none() {
                return Ok(Some(user_id));
            }
        }
        Ok(None)
    })
    .await?;
    match missing {
        Some(user_id) => Err(ApiError::new(
            ErrorCode::NotFound,
            format!("user {user_id} not found"),
        )),
        None => Ok(()),
    }
}

async fn view(
    state: &AppState,
    conversation_id: ConversationId,
    viewer: UserId,
) -> Result<Response, ApiError> {
    let view = blocking(&state.store, move |store| {
        store.conversation_for(conversation_id, &viewer)
    })
    .await?
    .ok_or_else(ApiError::not_found)?;
    Ok(Json(view).into_response())
}

/// `POST /v1/conversations/direct`
async fn create_direct(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateDirect>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    direct_of(&state, caller.user_id, request.user_id).await
}

/// The direct conversation of `me` and `other`, created if needed (`201`), as `me` sees it.
pub(crate) async fn direct_of(
    state: &AppState,
    me: UserId,
    other: UserId,
) -> Result<Response, ApiError> {
    if other == me {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "a direct conversation needs another user",
        ));
    }
    require_users(state, vec![me.clone(), other.clone()]).await?;
    let (a, b) = (me.clone(), other.clone());
    let now = now_millis();
    let (conversation_id, created) =
        blocking(&state.store, move |store| store.create_direct(&a, &b, now)).await?;
    if created {
        state.hub.member_added(conversation_id, &me);
        state.hub.member_added(conversation_id, &other);
    }
    let mut response = view(state, conversation_id, me).await?;
    if created {
        *response.status_mut() = StatusCode::CREATED;
    }
    Ok(response)
}

/// `POST /v1/conversations/group`
async fn create_group(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateGroup>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    group_of(&state, caller.user_id, request).await
}

/// A new group owned by `owner` (`201`), as the owner sees it.
pub(crate) async fn group_of(
    state: &AppState,
    owner: UserId,
    request: CreateGroup,
) -> Result<Response, ApiError> {
    let name = request.name.trim().to_owned();
    if name.is_empty() || name.len() > limits::GROUP_NAME_BYTES_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("name must be 1 to {} bytes", limits::GROUP_NAME_BYTES_MAX),
        ));
    }
    let mut members: Vec<UserId> = request
        .members
        .into_iter()
        .filter(|member| *member != owner)
        .collect();
    members.sort();
    members.dedup();
    let group_members_max = state.config.limits.group_members_max;
    if members.len() + 1 > group_members_max {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("a group has at most {group_members_max} members"),
        ));
    }
    let mut everyone = members.clone();
    everyone.push(owner.clone());
    require_users(state, everyone).await?;
    let (creator, stored) = (owner.clone(), members.clone());
    let now = now_millis();
    let conversation_id = blocking(&state.store, move |store| {
        store.create_group(&creator, &name, &stored, now)
    })
    .await?;
    state.hub.member_added(conversation_id, &owner);
    for member in &members {
        state.hub.member_added(conversation_id, member);
    }
    let mut response = view(state, conversation_id, owner).await?;
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// `GET /v1/conversations/{id}`
async fn get_conversation(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
) -> Result<Response, ApiError> {
    let conversation_id = conversation_id(path)?;
    view(&state, conversation_id, caller.user_id).await
}

/// Turns a refused membership change into its HTTP error.
fn manage_error(outcome: ManageOutcome) -> Option<ApiError> {
    match outcome {
        ManageOutcome::Changed | ManageOutcome::Unchanged => None,
        ManageOutcome::NotFound => Some(ApiError::not_found()),
        ManageOutcome::Direct => Some(ApiError::new(
            ErrorCode::Forbidden,
            "direct conversations have fixed members",
        )),
        ManageOutcome::Forbidden => Some(ApiError::new(
            ErrorCode::Forbidden,
            "only the owner manages admins, the owner and admins manage members, and nobody \
             adds or removes the owner",
        )),
        ManageOutcome::Full => Some(ApiError::new(ErrorCode::Conflict, "the group is full")),
        ManageOutcome::UnknownUser => Some(ApiError::new(ErrorCode::NotFound, "user not found")),
        ManageOutcome::NotMember => Some(ApiError::new(ErrorCode::NotFound, "not a member")),
    }
}

/// `POST /v1/conversations/{id}/members`
async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Json<AddMember>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let conversation_id = conversation_id(path)?;
    let Json(request) = body?;
    let role = request.role.unwrap_or(Role::Member);
    let members_max = state.config.limits.group_members_max;
    let (actor, added) = (caller.user_id.clone(), request.user_id.clone());
    let now = now_millis();
    // The store decides with the actor's role as of the same transaction as the change.
    let outcome = blocking(&state.store, move |store| {
        store.add_member_as(
            &actor,
            conversation_id,
            &added,
            role,
            members_max,
            may_manage,
            now,
        )
    })
    .await?;
    if let Some(error) = manage_error(outcome) {
        return Err(error);
    }
    if outcome == ManageOutcome::Changed {
        state.hub.member_added(conversation_id, &request.user_id);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /v1/conversations/{id}/members/{user_id}`
async fn remove_member(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<(u64, String)>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let Path((id, target)) = path?;
    let target = UserId::parse(&target)
        .map_err(|err| ApiError::new(ErrorCode::InvalidField, format!("user_id: {err}")))?;
    remove(&state, ConversationId(id), caller.user_id, target).await
}

/// `POST /v1/conversations/{id}/leave`
async fn leave(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let conversation_id = conversation_id(path)?;
    remove(
        &state,
        conversation_id,
        caller.user_id.clone(),
        caller.user_id,
    )
    .await
}

async fn remove(
    state: &AppState,
    conversation_id: ConversationId,
    actor: UserId,
    target: UserId,
) -> Result<StatusCode, ApiError> {
    // Refuse what the current roles already refuse before touching the hub, so that nobody can
    // make another member's devices see `left`/`joined` by trying. The store decides again in
    // its transaction; only a race with a role change reaches the put-back below.
    let info = blocking(&state.store, move |store| {
        store.conversation_info(conversation_id)
    })
    .await?
    .ok_or_else(ApiError::not_found)?;
    let role_of = |user: &UserId| {
        info.members
            .iter()
            .find(|(member, _)| member == user)
            .map(|(_, role)| *role)
    };
    let precheck = decide_removal(
        info.kind,
        role_of(&actor),
        role_of(&target),
        actor == target,
        may_manage,
    );
    if let Some(error) = manage_error(precheck) {
        return Err(error);
    }
    // The hub forgets the member first: the committer may publish between the store's commit
    // and any later call, and a removed member must not receive that. If the store then refuses
    // or fails, the member is put back (a `joined` catch-up covers what was skipped).
    state.hub.member_removed(conversation_id, &target);
    let removed = target.clone();
    let result = blocking(&state.store, move |store| {
        store.remove_member_as(&actor, conversation_id, &removed, may_manage)
    })
    .await;
    let refused = match &result {
        Ok(outcome) => manage_error(*outcome),
        Err(_) => None,
    };
    if result.is_err() || refused.is_some() {
        state.hub.member_added(conversation_id, &target);
    }
    if let Some(error) = refused {
        return Err(error);
    }
    result?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HistoryQuery {
    after: Option<u64>,
    before: Option<u64>,
    limit: Option<usize>,
}

/// `GET /v1/conversations/{id}/messages`
async fn history(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let conversation_id = conversation_id(path)?;
    let Query(query) = query?;
    let limit = query.limit.unwrap_or(limits::PAGE_LEN_DEFAULT);
    if limit == 0 || limit > limits::PAGE_LEN_MAX {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("limit must be 1 to {}", limits::PAGE_LEN_MAX),
        ));
    }
    let viewer = caller.user_id;
    // One more than asked tells whether more exist beyond the page.
    let page = match (query.after, query.before) {
        (Some(_), Some(_)) => {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "give after or before, not both",
            ));
        }
        (Some(after), None) => {
            let mut page = blocking(&state.store, move |store| {
                store.messages_after(&viewer, conversation_id, Seq(after), limit + 1)
            })
            .await?
            .ok_or_else(ApiError::not_found)?;
            let has_more = page.len() > limit;
            page.truncate(limit);
            History {
                messages: page,
                has_more,
            }
        }
        (None, before) => {
            let before = Seq(before.unwrap_or(u64::MAX));
            let mut page = blocking(&state.store, move |store| {
                store.messages_before(&viewer, conversation_id, before, limit + 1)
            })
            .await?
            .ok_or_else(ApiError::not_found)?;
            let has_more = page.len() > limit;
            if has_more {
                page.remove(0);
            }
            History {
                messages: page,
                has_more,
            }
        }
    };
    Ok(Json(page))
}
