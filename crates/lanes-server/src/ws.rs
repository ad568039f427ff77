//! The WebSocket transport: glue between a socket, the `Connection` state machine, the hub, the
//! committer and the store. Chat rules live in `lanes_core::Connection`; this file only moves
//! frames. Catch-up closes the race with live delivery: the connection subscribes to the hub
//! first, then pages the store after its cursor, and `admit_live` drops any live frame the
//! catch-up already wrote (see ARCHITECTURE.md).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use lanes_core::{Admission, Connection, Output, Violation};
use lanes_hub::{Event, Subscription};
use lanes_protocol::codec::{decode_client, encode_server};
use lanes_protocol::{
    Content, ConversationId, ErrorCode, ErrorFrame, PresenceState, ServerFrame, UserId, limits,
};
use lanes_store::{MarkerUpdate, NewMessage};

use crate::auth::Authenticator;
use crate::committer::{CommitRequest, Origin};
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::{AppState, blocking};

/// Events taken from the hub queue per wake-up before flushing, so that under load several
/// frames share one write.
const EVENTS_PER_FLUSH_MAX: usize = 256;
/// Read buffer of a connection: most frames are a few hundred bytes; larger ones take several
/// reads. Every idle connection holds it (see docs/BENCHMARKS.md).
const READ_BUFFER_BYTES: usize = 256;
/// Bytes buffered before a write is forced (frames are flushed after each batch anyway).
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
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    if let Err(refused) = origin_allowed(&state, &headers) {
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
    upgrade
        // tungstenite's defaults (64 MiB messages, unbounded write buffer) are far above what
        // the protocol allows; a peer may make the server hold at most these.
        .max_message_size(limits::FRAME_BYTES_MAX)
        // The read buffer is allocated per connection up front (128 KiB by default): most
        // frames are a few hundred bytes, and a larger frame simply takes several reads.
        .read_buffer_size(READ_BUFFER_BYTES)
        .max_frame_size(limits::FRAME_BYTES_MAX)
        .write_buffer_size(WRITE_BUFFER_BYTES)
        .max_write_buffer_size(limits::FRAME_BYTES_MAX * 2)
        .on_upgrade(move |socket| async move {
            run(socket, state).await;
            drop(slot);
        })
}

/// Cross-site WebSocket hijacking: a browser page from another origin must not open a socket
/// with the user's cookies or stored token. Allowed: no `Origin` (not a browser), the server's
/// own origin (same host as `Host`), or one in `websocket.allowed_origins`.
fn origin_allowed(state: &AppState, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let Some(origin) = headers.get(axum::http::header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().unwrap_or_default();
    let host = headers
        .get(axum::http::header::HOST)
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
    /// A close frame was sent.
    Closed,
}

struct Session {
    state: AppState,
    sink: SplitSink<WebSocket, Message>,
    connection: Connection,
    user_id: Option<UserId>,
    subscription: Option<Subscription<Utf8Bytes>>,
    /// Conversations joined while connected, to catch up once their `joined` frame is written.
    pending_catch_up: Vec<ConversationId>,
    /// Set by `handle_authenticated`: subscribe and catch up before reading further.
    pending_sync: bool,
    write_timeout: Duration,
    /// The revocable credential the connection authenticated with (0: none).
    credential: u64,
}

async fn run(socket: WebSocket, state: AppState) {
    let (sink, stream) = socket.split();
    let config = Arc::clone(&state.connection_config);
    let state_write_timeout_ms = state.config.websocket.write_timeout_ms;
    let mut session = Session {
        connection: Connection::new(Instant::now(), config),
        state,
        sink,
        user_id: None,
        subscription: None,
        pending_catch_up: Vec::new(),
        pending_sync: false,
        credential: 0,
        write_timeout: Duration::from_millis(state_write_timeout_ms),
    };
    Metrics::add(&session.state.metrics.connections_opened, 1);
    Metrics::add(&session.state.metrics.connections_current, 1);
    let mut stream = stream;
    if let Err(End::Closed) = session.drive(&mut stream).await {
        // Finish the closing handshake: read (and drop) what the peer still sends until its
        // close frame. Closing a socket with unread data makes the kernel send a reset, which
        // can destroy our last frames (the error saying why) before the peer reads them.
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            while let Some(Ok(message)) = stream.next().await {
                if let Message::Close(_) = message {
                    break;
                }
            }
        })
        .await;
    }
    session
        .state
        .metrics
        .connections_current
        .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    if let (Some(user_id), Some(subscription)) = (&session.user_id, &session.subscription) {
        session
            .state
            .hub
            .unregister(user_id, subscription.connection_id);
        session
            .state
            .presence
            .disconnected(user_id, subscription.connection_id);
    }
}

impl Session {
    async fn drive(&mut self, stream: &mut SplitStream<WebSocket>) -> Result<(), End> {
        let mut shutdown = self.state.shutdown.clone();
        let mut shutdown_seen = *shutdown.borrow_and_update();
        if shutdown_seen {
            self.connection.handle_shutdown();
        }
        loop {
            self.flush_outputs().await?;
            if self.pending_sync {
                self.pending_sync = false;
                // Boxed: these run once per connection or join, and inlined they would make every
                // idle connection's task as large as their biggest state.
                Box::pin(self.initial_sync()).await?;
                self.connection.handle_synced();
                continue;
            }
            if let Some(conversation_id) = self.pending_catch_up.pop() {
                Box::pin(self.catch_up(conversation_id)).await?;
                continue;
            }
            if let Some(subscription) = &self.subscription
                && subscription.slow.load(std::sync::atomic::Ordering::Acquire)
            {
                self.connection.handle_slow_consumer();
                continue;
            }
            let timeout = self.connection.poll_timeout();
            let wants_read = self.connection.wants_read();
            tokio::select! {
                biased;
                // Once seen, never polled again: a dropped sender makes `changed` ready forever,
                // which would starve the events (acks) a draining connection waits for.
                _ = shutdown.changed(), if !shutdown_seen => {
                    shutdown_seen = true;
                    self.connection.handle_shutdown();
                }
                event = recv_event(&mut self.subscription) => self.handle_events(event).await?,
                frame = stream.next(), if wants_read => self.handle_socket(frame)?,
                _ = sleep_until(timeout) => self.connection.handle_timeout(Instant::now()),
            }
        }
    }

    fn handle_socket(&mut self, frame: Option<Result<Message, axum::Error>>) -> Result<(), End> {
        let now = Instant::now();
        match frame {
            None => Err(End::Socket),
            Some(Err(err)) => match websocket_error(&err) {
                Some(tungstenite::Error::Capacity(_)) => {
                    self.connection.handle_oversized(now);
                    Ok(())
                }
                Some(tungstenite::Error::Protocol(_)) => {
                    self.connection.handle_violation(now, Violation::Protocol);
                    Ok(())
                }
                Some(tungstenite::Error::Utf8(_)) => {
                    self.connection
                        .handle_violation(now, Violation::InvalidUtf8);
                    Ok(())
                }
                _ => {
                    tracing::debug!("websocket read failed: {err}");
                    Err(End::Socket)
                }
            },
            Some(Ok(Message::Text(text))) => {
                match decode_client(text.as_str()) {
                    Ok(frame) => self.connection.handle_frame(now, frame),
                    Err(err) => self.connection.handle_decode_error(now, err),
                }
                Ok(())
            }
            Some(Ok(Message::Binary(_))) => {
                self.connection.handle_binary(now);
                Ok(())
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {
                self.connection.handle_received(now);
                Ok(())
            }
            Some(Ok(Message::Close(_))) => Err(End::Closed),
        }
    }

    /// Carries out everything the state machine decided, then flushes the socket once.
    async fn flush_outputs(&mut self) -> Result<(), End> {
        self.write_outputs().await?;
        self.flush().await
    }

    /// Carries out everything the state machine decided so far, without flushing.
    async fn write_outputs(&mut self) -> Result<(), End> {
        while let Some(output) = self.connection.poll_output() {
            match output {
                Output::Write(frame) => self.feed_frame(&frame).await?,
                Output::Commit(send) => {
                    let request_id = send.client_msg_id.to_string();
                    let Some(sender_id) = self.user_id.clone() else {
                        unreachable!("Connection emits Commit only once authenticated");
                    };
                    let lost = |message: &str| {
                        Err(ErrorFrame::new(
                            ErrorCode::Internal,
                            format!("{message}; retry with the same client_msg_id"),
                            Some(request_id.clone()),
                        ))
                    };
                    // The answer comes back through this connection's hub queue, so a send is
                    // only possible once subscribed (always: sends are read after the sync).
                    let Some(origin) = self.subscription.as_ref().map(|s| s.connection_id) else {
                        self.connection.handle_committed(lost("not subscribed yet"));
                        continue;
                    };
                    if let Err(limited) = self.state.rate_limits.send(&sender_id) {
                        let error = limited.into_frame(Some(request_id.clone()));
                        self.connection.handle_committed(Err(error));
                        continue;
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
                    // Waits when the committer is saturated: backpressure, not an error.
                    if self.state.commits.send(request).await.is_err() {
                        self.connection
                            .handle_committed(lost("the server is stopping"));
                        self.connection.handle_shutdown();
                    }
                }
                Output::Ping => self.feed(Message::Ping(Default::default())).await?,
                Output::Close { code, reason } => {
                    let frame = CloseFrame {
                        code,
                        reason: Utf8Bytes::from_static(reason),
                    };
                    let _ = self.feed(Message::Close(Some(frame))).await;
                    let _ = self.flush().await;
                    return Err(End::Closed);
                }
                control => Box::pin(self.handle_control(control)).await?,
            }
        }
        Ok(())
    }

    /// The outputs that are rare (authentication, receipts, typing, presence): boxed, so that
    /// their locals do not make every idle connection's task larger.
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
                        self.feed_frame(&ServerFrame::Error(limited.into_frame(None)))
                            .await?;
                        let close = CloseFrame {
                            code: 1008,
                            reason: Utf8Bytes::from_static("too many connections"),
                        };
                        let _ = self.feed(Message::Close(Some(close))).await;
                        let _ = self.flush().await;
                        return Err(End::Closed);
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
                    Err(err) => self.connection.handle_auth_rejected(err.message),
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
                    self.feed_frame(&ServerFrame::Error(limited.into_frame(None)))
                        .await?;
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
                    self.feed_frame(&ServerFrame::Error(error)).await?;
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
                self.feed_frame(&frame).await?;
            }
            Output::Write(_) | Output::Commit(_) | Output::Ping | Output::Close { .. } => {
                unreachable!("handled in write_outputs")
            }
        }
        Ok(())
    }

    async fn feed(&mut self, message: Message) -> Result<(), End> {
        let write_timeout = self.write_timeout;
        let result = tokio::time::timeout(write_timeout, self.sink.feed(message)).await;
        self.guard_write(result)
    }

    async fn flush(&mut self) -> Result<(), End> {
        let write_timeout = self.write_timeout;
        let result = tokio::time::timeout(write_timeout, self.sink.flush()).await;
        self.guard_write(result)
    }

    /// A peer that stops reading blocks our writes; past the write timeout it is dropped (its
    /// queue in the hub is bounded meanwhile) and resumes from its cursor when it reconnects.
    fn guard_write(
        &self,
        result: Result<Result<(), axum::Error>, tokio::time::error::Elapsed>,
    ) -> Result<(), End> {
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Socket),
            Err(_) => {
                Metrics::add(&self.state.metrics.write_timeouts, 1);
                tracing::debug!("dropping a connection whose writes stalled");
                Err(End::Socket)
            }
        }
    }

    async fn feed_frame(&mut self, frame: &ServerFrame) -> Result<(), End> {
        self.feed(Message::Text(Utf8Bytes::from(encode_server(frame))))
            .await
    }

    /// Subscribes to the hub, then catches up every conversation from the client's cursor.
    async fn initial_sync(&mut self) -> Result<(), End> {
        let Some(user_id) = self.user_id.clone() else {
            return Ok(());
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
        let listing = match crate::subscribe::listing(&self.state, &user_id, version, true).await {
            Ok(listing) => listing,
            Err(err) => return self.fail(err.code, err.message).await,
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
            self.feed_frame(&frame).await?;
        }
        Ok(())
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
                Err(err) => return self.fail(err.code, err.message).await,
            };
            let full = page.len() == limits::PAGE_LEN_MAX;
            for message in page {
                if self
                    .connection
                    .admit_caught_up(conversation_id, message.seq)
                {
                    self.feed_frame(&ServerFrame::Message(message)).await?;
                }
            }
            self.flush().await?;
            if !full {
                return Ok(());
            }
        }
    }

    /// Tells the client the server failed and closes with 1011; it reconnects and resumes.
    async fn fail(&mut self, code: ErrorCode, message: String) -> Result<(), End> {
        let frame = ServerFrame::Error(ErrorFrame::new(code, message, None));
        self.feed_frame(&frame).await?;
        let close = CloseFrame {
            code: 1011,
            reason: Utf8Bytes::from_static("server error"),
        };
        let _ = self.feed(Message::Close(Some(close))).await;
        let _ = self.flush().await;
        Err(End::Closed)
    }

    async fn handle_events(&mut self, first: Option<Event<Utf8Bytes>>) -> Result<(), End> {
        let mut next = first;
        for _ in 0..EVENTS_PER_FLUSH_MAX {
            // None: the hub dropped our queue, which only happens to slow consumers (checked on
            // the next turn of the loop).
            let Some(event) = next.take() else {
                break;
            };
            self.handle_event(event).await?;
            if !self.pending_catch_up.is_empty() {
                // The joined frame must be written before its catch-up: stop here.
                break;
            }
            next = self
                .subscription
                .as_mut()
                .and_then(|subscription| subscription.receiver.try_recv());
        }
        Ok(())
    }

    async fn handle_event(&mut self, event: Event<Utf8Bytes>) -> Result<(), End> {
        match event {
            Event::Message {
                conversation_id,
                seq,
                payload,
            } => {
                match self.connection.admit_live(conversation_id, seq) {
                    Admission::Write => self.feed(Message::Text(payload)).await?,
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
            Event::Joined(conversation_id) => {
                self.connection.handle_joined(conversation_id);
                self.pending_catch_up.push(conversation_id);
            }
            Event::Left(conversation_id) => self.connection.handle_left(conversation_id),
            Event::Revoked => self.connection.handle_revoked(),
            Event::Signal(payload) => self.feed(Message::Text(payload)).await?,
            Event::Committed(outcome) => {
                // Written now, between the frames queued before and after it: the ack takes its
                // message's place in the conversation's order.
                self.connection.handle_committed(outcome);
                self.write_outputs().await?;
            }
        }
        Ok(())
    }
}

async fn recv_event(
    subscription: &mut Option<Subscription<Utf8Bytes>>,
) -> Option<Event<Utf8Bytes>> {
    match subscription {
        Some(subscription) => subscription.receiver.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline.into()).await,
        None => std::future::pending().await,
    }
}

/// The tungstenite error behind an axum WebSocket error, if there is one.
fn websocket_error(err: &axum::Error) -> Option<&tungstenite::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(current) = source {
        if let Some(found) = current.downcast_ref::<tungstenite::Error>() {
            return Some(found);
        }
        source = current.source();
    }
    None
}
