//! The WebSocket transport: glue between a socket, the `Connection` state machine, the hub, the
//! committer and the store. Chat rules live in `lanes_core::Connection`; this file only moves
//! frames (framed by `wire.rs` on the raw upgraded stream). Catch-up closes the race with live delivery: the connection subscribes to the hub
//! first, then pages the store after its cursor, and `admit_live` drops any live frame the
//! catch-up already wrote (see ARCHITECTURE.md).

use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::mpsc::error::TrySendError;

use axum::extract::ws::Utf8Bytes;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper_util::rt::TokioIo;
use lanes_core::{Admission, Connection, Output, ValidSend, Violation};
use lanes_hub::{Event, Subscription};
use lanes_protocol::codec::{decode_client, encode_server};
use lanes_protocol::{
    ClientMsgId, Content, ConversationId, ErrorCode, ErrorFrame, PresenceState, ServerFrame,
    UserId, limits,
};
use lanes_store::{MarkerUpdate, NewMessage};

use crate::auth::Authenticator;
use crate::committer::{CommitRequest, Origin};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::wire::{Incoming, Wire, WireError};
use crate::{AppState, blocking};

/// Events taken from the hub queue per wake-up before flushing, so that under load several
/// frames share one write.
const EVENTS_PER_FLUSH_MAX: usize = 256;
/// Bytes queued before a batch of events stops to flush (frames are flushed after each batch
/// anyway).
const WRITE_BUFFER_BYTES: usize = 16 * 1024;
/// How long a closing connection waits for the peer's close frame.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// `GET /v1/ws`
///
/// Upgrades to a WebSocket speaking the frames of docs/PROTOCOL.md (text frames, JSON, tagged by
/// `type`). It authenticates with its first frame, `hello`, so it needs no header.
#[utoipa::path(
    get,
    path = "/v1/ws",
    tag = "events",
    operation_id = "websocket",
    summary = "Open a WebSocket",
    responses(
        (status = 101, description = "Switching protocols: the WebSocket is open; send `hello`"),
        (status = 400, description = "Not a WebSocket upgrade request (a plain-text body)"),
        (status = 429, description = "Too many connects from this address", body = lanes_protocol::http::ErrorBody),
    )
)]
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    mut request: Request,
) -> Response {
    let headers = request.headers();
    let accept = match accept_key(headers) {
        Ok(accept) => accept,
        Err(why) => {
            let body = format!("not a WebSocket upgrade request: {why}");
            return (StatusCode::BAD_REQUEST, body).into_response();
        }
    };
    if let Err(refused) = origin_allowed(&state, headers) {
        return refused.into_response();
    }
    if let Err(limited) = state.rate_limits.connect(peer.ip()) {
        return limited.into_response();
    }
    let Some(slot) = IpSlot::take(&state, peer.ip()) else {
        return ApiError::rate_limited(
            "open connections from this address",
            Duration::from_secs(1),
        )
        .into_response();
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(err) => return tracing::debug!("websocket upgrade failed: {err}"),
        };
        // Plain TCP (the usual case) is served on the socket itself; TLS through hyper's
        // wrapper. Either way frames are read and written by `Wire`, holding no buffers while
        // idle. Each connection then runs in a task of its own, as small as its future.
        match hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(upgraded) {
            Ok(parts) => {
                let wire = Wire::new(
                    parts.io.into_inner(),
                    &parts.read_buf,
                    limits::FRAME_BYTES_MAX,
                );
                // May be a slice of hyper's whole read buffer: not kept while the socket lives.
                drop(parts.read_buf);
                tokio::spawn(run(Session::new(wire, state, slot)));
            }
            Err(upgraded) => {
                let wire = Wire::new(TokioIo::new(upgraded), &[], limits::FRAME_BYTES_MAX);
                tokio::spawn(run(Session::new(wire, state, slot)));
            }
        }
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let response_headers = response.headers_mut();
    response_headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    response_headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    response_headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// The `Sec-WebSocket-Accept` answering a valid upgrade request (RFC 6455 §4.2.1), or why the
/// request is not one.
fn accept_key(headers: &HeaderMap) -> Result<HeaderValue, &'static str> {
    let has_token = |name: HeaderName, token: &str| {
        headers.get_all(name).iter().any(|value| {
            value.to_str().is_ok_and(|value| {
                value
                    .split(',')
                    .any(|item| item.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    if !has_token(header::CONNECTION, "upgrade") {
        return Err("the Connection header must include `upgrade`");
    }
    if !has_token(header::UPGRADE, "websocket") {
        return Err("the Upgrade header must be `websocket`");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err("the Sec-WebSocket-Version header must be 13");
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("the Sec-WebSocket-Key header is missing")?;
    HeaderValue::from_str(&tungstenite::handshake::derive_accept_key(key.as_bytes()))
        .map_err(|_| "the Sec-WebSocket-Key header is invalid")
}

/// Cross-site WebSocket hijacking: a browser page from another origin must not open a socket
/// with the user's cookies or stored token. Allowed: no `Origin` (not a browser), the server's
/// own origin (same host as `Host`), or one in `websocket.allowed_origins`.
fn origin_allowed(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .unwrap_or_default();
    let own = ["http://", "https://"]
        .iter()
        .any(|scheme| origin.strip_prefix(scheme) == Some(host) && !host.is_empty());
    let allowed = &state.config.websocket.allowed_origins;
    if own || allowed.iter().any(|entry| entry == "*" || entry == origin) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            "this origin may not open WebSockets here (websocket.allowed_origins)",
        ))
    }
}

/// One of an address's allowed open connections, given back on drop. Held by every
/// connection's task for its whole life, so it keeps only the table, not the whole state.
struct IpSlot {
    open: OpenByIp,
    ip: std::net::IpAddr,
}

/// Open connections per address.
type OpenByIp = Arc<std::sync::Mutex<std::collections::HashMap<std::net::IpAddr, usize>>>;

impl IpSlot {
    fn take(state: &AppState, ip: std::net::IpAddr) -> Option<IpSlot> {
        let mut open = state
            .connections_by_ip
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = open.entry(ip).or_insert(0);
        if *count >= state.config.websocket.connections_per_ip_max {
            return None;
        }
        *count += 1;
        Some(IpSlot {
            open: Arc::clone(&state.connections_by_ip),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self
            .open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Why a session ended early.
enum End {
    /// The socket failed or the peer went away.
    Socket,
    /// A close frame is queued: write it, then wait for the peer's.
    Closed,
    /// The peer closed and our answer is queued: write it and stop.
    PeerClosed,
}

struct Session<S> {
    /// Given back when the session ends.
    _slot: IpSlot,
    state: AppState,
    wire: Wire<S>,
    connection: Connection,
    user_id: Option<UserId>,
    subscription: Option<Subscription<Utf8Bytes>>,
    /// Conversations joined while connected, to catch up once their `joined` frame is written.
    pending_catch_up: Vec<ConversationId>,
    /// Set by `handle_authenticated`: subscribe and catch up before reading further.
    pending_sync: bool,
    /// Until the connection registers with the hub: its wait on the shutdown signal.
    shutdown_wait: Option<ShutdownWait>,
    /// The revocable credential the connection authenticated with (0: none).
    credential: u64,
    /// The last wake was a turn of hub events: the socket and the timer are looked at first on
    /// the next one.
    events_last: bool,
}

impl<S> Session<S> {
    fn new(wire: Wire<S>, state: AppState, slot: IpSlot) -> Session<S> {
        Session {
            _slot: slot,
            connection: Connection::new(Instant::now(), Arc::clone(&state.connection_config)),
            state,
            wire,
            user_id: None,
            subscription: None,
            pending_catch_up: Vec::new(),
            pending_sync: false,
            shutdown_wait: None,
            credential: 0,
            events_last: false,
        }
    }

    /// The connection is gone: it leaves the hub and presence.
    fn ended(&self) {
        self.state
            .metrics
            .connections_current
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let (Some(user_id), Some(subscription)) = (&self.user_id, &self.subscription) {
            let connection_id = subscription.connection_id;
            self.state.hub.unregister(user_id, connection_id);
            self.state.presence.disconnected(user_id, connection_id);
        }
    }
}

/// Serves one connection. Not an `async fn`: one moves its arguments from the future's captures
/// into locals, holding the session twice for the connection's whole life; an `async` block
/// uses what it captured in place.
#[allow(clippy::manual_async_fn)]
fn run<S: AsyncRead + AsyncWrite + Unpin + Send>(
    mut session: Session<S>,
) -> impl Future<Output = ()> + Send {
    async move {
        Metrics::add(&session.state.metrics.connections_opened, 1);
        Metrics::add(&session.state.metrics.connections_current, 1);
        let ended = session.drive().await;
        // Boxed: once per connection, and inlined it would make every connection's task larger.
        Box::pin(session.close_handshake(ended)).await;
        session.ended();
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<S> {
    /// Writes what is queued when the session ended with a close frame; after ours, reads (and
    /// drops) what the peer still sends until its close frame. Closing a socket with unread
    /// data makes the kernel send a reset, which can destroy our last frames (the error saying
    /// why) before the peer reads them.
    async fn close_handshake(&mut self, ended: Result<(), End>) {
        match ended {
            Err(End::Closed) => {
                let _ = self.flush().await;
                let _ = tokio::time::timeout(CLOSE_LINGER, async {
                    while let Ok(incoming) = self.wire.next().await {
                        if incoming == Incoming::Close {
                            break;
                        }
                    }
                })
                .await;
            }
            Err(End::PeerClosed) => {
                let _ = self.flush().await;
            }
            Ok(()) | Err(End::Socket) => {}
        }
    }

    async fn drive(&mut self) -> Result<(), End> {
        // Until it registers with the hub, a connection waits on the shutdown signal itself
        // (boxed, released at registration); registered, it hears `Event::ShuttingDown`.
        if *self.state.shutdown.borrow() {
            self.connection.handle_shutdown();
        } else {
            // A change after the check above still wakes it: the clone has not seen it.
            let mut shutdown = self.state.shutdown.clone();
            self.shutdown_wait = Some(Box::pin(async move {
                // An error (the sender gone) means stopping too.
                let _ = shutdown.changed().await;
            }));
        }
        // One timer for the connection's life, moved only when its deadline moves (mostly once
        // per ping interval): a new one per wake-up added and removed a timer-wheel entry for
        // every message (`clear_entry` in profiles).
        let mut sleep = std::pin::pin!(None::<tokio::time::Sleep>);
        loop {
            self.write_outputs().await?;
            // Not flushed before the initial sync or a catch-up: `welcome` then leaves in one
            // write with `synced` (a second write and read per connect cost both sides more
            // than the sync itself), and a catch-up flushes each page it writes.
            if self.pending_sync {
                self.pending_sync = false;
                // Boxed: these run once per connection or join, and inlined they would make every
                // idle connection's task as large as their biggest state.
                let large = Box::pin(self.initial_sync()).await?;
                self.connection.handle_synced(large);
                // Registered now: a shutdown from here on arrives through the hub, and one
                // signalled before the registration is seen here (the flag is set before the
                // hub is told).
                self.shutdown_wait = None;
                if *self.state.shutdown.borrow() {
                    self.connection.handle_shutdown();
                }
                continue;
            }
            if let Some(conversation_id) = self.pending_catch_up.pop() {
                Box::pin(self.catch_up(conversation_id)).await?;
                continue;
            }
            self.flush().await?;
            if let Some(subscription) = &self.subscription
                && subscription.slow.load(std::sync::atomic::Ordering::Acquire)
            {
                self.connection.handle_slow_consumer();
                continue;
            }
            let waiting = {
                let wants_read = self.connection.wants_read();
                let deadline = self.connection.poll_timeout();
                if let Some(deadline) = deadline.map(tokio::time::Instant::from) {
                    match sleep.as_mut().as_pin_mut() {
                        Some(timer) if timer.deadline() == deadline => {}
                        Some(timer) => timer.reset(deadline),
                        None => sleep.set(Some(tokio::time::sleep_until(deadline))),
                    }
                }
                let mut timer = deadline.and(sleep.as_mut().as_pin_mut());
                // One hand-written poll rather than `select!`: its waiting state is what every
                // idle connection holds, and this keeps it to a few pointers.
                let wake =
                    std::future::poll_fn(|cx| self.poll_wake(cx, wants_read, timer.as_mut())).await;
                self.handle_wake(wake)?
            };
            // Awaited outside the block, so neither the `Wake` nor the `Waiting` is kept across
            // the wait: only the boxed future is.
            let finish = waiting.map(|waiting| Box::pin(self.finish(waiting)));
            if let Some(finish) = finish {
                finish.await?;
            }
        }
    }

    /// Handles what woke the connection; an output that has to wait, if one does.
    fn handle_wake(&mut self, wake: Wake) -> Result<Option<Waiting>, End> {
        match wake {
            Wake::ShuttingDown => {
                // Dropped once seen: a dropped sender makes its wait ready forever, which
                // would starve the events (acks) a draining connection waits for.
                self.shutdown_wait = None;
                self.connection.handle_shutdown();
            }
            Wake::Events(event) => {
                self.events_last = true;
                return self.handle_events(event);
            }
            Wake::Incoming(incoming) => self.handle_incoming(incoming)?,
            Wake::Timeout => self.connection.handle_timeout(Instant::now()),
        }
        self.events_last = false;
        Ok(None)
    }

    /// What woke the connection, in order of priority: shutdown, hub events (acks first of
    /// all), the socket, the timer; but after a turn of events the socket and the timer come
    /// first, so that a connection a loud group keeps busy still reads its client's frames
    /// (its sends, pings, close) and keeps its timeouts.
    fn poll_wake(
        &mut self,
        cx: &mut std::task::Context<'_>,
        wants_read: bool,
        timer: Option<&mut std::pin::Pin<&mut tokio::time::Sleep>>,
    ) -> Poll<Wake> {
        if let Some(wait) = &mut self.shutdown_wait
            && wait.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Wake::ShuttingDown);
        }
        if !self.events_last
            && let Poll::Ready(event) = self.poll_events(cx)
        {
            return Poll::Ready(Wake::Events(event));
        }
        if wants_read && let Poll::Ready(incoming) = self.wire.poll_next(cx) {
            return Poll::Ready(Wake::Incoming(incoming));
        }
        if let Some(timer) = timer
            && timer.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Wake::Timeout);
        }
        if self.events_last
            && let Poll::Ready(event) = self.poll_events(cx)
        {
            return Poll::Ready(Wake::Events(event));
        }
        Poll::Pending
    }

    /// The next hub event, once subscribed.
    fn poll_events(&mut self, cx: &mut std::task::Context<'_>) -> Poll<Option<Event<Utf8Bytes>>> {
        match &mut self.subscription {
            Some(subscription) => subscription.receiver.poll_recv(cx),
            None => Poll::Pending,
        }
    }

    fn handle_incoming(&mut self, incoming: Result<Incoming, WireError>) -> Result<(), End> {
        let now = Instant::now();
        match incoming {
            Ok(Incoming::Text(text)) => match decode_client(&text) {
                Ok(frame) => self.connection.handle_frame(now, frame),
                Err(err) => self.connection.handle_decode_error(now, err),
            },
            Ok(Incoming::Binary) => self.connection.handle_binary(now),
            // A ping's pong is queued by the wire and written with the next flush.
            Ok(Incoming::Ping | Incoming::Pong) => self.connection.handle_received(now),
            Ok(Incoming::Close) => {
                // The peer closes: answer in kind and stop.
                self.wire.feed_close(1000, "");
                return Err(End::PeerClosed);
            }
            Err(WireError::TooLarge) => self.connection.handle_oversized(now),
            Err(WireError::Protocol) => self.connection.handle_violation(now, Violation::Protocol),
            Err(WireError::InvalidUtf8) => {
                self.connection
                    .handle_violation(now, Violation::InvalidUtf8);
            }
            Err(WireError::Gone) => return Err(End::Socket),
        }
        Ok(())
    }

    /// Carries out everything the state machine decided so far, without flushing. What may wait
    /// is done in a boxed future: rare, and inlined it would make every idle connection's
    /// future as large as its biggest state.
    async fn write_outputs(&mut self) -> Result<(), End> {
        loop {
            // Only the boxed future is kept across the await, not the `Waiting`.
            let Some(waiting) = self.write_ready_outputs()? else {
                return Ok(());
            };
            let finish = Box::pin(self.finish(waiting));
            finish.await?;
        }
    }

    /// Carries out the outputs that need no waiting, up to the first one that does.
    fn write_ready_outputs(&mut self) -> Result<Option<Waiting>, End> {
        while let Some(output) = self.connection.poll_output() {
            match output {
                Output::Write(frame) => self.feed_frame(&frame),
                Output::Commit(send) => {
                    if let Some(request) = self.commit(send) {
                        return Ok(Some(Waiting::Commit(request)));
                    }
                }
                Output::Ping => self.wire.feed_ping(),
                Output::Close { code, reason } => return Err(self.close(code, reason)),
                control => return Ok(Some(Waiting::Control(control))),
            }
        }
        Ok(None)
    }

    /// Hands a send to the committer; the request back if its queue is full.
    fn commit(&mut self, send: ValidSend) -> Option<CommitRequest> {
        let Some(sender_id) = self.user_id.clone() else {
            unreachable!("Connection emits Commit only once authenticated");
        };
        // The answer comes back through this connection's hub queue, so a send is only
        // possible once subscribed (always: sends are read after the sync).
        let Some(origin) = self.subscription.as_ref().map(|s| s.connection_id) else {
            let error = lost(
                ErrorCode::Internal,
                &send.client_msg_id,
                "not subscribed yet",
            );
            self.connection.handle_committed(Err(error));
            return None;
        };
        if let Err(limited) = self.state.rate_limits.send(&sender_id) {
            let error = limited.into_frame(Some(send.client_msg_id.to_string()));
            self.connection.handle_committed(Err(error));
            return None;
        }
        if let Content::Message { .. } = send.content {
            // Sending ends typing; the stop goes out before the message is stored.
            self.state.typing.stop(&sender_id, send.conversation_id);
        }
        let request = CommitRequest {
            message: NewMessage {
                sender_id,
                client_msg_id: send.client_msg_id,
                conversation_id: send.conversation_id,
                content: send.content,
            },
            origin: Origin::Connection(origin),
        };
        match self.state.commits.try_send(request) {
            Ok(()) => None,
            Err(TrySendError::Full(request)) => Some(request),
            Err(TrySendError::Closed(request)) => {
                self.stopping(&request);
                None
            }
        }
    }

    /// The server stops: the send was not taken, and the connection drains.
    fn stopping(&mut self, request: &CommitRequest) {
        let error = lost(
            ErrorCode::ShuttingDown,
            &request.message.client_msg_id,
            "the server is stopping",
        );
        self.connection.handle_committed(Err(error));
        self.connection.handle_shutdown();
    }

    async fn finish(&mut self, waiting: Waiting) -> Result<(), End> {
        match waiting {
            // Waits while the committer is saturated: backpressure, not an error.
            Waiting::Commit(request) => {
                if let Err(refused) = self.state.commits.send(request).await {
                    self.stopping(&refused.0);
                }
                Ok(())
            }
            Waiting::Control(output) => self.handle_control(output).await,
        }
    }

    /// The outputs that are rare: authentication, receipts, typing, presence.
    async fn handle_control(&mut self, output: Output) -> Result<(), End> {
        match output {
            Output::Authenticate { token } => {
                match Box::pin(self.state.auth.authenticate_until(&token)).await {
                    Ok((user_id, _))
                        if self.state.hub.connections_of(&user_id)
                            >= self.state.config.websocket.connections_per_user_max =>
                    {
                        let limited = ApiError::rate_limited(
                            "open connections for this user",
                            Duration::from_secs(1),
                        );
                        self.feed_frame(&ServerFrame::Error(limited.into_frame(None)));
                        return Err(self.close(1008, "too many connections"));
                    }
                    Ok((user_id, expires_at)) => {
                        self.credential = Authenticator::credential(&token);
                        let left = expires_at.0.saturating_sub(crate::now_millis().0);
                        let left = Duration::from_millis(u64::try_from(left).unwrap_or(0));
                        self.connection.set_expiry(Instant::now() + left);
                        self.user_id = Some(user_id.clone());
                        self.connection.handle_authenticated(user_id);
                        self.pending_sync = true;
                    }
                    Err(err) if err.code == ErrorCode::Unauthorized => {
                        self.connection.handle_auth_rejected(err.message);
                    }
                    // The store failed to look the token up: not a refusal of the token (which
                    // clients take as final); the client reconnects and says hello again.
                    Err(err) => return self.fail(err.code, err.message),
                }
            }
            Output::Marker {
                conversation_id,
                delivered,
                read,
            } => {
                let Some(user_id) = self.user_id.clone() else {
                    unreachable!("Connection emits Marker only once authenticated");
                };
                if let Err(limited) = self.state.rate_limits.receipt(&user_id) {
                    self.feed_frame(&ServerFrame::Error(limited.into_frame(None)));
                    return Ok(());
                }
                let update = MarkerUpdate {
                    conversation_id,
                    user_id,
                    delivered,
                    read,
                };
                // Waits when the writer is saturated; fails only when the server stops.
                let _ = self.state.receipts.send(update).await;
            }
            Output::Typing {
                conversation_id,
                state,
            } => {
                let Some(user_id) = &self.user_id else {
                    unreachable!("Connection emits Typing only once authenticated");
                };
                if let Err(error) = self.state.typing.update(user_id, conversation_id, state) {
                    self.feed_frame(&ServerFrame::Error(error));
                }
            }
            Output::Presence(presence) => {
                if let (Some(user_id), Some(subscription)) = (&self.user_id, &self.subscription) {
                    self.state.presence.set_away(
                        user_id,
                        subscription.connection_id,
                        presence == PresenceState::Away,
                    );
                }
            }
            Output::WatchPresence(user_ids) => {
                let (Some(user_id), Some(connection_id)) = (
                    self.user_id.clone(),
                    self.subscription.as_ref().map(|s| s.connection_id),
                ) else {
                    return Ok(());
                };
                let presence = Arc::clone(&self.state.presence);
                let frame = match Box::pin(presence.watch(&user_id, connection_id, user_ids)).await
                {
                    Ok(frame) => frame,
                    Err(err) => ServerFrame::Error(ErrorFrame::new(err.code, err.message, None)),
                };
                self.feed_frame(&frame);
            }
            Output::Write(_) | Output::Commit(_) | Output::Ping | Output::Close { .. } => {
                unreachable!("handled in write_outputs")
            }
        }
        Ok(())
    }

    /// Writes what is queued. Waiting for a slow socket is rare, so it is boxed: inlined, its
    /// timer would make every connection's future larger.
    async fn flush(&mut self) -> Result<(), End> {
        match self.wire.try_flush() {
            Ok(true) => Ok(()),
            Ok(false) => Box::pin(self.flush_waiting()).await,
            Err(_) => Err(End::Socket),
        }
    }

    /// A peer that stops reading blocks our writes; past the write timeout it is dropped (its
    /// queue in the hub is bounded meanwhile) and resumes from its cursor when it reconnects.
    async fn flush_waiting(&mut self) -> Result<(), End> {
        let write_timeout = Duration::from_millis(self.state.config.websocket.write_timeout_ms);
        match tokio::time::timeout(write_timeout, self.wire.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Socket),
            Err(_) => {
                Metrics::add(&self.state.metrics.write_timeouts, 1);
                tracing::debug!("dropping a connection whose writes stalled");
                Err(End::Socket)
            }
        }
    }

    /// Queues a frame, written with the next flush (after the batch it belongs to). Queuing
    /// never waits, so the futures of the paths that write stay small.
    fn feed_frame(&mut self, frame: &ServerFrame) {
        self.wire.feed_text(encode_server(frame).as_bytes());
    }

    /// Queues a close frame: `run` writes it and waits for the peer's.
    fn close(&mut self, code: u16, reason: &str) -> End {
        self.wire.feed_close(code, reason);
        End::Closed
    }

    /// Subscribes to the hub, then catches up every conversation from the client's cursor;
    /// returns the conversations over `receipts_members_max` members (see `Listing`).
    async fn initial_sync(&mut self) -> Result<Vec<ConversationId>, End> {
        let Some(user_id) = self.user_id.clone() else {
            return Ok(Vec::new());
        };
        let subscription = self
            .state
            .hub
            .register_with_credential(&user_id, self.credential);
        self.state
            .presence
            .connected(&user_id, subscription.connection_id);
        let version = subscription.version;
        self.subscription = Some(subscription);
        let listing = match crate::subscribe::listing(
            &self.state,
            &user_id,
            version,
            crate::subscribe::Extra::ReceiptsAndLarge,
        )
        .await
        {
            Ok(listing) => listing,
            Err(err) => return self.fail(err.code, err.message).map(|()| Vec::new()),
        };
        for (conversation_id, head) in listing.heads {
            if self.connection.delivered(conversation_id) < head {
                self.catch_up(conversation_id).await?;
            }
        }
        // Every member's receipt positions, after catch-up: a reconnecting sender sees where its
        // messages stand (read with the heads; later changes come through the hub).
        for chunk in listing
            .receipts
            .chunk_by(|a, b| a.conversation_id == b.conversation_id)
        {
            let frame = crate::receipts::frame(chunk[0].conversation_id, chunk, Some(&user_id));
            self.feed_frame(&frame);
        }
        Ok(listing.large)
    }

    /// Writes every stored message of `conversation_id` after what the client holds, in pages.
    async fn catch_up(&mut self, conversation_id: ConversationId) -> Result<(), End> {
        let Some(user_id) = self.user_id.clone() else {
            return Ok(());
        };
        loop {
            let after = self.connection.delivered(conversation_id);
            let viewer = user_id.clone();
            let page = blocking(&self.state.store, move |store| {
                store.messages_after(&viewer, conversation_id, after, limits::PAGE_LEN_MAX)
            })
            .await;
            let page = match page {
                // No longer a member: nothing more to send; `left` follows from the hub.
                Ok(None) => return Ok(()),
                Ok(Some(page)) => page,
                Err(err) => return self.fail(err.code, err.message),
            };
            let full = page.len() == limits::PAGE_LEN_MAX;
            for message in page {
                if self
                    .connection
                    .admit_caught_up(conversation_id, message.seq)
                {
                    self.feed_frame(&ServerFrame::Message(message));
                    // A page of large messages is tens of megabytes: written as it goes, it is
                    // never held whole for a peer that reads slowly or not at all.
                    if self.wire.buffered() >= WRITE_BUFFER_BYTES {
                        self.flush().await?;
                    }
                }
            }
            self.flush().await?;
            if !full {
                return Ok(());
            }
        }
    }

    /// Tells the client the server failed and closes with 1011; it reconnects and resumes.
    fn fail(&mut self, code: ErrorCode, message: String) -> Result<(), End> {
        let frame = ServerFrame::Error(ErrorFrame::new(code, message, None));
        self.feed_frame(&frame);
        Err(self.close(1011, "server error"))
    }

    /// Takes up to `EVENTS_PER_FLUSH_MAX` queued events, stopping early at an output that has
    /// to wait (returned; the rest of the outputs follow it on the next turn).
    fn handle_events(&mut self, first: Option<Event<Utf8Bytes>>) -> Result<Option<Waiting>, End> {
        let mut next = first;
        for _ in 0..EVENTS_PER_FLUSH_MAX {
            // None: the hub dropped our queue, which only happens to slow consumers (checked on
            // the next turn of the loop).
            let Some(event) = next.take() else {
                break;
            };
            if let Some(waiting) = self.handle_event(event)? {
                return Ok(Some(waiting));
            }
            if !self.pending_catch_up.is_empty() || self.wire.buffered() >= WRITE_BUFFER_BYTES {
                // The joined frame must be written before its catch-up, and a full buffer
                // before more is queued: stop here (the loop flushes).
                break;
            }
            next = self
                .subscription
                .as_mut()
                .and_then(|subscription| subscription.receiver.try_recv());
        }
        Ok(None)
    }

    fn handle_event(&mut self, event: Event<Utf8Bytes>) -> Result<Option<Waiting>, End> {
        match event {
            Event::Message {
                conversation_id,
                seq,
                payload,
            } => {
                match self.connection.admit_live(conversation_id, seq) {
                    Admission::Write => self.wire.feed_text(payload.as_bytes()),
                    Admission::Duplicate => {}
                    Admission::Gap => {
                        // The store has what is missing on this connection: read it rather than
                        // skip it (the frame itself is then read back from there).
                        if !self.pending_catch_up.contains(&conversation_id) {
                            self.pending_catch_up.push(conversation_id);
                        }
                    }
                }
            }
            Event::Joined {
                conversation_id,
                large,
            } => {
                self.connection.handle_joined(conversation_id, large);
                self.pending_catch_up.push(conversation_id);
            }
            Event::Left(conversation_id) => self.connection.handle_left(conversation_id),
            Event::Revoked => self.connection.handle_revoked(),
            Event::ShuttingDown => self.connection.handle_shutdown(),
            Event::Signal(payload) => self.wire.feed_text(payload.as_bytes()),
            Event::Committed(outcome) => {
                // Written now, between the frames queued before and after it: the ack takes its
                // message's place in the conversation's order.
                self.connection.handle_committed(*outcome);
                return self.write_ready_outputs();
            }
        }
        Ok(None)
    }
}

/// What woke a waiting connection (see `Session::poll_wake`).
enum Wake {
    ShuttingDown,
    /// `None`: the hub dropped the queue (a slow consumer).
    Events(Option<Event<Utf8Bytes>>),
    Incoming(Result<Incoming, WireError>),
    Timeout,
}

type ShutdownWait = std::pin::Pin<Box<dyn Future<Output = ()> + Send>>;

/// An output that may have to wait (see `Session::write_outputs`).
enum Waiting {
    /// The committer's queue is full.
    Commit(CommitRequest),
    /// Authentication, receipts, typing, presence.
    Control(Output),
}

/// The answer to a send the server could not take; the client retries it.
fn lost(code: ErrorCode, client_msg_id: &ClientMsgId, why: &str) -> ErrorFrame {
    ErrorFrame::new(
        code,
        format!("{why}; retry with the same client_msg_id"),
        Some(client_msg_id.to_string()),
    )
}
