//! WebSocket security over real sockets: the Origin check against cross-site hijacking, a
//! revoked session closing its open connections and polls, and caps on open connections per
//! user and per address.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Http, RawWs, Seen};
use lanes_test_support::TestServer;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// A server with `toml` and rate limits off (these tests open connections in bursts).
fn start_with(toml: &str) -> (TestServer, Http, tempfile::NamedTempFile) {
    common::start_with_config(&format!("[rate_limits]\nenabled = false\n{toml}"))
}

/// The status of a WebSocket upgrade sent with `origin`.
async fn upgrade_status(server: &TestServer, origin: Option<&str>) -> u16 {
    let mut request = server.ws_url().into_client_request().unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(err) => panic!("upgrade failed: {err}"),
    }
}

#[tokio::test]
async fn only_allowed_origins_open_websockets() {
    let (server, _http, _config) =
        start_with("[websocket]\nallowed_origins = [\"https://app.example\"]\n");
    let own = format!("http://{}", server.addr());
    assert_eq!(
        upgrade_status(&server, None).await,
        101,
        "no Origin: not a browser"
    );
    assert_eq!(
        upgrade_status(&server, Some(&own)).await,
        101,
        "the server's own page"
    );
    assert_eq!(
        upgrade_status(&server, Some("https://app.example")).await,
        101
    );
    assert_eq!(
        upgrade_status(&server, Some("https://evil.example")).await,
        403
    );
    assert_eq!(upgrade_status(&server, Some("null")).await, 403);
    server.assert_clean_log();
}

#[tokio::test]
async fn logging_out_closes_the_sessions_connections_and_polls() {
    let (server, http, _config) = start_with("");
    let alice = http.register("alice").await;
    let (status, other) = http
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "alice", "password": "correct horse battery"})),
        )
        .await;
    assert_eq!(status, 200);
    let other = other["token"].as_str().unwrap().to_owned();
    let (mut revoked_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let (mut kept_ws, _) = RawWs::hello(&server.ws_url(), &other, json!([]), None).await;
    let waiting_poll = {
        let http = Http::new(&http.base);
        let alice = alice.clone();
        tokio::spawn(async move {
            http.call("GET", "/v1/events?timeout_ms=20000", Some(&alice), None)
                .await
        })
    };
    // Let the poll register before the logout.
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let (status, _) = http.call("POST", "/v1/logout", Some(&alice), None).await;
    assert_eq!(status, 204);

    let (error, _) = revoked_ws.until("error").await;
    assert_eq!(error["code"], "unauthorized");
    match revoked_ws.next().await {
        Seen::Closed(code) => assert_eq!(code, Some(4001)),
        Seen::Frame(frame) => panic!("expected the close, got {frame}"),
    }
    let (status, body) = waiting_poll.await.unwrap();
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    // The other session of the same user is untouched.
    kept_ws.assert_no_frames_before_pong().await;
    server.assert_clean_log();
}

#[tokio::test]
async fn open_connections_are_capped_per_user_and_per_address() {
    let (server, http, _config) =
        start_with("[websocket]\nconnections_per_user_max = 2\nconnections_per_ip_max = 4\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let (_phone, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let (_laptop, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    // A third connection of alice: told why, then closed (1008).
    let mut third = RawWs::connect(&server.ws_url()).await;
    third
        .send(json!({"type": "hello", "token": alice, "cursors": []}))
        .await;
    let (error, _) = third.until("error").await;
    assert_eq!(error["code"], "rate_limited");
    match third.next().await {
        Seen::Closed(code) => assert_eq!(code, Some(1008)),
        Seen::Frame(frame) => panic!("expected the close, got {frame}"),
    }
    // The address: two of alice and one of bob hold 3 of its 4; once the refused one is gone
    // (its slot is freed when the server has closed it), one more fits, then no more.
    drop(third);
    let (_bob_phone, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    let mut fourth = None;
    for _ in 0..50 {
        if let Ok((socket, _)) = tokio_tungstenite::connect_async(server.ws_url()).await {
            fourth = Some(socket);
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(fourth.is_some(), "the fourth connection never fitted");
    assert_eq!(upgrade_status(&server, None).await, 429);
}

#[tokio::test]
async fn a_connection_closes_when_its_token_expires() {
    const SECRET: &str = "an-expiry-test-secret-an-expiry-test-secret";
    let server = TestServer::start_with(
        env!("CARGO_BIN_EXE_lanes"),
        &[],
        &[("LANES_JWT_HS256_SECRET", SECRET)],
    );
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 2;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "short-lived", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (mut ws, _) = RawWs::hello(&server.ws_url(), &token, json!([]), None).await;
    let started = std::time::Instant::now();
    // Keep the connection busy: it is the expiry, not idleness, that ends it.
    let closed = loop {
        ws.send(json!({"type": "ping"})).await;
        match ws.next().await {
            Seen::Frame(frame) if frame["type"] == "pong" => {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Seen::Frame(frame) => {
                assert_eq!(frame["code"], "unauthorized", "{frame}");
                break ws.next().await;
            }
            Seen::Closed(code) => panic!("closed ({code:?}) without saying why"),
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(8),
            "still open"
        );
    };
    match closed {
        Seen::Closed(code) => assert_eq!(code, Some(4001)),
        Seen::Frame(frame) => panic!("expected the close, got {frame}"),
    }
    server.assert_clean_log();
}
