//! Helpers shared by the end-to-end tests: HTTP calls and a raw WebSocket peer that speaks the
//! protocol frame by frame, so tests can send exactly the bytes they mean (including bad ones).

#![allow(
    dead_code,
    clippy::expect_used,
    clippy::unwrap_used,
    clippy::panic,
    unreachable_pub
)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

/// Starts the real binary with `toml` as its configuration file (kept alive by the returned
/// file).
pub fn start_with_config(
    toml: &str,
) -> (
    lanes_test_support::TestServer,
    Http,
    tempfile::NamedTempFile,
) {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(config.path(), toml).unwrap();
    let server = lanes_test_support::TestServer::start_with(
        env!("CARGO_BIN_EXE_lanes"),
        &["--config", config.path().to_str().unwrap()],
        &[],
    );
    let http = Http::new(&server.base_url());
    (server, http, config)
}

/// How long a test waits for one expected frame or response.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

pub struct Http {
    pub base: String,
    client: reqwest::Client,
}

impl Http {
    pub fn new(base: &str) -> Http {
        Http {
            base: base.to_owned(),
            client: reqwest::Client::new(),
        }
    }

    /// Sends a request and returns (status, JSON body or Null).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = self
            .client
            .request(method, format!("{}{}", self.base, path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = tokio::time::timeout(FRAME_TIMEOUT, request.send())
            .await
            .expect("http timeout")
            .expect("http request");
        let status = response.status().as_u16();
        let text = response.text().await.expect("http body");
        let value = serde_json::from_str(&text).unwrap_or(Value::Null);
        (status, value)
    }

    /// Sends a raw body with a content type, on a connection of its own: the server may close
    /// a connection whose body it refused unread, which must not break the pooled ones.
    pub async fn raw(&self, path: &str, token: Option<&str>, body: Vec<u8>) -> (u16, Value) {
        let mut request = reqwest::Client::new()
            .post(format!("{}{}", self.base, path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.expect("http request");
        let status = response.status().as_u16();
        let value =
            serde_json::from_str(&response.text().await.expect("body")).unwrap_or(Value::Null);
        (status, value)
    }

    /// The server's store epoch, from `/healthz`.
    pub async fn epoch(&self) -> Option<String> {
        let (_, health) = self.call("GET", "/healthz", None, None).await;
        health["epoch"].as_str().map(str::to_owned)
    }

    /// Registers `name` and returns its token.
    pub async fn register(&self, name: &str) -> String {
        let (status, body) = self
            .call(
                "POST",
                "/v1/register",
                None,
                Some(json!({"username": name, "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(status, 201, "register {name}: {body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// Creates a direct conversation and returns its id.
    pub async fn direct(&self, token: &str, other: &str) -> u64 {
        let (status, body) = self
            .call(
                "POST",
                "/v1/conversations/direct",
                Some(token),
                Some(json!({"user_id": other})),
            )
            .await;
        assert!(status == 200 || status == 201, "direct: {status} {body}");
        body["conversation_id"].as_u64().unwrap()
    }

    /// Creates a group and returns its id.
    pub async fn group(&self, token: &str, name: &str, members: &[String]) -> u64 {
        let (status, body) = self
            .call(
                "POST",
                "/v1/conversations/group",
                Some(token),
                Some(json!({"name": name, "members": members})),
            )
            .await;
        assert_eq!(status, 201, "group: {body}");
        body["conversation_id"].as_u64().unwrap()
    }

    /// Adds `user_id` to a group as `token`'s user (who must be allowed to).
    pub async fn add_member(&self, token: &str, conversation: u64, user_id: &str) {
        let (status, body) = self
            .call(
                "POST",
                &format!("/v1/conversations/{conversation}/members"),
                Some(token),
                Some(json!({"user_id": user_id})),
            )
            .await;
        assert_eq!(status, 204, "add {user_id}: {body}");
    }

    /// `token`'s user removes `user_id` from `conversation` (it must succeed).
    pub async fn remove_member(&self, token: &str, conversation: u64, user_id: &str) {
        let path = format!("/v1/conversations/{conversation}/members/{user_id}");
        let (status, body) = self.call("DELETE", &path, Some(token), None).await;
        assert_eq!(status, 204, "remove {user_id}: {body}");
    }

    /// The whole history of a conversation, as (seq, body) pairs.
    pub async fn history(&self, token: &str, conversation: u64) -> Vec<(u64, String)> {
        let mut after = 0;
        let mut all = Vec::new();
        loop {
            let (status, body) = self
                .call(
                    "GET",
                    &format!("/v1/conversations/{conversation}/messages?after={after}&limit=500"),
                    Some(token),
                    None,
                )
                .await;
            assert_eq!(status, 200, "history: {body}");
            let page = body["messages"].as_array().unwrap();
            for message in page {
                after = message["seq"].as_u64().unwrap();
                all.push((after, message["body"].as_str().unwrap().to_owned()));
            }
            if !body["has_more"].as_bool().unwrap() {
                return all;
            }
        }
    }
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A raw protocol peer.
pub struct RawWs {
    socket: Socket,
}

/// What a raw peer observed next.
#[derive(Debug)]
pub enum Seen {
    Frame(Value),
    Closed(Option<u16>),
}

impl RawWs {
    pub async fn connect(ws_url: &str) -> RawWs {
        let (socket, _) =
            tokio::time::timeout(FRAME_TIMEOUT, tokio_tungstenite::connect_async(ws_url))
                .await
                .expect("connect timeout")
                .expect("connect");
        RawWs { socket }
    }

    /// Connects and completes hello → welcome → synced, returning the frames caught up.
    pub async fn hello(
        ws_url: &str,
        token: &str,
        cursors: Value,
        epoch: Option<&str>,
    ) -> (RawWs, Vec<Value>) {
        let mut ws = RawWs::connect(ws_url).await;
        ws.send(json!({"type": "hello", "token": token, "cursors": cursors, "epoch": epoch}))
            .await;
        let welcome = ws.frame().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let mut caught_up = Vec::new();
        loop {
            let frame = ws.frame().await;
            if frame["type"] == "synced" {
                return (ws, caught_up);
            }
            caught_up.push(frame);
        }
    }

    pub async fn send(&mut self, value: Value) {
        self.send_raw(Message::text(value.to_string())).await;
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.socket.send(message).await.expect("ws send");
    }

    /// The next frame or close, skipping pings.
    pub async fn next(&mut self) -> Seen {
        loop {
            let item = tokio::time::timeout(FRAME_TIMEOUT, self.socket.next())
                .await
                .expect("timed out waiting for a frame");
            match item {
                None => return Seen::Closed(None),
                Some(Err(_)) => return Seen::Closed(None),
                Some(Ok(Message::Text(text))) => {
                    return Seen::Frame(
                        serde_json::from_str(text.as_str()).expect("server frames are JSON"),
                    );
                }
                Some(Ok(Message::Close(frame))) => {
                    return Seen::Closed(frame.map(|f| u16::from(f.code)));
                }
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The next frame; panics on close.
    pub async fn frame(&mut self) -> Value {
        match self.next().await {
            Seen::Frame(frame) => frame,
            Seen::Closed(code) => panic!("connection closed ({code:?}) while a frame was expected"),
        }
    }

    /// Waits for the next frame of `kind`, returning the skipped ones too.
    pub async fn until(&mut self, kind: &str) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let frame = self.frame().await;
            if frame["type"] == kind {
                return (frame, skipped);
            }
            skipped.push(frame);
        }
    }

    /// Waits for the message with `seq`, returning the frames skipped on the way.
    pub async fn until_message_seq(&mut self, seq: u64) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let frame = self.frame().await;
            if frame["type"] == "message" && frame["seq"] == seq {
                return (frame, skipped);
            }
            skipped.push(frame);
        }
    }

    /// Waits for the message whose body is `body`, returning the frames skipped on the way:
    /// with a marker sent after what is checked, everything that could have come before it.
    pub async fn until_message_body(&mut self, body: &str) -> (Value, Vec<Value>) {
        let mut skipped = Vec::new();
        loop {
            let frame = self.frame().await;
            if frame["type"] == "message" && frame["body"] == body {
                return (frame, skipped);
            }
            skipped.push(frame);
        }
    }

    /// Sends a message and waits for its ack (skipping other frames).
    pub async fn send_message(&mut self, conversation: u64, id: &str, body: &str) -> Value {
        self.send(json!({"type": "send", "client_msg_id": id, "conversation_id": conversation, "body": body})).await;
        loop {
            let frame = self.frame().await;
            if frame["type"] == "ack" && frame["client_msg_id"] == id {
                return frame;
            }
            assert_ne!(frame["type"], "error", "send {id} failed: {frame}");
        }
    }

    /// Asserts that nothing but pings arrives within `quiet`, using a ping/pong round trip as
    /// the barrier: everything the server sent before the pong was read.
    pub async fn assert_no_frames_before_pong(&mut self) {
        self.send(json!({"type": "ping", "request_id": "barrier"}))
            .await;
        let frame = self.frame().await;
        assert_eq!(
            frame["type"], "pong",
            "expected nothing before the pong, got {frame}"
        );
    }

    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

/// Holds the store's write lock from outside the server for as long as it lives: the server's
/// writes wait (their busy timeout is 5 s, then they fail, as on any store failure), while its
/// reads go on.
pub struct WriteLock {
    _connection: rusqlite::Connection,
}

impl WriteLock {
    pub fn take(server: &lanes_test_support::TestServer) -> WriteLock {
        let connection = rusqlite::Connection::open(server.data_dir().join("lanes.db")).unwrap();
        connection.execute_batch("BEGIN IMMEDIATE").unwrap();
        WriteLock {
            _connection: connection,
        }
    }
}
