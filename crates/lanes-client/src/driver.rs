//! The background task behind a `Client`: one WebSocket at a time, reconnecting with backoff,
//! until the app closes it or a reconnect is refused as `unauthorized`. Thin glue: `Delivery`,
//! `PendingSends` and `ReconnectBackoff` decide; this module reads, writes, sleeps and spawns
//! history fetches.
//!
//! Bounds: commands and events are bounded channels. Events wait in `outbox` until the app takes
//! them; while it holds `OUTBOX_READ_PAUSE_LEN` or more, the socket is not read, so the outbox is
//! bounded by that plus what one input can release (a history page plus the lanes' buffers).
//! At most one history fetch runs per conversation.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use lanes_protocol::codec::{decode_server, encode_client};
use lanes_protocol::http::{EventsPage, History, PollRequest};
use lanes_protocol::limits::{HELLO_CURSORS_MAX, INFLIGHT_SENDS_MAX, PAGE_LEN_MAX};
use lanes_protocol::{
    AckFrame, ClientFrame, ClientMsgId, Content, ConversationId, Cursor, ErrorCode, ErrorFrame,
    Seq, ServerFrame, StoreEpoch, UserId, UserPresence,
};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinError, JoinSet};
use tokio::time::{Instant, Sleep, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async_with_config};
use tracing::{debug, info, warn};

use crate::backoff::{Backoff, ReconnectBackoff};
use crate::client::{Event, Transport};
use crate::delivery::{Delivery, DeliveryOutput, Fetch};
use crate::error::{ClientError, error_chain};
use crate::http_api::HttpApi;
use crate::pace::Unconfirmed;
use crate::pending::{Acked, ErrorMatch, PendingSends, PendingSettings, Responder};

/// How long one long poll waits for events.
const POLL_TIMEOUT_MS: u64 = 25_000;
/// Longest wait from starting a connect to its `welcome`.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often we send a `ping` frame, so the server's idle timer (60 s) never fires.
const PING_INTERVAL: Duration = Duration::from_secs(20);
/// Nothing read for this long (the server pings every 20 s) means the connection is dead.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest a write may block (the server not reading) before the connection counts as dead.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for the close handshake when the app closes.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);
/// Events waiting for the app above which the socket is not read.
const OUTBOX_READ_PAUSE_LEN: usize = 1024;
/// Out-of-order message frames kept while a gap is fetched, across conversations.
pub(crate) const BUFFERED_FRAMES_MAX: usize = 10_000;
/// Capacity of the command channel from `Client` handles.
pub(crate) const COMMANDS_LEN_MAX: usize = 256;
/// Capacity of the event channel to `Events`.
pub(crate) const EVENTS_LEN_MAX: usize = 1024;

/// The WebSocket type.
pub(crate) type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;
/// Where a send's outcome goes.
pub(crate) type AckResponder = oneshot::Sender<Result<AckFrame, ClientError>>;
type Handshake = Pin<Box<dyn Future<Output = Result<(Welcomed, bool), ClientError>> + Send>>;
type PollRequestFuture = Pin<Box<dyn Future<Output = Result<EventsPage, ClientError>> + Send>>;
type Fetched = (Fetch, Result<History, ClientError>);

/// What `Client` handles ask of the task.
pub(crate) enum Command {
    Send {
        client_msg_id: ClientMsgId,
        conversation_id: ConversationId,
        content: Content,
        responder: AckResponder,
    },
    /// A frame with no answer (read, typing, presence): written if connected, else dropped.
    Signal(ClientFrame),
    /// Users whose presence to follow; sent again after every reconnect.
    Watch(Vec<UserId>),
    Close {
        done: oneshot::Sender<()>,
    },
}

/// Everything the task needs to know besides its state.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) ws_url: String,
    pub(crate) token: String,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) ack_timeout: Duration,
    /// Confirm receipt of every message delivered to us (`received` frames).
    pub(crate) auto_receipts: bool,
    /// At most one batch of `received` frames per interval (see `ClientConfig`).
    pub(crate) receipts_interval: Duration,
    /// The same in conversations the server calls large.
    pub(crate) receipts_interval_large: Duration,
    /// While long-polling, how often watched users' presence is asked for.
    pub(crate) presence_poll_interval: Duration,
    /// Which transport to use.
    pub(crate) transport: Transport,
}

/// How a welcomed connection carries frames.
pub(crate) enum Channel {
    /// A WebSocket.
    WebSocket(Box<WsStream>),
    /// Long-polling over HTTP; the first poll's page (the catch-up) is still to be handled.
    Poll(Box<EventsPage>),
}

/// A connection that got its `welcome` (for long-polling: its first page).
pub(crate) struct Welcomed {
    channel: Channel,
    pub(crate) user_id: UserId,
    pub(crate) epoch: StoreEpoch,
    receipts_members_max: usize,
}

/// Marks a WebSocket handshake answered by HTTP without an upgrade (a proxy or network that
/// blocks WebSockets), after which `Transport::Auto` falls back to long-polling.
const UPGRADE_REFUSED: &str = "websocket upgrade refused";

/// One connect attempt with the transport in use (`polling`); with `Transport::Auto`, a
/// refused upgrade falls back to long-polling. Returns the welcome and whether it is a poll.
pub(crate) async fn connect_once(
    settings: Settings,
    http: HttpApi,
    cursors: Vec<Cursor>,
    epoch: Option<StoreEpoch>,
    polling: bool,
) -> Result<(Welcomed, bool), ClientError> {
    if !polling {
        let hello = hello_text(&settings.token, cursors.clone(), epoch.clone());
        match handshake(settings.ws_url.clone(), hello).await {
            Err(ClientError::Transport(reason))
                if settings.transport == Transport::Auto && reason.starts_with(UPGRADE_REFUSED) =>
            {
                info!(%reason, "falling back to long-polling");
            }
            other => return other.map(|welcomed| (welcomed, false)),
        }
    }
    let request = PollRequest {
        cursors: hello_cursors(cursors, HELLO_CURSORS_MAX),
        epoch,
        timeout_ms: Some(0),
        presence: None,
        sync: true,
    };
    let page = match timeout(HANDSHAKE_TIMEOUT, http.poll(&request)).await {
        Ok(page) => page?,
        Err(_) => {
            return Err(ClientError::Transport(format!(
                "no first poll answer within {HANDSHAKE_TIMEOUT:?}"
            )));
        }
    };
    let welcomed = Welcomed {
        user_id: page.user_id.clone(),
        epoch: page.epoch.clone(),
        receipts_members_max: page.receipts_members_max,
        channel: Channel::Poll(Box::new(page)),
    };
    Ok((welcomed, true))
}

/// `http://host` -> `ws://host/v1/ws`, `https://` -> `wss://`; `ws://` and `wss://` are kept.
pub(crate) fn ws_url(base_url: &str) -> String {
    let base_url = base_url.trim_end_matches('/');
    let base_url = if let Some(rest) = base_url.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base_url.strip_prefix("https://") {
        format!("wss://{rest}")
    } else {
        base_url.to_owned()
    };
    format!("{base_url}/v1/ws")
}

impl Responder for AckResponder {
    fn is_abandoned(&self) -> bool {
        self.is_closed()
    }
}

/// The `hello` frame as text, with at most `HELLO_CURSORS_MAX` cursors (see [`hello_cursors`]).
pub(crate) fn hello_text(token: &str, cursors: Vec<Cursor>, epoch: Option<StoreEpoch>) -> String {
    encode_client(&ClientFrame::Hello {
        token: token.to_owned(),
        cursors: hello_cursors(cursors, HELLO_CURSORS_MAX),
        epoch,
    })
}

/// The cursors a `hello` carries, by conversation id: all of them, or when there are more than
/// `cursors_max`, the `cursors_max` with the highest seqs. The server catches a conversation
/// without a cursor up from seq 0, and `Delivery` (which keeps every cursor) drops the replayed
/// seqs as duplicates: correct, only costly, and leaving out the lowest seqs costs the fewest
/// replayed messages. Ties are broken by conversation id, so the choice is deterministic.
pub(crate) fn hello_cursors(mut cursors: Vec<Cursor>, cursors_max: usize) -> Vec<Cursor> {
    if cursors.len() > cursors_max {
        cursors
            .sort_unstable_by_key(|cursor| (std::cmp::Reverse(cursor.seq), cursor.conversation_id));
        cursors.truncate(cursors_max);
    }
    cursors.sort_unstable_by_key(|cursor| cursor.conversation_id);
    cursors
}

/// Whether a refused reconnect ends the client. `unauthorized` means the token expired or was
/// revoked: retrying with it can never succeed, and pending sends would wait forever.
/// Other refusals (`rate_limited`, `shutting_down`, …) are retried with backoff.
fn refusal_is_final(code: ErrorCode) -> bool {
    code == ErrorCode::Unauthorized
}

/// Connects, says `hello` and waits for `welcome`, all within `HANDSHAKE_TIMEOUT`. An `error`
/// frame before the welcome (such as `unauthorized`) ends the attempt with that error.
pub(crate) async fn handshake(url: String, hello: String) -> Result<Welcomed, ClientError> {
    match timeout(HANDSHAKE_TIMEOUT, handshake_untimed(&url, hello)).await {
        Ok(result) => result,
        Err(_) => Err(ClientError::Transport(format!(
            "no welcome from {url} within {HANDSHAKE_TIMEOUT:?}"
        ))),
    }
}

async fn handshake_untimed(url: &str, hello: String) -> Result<Welcomed, ClientError> {
    // Small buffers: tungstenite's default read buffer is 128 KiB per connection, allocated up
    // front, which an application holding many clients would pay for nothing. The frame limit
    // matches the server's.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(lanes_protocol::limits::FRAME_BYTES_MAX))
        .max_frame_size(Some(lanes_protocol::limits::FRAME_BYTES_MAX));
    let (mut ws, _) = connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|err| match &err {
            tokio_tungstenite::tungstenite::Error::Http(response) => {
                ClientError::Transport(format!("{UPGRADE_REFUSED}: HTTP {}", response.status()))
            }
            _ => ClientError::Transport(error_chain(&err)),
        })?;
    ws.send(Message::text(hello))
        .await
        .map_err(|err| ClientError::Transport(error_chain(&err)))?;
    loop {
        let message = match ws.next().await {
            Some(Ok(message)) => message,
            Some(Err(err)) => return Err(ClientError::Transport(error_chain(&err))),
            None => return Err(ClientError::Transport("closed before welcome".into())),
        };
        let text = match message {
            Message::Text(text) => text,
            Message::Close(frame) => {
                return Err(ClientError::Transport(format!(
                    "closed before welcome: {}",
                    close_reason(frame.as_ref())
                )));
            }
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {
                continue;
            }
        };
        match decode_server(text.as_str()) {
            Ok(ServerFrame::Welcome {
                user_id,
                epoch,
                receipts_members_max,
            }) => {
                return Ok(Welcomed {
                    channel: Channel::WebSocket(Box::new(ws)),
                    user_id,
                    epoch,
                    receipts_members_max,
                });
            }
            Ok(ServerFrame::Error(error)) => {
                return Err(ClientError::Api {
                    status: 0,
                    code: error.code,
                    message: error.message,
                });
            }
            Ok(frame) => debug!(?frame, "ignoring a frame before welcome"),
            Err(err) => {
                return Err(ClientError::Protocol(format!(
                    "undecodable frame before welcome: {err}"
                )));
            }
        }
    }
}

fn close_reason(frame: Option<&tokio_tungstenite::tungstenite::protocol::CloseFrame>) -> String {
    match frame {
        Some(frame) => format!("close {} {}", u16::from(frame.code), frame.reason.as_str()),
        None => "close without code".into(),
    }
}

/// An open connection.
struct Up {
    ws: WsStream,
    last_read: Instant,
    next_ping: Instant,
}

/// Where the connection is.
enum Link {
    /// Backing off before the next attempt.
    Waiting(Pin<Box<Sleep>>),
    /// Connecting, up to the welcome.
    Handshaking(Handshake),
    /// Welcomed: frames flow.
    Up(Box<Up>),
    /// Long-polling: one poll open at a time.
    Polling(Box<Polling>),
}

/// The open long poll.
struct Polling {
    request: PollRequestFuture,
    /// `Event::Synced` was given for this connection.
    synced: bool,
}

/// What happened on the link.
enum LinkStep {
    BackoffDone,
    Handshake(Box<Result<(Welcomed, bool), ClientError>>),
    Read(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Polled(Box<Result<EventsPage, ClientError>>),
}

async fn link_step(link: &mut Link, read_allowed: bool) -> LinkStep {
    match link {
        Link::Waiting(sleep) => {
            sleep.as_mut().await;
            LinkStep::BackoffDone
        }
        Link::Handshaking(handshake) => LinkStep::Handshake(Box::new(handshake.as_mut().await)),
        Link::Up(up) if read_allowed => LinkStep::Read(up.ws.next().await),
        Link::Polling(polling) if read_allowed => {
            LinkStep::Polled(Box::new(polling.request.as_mut().await))
        }
        Link::Up(_) | Link::Polling(_) => std::future::pending().await,
    }
}

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn now_std() -> std::time::Instant {
    Instant::now().into_std()
}

/// The task's state; [`Driver::run`] is the task.
pub(crate) struct Driver {
    settings: Settings,
    http: HttpApi,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    /// False once `Events` is dropped: events are then discarded.
    events_open: bool,
    outbox: VecDeque<Event>,
    delivery: Delivery,
    pending: PendingSends<AckResponder>,
    /// Who we are, as the last `welcome` said: the sender of the messages made from our acks.
    user_id: UserId,
    backoff: ReconnectBackoff,
    fetches: JoinSet<Fetched>,
    link: Link,
    /// Set when a reconnect was refused for good: the task answers what is left and ends.
    refusal: Option<ErrorFrame>,
    /// Frames without an answer, written on the next turn if connected.
    signals: Vec<ClientFrame>,
    /// Presence subscription, sent again after every reconnect.
    watching: Option<Vec<UserId>>,
    /// While long-polling (nothing pushes presence): what the last answer said of each watched
    /// user, so only changes become events, and when to ask again.
    polled_presence: HashMap<UserId, UserPresence>,
    presence_poll_at: Option<Instant>,
    /// Per conversation, the highest seq received on this connection not yet confirmed, and
    /// when it may go.
    unconfirmed: Unconfirmed,
    /// Long-polling instead of a WebSocket (chosen, or fallen back to).
    polling: bool,
    /// Frames written over HTTP while long-polling, answered as frames.
    http_writes: JoinSet<HttpWritten>,
}

/// The answer to a frame written over HTTP.
enum HttpWritten {
    /// Handle it as if the server had sent it.
    Frame(ServerFrame),
    /// Nothing to handle.
    Nothing,
    /// The connection failed: the outcome is unknown.
    Lost(String),
    /// Watched users' presence, asked for over HTTP (`None`: the request failed).
    Presence(Option<Vec<UserPresence>>),
}

impl Driver {
    /// A driver on a connection that was just welcomed.
    pub(crate) fn new(
        settings: Settings,
        http: HttpApi,
        delivery: Delivery,
        welcomed: Welcomed,
        polling: bool,
        commands: mpsc::Receiver<Command>,
        events: mpsc::Sender<Event>,
    ) -> Driver {
        let pending = PendingSends::new(PendingSettings {
            ack_timeout: settings.ack_timeout,
            backoff_base: settings.backoff_base,
            backoff_max: settings.backoff_max,
            in_flight_max: INFLIGHT_SENDS_MAX,
        });
        let backoff = ReconnectBackoff::new(settings.backoff_base, settings.backoff_max);
        let unconfirmed =
            Unconfirmed::new(settings.receipts_interval, settings.receipts_interval_large);
        let mut driver = Driver {
            settings,
            http,
            commands,
            events,
            events_open: true,
            outbox: VecDeque::new(),
            delivery,
            pending,
            user_id: welcomed.user_id.clone(),
            backoff,
            fetches: JoinSet::new(),
            link: Link::Waiting(Box::pin(sleep(Duration::ZERO))),
            refusal: None,
            signals: Vec::new(),
            watching: None,
            polled_presence: HashMap::new(),
            presence_poll_at: None,
            unconfirmed,
            polling,
            http_writes: JoinSet::new(),
        };
        driver.on_welcome(welcomed);
        driver
    }

    /// Runs until the app closes the client or drops every `Client` handle, or a reconnect is
    /// refused for good.
    pub(crate) async fn run(mut self) {
        loop {
            if let Some(refusal) = self.refusal.take() {
                self.stop(refusal).await;
                return;
            }
            match timeout(WRITE_TIMEOUT, self.write_pending()).await {
                Ok(Ok(())) => {}
                Ok(Err(reason)) => self.lose(reason),
                Err(_) => self.lose(format!("a write took longer than {WRITE_TIMEOUT:?}")),
            }
            let read_allowed = self.outbox.len() < OUTBOX_READ_PAUSE_LEN;
            // While the app is behind, time-outs wait too: acks sit unread in the socket.
            // (Right after such a pause, an expired ack deadline may still cost a reconnect.)
            let deadline = if read_allowed { self.deadline() } else { None };
            tokio::select! {
                command = self.commands.recv() => match command {
                    Some(Command::Send { client_msg_id, conversation_id, content, responder }) => {
                        self.pending.insert(client_msg_id, conversation_id, content, responder);
                    }
                    Some(Command::Signal(frame)) => {
                        if self.connected() {
                            // A read position implies receipt: a waiting `received` at or
                            // below it would say nothing new.
                            if let ClientFrame::Read { conversation_id, seq } = &frame {
                                self.unconfirmed.read(*conversation_id, *seq);
                            }
                            self.signals.push(frame);
                        }
                    }
                    Some(Command::Watch(user_ids)) => {
                        self.polled_presence.clear();
                        if self.connected() {
                            self.signals.push(ClientFrame::WatchPresence { user_ids: user_ids.clone() });
                        }
                        self.watching = Some(user_ids);
                    }
                    Some(Command::Close { done }) => {
                        self.shutdown().await;
                        let _ = done.send(());
                        return;
                    }
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                // An owned permit, so that the handlers below may borrow `self` again.
                permit = self.events.clone().reserve_owned(), if !self.outbox.is_empty() => match permit {
                    Ok(permit) => {
                        if let Some(event) = self.outbox.pop_front() {
                            permit.send(event);
                        }
                    }
                    Err(_) => {
                        self.events_open = false;
                        self.outbox.clear();
                    }
                },
                step = link_step(&mut self.link, read_allowed) => self.on_link_step(step),
                Some(fetched) = self.fetches.join_next(), if !self.fetches.is_empty() => {
                    self.on_fetched(fetched);
                }
                Some(written) = self.http_writes.join_next(), if !self.http_writes.is_empty() => {
                    match written {
                        Ok(HttpWritten::Frame(frame)) => self.on_frame(frame),
                        Ok(HttpWritten::Presence(users)) => self.on_polled_presence(users),
                        Ok(HttpWritten::Nothing) => {}
                        Ok(HttpWritten::Lost(reason)) => self.lose(reason),
                        Err(err) => debug!(%err, "an HTTP write task ended early"),
                    }
                }
                () = sleep_until_some(deadline) => self.on_timeout(),
            }
        }
    }

    fn push_event(&mut self, event: Event) {
        if self.events_open {
            self.outbox.push_back(event);
        }
    }

    fn connected(&self) -> bool {
        matches!(self.link, Link::Up(_) | Link::Polling(_))
    }

    /// Writes the sends that may go now, and a ping when one is due.
    async fn write_pending(&mut self) -> Result<(), String> {
        if !self.connected() {
            return Ok(());
        }
        let receipts = self
            .due_receipts()
            .into_iter()
            .map(|(conversation_id, seq)| ClientFrame::Received {
                conversation_id,
                seq,
            });
        let signals: Vec<ClientFrame> = self.signals.drain(..).chain(receipts).collect();
        if matches!(self.link, Link::Polling(_)) {
            let now = now_std();
            let sends = std::iter::from_fn(|| self.pending.poll_write(now)).collect::<Vec<_>>();
            for frame in signals.into_iter().chain(sends) {
                self.http_writes
                    .spawn(write_over_http(self.http.clone(), frame));
            }
            return Ok(());
        }
        let Link::Up(up) = &mut self.link else {
            return Ok(());
        };
        let now = Instant::now();
        let mut wrote = false;
        for frame in signals {
            up.ws
                .feed(Message::text(encode_client(&frame)))
                .await
                .map_err(|err| format!("write failed: {}", error_chain(&err)))?;
            wrote = true;
        }
        while let Some(frame) = self.pending.poll_write(now.into_std()) {
            up.ws
                .feed(Message::text(encode_client(&frame)))
                .await
                .map_err(|err| format!("write failed: {}", error_chain(&err)))?;
            wrote = true;
        }
        if now >= up.next_ping {
            let ping = ClientFrame::Ping { request_id: None };
            up.ws
                .feed(Message::text(encode_client(&ping)))
                .await
                .map_err(|err| format!("write failed: {}", error_chain(&err)))?;
            up.next_ping = now + PING_INTERVAL;
            wrote = true;
        }
        if wrote {
            up.ws
                .flush()
                .await
                .map_err(|err| format!("write failed: {}", error_chain(&err)))?;
        }
        Ok(())
    }

    /// The positions to confirm now, one per conversation (see `Unconfirmed`).
    fn due_receipts(&mut self) -> Vec<(ConversationId, Seq)> {
        self.unconfirmed.take_due(now_std(), rand::random())
    }

    /// When the waiting positions may be confirmed, if any wait.
    fn receipts_due(&self) -> Option<Instant> {
        self.unconfirmed.due(now_std()).map(Instant::from_std)
    }

    fn deadline(&self) -> Option<Instant> {
        let pending = self.pending.poll_timeout().map(Instant::from_std);
        let link = match &self.link {
            Link::Up(up) => Some((up.last_read + IDLE_TIMEOUT).min(up.next_ping)),
            Link::Waiting(_) | Link::Handshaking(_) | Link::Polling(_) => None,
        };
        let receipts = self.receipts_due().filter(|_| self.connected());
        let presence = self.presence_poll_at.filter(|_| self.polling());
        [pending, link, receipts, presence]
            .into_iter()
            .flatten()
            .min()
    }

    fn polling(&self) -> bool {
        matches!(self.link, Link::Polling(_))
    }

    /// An answer to `GET /v1/presence` while long-polling (`None`: it failed): the users whose
    /// presence changed become an event (all of them after a new watch), and the next poll is
    /// due an interval later.
    fn on_polled_presence(&mut self, users: Option<Vec<UserPresence>>) {
        let changed: Vec<UserPresence> = users
            .unwrap_or_default()
            .into_iter()
            .filter(|user| self.polled_presence.get(&user.user_id) != Some(user))
            .collect();
        for user in &changed {
            self.polled_presence
                .insert(user.user_id.clone(), user.clone());
        }
        if !changed.is_empty() {
            self.push_event(Event::Presence(changed));
        }
        self.presence_poll_at = Some(Instant::now() + self.settings.presence_poll_interval);
    }

    fn on_timeout(&mut self) {
        let now = Instant::now();
        if self.polling()
            && self.presence_poll_at.is_some_and(|at| at <= now)
            && let Some(user_ids) = &self.watching
        {
            // Asked again over HTTP; the answer sets the next time.
            self.presence_poll_at = None;
            self.signals.push(ClientFrame::WatchPresence {
                user_ids: user_ids.clone(),
            });
        }
        if self.pending.handle_timeout(now.into_std()) {
            self.lose(format!(
                "a send got no ack within {:?}",
                self.settings.ack_timeout
            ));
            return;
        }
        let idle = matches!(&self.link, Link::Up(up) if now >= up.last_read + IDLE_TIMEOUT);
        if idle {
            self.lose(format!("nothing received for {IDLE_TIMEOUT:?}"));
        }
    }

    /// The connection (or an attempt) is over: back off, then try again.
    fn lose(&mut self, reason: String) {
        // Answers to writes of the lost connection are unknown outcomes: sends are written again.
        self.http_writes.abort_all();
        if self.connected() {
            info!(%reason, "disconnected; reconnecting");
            self.pending.handle_disconnected();
            // Positions are only valid on the connection that received them; the next one
            // receives (and confirms) them again.
            self.signals.clear();
            self.unconfirmed.reset();
            self.presence_poll_at = None;
            self.push_event(Event::Disconnected { reason });
        } else {
            debug!(%reason, "connect attempt failed");
        }
        let delay = self.backoff.next_delay(now_std(), rand::random::<f64>());
        self.link = Link::Waiting(Box::pin(sleep(delay)));
    }

    fn on_welcome(&mut self, welcomed: Welcomed) {
        let Welcomed {
            channel,
            user_id,
            epoch,
            receipts_members_max,
        } = welcomed;
        if self.delivery.handle_welcome(epoch.clone()) {
            info!(epoch = %epoch.0, "store epoch changed; cursors reset");
            self.fetches.abort_all();
        }
        self.pending.handle_connected();
        self.backoff.handle_welcome(now_std());
        self.user_id = user_id.clone();
        self.push_event(Event::Connected {
            user_id,
            epoch,
            receipts_members_max,
        });
        if let Some(user_ids) = &self.watching {
            self.polled_presence.clear();
            self.signals.push(ClientFrame::WatchPresence {
                user_ids: user_ids.clone(),
            });
        }
        match channel {
            Channel::WebSocket(ws) => {
                let now = Instant::now();
                self.link = Link::Up(Box::new(Up {
                    ws: *ws,
                    last_read: now,
                    next_ping: now + PING_INTERVAL,
                }));
            }
            Channel::Poll(mut page) => {
                self.link = Link::Polling(Box::new(Polling {
                    request: Box::pin(std::future::pending()),
                    synced: false,
                }));
                // The first poll asked which conversations are large (`synced`'s list).
                self.unconfirmed.set_large(std::mem::take(&mut page.large));
                self.on_polled(*page);
            }
        }
    }

    /// A long poll answered: its events, as if a WebSocket had delivered them, then the next
    /// poll from the cursors we now hold.
    fn on_polled(&mut self, page: EventsPage) {
        if self.delivery.epoch() != Some(&page.epoch) {
            // The store changed between polls: start over like a reconnect does.
            self.lose("the server's store epoch changed".into());
            return;
        }
        let complete = page.events.len() < PAGE_LEN_MAX;
        for event in page.events {
            self.on_frame(event);
        }
        let request = PollRequest {
            cursors: hello_cursors(self.delivery.cursors(), HELLO_CURSORS_MAX),
            epoch: self.delivery.epoch().cloned(),
            timeout_ms: Some(POLL_TIMEOUT_MS),
            presence: None,
            sync: false,
        };
        let http = self.http.clone();
        let mut synced_now = false;
        if let Link::Polling(polling) = &mut self.link {
            polling.request = Box::pin(async move { http.poll(&request).await });
            if complete && !polling.synced {
                polling.synced = true;
                synced_now = true;
            }
        }
        if synced_now {
            self.push_event(Event::Synced);
        }
    }

    fn on_link_step(&mut self, step: LinkStep) {
        match step {
            LinkStep::BackoffDone => {
                self.link = Link::Handshaking(Box::pin(connect_once(
                    self.settings.clone(),
                    self.http.clone(),
                    self.delivery.cursors(),
                    self.delivery.epoch().cloned(),
                    self.polling,
                )));
            }
            LinkStep::Handshake(result) => match *result {
                Ok((welcomed, polling)) => {
                    self.polling = polling;
                    self.on_welcome(welcomed);
                }
                Err(err) => self.on_refused(err),
            },
            LinkStep::Polled(result) => match *result {
                Ok(page) => self.on_polled(page),
                Err(err) => self.lose(err.to_string()),
            },
            LinkStep::Read(None) => self.lose("connection closed".into()),
            LinkStep::Read(Some(Err(err))) => self.lose(error_chain(&err)),
            LinkStep::Read(Some(Ok(message))) => self.on_message(message),
        }
    }

    /// A connect attempt failed; an `error` frame from the server is also an event for the app.
    /// A final refusal stops the task (in [`Driver::run`]) instead of backing off.
    fn on_refused(&mut self, err: ClientError) {
        if let ClientError::Api { code, message, .. } = &err {
            warn!(%err, "connect refused");
            let refusal = ErrorFrame {
                code: *code,
                message: message.clone(),
                request_id: None,
                retry_after_ms: None,
            };
            if refusal_is_final(*code) {
                self.refusal = Some(refusal);
                return;
            }
            self.push_event(Event::ServerError(refusal));
        }
        self.lose(err.to_string());
    }

    fn on_message(&mut self, message: Message) {
        if let Link::Up(up) = &mut self.link {
            up.last_read = Instant::now();
        }
        match message {
            Message::Text(text) => match decode_server(text.as_str()) {
                Ok(frame) => self.on_frame(frame),
                // Unknown frame types from a newer server are skipped; a skipped message
                // shows up as a gap and is fetched.
                Err(err) => warn!(%err, "ignoring an undecodable frame"),
            },
            Message::Close(frame) => {
                self.lose(format!(
                    "closed by server: {}",
                    close_reason(frame.as_ref())
                ));
            }
            Message::Binary(_) => warn!("ignoring a binary frame"),
            // tungstenite answers pings itself on the next read or write.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    fn on_frame(&mut self, frame: ServerFrame) {
        match frame {
            ServerFrame::Welcome { .. } => debug!("ignoring a second welcome"),
            ServerFrame::Synced { large } => {
                self.unconfirmed.set_large(large);
                self.push_event(Event::Synced);
            }
            ServerFrame::Message(message) => {
                if self.settings.auto_receipts && message.sender_id != self.user_id {
                    self.unconfirmed
                        .received(message.conversation_id, message.seq);
                }
                self.delivery.handle_message(message);
                self.drain_delivery();
            }
            ServerFrame::Receipts {
                conversation_id,
                receipts,
            } => self.push_event(Event::Receipts {
                conversation_id,
                receipts,
            }),
            ServerFrame::Typing {
                conversation_id,
                user_id,
                state,
            } => self.push_event(Event::Typing {
                conversation_id,
                user_id,
                state,
            }),
            ServerFrame::Presence { users } => self.push_event(Event::Presence(users)),
            // The ack is also the delivery of our own message to this connection.
            ServerFrame::Ack(ack) => {
                match self.pending.handle_ack(&ack, &self.user_id) {
                    Some(Acked {
                        responders,
                        message,
                    }) => {
                        for responder in responders {
                            let _ = responder.send(Ok(ack.clone()));
                        }
                        self.delivery.handle_message(message);
                    }
                    None => {
                        debug!(seq = ack.seq.0, "an ack for no pending send");
                        self.delivery
                            .handle_stored_seq(ack.conversation_id, ack.seq);
                    }
                }
                self.drain_delivery();
            }
            ServerFrame::Joined {
                conversation_id,
                large,
            } => {
                if large {
                    self.unconfirmed.add_large(conversation_id);
                }
                self.push_event(Event::Joined(conversation_id));
            }
            ServerFrame::Large { conversation_id } => self.unconfirmed.add_large(conversation_id),
            // Sent only in groups within `receipts_members_max`: one that was large is not.
            ServerFrame::MemberAdded {
                conversation_id,
                user_id,
                role,
                member_count,
            } => {
                self.unconfirmed.remove_large(conversation_id);
                self.push_event(Event::MemberAdded {
                    conversation_id,
                    user_id,
                    role,
                    member_count,
                });
            }
            ServerFrame::MemberRemoved {
                conversation_id,
                user_id,
                member_count,
            } => {
                self.unconfirmed.remove_large(conversation_id);
                self.push_event(Event::MemberRemoved {
                    conversation_id,
                    user_id,
                    member_count,
                });
            }
            ServerFrame::Left { conversation_id } => {
                self.delivery.handle_left(conversation_id);
                self.drain_delivery();
                self.push_event(Event::Left(conversation_id));
            }
            ServerFrame::Pong { .. } => {}
            ServerFrame::Error(error) => {
                match self
                    .pending
                    .handle_error(&error, now_std(), rand::random::<f64>())
                {
                    ErrorMatch::Unrelated => self.push_event(Event::ServerError(error)),
                    ErrorMatch::Retrying => {
                        debug!(code = error.code.as_str(), "send will be retried");
                    }
                    ErrorMatch::Failed(responders) => {
                        for responder in responders {
                            let _ = responder.send(Err(ClientError::Api {
                                status: 0,
                                code: error.code,
                                message: error.message.clone(),
                            }));
                        }
                    }
                }
            }
        }
    }

    fn drain_delivery(&mut self) {
        while let Some(output) = self.delivery.poll_output() {
            match output {
                DeliveryOutput::Deliver(message) => self.push_event(Event::Message(message)),
                DeliveryOutput::Fetch(fetch) => {
                    debug!(
                        conversation_id = fetch.conversation_id.0,
                        after = fetch.after.0,
                        "fetching history to fill a gap"
                    );
                    self.fetches.spawn(fetch_history(
                        self.http.clone(),
                        fetch,
                        Backoff::new(self.settings.backoff_base, self.settings.backoff_max),
                    ));
                }
            }
        }
    }

    fn on_fetched(&mut self, fetched: Result<Fetched, JoinError>) {
        match fetched {
            Ok((fetch, Ok(history))) => self.delivery.handle_history(&fetch, Some(history)),
            Ok((fetch, Err(err))) => {
                warn!(conversation_id = fetch.conversation_id.0, %err, "history fetch failed");
                self.delivery.handle_history(&fetch, None);
            }
            // Aborted after an epoch change: its lane is gone.
            Err(err) if err.is_cancelled() => {}
            Err(err) => warn!(%err, "history fetch task failed"),
        }
        self.drain_delivery();
    }

    /// A reconnect was refused for good: every pending send, and every send still in the
    /// command channel, fails with the refusal; the app gets its events, the refusal last, and
    /// then `None`. Later sends fail with `ClientError::Closed`.
    async fn stop(mut self, refusal: ErrorFrame) {
        let failed = |refusal: &ErrorFrame| {
            Err(ClientError::Api {
                status: 0,
                code: refusal.code,
                message: refusal.message.clone(),
            })
        };
        for responder in self.pending.drain() {
            let _ = responder.send(failed(&refusal));
        }
        self.fetches.abort_all();
        // Closing first makes the channel finite: what was queued is still received.
        self.commands.close();
        while let Some(command) = self.commands.recv().await {
            match command {
                Command::Send { responder, .. } => {
                    let _ = responder.send(failed(&refusal));
                }
                Command::Signal(_) | Command::Watch(_) => {}
                Command::Close { done } => {
                    let _ = done.send(());
                }
            }
        }
        self.push_event(Event::ServerError(refusal));
        // Dropping `self.events` afterwards is what ends `Events`. This waits for the app to
        // take the events, or to drop `Events`.
        while let Some(event) = self.outbox.pop_front() {
            if self.events.send(event).await.is_err() {
                break;
            }
        }
    }

    async fn shutdown(&mut self) {
        for responder in self.pending.drain() {
            let _ = responder.send(Err(ClientError::Closed));
        }
        self.fetches.abort_all();
        if let Link::Up(up) = &mut self.link {
            let _ = timeout(CLOSE_TIMEOUT, up.ws.close(None)).await;
        }
    }
}

/// Writes one frame over HTTP (long-polling) and turns the answer into the frame a WebSocket
/// would have carried: a lane event's ack or error.
async fn write_over_http(http: HttpApi, frame: ClientFrame) -> HttpWritten {
    let (client_msg_id, conversation_id, content) = match frame.into_lane_event() {
        Ok(event) => event,
        Err(signal) => {
            let done = match signal {
                ClientFrame::Received {
                    conversation_id,
                    seq,
                } => http.mark(conversation_id, seq, false).await,
                ClientFrame::Read {
                    conversation_id,
                    seq,
                } => http.mark(conversation_id, seq, true).await,
                ClientFrame::Typing {
                    conversation_id,
                    state,
                } => http.set_typing(conversation_id, state).await,
                ClientFrame::Presence { state } => http.set_presence(state).await,
                ClientFrame::WatchPresence { user_ids } => {
                    // Not pushed to long-polling clients: asked for now and then instead.
                    let users = if user_ids.is_empty() {
                        Ok(Vec::new())
                    } else {
                        http.presence(&user_ids).await
                    };
                    if let Err(err) = &users {
                        debug!(%err, "asking for presence over HTTP failed");
                    }
                    return HttpWritten::Presence(users.ok());
                }
                _ => Ok(()),
            };
            if let Err(err) = done {
                debug!(%err, "a signal over HTTP failed");
            }
            return HttpWritten::Nothing;
        }
    };
    let request_id = Some(client_msg_id.to_string());
    match http.append(conversation_id, client_msg_id, content).await {
        Ok(ack) => HttpWritten::Frame(ServerFrame::Ack(ack)),
        Err(ClientError::Api { code, message, .. }) => {
            HttpWritten::Frame(ServerFrame::Error(ErrorFrame {
                code,
                message,
                request_id,
                retry_after_ms: None,
            }))
        }
        Err(err) => HttpWritten::Lost(format!("a send over HTTP failed: {err}")),
    }
}

/// Fetches one history page, retrying retryable failures with backoff; a definite failure is
/// returned for `Delivery` to give up on the gap.
async fn fetch_history(http: HttpApi, fetch: Fetch, mut backoff: Backoff) -> Fetched {
    loop {
        match http
            .history_after(fetch.conversation_id, fetch.after, PAGE_LEN_MAX)
            .await
        {
            Ok(history) => return (fetch, Ok(history)),
            Err(err) if err.is_retryable() => {
                debug!(%err, "history fetch failed; retrying");
                sleep(backoff.next_delay(rand::random::<f64>())).await;
            }
            Err(err) => return (fetch, Err(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lanes_protocol::Seq;

    fn check(base_url: &str, expected: &str) {
        assert_eq!(ws_url(base_url), expected, "{base_url}");
    }

    #[test]
    fn websocket_urls() {
        check("http://127.0.0.1:8080", "ws://127.0.0.1:8080/v1/ws");
        check("http://h:1/", "ws://h:1/v1/ws");
        check(
            "https://chat.example/lanes",
            "wss://chat.example/lanes/v1/ws",
        );
        check("ws://h:1", "ws://h:1/v1/ws");
    }

    #[test]
    fn hello_frame() {
        let cursors = vec![Cursor {
            conversation_id: ConversationId(12),
            seq: lanes_protocol::Seq(40),
        }];
        assert_eq!(
            hello_text("lt_x", cursors, Some(StoreEpoch("3f1c".into()))),
            r#"{"type":"hello","token":"lt_x","cursors":[{"conversation_id":12,"seq":40}],"epoch":"3f1c"}"#
        );
        assert_eq!(
            hello_text("lt_x", vec![], None),
            r#"{"type":"hello","token":"lt_x","cursors":[],"epoch":null}"#
        );
    }

    fn cursors(pairs: &[(u64, u64)]) -> Vec<Cursor> {
        pairs
            .iter()
            .map(|&(conversation, seq)| Cursor {
                conversation_id: ConversationId(conversation),
                seq: Seq(seq),
            })
            .collect()
    }

    fn check_hello_cursors(all: &[(u64, u64)], cursors_max: usize, expected: &[(u64, u64)]) {
        assert_eq!(
            hello_cursors(cursors(all), cursors_max),
            cursors(expected),
            "{all:?} at most {cursors_max}"
        );
    }

    #[test]
    fn hello_carries_the_cursors_with_the_highest_seqs() {
        check_hello_cursors(&[], 2, &[]);
        check_hello_cursors(&[(2, 1), (1, 5)], 2, &[(1, 5), (2, 1)]);
        check_hello_cursors(&[(1, 3), (2, 90), (3, 1), (4, 40)], 2, &[(2, 90), (4, 40)]);
        check_hello_cursors(&[(3, 7), (1, 7), (2, 7)], 2, &[(1, 7), (2, 7)]);
        check_hello_cursors(&[(1, 3)], 0, &[]);

        // The real hello is capped at the protocol's limit, whatever it is.
        let many: Vec<Cursor> = (1..=HELLO_CURSORS_MAX as u64 + 1)
            .map(|conversation| Cursor {
                conversation_id: ConversationId(conversation),
                seq: Seq(conversation),
            })
            .collect();
        let text = hello_text("lt_x", many, None);
        let Ok(ClientFrame::Hello { cursors, .. }) = lanes_protocol::codec::decode_client(&text)
        else {
            panic!("not a hello: {text:.80}");
        };
        assert_eq!(cursors.len(), HELLO_CURSORS_MAX);
        assert_eq!(cursors[0].conversation_id, ConversationId(2));
    }
}
