//! Bad input over WebSocket and HTTP gets a typed error (code, message, echoed request id), writes
//! nothing, and keeps the connection where that is safe. Runs the real binary; raw frames.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Http, RawWs, Seen};
use lanes_test_support::TestServer;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn setup() -> (TestServer, Http, String, String, u64) {
    let server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let http = Http::new(&server.base_url());
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    (server, http, alice, bob, conversation)
}

fn check_error(frame: &serde_json::Value, code: &str, request_id: Option<&str>) {
    assert_eq!(frame["type"], "error", "{frame}");
    assert_eq!(frame["code"], code, "{frame}");
    assert!(
        !frame["message"].as_str().unwrap_or_default().is_empty(),
        "{frame}"
    );
    assert_eq!(frame["request_id"].as_str(), request_id, "{frame}");
}

#[tokio::test]
async fn bad_frames_get_typed_errors_and_the_connection_survives() {
    let (server, http, alice, _bob, conversation) = setup().await;
    let (mut ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let cases: Vec<(Message, &str, Option<&str>)> = vec![
        (Message::text("not json"), "bad_frame", None),
        (Message::text("[1,2,3]"), "bad_frame", None),
        (Message::text(r#"{"type":"launch_rockets"}"#), "bad_frame", None),
        (Message::text(r#"{"type":"send","client_msg_id":"m1","body":"no conversation"}"#), "bad_frame", Some("m1")),
        (Message::text(r#"{"type":"send","client_msg_id":"m2","conversation_id":"seven","body":"x"}"#), "bad_frame", Some("m2")),
        (Message::text(r#"{"type":"send","client_msg_id":"","conversation_id":1,"body":"x"}"#), "bad_frame", Some("")),
        (Message::text(r#"{"type":"ping","request_id":"p","surprise":true}"#), "bad_frame", Some("p")),
        (Message::binary(vec![1u8, 2, 3]), "bad_frame", None),
        (Message::text(json!({"type":"send","client_msg_id":"big","conversation_id":conversation,"body":"x".repeat(16 * 1024 + 1)}).to_string()), "message_too_large", Some("big")),
        (Message::text(json!({"type":"send","client_msg_id":"empty","conversation_id":conversation,"body":"  "}).to_string()), "invalid_field", Some("empty")),
        (Message::text(json!({"type":"send","client_msg_id":"nowhere","conversation_id":999_999,"body":"hi"}).to_string()), "not_found", Some("nowhere")),
        (Message::text(json!({"type":"hello","token":"again"}).to_string()), "bad_frame", None),
    ];
    for (message, code, request_id) in cases {
        let shown = format!("{message:?}");
        ws.send_raw(message).await;
        let frame = ws.frame().await;
        check_error(&frame, code, request_id);
        let _ = shown;
    }
    // Still usable, and none of the refused sends was stored.
    ws.send_message(conversation, "fine", "after all that")
        .await;
    assert_eq!(
        http.history(&alice, conversation).await,
        vec![(1, "after all that".to_owned())]
    );
    server.assert_clean_log();
}

#[tokio::test]
async fn hello_is_required_and_bad_tokens_can_be_retried() {
    let (server, _http, alice, _bob, conversation) = setup().await;
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(
        json!({"type":"send","client_msg_id":"early","conversation_id":conversation,"body":"hi"}),
    )
    .await;
    check_error(&ws.frame().await, "unauthorized", Some("early"));
    for token in [
        "",
        "lt_forged",
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhbGljZSJ9.",
        &"x".repeat(10_000),
    ] {
        ws.send(json!({"type":"hello","token":token})).await;
        check_error(&ws.frame().await, "unauthorized", None);
    }
    ws.send(json!({"type":"hello","token":alice})).await;
    assert_eq!(ws.frame().await["type"], "welcome");
    assert_eq!(ws.frame().await["type"], "synced");
    server.assert_clean_log();
}

#[tokio::test]
async fn no_hello_in_time_closes_with_4001() {
    let (server, _http, _config) =
        common::start_with_config("[websocket]\nhello_timeout_ms = 300\n");
    let mut ws = RawWs::connect(&server.ws_url()).await;
    check_error(&ws.frame().await, "unauthorized", None);
    match ws.next().await {
        Seen::Closed(code) => assert_eq!(code, Some(4001)),
        Seen::Frame(frame) => panic!("expected close, got {frame}"),
    }
}

#[tokio::test]
async fn an_oversized_frame_closes_with_1009() {
    let (server, http, alice, _bob, conversation) = setup().await;
    let (mut ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let huge = json!({"type":"send","client_msg_id":"huge","conversation_id":conversation,"body":"x".repeat(500 * 1024)});
    ws.send_raw(Message::text(huge.to_string())).await;
    let mut closed_with = None;
    for _ in 0..2 {
        match ws.next().await {
            Seen::Frame(frame) => check_error(&frame, "payload_too_large", None),
            Seen::Closed(code) => {
                closed_with = code;
                break;
            }
        }
    }
    assert_eq!(closed_with, Some(1009));
    assert!(http.history(&alice, conversation).await.is_empty());
    server.assert_clean_log();
}

#[tokio::test]
async fn a_request_that_is_not_a_websocket_upgrade_is_refused_with_why() {
    let (server, ..) = setup().await;
    let url = format!("{}/v1/ws", server.base_url());
    let client = reqwest::Client::new();
    let upgrade = [
        ("connection", "Upgrade"),
        ("upgrade", "websocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    for (left_out, why) in [
        ("connection", "Connection header"),
        ("upgrade", "Upgrade header"),
        ("sec-websocket-version", "Sec-WebSocket-Version"),
        ("sec-websocket-key", "Sec-WebSocket-Key"),
    ] {
        let mut request = client.get(&url);
        for (name, value) in upgrade.iter().filter(|(name, _)| *name != left_out) {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "without {left_out}");
        let body = response.text().await.unwrap();
        assert!(
            body.starts_with("not a WebSocket upgrade request") && body.contains(why),
            "without {left_out}: {body}"
        );
    }
    server.assert_clean_log();
}

#[tokio::test]
async fn http_errors_are_typed_with_proper_statuses() {
    let (server, http, alice, _bob, conversation) = setup().await;
    let path = format!("/v1/conversations/{conversation}/messages");
    let cases: Vec<(u16, &str, (u16, serde_json::Value))> = vec![
        (
            401,
            "unauthorized",
            http.call("GET", "/v1/conversations", None, None).await,
        ),
        (
            401,
            "unauthorized",
            http.call("GET", "/v1/conversations", Some("lt_nope"), None)
                .await,
        ),
        (
            401,
            "unauthorized",
            http.call(
                "POST",
                "/v1/login",
                None,
                Some(json!({"username":"alice","password":"wrong password"})),
            )
            .await,
        ),
        (
            401,
            "unauthorized",
            http.call(
                "POST",
                "/v1/login",
                None,
                Some(json!({"username":"nobody","password":"whatever123"})),
            )
            .await,
        ),
        (
            409,
            "conflict",
            http.call(
                "POST",
                "/v1/register",
                None,
                Some(json!({"username":"alice","password":"another password"})),
            )
            .await,
        ),
        (
            400,
            "invalid_field",
            http.call(
                "POST",
                "/v1/register",
                None,
                Some(json!({"username":"carol","password":"short"})),
            )
            .await,
        ),
        (
            400,
            "invalid_field",
            http.call(
                "POST",
                "/v1/register",
                None,
                Some(json!({"username":"has space","password":"long enough"})),
            )
            .await,
        ),
        (
            400,
            "bad_frame",
            http.call(
                "POST",
                "/v1/register",
                None,
                Some(json!({"username":"carol"})),
            )
            .await,
        ),
        (
            400,
            "bad_frame",
            http.raw("/v1/register", None, b"{not json".to_vec()).await,
        ),
        (
            413,
            "payload_too_large",
            http.raw("/v1/register", None, vec![b' '; 1024 * 1024])
                .await,
        ),
        (
            404,
            "not_found",
            http.call("GET", "/v1/conversations/999999", Some(&alice), None)
                .await,
        ),
        (
            404,
            "not_found",
            http.call(
                "GET",
                "/v1/conversations/999999/messages",
                Some(&alice),
                None,
            )
            .await,
        ),
        (
            400,
            "invalid_field",
            http.call("GET", "/v1/conversations/abc", Some(&alice), None)
                .await,
        ),
        (
            400,
            "invalid_field",
            http.call("GET", &format!("{path}?limit=0"), Some(&alice), None)
                .await,
        ),
        (
            400,
            "invalid_field",
            http.call("GET", &format!("{path}?limit=100000"), Some(&alice), None)
                .await,
        ),
        (
            400,
            "invalid_field",
            http.call(
                "GET",
                &format!("{path}?after=1&before=5"),
                Some(&alice),
                None,
            )
            .await,
        ),
        (
            400,
            "invalid_field",
            http.call(
                "POST",
                "/v1/conversations/direct",
                Some(&alice),
                Some(json!({"user_id":"alice"})),
            )
            .await,
        ),
        (
            404,
            "not_found",
            http.call(
                "POST",
                "/v1/conversations/direct",
                Some(&alice),
                Some(json!({"user_id":"ghost"})),
            )
            .await,
        ),
        (
            400,
            "invalid_field",
            http.call(
                "POST",
                "/v1/conversations/group",
                Some(&alice),
                Some(json!({"name":" ","members":[]})),
            )
            .await,
        ),
        (
            403,
            "forbidden",
            http.call(
                "POST",
                &format!("/v1/conversations/{conversation}/members"),
                Some(&alice),
                Some(json!({"user_id":"bob"})),
            )
            .await,
        ),
        (
            403,
            "forbidden",
            http.call(
                "POST",
                &format!("/v1/conversations/{conversation}/leave"),
                Some(&alice),
                None,
            )
            .await,
        ),
        (
            404,
            "not_found",
            http.call("GET", "/v1/nothing-here", None, None).await,
        ),
    ];
    for (index, (status, code, (got_status, body))) in cases.into_iter().enumerate() {
        assert_eq!(
            (got_status, body["code"].as_str()),
            (status, Some(code)),
            "case {index}: {body}"
        );
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "case {index}: {body}"
        );
    }
    server.assert_clean_log();
}

#[tokio::test]
async fn a_revoked_token_stops_working() {
    let (server, http, alice, _bob, _conversation) = setup().await;
    assert_eq!(
        http.call("GET", "/v1/conversations", Some(&alice), None)
            .await
            .0,
        200
    );
    assert_eq!(
        http.call("POST", "/v1/logout", Some(&alice), None).await.0,
        204
    );
    assert_eq!(
        http.call("GET", "/v1/conversations", Some(&alice), None)
            .await
            .0,
        401
    );
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(json!({"type":"hello","token":alice})).await;
    check_error(&ws.frame().await, "unauthorized", None);
    // Logging in again issues a fresh token.
    let (status, session) = http
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username":"alice","password":"correct horse battery"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_ne!(session["token"].as_str(), Some(alice.as_str()));
    server.assert_clean_log();
}

/// Speaks WebSocket by hand over TCP, so a test can send frames no library would produce.
mod raw_tcp {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    pub(super) async fn upgrade(addr: std::net::SocketAddr) -> TcpStream {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request = format!(
            "GET /v1/ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        while !response.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            stream.read_exact(&mut byte).await.unwrap();
            response.push(byte[0]);
        }
        assert!(
            response.starts_with(b"HTTP/1.1 101"),
            "{}",
            String::from_utf8_lossy(&response)
        );
        stream
    }

    /// A client frame: FIN + `first_byte_bits`, masked (unless `masked` is false) with a zero key.
    pub(super) fn frame(first_byte: u8, payload: &[u8], masked: bool) -> Vec<u8> {
        assert!(payload.len() < 126);
        let mut frame = vec![
            first_byte,
            payload.len() as u8 | if masked { 0x80 } else { 0 },
        ];
        if masked {
            frame.extend_from_slice(&[0, 0, 0, 0]);
        }
        frame.extend_from_slice(payload);
        frame
    }

    /// Reads server frames until a close; returns (text frames, close code).
    pub(super) async fn until_close(stream: &mut TcpStream) -> (Vec<String>, Option<u16>) {
        let mut texts = Vec::new();
        loop {
            let mut header = [0u8; 2];
            if stream.read_exact(&mut header).await.is_err() {
                return (texts, None);
            }
            let mut len = u64::from(header[1] & 0x7f);
            if len == 126 {
                let mut extended = [0u8; 2];
                stream.read_exact(&mut extended).await.unwrap();
                len = u64::from(u16::from_be_bytes(extended));
            }
            let mut payload = vec![0u8; len as usize];
            stream.read_exact(&mut payload).await.unwrap();
            match header[0] & 0x0f {
                0x1 => texts.push(String::from_utf8(payload).unwrap()),
                0x8 => {
                    let code =
                        (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                    return (texts, code);
                }
                _ => {}
            }
        }
    }
}

#[tokio::test]
async fn websocket_protocol_violations_close_with_their_codes() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        (
            "text frame that is not UTF-8",
            raw_tcp::frame(0x81, &[0xff, 0xfe, 0xfd], true),
            1007,
        ),
        (
            "reserved bit set",
            raw_tcp::frame(0x81 | 0x40, b"{}", true),
            1002,
        ),
        (
            "unmasked client frame",
            raw_tcp::frame(0x81, b"{}", false),
            1002,
        ),
        ("unknown opcode", raw_tcp::frame(0x83, b"{}", true), 1002),
    ];
    for (name, frame, code) in cases {
        let mut stream = raw_tcp::upgrade(server.addr()).await;
        tokio::io::AsyncWriteExt::write_all(&mut stream, &frame)
            .await
            .unwrap();
        let (texts, closed_with) =
            tokio::time::timeout(common::FRAME_TIMEOUT, raw_tcp::until_close(&mut stream))
                .await
                .unwrap_or_else(|_| panic!("{name}: no close"));
        assert_eq!(closed_with, Some(code), "{name}: {texts:?}");
        assert!(
            texts.iter().any(|text| text.contains("bad_frame")),
            "{name}: {texts:?}"
        );
    }
    server.assert_clean_log();
}

#[tokio::test]
async fn fragmented_messages_are_reassembled_and_trickled_frames_time_out() {
    let (server, _http, _config) =
        common::start_with_config("[websocket]\nhello_timeout_ms = 800\n");
    use tokio::io::AsyncWriteExt;
    // A ping split over a text frame without FIN and a continuation frame with FIN.
    let mut stream = raw_tcp::upgrade(server.addr()).await;
    let ping = br#"{"type":"ping","request_id":"in-two-parts"}"#;
    let (first, second) = ping.split_at(10);
    stream
        .write_all(&raw_tcp::frame(0x01, first, true))
        .await
        .unwrap();
    stream
        .write_all(&raw_tcp::frame(0x80, second, true))
        .await
        .unwrap();
    let (texts, code) =
        tokio::time::timeout(common::FRAME_TIMEOUT, raw_tcp::until_close(&mut stream))
            .await
            .expect("the connection closes by itself (no hello)");
    assert!(
        texts.iter().any(|text| text.contains("in-two-parts")),
        "{texts:?}"
    );
    assert_eq!(code, Some(4001), "no hello in time");

    // A hello trickled a byte at a time never completes: closed at the hello deadline.
    let mut stream = raw_tcp::upgrade(server.addr()).await;
    let hello = raw_tcp::frame(0x81, br#"{"type":"hello","token":"t"}"#, true);
    let started = std::time::Instant::now();
    let trickle = async {
        for byte in &hello[..hello.len() - 1] {
            if stream.write_all(&[*byte]).await.is_err() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(3), trickle).await;
    let (_, code) = tokio::time::timeout(common::FRAME_TIMEOUT, raw_tcp::until_close(&mut stream))
        .await
        .expect("a trickling client is closed");
    assert!(code == Some(4001) || code.is_none(), "closed with {code:?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    server.assert_clean_log();
}

#[tokio::test]
async fn a_peer_that_stops_answering_pings_is_closed_and_one_that_answers_is_kept() {
    let (server, http, _config) =
        common::start_with_config("[websocket]\nping_interval_ms = 200\nidle_timeout_ms = 700\n");
    let alice = http.register("alice").await;
    use tokio::io::AsyncWriteExt;
    // By hand: a hello, then silence, not even pongs (this peer never answers the pings).
    let mut silent = raw_tcp::upgrade(server.addr()).await;
    let hello = format!(r#"{{"type":"hello","token":"{alice}"}}"#);
    silent
        .write_all(&raw_tcp::frame(0x81, hello.as_bytes(), true))
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let (texts, code) =
        tokio::time::timeout(common::FRAME_TIMEOUT, raw_tcp::until_close(&mut silent))
            .await
            .expect("a silent peer is closed");
    assert!(
        texts.iter().any(|text| text.contains("welcome")),
        "{texts:?}"
    );
    assert_eq!(code, Some(4009), "idle timeout");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    // A library client answers pings while it reads: it outlives several idle timeouts.
    let (mut lively, _) = RawWs::hello(&server.ws_url(), &alice, serde_json::json!([]), None).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for _ in 0..8 {
        lively.assert_no_frames_before_pong().await;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    server.assert_clean_log();
}

/// `Authorization`'s scheme is case-insensitive (RFC 9110 §11.1), for user tokens and admin
/// keys alike; other schemes are `unauthorized`. A web asset name that does not decode is no
/// file (`404`), not a plain-text error.
#[tokio::test]
async fn the_bearer_scheme_in_any_case_and_undecodable_asset_names() {
    const KEY: &str = "test-admin-key-0123456789abcdef0123456789";
    let (_server, http, _config) =
        common::start_with_config(&format!("[admin]\napi_keys = [\"{KEY}\"]\n"));
    let token = http.register("alice").await;
    let client = reqwest::Client::new();
    let get = |path: &str, authorization: String| {
        client
            .get(format!("{}{path}", http.base))
            .header("authorization", authorization)
            .send()
    };
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let response = get("/v1/conversations", format!("{scheme} {token}"))
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{scheme}");
    }
    let response = get("/v1/conversations", format!("Basic {token}"))
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["code"], "unauthorized");
    let response = client
        .post(format!("{}/v1/admin/users", http.base))
        .header("authorization", format!("bearer {KEY}"))
        .json(&json!({"user_id": "bob"}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        201,
        "an admin key with a lower-case scheme"
    );
    let response = client
        .get(format!("{}/assets/%FF", http.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
}
