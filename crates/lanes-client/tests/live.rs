//! The live `Client` against a scripted fake server (axum, in-process): connect, acks and our own
//! messages delivered from them, resends across reconnects, resume cursors, epoch change, gap
//! filling over HTTP, errors, oversized sends, a token refused on reconnect, and close.
//! Each test drives the server's side of every connection by hand and awaits frames with a timeout.
//! Like the real server, the fake one sends a connection no `message` frame for its own sends:
//! their `ack` is their delivery to it.

// A test fails by panicking, in helpers as much as in test functions.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use lanes_client::{
    AckFrame, Client, ClientConfig, ClientError, ClientMsgId, ConversationId, Cursor, ErrorCode,
    ErrorFrame, Event, Events, History, MessageFrame, Seq, StoreEpoch, UserId,
};
use lanes_protocol::codec::{decode_client, encode_server};
use lanes_protocol::http::ErrorBody;
use lanes_protocol::limits::MESSAGE_BODY_BYTES_MAX;
use lanes_protocol::{ClientFrame, MessageId, ServerFrame, UnixMillis};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

const TOKEN: &str = "lt_test";
const WAIT: Duration = Duration::from_secs(5);

/// Stored messages by conversation, then seq.
type Messages = Arc<Mutex<HashMap<u64, BTreeMap<u64, MessageFrame>>>>;

#[derive(Clone)]
struct AppState {
    connections: mpsc::Sender<FakeConn>,
    messages: Messages,
}

/// The server's side of one WebSocket connection. Dropping it drops the connection.
struct FakeConn {
    from_client: mpsc::Receiver<ClientFrame>,
    to_client: mpsc::Sender<ServerFrame>,
    /// The store, shared with the history route.
    messages: Messages,
    /// Conversation and body of each send received on this connection.
    sends: HashMap<ClientMsgId, (ConversationId, String)>,
}

struct FakeServer {
    base_url: String,
    connections: mpsc::Receiver<FakeConn>,
    /// Stored messages per conversation, served by the history route.
    messages: Messages,
}

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

impl FakeServer {
    async fn start() -> FakeServer {
        let (connections_tx, connections) = mpsc::channel(16);
        let messages = Messages::default();
        let state = AppState {
            connections: connections_tx,
            messages: Arc::clone(&messages),
        };
        let router = Router::new()
            .route("/v1/ws", get(ws_route))
            .route("/v1/conversations/{id}/messages", get(history_route))
            .with_state(state);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        FakeServer {
            base_url: format!("http://{addr}"),
            connections,
            messages,
        }
    }

    async fn accept(&mut self) -> FakeConn {
        within("a connection", self.connections.recv())
            .await
            .unwrap()
    }

    /// Accepts a connection, checks its hello and welcomes it.
    async fn welcome(&mut self, epoch: &str) -> (FakeConn, Vec<Cursor>, Option<StoreEpoch>) {
        let mut conn = self.accept().await;
        let ClientFrame::Hello {
            token,
            cursors,
            epoch: hello_epoch,
        } = conn.recv().await
        else {
            panic!("the first frame must be hello");
        };
        assert_eq!(token, TOKEN);
        conn.send(ServerFrame::Welcome {
            user_id: UserId::parse("alice").unwrap(),
            epoch: StoreEpoch(epoch.into()),
            receipts_members_max: 100,
        })
        .await;
        (conn, cursors, hello_epoch)
    }

    /// Stores bob's messages `seqs` in `conversation`.
    fn store(&self, conversation: u64, seqs: std::ops::RangeInclusive<u64>) {
        let mut messages = self.messages.lock().unwrap();
        let stored = messages.entry(conversation).or_default();
        stored.extend(seqs.map(|seq| (seq, message(conversation, seq))));
    }

    fn config(&self) -> ClientConfig {
        let mut config = ClientConfig::new(&self.base_url, TOKEN);
        config.backoff_base = Duration::from_millis(1);
        config.backoff_max = Duration::from_millis(20);
        // These tests script every frame; `confirms_receipt_of_what_it_receives` turns it on.
        config.auto_receipts = false;
        config
    }
}

impl FakeConn {
    /// The next frame from the client, skipping its keepalive pings.
    async fn recv(&mut self) -> ClientFrame {
        loop {
            match within("a client frame", self.from_client.recv()).await {
                Some(ClientFrame::Ping { .. }) => continue,
                Some(frame) => return frame,
                None => panic!("the client closed the connection"),
            }
        }
    }

    async fn recv_send(&mut self) -> (ClientMsgId, ConversationId, String) {
        match self.recv().await {
            ClientFrame::Send {
                client_msg_id,
                conversation_id,
                body,
                ..
            } => {
                self.sends
                    .insert(client_msg_id.clone(), (conversation_id, body.clone()));
                (client_msg_id, conversation_id, body)
            }
            frame => panic!("expected a send, got {frame:?}"),
        }
    }

    /// Stores a send received on this connection as alice's message `seq` of its conversation,
    /// unless that seq is stored already (a retry: the original is kept), and returns the stored
    /// message.
    fn commit(&self, client_msg_id: &ClientMsgId, seq: u64) -> MessageFrame {
        let (conversation_id, body) = &self.sends[client_msg_id];
        let mut messages = self.messages.lock().unwrap();
        let stored = messages.entry(conversation_id.0).or_default();
        let message = stored.entry(seq).or_insert_with(|| {
            MessageFrame::new_message(
                *conversation_id,
                Seq(seq),
                MessageId(conversation_id.0 * 1000 + seq),
                UserId::parse("alice").unwrap(),
                client_msg_id.clone(),
                body.clone(),
                UnixMillis(2),
            )
        });
        assert_eq!(&message.client_msg_id, client_msg_id, "seq {seq} is taken");
        message.clone()
    }

    async fn send(&self, frame: ServerFrame) {
        self.to_client.send(frame).await.unwrap();
    }

    /// Commits a send received on this connection as `seq` and acks it. No `message` frame
    /// goes to this connection: the ack is its delivery.
    async fn ack(&self, client_msg_id: &ClientMsgId, seq: u64) {
        let message = self.commit(client_msg_id, seq);
        self.send(ServerFrame::Ack(ack(&message))).await;
    }

    async fn error(&self, code: ErrorCode, request_id: Option<&ClientMsgId>) {
        self.send(ServerFrame::Error(ErrorFrame {
            code,
            message: code.as_str().into(),
            request_id: request_id.map(|id| id.to_string()),
            retry_after_ms: None,
        }))
        .await;
    }

    /// Ends the connection and waits until the client saw it go.
    async fn closed(mut self) {
        self.to_client = mpsc::channel(1).0;
        while within("the connection to end", self.from_client.recv())
            .await
            .is_some()
        {}
    }
}

async fn ws_route(State(state): State<AppState>, upgrade: WebSocketUpgrade) -> Response {
    upgrade.on_upgrade(move |socket| serve_socket(socket, state))
}

async fn serve_socket(mut socket: WebSocket, state: AppState) {
    let (from_client_tx, from_client) = mpsc::channel(64);
    let (to_client, mut to_client_rx) = mpsc::channel(64);
    if state
        .connections
        .send(FakeConn {
            from_client,
            to_client,
            messages: state.messages,
            sends: HashMap::new(),
        })
        .await
        .is_err()
    {
        return;
    }
    loop {
        tokio::select! {
            received = socket.recv() => match received {
                Some(Ok(Message::Text(text))) => {
                    let frame = decode_client(text.as_str()).unwrap();
                    if from_client_tx.send(frame).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            },
            frame = to_client_rx.recv() => match frame {
                Some(frame) => {
                    if socket.send(Message::text(encode_server(&frame))).await.is_err() {
                        return;
                    }
                }
                // The test dropped its side: drop the socket without a close handshake.
                None => return,
            },
        }
    }
}

async fn history_route(
    State(state): State<AppState>,
    Path(id): Path<u64>,
    Query(query): Query<HashMap<String, u64>>,
    headers: HeaderMap,
) -> Response {
    let authorized = headers
        .get("authorization")
        .is_some_and(|value| value == format!("Bearer {TOKEN}").as_str());
    if !authorized {
        let body = ErrorBody {
            code: ErrorCode::Unauthorized,
            message: "no token".into(),
            retry_after_ms: None,
        };
        return (StatusCode::UNAUTHORIZED, axum::Json(body)).into_response();
    }
    let after = query.get("after").copied().unwrap_or(0);
    let limit = query.get("limit").copied().unwrap_or(100) as usize;
    let messages = state.messages.lock().unwrap();
    let newer: Vec<MessageFrame> = messages
        .get(&id)
        .into_iter()
        .flat_map(|stored| stored.range(after + 1..).map(|(_, message)| message))
        .cloned()
        .collect();
    let page: Vec<MessageFrame> = newer.iter().take(limit).cloned().collect();
    let history = History {
        has_more: newer.len() > page.len(),
        messages: page,
    };
    axum::Json(history).into_response()
}

/// Bob's message `seq` in `conversation`.
fn message(conversation: u64, seq: u64) -> MessageFrame {
    MessageFrame::new_message(
        ConversationId(conversation),
        Seq(seq),
        MessageId(conversation * 1000 + seq),
        UserId::parse("bob").unwrap(),
        ClientMsgId::parse(&format!("b-{conversation}-{seq}")).unwrap(),
        format!("message {seq}"),
        UnixMillis(1),
    )
}

/// The ack of a stored message.
fn ack(message: &MessageFrame) -> AckFrame {
    AckFrame {
        client_msg_id: message.client_msg_id.clone(),
        conversation_id: message.conversation_id,
        message_id: message.message_id,
        seq: message.seq,
        server_ts: message.server_ts,
    }
}

async fn next_event(events: &mut Events) -> Event {
    within("an event", events.next()).await.unwrap()
}

/// The next event, which must be a message.
async fn next_message(events: &mut Events) -> MessageFrame {
    match next_event(events).await {
        Event::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Takes events until `count` messages arrived, returning their (conversation, seq).
async fn next_messages(events: &mut Events, count: usize) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    while seen.len() < count {
        if let Event::Message(message) = next_event(events).await {
            assert_eq!(message.body, format!("message {}", message.seq));
            seen.push((message.conversation_id.0, message.seq.0));
        }
    }
    seen
}

fn pairs(cursors: &[Cursor]) -> Vec<(u64, u64)> {
    cursors
        .iter()
        .map(|cursor| (cursor.conversation_id.0, cursor.seq.0))
        .collect()
}

async fn connect(
    server: &mut FakeServer,
    configure: impl FnOnce(&mut ClientConfig),
) -> (Client, Events, FakeConn) {
    let mut config = server.config();
    configure(&mut config);
    let connecting = tokio::spawn(Client::connect(config));
    let (conn, cursors, epoch) = server.welcome("e1").await;
    assert!(cursors.is_empty() && epoch.is_none());
    let (client, mut events) = within("connect", connecting).await.unwrap().unwrap();
    assert!(matches!(
        next_event(&mut events).await,
        Event::Connected { .. }
    ));
    (client, events, conn)
}

#[tokio::test]
async fn send_resolves_with_its_ack_and_is_delivered_as_a_message() {
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, |_| {}).await;
    conn.send(ServerFrame::Message(message(1, 1))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(1, 1)]);
    let sending = {
        let client = client.clone();
        tokio::spawn(async move { client.send(ConversationId(1), "hi").await })
    };
    let (client_msg_id, conversation_id, body) = conn.recv_send().await;
    assert_eq!((conversation_id, body.as_str()), (ConversationId(1), "hi"));
    assert_eq!(client_msg_id.as_str().len(), 32);
    conn.ack(&client_msg_id, 2).await;
    let acked = within("the ack", sending).await.unwrap().unwrap();
    let own = conn.commit(&client_msg_id, 2);
    assert_eq!(acked, ack(&own));

    // Our own message, from the ack alone, with our user id and the body we sent; then bob's
    // next one.
    let delivered = next_message(&mut events).await;
    assert_eq!(delivered, own);
    assert_eq!(
        (delivered.sender_id.as_str(), delivered.body.as_str()),
        ("alice", "hi")
    );
    conn.send(ServerFrame::Message(message(1, 3))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(1, 3)]);
    assert_eq!(pairs(&client.cursors()), [(1, 3)]);
}

#[tokio::test]
async fn retried_send_acked_at_or_below_the_cursor_is_delivered_once() {
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, |_| {}).await;
    let sending = {
        let client = client.clone();
        tokio::spawn(async move { client.send(ConversationId(1), "once").await })
    };
    // Stored, but the connection drops before the ack.
    let (client_msg_id, _, _) = conn.recv_send().await;
    let own = conn.commit(&client_msg_id, 1);
    conn.closed().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));

    // Catch-up brings the stored message; the retry then gets the original ack (seq 1, now
    // the cursor), which must not deliver it again before bob's seq 2.
    let (mut conn, cursors, _) = server.welcome("e1").await;
    assert!(cursors.is_empty());
    assert!(matches!(
        next_event(&mut events).await,
        Event::Connected { .. }
    ));
    conn.send(ServerFrame::Message(own.clone())).await;
    conn.send(ServerFrame::Synced { large: Vec::new() }).await;
    let (retried, _, _) = conn.recv_send().await;
    assert_eq!(retried, client_msg_id);
    conn.ack(&retried, 1).await;
    assert_eq!(
        within("the ack", sending).await.unwrap().unwrap(),
        ack(&own)
    );
    conn.send(ServerFrame::Message(message(1, 2))).await;
    assert_eq!(next_message(&mut events).await, own);
    assert_eq!(next_event(&mut events).await, Event::Synced);
    assert_eq!(next_messages(&mut events, 1).await, [(1, 2)]);
    assert_eq!(pairs(&client.cursors()), [(1, 2)]);
}

#[tokio::test]
async fn ack_beyond_the_cursor_fills_the_gap_from_history() {
    let mut server = FakeServer::start().await;
    // Bob's seqs 1..=3 are stored, but this connection was sent none of them.
    server.store(1, 1..=3);
    let (client, mut events, mut conn) = connect(&mut server, |_| {}).await;
    let sending = {
        let client = client.clone();
        tokio::spawn(async move { client.send(ConversationId(1), "fourth").await })
    };
    let (client_msg_id, _, _) = conn.recv_send().await;
    conn.ack(&client_msg_id, 4).await;
    assert_eq!(
        within("the ack", sending).await.unwrap().unwrap().seq,
        Seq(4)
    );
    assert_eq!(
        next_messages(&mut events, 3).await,
        [(1, 1), (1, 2), (1, 3)]
    );
    let own = next_message(&mut events).await;
    assert_eq!(own, conn.commit(&client_msg_id, 4));
    assert_eq!(
        (own.seq, own.sender_id.as_str(), own.body.as_str()),
        (Seq(4), "alice", "fourth")
    );
    conn.send(ServerFrame::Message(message(1, 5))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(1, 5)]);
    assert_eq!(pairs(&client.cursors()), [(1, 5)]);
}

#[tokio::test]
async fn refused_token_and_refused_connection() {
    let mut server = FakeServer::start().await;
    let connecting = tokio::spawn(Client::connect(server.config()));
    let mut conn = server.accept().await;
    assert!(matches!(conn.recv().await, ClientFrame::Hello { .. }));
    conn.error(ErrorCode::Unauthorized, None).await;
    match within("connect", connecting).await.unwrap() {
        Err(ClientError::Api {
            status: 0,
            code: ErrorCode::Unauthorized,
            ..
        }) => {}
        other => panic!("expected unauthorized, got {other:?}"),
    }

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    drop(listener);
    match Client::connect(ClientConfig::new(&base_url, TOKEN)).await {
        Err(ClientError::Transport(_)) => {}
        other => panic!("expected a transport error, got {other:?}"),
    }
}

#[tokio::test]
async fn reconnects_resumes_and_resends_with_the_same_id() {
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, |_| {}).await;
    conn.send(ServerFrame::Message(message(3, 1))).await;
    conn.send(ServerFrame::Message(message(3, 2))).await;
    conn.send(ServerFrame::Synced { large: Vec::new() }).await;
    assert_eq!(next_messages(&mut events, 2).await, [(3, 1), (3, 2)]);
    assert_eq!(next_event(&mut events).await, Event::Synced);
    assert_eq!(pairs(&client.cursors()), [(3, 2)]);
    assert_eq!(client.epoch(), Some(StoreEpoch("e1".into())));

    let sending = {
        let client = client.clone();
        tokio::spawn(async move { client.send(ConversationId(1), "again").await })
    };
    let (first_id, _, _) = conn.recv_send().await;
    conn.closed().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));

    let (mut conn, cursors, epoch) = server.welcome("e1").await;
    assert_eq!(pairs(&cursors), [(3, 2)]);
    assert_eq!(epoch, Some(StoreEpoch("e1".into())));
    assert!(matches!(
        next_event(&mut events).await,
        Event::Connected { .. }
    ));
    let (second_id, _, body) = conn.recv_send().await;
    assert_eq!((&second_id, body.as_str()), (&first_id, "again"));
    // A replayed seq is dropped; the next one is delivered.
    conn.send(ServerFrame::Message(message(3, 2))).await;
    conn.send(ServerFrame::Message(message(3, 3))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(3, 3)]);
    conn.ack(&second_id, 1).await;
    assert_eq!(
        within("the ack", sending).await.unwrap().unwrap().seq,
        Seq(1)
    );
    let own = next_message(&mut events).await;
    assert_eq!((own.conversation_id, own.seq), (ConversationId(1), Seq(1)));
    assert_eq!(pairs(&client.cursors()), [(1, 1), (3, 3)]);
}

#[tokio::test]
async fn new_epoch_replays_from_the_start() {
    let mut server = FakeServer::start().await;
    let mut config = server.config();
    config.cursors = vec![Cursor {
        conversation_id: ConversationId(3),
        seq: Seq(5),
    }];
    config.epoch = Some(StoreEpoch("old".into()));
    let connecting = tokio::spawn(Client::connect(config));
    let (conn, cursors, epoch) = server.welcome("new").await;
    assert_eq!(pairs(&cursors), [(3, 5)]);
    assert_eq!(epoch, Some(StoreEpoch("old".into())));
    let (client, mut events) = within("connect", connecting).await.unwrap().unwrap();
    assert_eq!(pairs(&client.cursors()), [(3, 5)]);
    assert!(matches!(
        next_event(&mut events).await,
        Event::Connected { .. }
    ));
    assert!(client.cursors().is_empty());
    conn.send(ServerFrame::Message(message(3, 1))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(3, 1)]);
    assert_eq!(pairs(&client.cursors()), [(3, 1)]);
    assert_eq!(client.epoch(), Some(StoreEpoch("new".into())));
}

#[tokio::test]
async fn fills_a_gap_from_history() {
    let mut server = FakeServer::start().await;
    server.store(7, 1..=700);
    let (_client, mut events, conn) = connect(&mut server, |_| {}).await;
    conn.send(ServerFrame::Joined {
        conversation_id: ConversationId(7),
        large: false,
    })
    .await;
    assert_eq!(
        next_event(&mut events).await,
        Event::Joined(ConversationId(7))
    );
    // Live frames beyond a gap: the client pages history (500 + 200) and keeps order.
    conn.send(ServerFrame::Message(message(7, 699))).await;
    conn.send(ServerFrame::Message(message(7, 700))).await;
    let expected: Vec<(u64, u64)> = (1..=700).map(|seq| (7, seq)).collect();
    assert_eq!(next_messages(&mut events, 700).await, expected);
    server.store(7, 701..=701);
    conn.send(ServerFrame::Message(message(7, 701))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(7, 701)]);
}

#[tokio::test]
async fn errors_fail_or_retry_sends() {
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, |_| {}).await;

    let sending = {
        let client = client.clone();
        tokio::spawn(async move { client.send(ConversationId(99), "x").await })
    };
    let (client_msg_id, _, _) = conn.recv_send().await;
    conn.error(ErrorCode::NotFound, Some(&client_msg_id)).await;
    match within("the error", sending).await.unwrap() {
        Err(ClientError::Api {
            status: 0,
            code: ErrorCode::NotFound,
            ..
        }) => {}
        other => panic!("expected not_found, got {other:?}"),
    }

    let client_msg_id = ClientMsgId::parse("my-id").unwrap();
    let sending = {
        let client = client.clone();
        let client_msg_id = client_msg_id.clone();
        tokio::spawn(async move {
            client
                .send_with_id(ConversationId(1), client_msg_id, "y")
                .await
        })
    };
    let (first, _, _) = conn.recv_send().await;
    assert_eq!(first, client_msg_id);
    conn.error(ErrorCode::StorageUnavailable, Some(&first))
        .await;
    let (second, _, _) = conn.recv_send().await;
    assert_eq!(second, client_msg_id);
    conn.ack(&second, 1).await;
    assert_eq!(
        within("the ack", sending).await.unwrap().unwrap().seq,
        Seq(1)
    );
    assert_eq!(next_message(&mut events).await.body, "y");

    conn.error(ErrorCode::SlowConsumer, None).await;
    match next_event(&mut events).await {
        Event::ServerError(error) => assert_eq!(error.code, ErrorCode::SlowConsumer),
        other => panic!("expected a server error, got {other:?}"),
    }
}

#[tokio::test]
async fn unacked_send_reconnects_after_ack_timeout() {
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, |config| {
        config.ack_timeout = Duration::from_millis(200);
    })
    .await;
    let sending = {
        let client = client.clone();
        tokio::spawn(async move { client.send(ConversationId(1), "slow").await })
    };
    let (first, _, _) = conn.recv_send().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));
    let (mut conn, _, _) = server.welcome("e1").await;
    let (second, _, _) = conn.recv_send().await;
    assert_eq!(first, second);
    conn.ack(&second, 1).await;
    assert!(within("the ack", sending).await.unwrap().is_ok());
}

#[tokio::test]
async fn close_fails_pending_sends_and_ends_events() {
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, |_| {}).await;
    let sending = {
        let client = client.clone();
        tokio::spawn(async move { client.send(ConversationId(1), "never acked").await })
    };
    conn.recv_send().await;
    client.close().await;
    assert!(matches!(
        within("the send", sending).await.unwrap(),
        Err(ClientError::Closed)
    ));
    assert!(within("the end of events", events.next()).await.is_none());
    assert!(matches!(
        client.send(ConversationId(1), "late").await,
        Err(ClientError::Closed)
    ));
}

#[tokio::test]
async fn oversized_send_fails_at_once_and_is_never_written() {
    let mut server = FakeServer::start().await;
    let (client, _events, mut conn) = connect(&mut server, |_| {}).await;
    let body = "x".repeat(MESSAGE_BODY_BYTES_MAX + 1);
    match within("the refusal", client.send(ConversationId(1), &body)).await {
        Err(ClientError::Api {
            status: 0,
            code: ErrorCode::MessageTooLarge,
            ..
        }) => {}
        other => panic!("expected message_too_large, got {other:?}"),
    }
    // Nothing was queued: the next send is the first frame the server sees.
    let sending = {
        let client = client.clone();
        tokio::spawn(async move { client.send(ConversationId(1), "small").await })
    };
    let (client_msg_id, _, body) = conn.recv_send().await;
    assert_eq!(body, "small");
    conn.ack(&client_msg_id, 1).await;
    assert!(within("the ack", sending).await.unwrap().is_ok());
}

#[tokio::test]
async fn unauthorized_reconnect_fails_pending_sends_and_ends_events() {
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, |_| {}).await;
    let sending = {
        let client = client.clone();
        tokio::spawn(async move { client.send(ConversationId(1), "pending").await })
    };
    conn.recv_send().await;
    conn.closed().await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::Disconnected { .. }
    ));

    // Another refusal is reported and retried.
    let mut conn = server.accept().await;
    assert!(matches!(conn.recv().await, ClientFrame::Hello { .. }));
    conn.error(ErrorCode::RateLimited, None).await;
    match next_event(&mut events).await {
        Event::ServerError(error) => assert_eq!(error.code, ErrorCode::RateLimited),
        other => panic!("expected rate_limited, got {other:?}"),
    }

    // `unauthorized` is final: the send fails with it, the refusal is the last event.
    let mut conn = server.accept().await;
    assert!(matches!(conn.recv().await, ClientFrame::Hello { .. }));
    conn.error(ErrorCode::Unauthorized, None).await;
    match within("the send", sending).await.unwrap() {
        Err(ClientError::Api {
            status: 0,
            code: ErrorCode::Unauthorized,
            ..
        }) => {}
        other => panic!("expected unauthorized, got {other:?}"),
    }
    match next_event(&mut events).await {
        Event::ServerError(error) => assert_eq!(error.code, ErrorCode::Unauthorized),
        other => panic!("expected unauthorized, got {other:?}"),
    }
    assert!(within("the end of events", events.next()).await.is_none());
    assert!(matches!(
        client.send(ConversationId(1), "late").await,
        Err(ClientError::Closed)
    ));
    client.close().await;
}

#[tokio::test]
async fn confirms_receipts_at_most_once_per_interval() {
    let interval = Duration::from_millis(600);
    let mut server = FakeServer::start().await;
    let (_client, mut events, mut conn) = connect(&mut server, |config| {
        config.auto_receipts = true;
        config.receipts_interval = interval;
    })
    .await;
    // The first message is confirmed at once.
    conn.send(ServerFrame::Message(message(1, 1))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(1, 1)]);
    let received = |frame: ClientFrame| match frame {
        ClientFrame::Received {
            conversation_id,
            seq,
        } => (conversation_id.0, seq.0),
        frame => panic!("expected received, got {frame:?}"),
    };
    assert_eq!(received(conn.recv().await), (1, 1));
    let first_confirmed = Instant::now();
    // Messages of two conversations, each read on its own, within the interval: one batch at
    // its end, one frame per conversation naming the highest seq.
    for (conversation, seq) in [(1, 2), (2, 1), (1, 3), (2, 2)] {
        conn.send(ServerFrame::Message(message(conversation, seq)))
            .await;
        assert_eq!(next_messages(&mut events, 1).await, [(conversation, seq)]);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut batch = vec![received(conn.recv().await), received(conn.recv().await)];
    assert!(
        first_confirmed.elapsed() >= interval - Duration::from_millis(50),
        "the batch came {:?} after the first confirmation",
        first_confirmed.elapsed()
    );
    batch.sort_unstable();
    assert_eq!(batch, [(1, 3), (2, 2)]);
}

/// A client confirming deliveries every `interval`, whose `synced` names conversation `large`
/// large (where its confirmations then wait longer than any test).
async fn connect_with_large(
    server: &mut FakeServer,
    interval: Duration,
    large: u64,
) -> (Client, Events, FakeConn) {
    let (client, mut events, conn) = connect(server, |config| {
        config.auto_receipts = true;
        config.receipts_interval = interval;
        // Capped at a day: the first wait there, a random part of it, outlasts the test.
        config.receipts_interval_large = Duration::MAX;
    })
    .await;
    conn.send(ServerFrame::Synced {
        large: vec![ConversationId(large)],
    })
    .await;
    assert_eq!(next_event(&mut events).await, Event::Synced);
    (client, events, conn)
}

#[tokio::test]
async fn confirms_rarely_in_conversations_named_large() {
    let interval = Duration::from_millis(200);
    let mut server = FakeServer::start().await;
    let (_client, mut events, mut conn) = connect_with_large(&mut server, interval, 2).await;
    conn.send(ServerFrame::Joined {
        conversation_id: ConversationId(3),
        large: true,
    })
    .await;
    assert_eq!(
        next_event(&mut events).await,
        Event::Joined(ConversationId(3))
    );
    // A group that grew past the bound meanwhile.
    conn.send(ServerFrame::Large {
        conversation_id: ConversationId(4),
    })
    .await;
    let mut confirmed = Vec::new();
    // Conversation 1 is ordinary, 2, 3 and 4 large: 1's first position goes at once and later
    // ones on its pace, while the others wait (even the first: a random part of the large
    // interval).
    for round in 1..=3 {
        for conversation in [1, 2, 3, 4] {
            conn.send(ServerFrame::Message(message(conversation, round)))
                .await;
            assert_eq!(next_messages(&mut events, 1).await, [(conversation, round)]);
        }
        tokio::time::sleep(interval.mul_f64(1.6)).await;
    }
    while confirmed.last() != Some(&(1, 3)) {
        match conn.recv().await {
            ClientFrame::Received {
                conversation_id,
                seq,
            } => confirmed.push((conversation_id.0, seq.0)),
            frame => panic!("expected received, got {frame:?}"),
        }
    }
    assert!(
        confirmed.iter().all(|(id, _)| *id == 1) && confirmed.len() >= 2,
        "confirmed: {confirmed:?}"
    );
}

#[tokio::test]
async fn a_read_position_replaces_the_waiting_receipt() {
    let interval = Duration::from_millis(400);
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) = connect(&mut server, |config| {
        config.auto_receipts = true;
        config.receipts_interval = interval;
    })
    .await;
    conn.send(ServerFrame::Message(message(1, 1))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(1, 1)]);
    assert!(matches!(conn.recv().await, ClientFrame::Received { seq, .. } if seq.0 == 1));
    // Received within the interval, then read: the read says it all.
    conn.send(ServerFrame::Message(message(1, 2))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(1, 2)]);
    client
        .mark_read(ConversationId(1), lanes_protocol::Seq(2))
        .await
        .unwrap();
    assert!(matches!(conn.recv().await, ClientFrame::Read { seq, .. } if seq.0 == 2));
    // Past the interval, the next frame is the next message's confirmation, not seq 2's.
    tokio::time::sleep(interval.mul_f64(1.6)).await;
    conn.send(ServerFrame::Message(message(1, 3))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(1, 3)]);
    assert!(matches!(conn.recv().await, ClientFrame::Received { seq, .. } if seq.0 == 3));
}

#[tokio::test]
async fn a_receipts_interval_beyond_the_clock_is_capped() {
    let mut server = FakeServer::start().await;
    let (_client, mut events, mut conn) = connect(&mut server, |config| {
        config.auto_receipts = true;
        config.receipts_interval = Duration::MAX;
    })
    .await;
    conn.send(ServerFrame::Message(message(1, 1))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(1, 1)]);
    assert!(matches!(
        conn.recv().await,
        ClientFrame::Received { seq, .. } if seq.0 == 1
    ));
    // The task that set the next wait is still running.
    conn.send(ServerFrame::Message(message(1, 2))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(1, 2)]);
}

#[tokio::test]
async fn confirms_receipt_of_what_it_receives() {
    let mut server = FakeServer::start().await;
    let (client, mut events, mut conn) =
        connect(&mut server, |config| config.auto_receipts = true).await;
    for seq in 1..=3 {
        conn.send(ServerFrame::Message(message(1, seq))).await;
    }
    assert_eq!(
        next_messages(&mut events, 3).await,
        [(1, 1), (1, 2), (1, 3)]
    );
    // Batched: one or more `received`, ending at the highest seq delivered.
    let mut confirmed = Vec::new();
    while confirmed.last() != Some(&3) {
        match conn.recv().await {
            ClientFrame::Received {
                conversation_id,
                seq,
            } => {
                assert_eq!(conversation_id, ConversationId(1));
                confirmed.push(seq.0);
            }
            frame => panic!("expected received, got {frame:?}"),
        }
    }
    assert!(
        confirmed.windows(2).all(|pair| pair[0] < pair[1]),
        "{confirmed:?}"
    );
    // Our own messages are not confirmed: the next frame after a send is the send itself.
    let sending = {
        let client = client.clone();
        tokio::spawn(async move { client.send(ConversationId(1), "mine").await })
    };
    let (client_msg_id, _, _) = conn.recv_send().await;
    conn.ack(&client_msg_id, 4).await;
    within("the ack", sending).await.unwrap().unwrap();
    client
        .mark_read(ConversationId(1), lanes_protocol::Seq(4))
        .await
        .unwrap();
    assert!(matches!(
        conn.recv().await,
        ClientFrame::Read { seq, .. } if seq.0 == 4
    ));
}

#[tokio::test]
async fn a_group_that_shrank_back_within_the_bound_is_confirmed_again() {
    let mut server = FakeServer::start().await;
    let (_client, mut events, mut conn) =
        connect_with_large(&mut server, Duration::from_millis(200), 2).await;
    conn.send(ServerFrame::Message(message(2, 1))).await;
    assert_eq!(next_messages(&mut events, 1).await, [(2, 1)]);
    // A member left and the group is within the bound again: the server says so with
    // `member_removed`, which it sends only in such groups.
    conn.send(ServerFrame::MemberRemoved {
        conversation_id: ConversationId(2),
        user_id: UserId::parse("carol").unwrap(),
        member_count: 100,
    })
    .await;
    assert!(matches!(
        next_event(&mut events).await,
        Event::MemberRemoved { .. }
    ));
    let confirmed = tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .expect("the waiting position confirmed on the ordinary pace");
    assert!(
        matches!(confirmed, ClientFrame::Received { conversation_id, seq } if conversation_id.0 == 2 && seq.0 == 1),
        "{confirmed:?}"
    );
}

#[tokio::test]
async fn membership_changes_of_others_become_events() {
    let mut server = FakeServer::start().await;
    let (_client, mut events, conn) = connect(&mut server, |_| {}).await;
    let carol = UserId::parse("carol").unwrap();
    conn.send(ServerFrame::MemberAdded {
        conversation_id: ConversationId(7),
        user_id: carol.clone(),
        role: lanes_protocol::http::Role::Member,
        member_count: 3,
    })
    .await;
    conn.send(ServerFrame::MemberRemoved {
        conversation_id: ConversationId(7),
        user_id: carol.clone(),
        member_count: 2,
    })
    .await;
    assert_eq!(
        next_event(&mut events).await,
        Event::MemberAdded {
            conversation_id: ConversationId(7),
            user_id: carol.clone(),
            role: lanes_protocol::http::Role::Member,
            member_count: 3
        }
    );
    assert_eq!(
        next_event(&mut events).await,
        Event::MemberRemoved {
            conversation_id: ConversationId(7),
            user_id: carol,
            member_count: 2
        }
    );
}
