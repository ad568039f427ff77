//! "Sent means stored": every acked message survives SIGKILL right after its ack, retries after
//! a restart return the original ack, and SIGTERM closes clients cleanly and exits. Real binary,
//! killed and restarted on the same port and data directory.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Http, RawWs, Seen};
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
