//! The HTTP routes: accounts, conversations, membership and history. Each handler authenticates
//! with the bearer token, checks what only the caller's role decides, and leaves membership of
//! reads and writes to the store, which checks it in the same transaction.

use std::net::SocketAddr;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use lanes_hub::Delivery;
use lanes_protocol::codec::encode_server;
use lanes_protocol::http::{
    AddMember, Conversation, ConversationList, CreateDirect, CreateGroup, Credentials, ErrorBody,
    History, MemberPage, Role, Session, Settings,
};
use lanes_protocol::{
    ConversationId, ErrorCode, Seq, ServerFrame, StoreEpoch, UnixMillis, UserId, limits,
};
use lanes_store::{ListingCursor, ManageOutcome, Store, StoreError, decide_removal};
use serde::{Deserialize, Serialize};
use tower_http::compression::CompressionLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use lanes_core::membership::may_manage;

use crate::error::ApiError;
use crate::openapi::{
    ApiDoc, BadRequest, Forbidden, NotFound, PayloadTooLarge, Unauthorized, Unavailable,
};
use crate::{AppState, actions, admin, blocking, longpoll, now_millis, ws};

/// Every route, each registered together with its OpenAPI operation: `routes!` takes only
/// handlers annotated with `#[utoipa::path]` and serves each on the method and path of its
/// annotation, so the document can neither miss a route nor describe one wrongly. Handlers of
/// one path share a `routes!`. Never add a plain axum route beside them.
pub(crate) fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(healthz))
        .routes(routes!(metrics))
        .routes(routes!(openapi_document))
        .routes(routes!(register))
        .routes(routes!(login))
        .routes(routes!(logout))
        .routes(routes!(get_settings, put_settings))
        .routes(routes!(list_conversations))
        .routes(routes!(create_direct))
        .routes(routes!(create_group))
        .routes(routes!(get_conversation))
        .routes(routes!(list_members, add_member))
        .routes(routes!(remove_member))
        .routes(routes!(leave))
        .routes(routes!(history, actions::send))
        .routes(routes!(actions::edit))
        .routes(routes!(actions::delete))
        .routes(routes!(actions::react))
        .routes(routes!(actions::received))
        .routes(routes!(actions::read))
        .routes(routes!(actions::receipts))
        .routes(routes!(actions::typing))
        .routes(routes!(actions::get_presence, actions::set_presence))
        .routes(routes!(longpoll::poll_get, longpoll::poll_post))
        .routes(routes!(ws::upgrade))
        .routes(routes!(admin::create_user))
        .routes(routes!(admin::create_conversation))
        .routes(routes!(admin::add_member))
        .routes(routes!(admin::post))
        .routes(routes!(crate::web::index))
        .routes(routes!(crate::web::asset))
}

pub(crate) fn router(state: AppState) -> Router {
    let (router, openapi) = api().split_for_parts();
    router
        .fallback(not_found)
        // Answers go gzip-compressed to clients that accept it (JSON shrinks ~5-10×: a listing
        // of many conversations, history pages, the web client's files). Frames on a
        // WebSocket are not: an upgrade's answer has no body.
        .layer(CompressionLayer::new())
        .layer(DefaultBodyLimit::max(limits::HTTP_BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            body_within_timeout,
        ))
        .layer(Extension(Arc::new(openapi)))
        .with_state(state)
}

/// Gives a request's body `body_read_timeout_ms` from the moment its headers are in: hyper's
/// header timeout ends with the headers, and a client that then sent the body a byte at a time
/// would hold its socket and a task for as long as it liked. The body is still read only by the
/// handler that wants it (after authentication); reading past the deadline fails, and the
/// handler answers `400 bad_frame`.
async fn body_within_timeout(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use http_body::Body as _;
    if request.body().is_end_stream() {
        return next.run(request).await;
    }
    let timeout_ms = state.config.body_read_timeout_ms;
    let request = request.map(|inner| {
        axum::body::Body::new(DeadlineBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(std::time::Duration::from_millis(
                timeout_ms,
            ))),
            timeout_ms,
        })
    });
    next.run(request).await
}

/// A body that fails once its deadline has passed (`body_within_timeout`).
struct DeadlineBody {
    inner: axum::body::Body,
    deadline: std::pin::Pin<Box<tokio::time::Sleep>>,
    timeout_ms: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("the request body did not arrive within {0} ms")]
struct BodyTimedOut(u64);

impl http_body::Body for DeadlineBody {
    type Data = axum::body::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.deadline.as_mut().poll(cx).is_ready() {
            let timed_out = BodyTimedOut(self.timeout_ms);
            return std::task::Poll::Ready(Some(Err(axum::Error::new(timed_out))));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The credentials of `Authorization: Bearer <credentials>`, the scheme in any case (RFC 9110
/// §11.1).
pub(crate) fn bearer(headers: &axum::http::HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, credentials) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| credentials.trim())
}

/// The authenticated caller of a request, from `Authorization: Bearer <token>`.
pub(crate) struct Caller {
    pub(crate) user_id: UserId,
    pub(crate) token: String,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let token = bearer(&parts.headers).ok_or_else(|| {
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

/// The answer of `GET /healthz`.
#[derive(Serialize, utoipa::ToSchema)]
struct Health {
    /// Always `ok`: a server that answers is serving.
    #[schema(example = "ok")]
    status: &'static str,
    /// `full` (every ack is fsync'd) or `normal` (acked messages may be lost on power loss).
    #[schema(example = "full")]
    durability: &'static str,
    /// The store's epoch (see `hello`).
    epoch: StoreEpoch,
}

/// `GET /healthz`
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "server",
    operation_id = "healthz",
    summary = "Health and durability",
    responses((status = 200, description = "The server is serving", body = Health))
)]
async fn healthz(State(state): State<AppState>) -> Json<Health> {
    Json(Health {
        status: "ok",
        durability: state.durability,
        epoch: state.epoch.clone(),
    })
}

/// `GET /metrics`
///
/// Counters and gauges in the Prometheus text format; docs/PROTOCOL.md lists them.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "server",
    operation_id = "metrics",
    summary = "Prometheus metrics",
    responses((
        status = 200,
        description = "Prometheus text exposition format",
        body = String,
        content_type = "text/plain; version=0.0.4"
    ))
)]
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

/// `GET /openapi.json`
///
/// This document: every route the server serves. The same is kept in docs/openapi.json.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "server",
    operation_id = "openapi",
    summary = "This OpenAPI document",
    responses((status = 200, description = "The OpenAPI 3.1 document", body = Object))
)]
async fn openapi_document(
    Extension(openapi): Extension<Arc<utoipa::openapi::OpenApi>>,
) -> Response {
    Json(openapi.as_ref()).into_response()
}

/// `POST /v1/register`
///
/// Creates a password account (the username becomes the user id) and a session for it.
/// `403 forbidden` when the server has `auth.password = false`.
#[utoipa::path(
    post,
    path = "/v1/register",
    tag = "accounts",
    operation_id = "register",
    summary = "Create a password account",
    request_body = Credentials,
    responses(
        (status = 201, description = "The account and its first session", body = Session),
        BadRequest,
        Forbidden,
        (status = 409, description = "`conflict`: the username is taken", body = ErrorBody),
        PayloadTooLarge,
        Unavailable,
    )
)]
async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.rate_limits.signup(peer.ip())?;
    let Json(credentials) = body?;
    let session = state
        .auth
        .register(&credentials.username, &credentials.password)
        .await?;
    Ok((StatusCode::CREATED, Json(session)).into_response())
}

/// `POST /v1/login`
///
/// `403 forbidden` when the server has `auth.password = false`.
#[utoipa::path(
    post,
    path = "/v1/login",
    tag = "accounts",
    operation_id = "login",
    summary = "Log in with a password",
    request_body = Credentials,
    responses(
        (status = 200, description = "A new session", body = Session),
        BadRequest,
        (
            status = 401,
            description = "`unauthorized`: wrong username or password",
            body = ErrorBody
        ),
        Forbidden,
        PayloadTooLarge,
        Unavailable,
    )
)]
async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    body: Result<Json<Credentials>, JsonRejection>,
) -> Result<Response, ApiError> {
    state.rate_limits.login(peer.ip())?;
    let Json(credentials) = body?;
    let session = state
        .auth
        .login(&credentials.username, &credentials.password)
        .await?;
    Ok(Json(session).into_response())
}

/// `POST /v1/logout`
///
/// The token stops working. An application JWT cannot be revoked here (`400 invalid_field`): it
/// expires.
#[utoipa::path(
    post,
    path = "/v1/logout",
    tag = "accounts",
    operation_id = "logout",
    summary = "Revoke the session token",
    security(("user_token" = [])),
    responses(
        (status = 204, description = "The token is revoked"),
        BadRequest,
        Unauthorized,
        Unavailable,
    )
)]
async fn logout(State(state): State<AppState>, caller: Caller) -> Result<StatusCode, ApiError> {
    state.auth.logout(&caller.token).await?;
    // Connections opened with the token close now, not at their next reconnect.
    let credential = crate::auth::Authenticator::credential(&caller.token);
    state.hub.revoke(&caller.user_id, credential);
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/me/settings`
#[utoipa::path(
    get,
    path = "/v1/me/settings",
    tag = "accounts",
    operation_id = "get_settings",
    summary = "The caller's settings",
    security(("user_token" = [])),
    responses(
        (status = 200, description = "The settings", body = Settings),
        Unauthorized,
        Unavailable,
    )
)]
async fn get_settings(
    State(state): State<AppState>,
    caller: Caller,
) -> Result<Json<Settings>, ApiError> {
    let settings = blocking(&state.store, move |store| store.settings(&caller.user_id)).await?;
    Ok(Json(settings))
}

/// `PUT /v1/me/settings`
#[utoipa::path(
    put,
    path = "/v1/me/settings",
    tag = "accounts",
    operation_id = "put_settings",
    summary = "Replace the caller's settings",
    security(("user_token" = [])),
    request_body = Settings,
    responses(
        (status = 200, description = "The settings stored", body = Settings),
        BadRequest,
        Unauthorized,
        PayloadTooLarge,
        Unavailable,
    )
)]
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

/// `GET /v1/conversations` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ConversationsQuery {
    /// At most this many (1 to 500); without it, all of them.
    limit: Option<usize>,
    /// Continue after the page that answered with this `next`.
    after: Option<String>,
}

/// `GET /v1/conversations`
///
/// Newest activity first (the newest event's time, or the creation for none yet; then the
/// higher id). With `limit`, a page at a time: `next` names where the following page starts.
#[utoipa::path(
    get,
    path = "/v1/conversations",
    tag = "conversations",
    operation_id = "list_conversations",
    summary = "The caller's conversations",
    security(("user_token" = [])),
    params(ConversationsQuery),
    responses(
        (status = 200, description = "Newest activity first", body = ConversationList),
        BadRequest,
        Unauthorized,
        Unavailable,
    )
)]
async fn list_conversations(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<ConversationsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    // A whole listing is up to `conversations_per_user_max` conversations with their last
    // messages: tens of megabytes. Built a few at a time, read and encoded in one turn.
    let _turn = match query.limit {
        None => Some(
            state
                .whole_listings
                .acquire()
                .await
                .map_err(|_| ApiError::new(ErrorCode::Internal, "listings are closed"))?,
        ),
        Some(_) => None,
    };
    let limit = match query.limit {
        None => usize::MAX,
        limit => page_limit(limit, 0, limits::CONVERSATIONS_PAGE_MAX)?,
    };
    let after = query
        .after
        .as_deref()
        .map(parse_listing_cursor)
        .transpose()?;
    let (conversations, next) = blocking(&state.store, move |store| {
        store.conversations_page(&caller.user_id, after, limit)
    })
    .await?;
    let next = next.map(|cursor| format!("{}.{}", cursor.activity.0, cursor.conversation_id));
    let body = serde_json::to_vec(&ConversationList {
        conversations,
        next,
    })
    .map_err(|_| ApiError::new(ErrorCode::Internal, "the listing did not encode"))?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            axum::http::HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response())
}

/// Unpaged conversation listings built at once; more wait their turn.
pub(crate) const WHOLE_LISTINGS_MAX: usize = 2;

/// Reads a listing's `next` (`activity.conversation_id`).
fn parse_listing_cursor(text: &str) -> Result<ListingCursor, ApiError> {
    text.split_once('.')
        .and_then(|(activity, id)| {
            Some(ListingCursor {
                activity: UnixMillis(activity.parse().ok()?),
                conversation_id: ConversationId(id.parse().ok()?),
            })
        })
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidField,
                "after must be a listing's next (as it was given)",
            )
        })
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

/// Membership changes of one conversation take turns on this server, from the check of the
/// current members to what the members online are told: the hub, the store and the frames then
/// change in one order. Without it a removal that lost a race with another removal of the same
/// member found them gone, and put them back in the hub as a refused removal must, where they
/// kept receiving a conversation they had left; and the `large` / `member_removed` frames of
/// changes racing at `receipts_members_max` could reach members in the wrong order. Shards
/// keyed by conversation id: changes of different conversations rarely wait for each other, and
/// the locks cost nothing per conversation. One server's turns: a cluster would need the
/// store's.
pub(crate) struct MembershipLocks([tokio::sync::Mutex<()>; MEMBERSHIP_SHARDS]);

const MEMBERSHIP_SHARDS: usize = 64;

impl Default for MembershipLocks {
    fn default() -> Self {
        MembershipLocks(std::array::from_fn(|_| tokio::sync::Mutex::new(())))
    }
}

impl MembershipLocks {
    /// Waits for `conversation_id`'s turn; the change ends when the guard drops.
    async fn lock(&self, conversation_id: ConversationId) -> tokio::sync::MutexGuard<'_, ()> {
        self.0[(conversation_id.0 % MEMBERSHIP_SHARDS as u64) as usize]
            .lock()
            .await
    }
}

/// Whether `conversation_id` has more than `realtime.receipts_members_max` members (what
/// `joined` tells a member put back after a refused removal). A failed count says no: it is
/// only a hint to the client.
async fn is_large(state: &AppState, conversation_id: ConversationId) -> bool {
    let members_max = state.config.realtime.receipts_members_max;
    blocking(&state.store, move |store| {
        larger_than(store, conversation_id, members_max)
    })
    .await
    .unwrap_or(false)
}

/// Whether `conversation_id` has more than `members` members (counting no further).
fn larger_than(
    store: &dyn Store,
    conversation_id: ConversationId,
    members: usize,
) -> Result<bool, StoreError> {
    Ok(!store.larger_than(&[conversation_id], members)?.is_empty())
}

/// Refuses (`conflict`) when one of `users` is already in `limits.conversations_per_user_max`
/// conversations. Checked before the change, outside its transaction: concurrent joins may
/// overshoot by the few that race, which bounds the count all the same.
pub(crate) async fn require_room(state: &AppState, users: Vec<UserId>) -> Result<(), ApiError> {
    let max = state.config.limits.conversations_per_user_max;
    let full = blocking(&state.store, move |store| {
        for user_id in users {
            if store.conversation_count(&user_id)? >= max {
                return Ok(Some(user_id));
            }
        }
        Ok(None)
    })
    .await?;
    match full {
        Some(user_id) => Err(ApiError::new(
            ErrorCode::Conflict,
            format!("{user_id} is already in {max} conversations, the most allowed"),
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
///
/// The same pair of users always gets the same conversation.
#[utoipa::path(
    post,
    path = "/v1/conversations/direct",
    tag = "conversations",
    operation_id = "create_direct",
    summary = "The direct conversation with a user",
    security(("user_token" = [])),
    request_body = CreateDirect,
    responses(
        (status = 201, description = "Created", body = Conversation),
        (status = 200, description = "It already existed", body = Conversation),
        BadRequest,
        Unauthorized,
        NotFound,
        PayloadTooLarge,
        Unavailable,
    )
)]
async fn create_direct(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateDirect>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    state.rate_limits.membership(&caller.user_id)?;
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
    // At the cap even an existing direct conversation is refused: telling the two apart would
    // cost a read of every conversation of the user.
    require_room(state, vec![me.clone(), other.clone()]).await?;

    let (a, b) = (me.clone(), other.clone());
    let now = now_millis();
    let (conversation_id, created) =
        blocking(&state.store, move |store| store.create_direct(&a, &b, now)).await?;
    if created {
        state.hub.member_added(conversation_id, &me, false);
        state.hub.member_added(conversation_id, &other, false);
    }
    let mut response = view(state, conversation_id, me).await?;
    if created {
        *response.status_mut() = StatusCode::CREATED;
    }
    Ok(response)
}

/// `POST /v1/conversations/group`
#[utoipa::path(
    post,
    path = "/v1/conversations/group",
    tag = "conversations",
    operation_id = "create_group",
    summary = "Create a group owned by the caller",
    security(("user_token" = [])),
    request_body = CreateGroup,
    responses(
        (status = 201, description = "Created; the caller is its owner", body = Conversation),
        BadRequest,
        Unauthorized,
        NotFound,
        PayloadTooLarge,
        Unavailable,
    )
)]
async fn create_group(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<CreateGroup>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(request) = body?;
    state.rate_limits.membership(&caller.user_id)?;
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
    require_users(state, everyone.clone()).await?;
    require_room(state, everyone).await?;
    let (creator, stored) = (owner.clone(), members.clone());
    let now = now_millis();
    let conversation_id = blocking(&state.store, move |store| {
        store.create_group(&creator, &name, &stored, now)
    })
    .await?;
    let large = members.len() + 1 > state.config.realtime.receipts_members_max;
    state.hub.member_added(conversation_id, &owner, large);
    for member in &members {
        state.hub.member_added(conversation_id, member, large);
    }
    let mut response = view(state, conversation_id, owner).await?;
    *response.status_mut() = StatusCode::CREATED;
    Ok(response)
}

/// `GET /v1/conversations/{id}`
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}",
    tag = "conversations",
    operation_id = "get_conversation",
    summary = "One conversation of the caller",
    security(("user_token" = [])),
    params(("id" = ConversationId, Path, description = "The conversation")),
    responses(
        (status = 200, description = "The conversation as the caller sees it", body = Conversation),
        BadRequest,
        Unauthorized,
        NotFound,
        Unavailable,
    )
)]
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

/// A page size asked for (`default` when not): 1 to `max`, else `invalid_field`.
fn page_limit(limit: Option<usize>, default: usize, max: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        limit @ 1.. if limit <= max => Ok(limit),
        _ => Err(ApiError::new(
            ErrorCode::InvalidField,
            format!("limit must be 1 to {max}"),
        )),
    }
}

/// `GET /v1/conversations/{id}/members` query.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct MembersQuery {
    /// The members with user ids after this one (the last of the previous page).
    after: Option<UserId>,
    /// Page size: 1 to 1,000, default 100.
    limit: Option<usize>,
}

/// `GET /v1/conversations/{id}/members`
///
/// Every member in user id order, a page at a time (a conversation itself names at most 100).
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/members",
    tag = "conversations",
    operation_id = "list_members",
    summary = "List a conversation's members, a page at a time",
    security(("user_token" = [])),
    params(("id" = ConversationId, Path, description = "The conversation"), MembersQuery),
    responses(
        (status = 200, description = "The page, ascending by user id", body = MemberPage),
        BadRequest,
        Unauthorized,
        NotFound,
        Unavailable,
    )
)]
async fn list_members(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
    query: Result<Query<MembersQuery>, QueryRejection>,
) -> Result<Json<MemberPage>, ApiError> {
    let conversation_id = conversation_id(path)?;
    let Query(query) = query?;
    let limit = page_limit(
        query.limit,
        limits::MEMBERS_LISTED_MAX,
        limits::MEMBERS_PAGE_MAX,
    )?;
    let viewer = caller.user_id;
    // One more than asked tells whether more follow.
    let mut members = blocking(&state.store, move |store| {
        store.members_page(conversation_id, &viewer, query.after.as_ref(), limit + 1)
    })
    .await?
    .ok_or_else(ApiError::not_found)?;
    let has_more = members.len() > limit;
    members.truncate(limit);
    Ok(Json(MemberPage { members, has_more }))
}

/// `POST /v1/conversations/{id}/members`
///
/// Only the owner and admins add members; only the owner adds admins. Adding a member again
/// changes nothing. Direct conversations have fixed members.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/members",
    tag = "conversations",
    operation_id = "add_member",
    summary = "Add a member to a group",
    security(("user_token" = [])),
    params(("id" = ConversationId, Path, description = "The group")),
    request_body = AddMember,
    responses(
        (status = 204, description = "The user is a member"),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        (status = 409, description = "`conflict`: the group is full", body = ErrorBody),
        PayloadTooLarge,
        Unavailable,
    )
)]
async fn add_member(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
    body: Result<Json<AddMember>, JsonRejection>,
) -> Result<StatusCode, ApiError> {
    let conversation_id = conversation_id(path)?;
    let Json(request) = body?;
    state.rate_limits.membership(&caller.user_id)?;
    let role = request.role.unwrap_or(Role::Member);
    add_member_as(
        &state,
        caller.user_id,
        conversation_id,
        request.user_id,
        role,
    )
    .await
}

/// Adds `added` as `role` on behalf of `actor`: the conversations-per-user cap, then the store
/// decides with the actor's role, the group size and the user's existence in the same
/// transaction as the change. Shared by the user route and the admin API (which acts as the
/// group's owner).
pub(crate) async fn add_member_as(
    state: &AppState,
    actor: UserId,
    conversation_id: ConversationId,
    added: UserId,
    role: Role,
) -> Result<StatusCode, ApiError> {
    let members_max = state.config.limits.group_members_max;
    require_room(state, vec![added.clone()]).await?;
    let _turn = state.membership.lock(conversation_id).await;
    let stored = added.clone();
    let now = now_millis();
    let receipts_members_max = state.config.realtime.receipts_members_max;
    let (outcome, size) = blocking(&state.store, move |store| {
        let outcome = store.add_member_as(
            &actor,
            conversation_id,
            &stored,
            role,
            members_max,
            may_manage,
            now,
        )?;
        let size = if outcome == ManageOutcome::Changed {
            size_of(store, conversation_id, receipts_members_max)
        } else {
            Size::Unknown
        };
        Ok((outcome, size))
    })
    .await?;
    if let Some(error) = manage_error(outcome) {
        return Err(error);
    }
    if outcome != ManageOutcome::Changed {
        return Ok(StatusCode::NO_CONTENT);
    }
    let large = matches!(size, Size::JustLarge | Size::Large);
    state.hub.member_added(conversation_id, &added, large);
    let frame = match size {
        // Everyone online in it now confirms delivery rarely there, as `synced` would have
        // told them.
        Size::JustLarge => ServerFrame::Large { conversation_id },
        Size::Small(member_count) => ServerFrame::MemberAdded {
            conversation_id,
            user_id: added.clone(),
            role,
            member_count,
        },
        Size::Large | Size::Unknown => return Ok(StatusCode::NO_CONTENT),
    };
    let payload = Utf8Bytes::from(encode_server(&frame));
    // The new member has its `joined`, and hears `large` too.
    let to_new_member = matches!(frame, ServerFrame::Large { .. });
    state.hub.signal(
        conversation_id,
        |user_id| (to_new_member || *user_id != added).then(|| payload.clone()),
        Delivery::Reliable,
    );
    Ok(StatusCode::NO_CONTENT)
}

/// A group's size after a membership change, against `receipts_members_max`: what its members
/// online are told (a hint, counted after the change's commit: a failed count says nothing).
enum Size {
    /// At most the bound: this many members, told of each change.
    Small(usize),
    /// Past the bound by exactly one: an add crossed it.
    JustLarge,
    Large,
    Unknown,
}

/// Counts `conversation_id`'s members only when there are at most `members_max` of them (the
/// large ones only as far as the bound).
fn size_of(store: &dyn Store, conversation_id: ConversationId, members_max: usize) -> Size {
    match larger_than(store, conversation_id, members_max) {
        Ok(false) => store
            .conversation_info(conversation_id)
            .ok()
            .flatten()
            .map_or(Size::Unknown, |info| Size::Small(info.members.len())),
        Ok(true)
            if larger_than(store, conversation_id, members_max + 1).is_ok_and(|larger| !larger) =>
        {
            Size::JustLarge
        }
        Ok(true) => Size::Large,
        Err(_) => Size::Unknown,
    }
}

/// `DELETE /v1/conversations/{id}/members/{user_id}`
///
/// The owner and admins remove members, only the owner removes admins, anyone may remove
/// themselves, and nobody removes the owner.
#[utoipa::path(
    delete,
    path = "/v1/conversations/{id}/members/{user_id}",
    tag = "conversations",
    operation_id = "remove_member",
    summary = "Remove a member from a group",
    security(("user_token" = [])),
    params(
        ("id" = ConversationId, Path, description = "The group"),
        ("user_id" = UserId, Path, description = "The member to remove"),
    ),
    responses(
        (status = 204, description = "The user is no longer a member"),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Unavailable,
    )
)]
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
///
/// When the owner leaves, the longest-standing admin (else member) becomes the owner.
#[utoipa::path(
    post,
    path = "/v1/conversations/{id}/leave",
    tag = "conversations",
    operation_id = "leave",
    summary = "Leave a group",
    security(("user_token" = [])),
    params(("id" = ConversationId, Path, description = "The group")),
    responses(
        (status = 204, description = "The caller is no longer a member"),
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        Unavailable,
    )
)]
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
    // make another member's devices see `left`/`joined` by trying. In this conversation's turn,
    // so the members read are the ones the store then changes; the store decides again in its
    // transaction, and only a failure of the store reaches the put-back below.
    let _turn = state.membership.lock(conversation_id).await;
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
    let receipts_members_max = state.config.realtime.receipts_members_max;
    let result = blocking(&state.store, move |store| {
        let outcome = store.remove_member_as(&actor, conversation_id, &removed, may_manage)?;
        let size = if outcome == ManageOutcome::Changed {
            size_of(store, conversation_id, receipts_members_max)
        } else {
            Size::Unknown
        };
        Ok((outcome, size))
    })
    .await;
    let refused = match &result {
        Ok((outcome, _)) => manage_error(*outcome),
        Err(_) => None,
    };
    if result.is_err() || refused.is_some() {
        let large = is_large(state, conversation_id).await;
        state.hub.member_added(conversation_id, &target, large);
    }
    if let Some(error) = refused {
        return Err(error);
    }
    let (_, size) = result?;
    // Once more now that the removal is committed: a connection of the member's that listed its
    // conversations between the first call and the commit has put the group back in the hub.
    // Listings from now on no longer hold it.
    state.hub.member_removed(conversation_id, &target);
    if let Size::Small(member_count) = size {
        let payload = Utf8Bytes::from(encode_server(&ServerFrame::MemberRemoved {
            conversation_id,
            user_id: target,
            member_count,
        }));
        state.hub.signal(
            conversation_id,
            |_| Some(payload.clone()),
            Delivery::Reliable,
        );
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/conversations/{id}/messages` query. With neither `after` nor `before`, the newest
/// page.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct HistoryQuery {
    /// The messages after this seq, ascending.
    after: Option<u64>,
    /// The messages before this seq, ascending (not with `after`).
    before: Option<u64>,
    /// Page size: 1 to 500, default 100.
    limit: Option<usize>,
}

/// `GET /v1/conversations/{id}/messages`
#[utoipa::path(
    get,
    path = "/v1/conversations/{id}/messages",
    tag = "conversations",
    operation_id = "history",
    summary = "A page of a conversation's history",
    security(("user_token" = [])),
    params(("id" = ConversationId, Path, description = "The conversation"), HistoryQuery),
    responses(
        (status = 200, description = "The page, ascending by seq", body = History),
        BadRequest,
        Unauthorized,
        NotFound,
        Unavailable,
    )
)]
async fn history(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<u64>, PathRejection>,
    query: Result<Query<HistoryQuery>, QueryRejection>,
) -> Result<Json<History>, ApiError> {
    let conversation_id = conversation_id(path)?;
    let Query(query) = query?;
    let limit = page_limit(query.limit, limits::PAGE_LEN_DEFAULT, limits::PAGE_LEN_MAX)?;
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
