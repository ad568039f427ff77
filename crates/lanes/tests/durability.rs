//! "Sent means stored": every acked message survives SIGKILL right after its ack, retries after
//! a restart return the original ack, and SIGTERM closes clients cleanly and exits. Real binary,
//! killed and restarted on the same port and data directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Http, RawWs, Seen, WriteLock};
use lanes_test_support::TestServer;
use serde_json::{Value, json};

#[tokio::test]
async fn every_acked_message_survives_sigkill() {
    let mut server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let http = Http::new(&server.base_url());
    let alice = http.register("alice").await;
    let _bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    let (mut ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let total = 300;
    for i in 0..total {
        ws.send(json!({"type":"send","client_msg_id":format!("k{i}"),"conversation_id":conversation,"body":format!("survive {i}")}))
            .await;
    }
    let mut acks: Vec<Value> = Vec::new();
    while acks.len() < total {
        let frame = ws.frame().await;
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["type"] == "ack" {
            acks.push(frame);
        }
    }
    // The instant the last ack is read, the process dies without any chance to flush.
    server.kill();
    server.restart();
    let http = Http::new(&server.base_url());
    let history = http.history(&alice, conversation).await;
    let expected: Vec<(u64, String)> = acks
        .iter()
        .map(|ack| {
            let i: usize = ack["client_msg_id"].as_str().unwrap()[1..].parse().unwrap();
            (ack["seq"].as_u64().unwrap(), format!("survive {i}"))
        })
        .collect();
    assert_eq!(history, expected);
    // A client that never saw an ack retries after the restart: same ack, nothing new.
    let (mut ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let retried = ws.send_message(conversation, "k299", "survive 299").await;
    assert_eq!(retried, acks[total - 1]);
    assert_eq!(http.history(&alice, conversation).await.len(), total);
    server.assert_clean_log();
}

#[tokio::test]
async fn sigterm_tells_clients_to_reconnect_and_exits_cleanly() {
    let mut server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let http = Http::new(&server.base_url());
    let alice = http.register("alice").await;
    let _bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    let (mut ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let ack = ws.send_message(conversation, "m", "before shutdown").await;
    // Not yet authenticated: it waits on the shutdown signal itself (registered connections
    // hear it from the hub), and is told too.
    let mut anonymous = RawWs::connect(&server.ws_url()).await;
    assert!(
        server.stop(),
        "graceful exit status; log:\n{}",
        server.log_text()
    );
    // The sender's own copy of its message may come first.
    let (frame, skipped) = ws.until("error").await;
    assert!(
        skipped.iter().all(|frame| frame["type"] == "message"),
        "{skipped:?}"
    );
    assert_eq!(frame["code"], "shutting_down");
    match ws.next().await {
        Seen::Closed(code) => assert_eq!(code, Some(1001)),
        Seen::Frame(frame) => panic!("expected close 1001, got {frame}"),
    }
    let (frame, _) = anonymous.until("error").await;
    assert_eq!(frame["code"], "shutting_down");
    match anonymous.next().await {
        Seen::Closed(code) => assert_eq!(code, Some(1001)),
        Seen::Frame(frame) => panic!("expected close 1001, got {frame}"),
    }
    server.restart();
    let http = Http::new(&server.base_url());
    assert_eq!(
        http.history(&alice, conversation).await,
        vec![(ack["seq"].as_u64().unwrap(), "before shutdown".to_owned())]
    );
    server.assert_clean_log();
}

/// A read position that reaches the server while its store fails is not lost: it is stored,
/// and announced, once the store works again, though nothing new is sent (clients send a
/// position again only when a newer message arrives).
#[tokio::test]
async fn a_read_position_the_store_failed_to_take_is_stored_later() {
    let mut server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    server.allow_log("storing receipt positions failed");
    let http = Http::new(&server.base_url());
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    for i in 0..3 {
        alice_ws
            .send_message(conversation, &format!("m-{i}"), "hello")
            .await;
    }
    let receipts = format!("/v1/conversations/{conversation}/receipts");
    let bob_read = || async {
        let (status, body) = http.call("GET", &receipts, Some(&alice), None).await;
        assert_eq!(status, 200, "{body}");
        body["receipts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|receipt| receipt["user_id"] == "bob")
            .and_then(|receipt| receipt["read_seq"].as_u64())
    };

    let lock = WriteLock::take(&server);
    let (status, body) = http
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/read"),
            Some(&bob),
            Some(json!({"seq": 3})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    // The writer's busy timeout runs out and the store refuses the position.
    tokio::time::sleep(std::time::Duration::from_millis(5_500)).await;
    assert!(
        server
            .log_text()
            .contains("storing receipt positions failed"),
        "the store took the position while locked"
    );
    assert_eq!(bob_read().await, None);

    drop(lock);
    let (frame, _) = alice_ws.until("receipts").await;
    assert_eq!(frame["conversation_id"], conversation);
    assert_eq!(bob_read().await, Some(3));
}

/// A `hello` whose token the store cannot check (a JWT's first use writes its user, and the
/// store fails) is not refused as `unauthorized`, which clients take as final: the server says
/// what failed and closes with 1011, and the client's next hello is welcome.
#[tokio::test]
async fn a_store_failure_at_hello_is_not_a_refused_token() {
    const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";
    let (mut server, _http, _config) =
        common::start_with_config(&format!("[auth]\njwt_hs256_secret = \"{SECRET}\"\n"));
    server.allow_log("store failed");
    let expires = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "newcomer", "exp": expires}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();

    let lock = WriteLock::take(&server);
    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(json!({"type": "hello", "token": token})).await;
    let error = ws.frame().await;
    assert_eq!(error["code"], "storage_unavailable", "{error}");
    match ws.next().await {
        Seen::Closed(code) => assert_eq!(code, Some(1011)),
        other => panic!("expected a close, got {other:?}"),
    }

    drop(lock);
    let (_ws, _) = RawWs::hello(&server.ws_url(), &token, json!([]), None).await;
}
