//! Server-side promises that need the server's own counters: concurrent sends share commits
//! (group commit), a reader that stops reading is cut off with `slow_consumer` while memory stays
//! bounded and others are unaffected, and the durability mode is visible. Real binary, /metrics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Http, RawWs, Seen};
use lanes_test_support::TestServer;
use serde_json::json;

async fn metric(http: &Http, name: &str) -> u64 {
    let response = reqwest::get(format!("{}/metrics", http.base))
        .await
        .unwrap();
    let text = response.text().await.unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{text}"))
        .parse()
        .unwrap()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn concurrent_sends_share_commits() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let http = Http::new(&server.base_url());
    let senders = 20;
    let per_sender = 50;
    let hub_token = http.register("hub").await;
    let mut peers = Vec::new();
    for i in 0..senders {
        let name = format!("sender{i}");
        let token = http.register(&name).await;
        let conversation = http.direct(&hub_token, &name).await;
        peers.push((
            RawWs::hello(&server.ws_url(), &token, json!([]), None)
                .await
                .0,
            conversation,
        ));
    }
    let commits_before = metric(&http, "lanes_commits_total").await;
    for (peer, conversation) in &mut peers {
        for n in 0..per_sender {
            peer.send(json!({"type":"send","client_msg_id":format!("m{n}"),"conversation_id":*conversation,"body":"x"})).await;
        }
    }
    for (peer, _) in &mut peers {
        let mut acks = 0;
        while acks < per_sender {
            if peer.frame().await["type"] == "ack" {
                acks += 1;
            }
        }
    }
    let messages = metric(&http, "lanes_messages_committed_total").await;
    let commits = metric(&http, "lanes_commits_total").await - commits_before;
    assert_eq!(messages, (senders * per_sender) as u64);
    // One commit per message would mean no group commit at all.
    assert!(
        commits < messages,
        "{commits} commits for {messages} messages"
    );
    assert_eq!(metric(&http, "lanes_durability_full").await, 1);
    server.assert_clean_log();
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_and_memory_stays_bounded() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[websocket]\nqueue_len_max = 64\n[rate_limits]\nenabled = false\n",
    )
    .unwrap();
    let server = TestServer::start_with(
        env!("CARGO_BIN_EXE_lanes"),
        &["--config", config.path().to_str().unwrap()],
        &[],
    );
    let http = Http::new(&server.base_url());
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let _carol = http.register("carol").await;
    let group = http
        .group(&alice, "loud", &["bob".to_owned(), "carol".to_owned()])
        .await;
    let quiet = http.direct(&alice, "carol").await;
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    // Bob connects and then never reads.
    let (mut bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    let pid = server.pid().unwrap();
    let rss_before = rss_kib(pid);
    let body = "y".repeat(16 * 1024);
    let mut sent = 0;
    while metric(&http, "lanes_slow_consumers_total").await == 0 {
        assert!(sent < 5000, "bob was never cut off");
        for _ in 0..50 {
            alice_ws.send(json!({"type":"send","client_msg_id":format!("m{sent}"),"conversation_id":group,"body":body})).await;
            sent += 1;
        }
        // Alice keeps reading: her acks and her own copies flow.
        let mut acks = 0;
        while acks < 50 {
            if alice_ws.frame().await["type"] == "ack" {
                acks += 1;
            }
        }
    }
    // Other conversations are unaffected while bob is stuck.
    let ack = alice_ws.send_message(quiet, "quiet", "still fast").await;
    assert_eq!(ack["seq"], 1);
    let rss_after = rss_kib(pid);
    assert!(
        rss_after < rss_before + 200 * 1024,
        "RSS grew from {rss_before} KiB to {rss_after} KiB"
    );
    // When bob finally reads, he finds what fitted, then the reason, then the close.
    let mut messages = 0;
    let outcome = loop {
        match bob_ws.next().await {
            Seen::Frame(frame) if frame["type"] == "message" => messages += 1,
            Seen::Frame(frame) => {
                break (
                    frame["code"].as_str().map(str::to_owned),
                    bob_ws.next().await,
                );
            }
            Seen::Closed(code) => {
                panic!("closed ({code:?}) without a reason after {messages} messages")
            }
        }
    };
    assert_eq!(outcome.0.as_deref(), Some("slow_consumer"));
    assert!(
        matches!(outcome.1, Seen::Closed(Some(4008))),
        "{:?}",
        outcome.1
    );
    assert!(messages < sent, "bob cannot have received everything");
    // He resumes from his cursor and gets the rest, in order.
    let (_, caught_up) = RawWs::hello(
        &server.ws_url(),
        &bob,
        json!([{"conversation_id": group, "seq": messages}]),
        http.epoch().await.as_deref(),
    )
    .await;
    let seqs: Vec<u64> = caught_up
        .iter()
        .map(|frame| frame["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(
        seqs,
        ((messages as u64 + 1)..=sent as u64).collect::<Vec<_>>()
    );
    server.assert_clean_log();
}

#[tokio::test]
async fn relaxed_durability_is_loud() {
    let mut server = TestServer::start_with(
        env!("CARGO_BIN_EXE_lanes"),
        &["--durability", "normal"],
        &[],
    );
    server.allow_log("durability: NORMAL");
    let http = Http::new(&server.base_url());
    assert_eq!(metric(&http, "lanes_durability_full").await, 0);
    let (_, health) = http.call("GET", "/healthz", None, None).await;
    assert_eq!(health["durability"], "normal");
    assert!(server.log_text().contains("WARN"), "{}", server.log_text());
    server.assert_clean_log();
}

#[tokio::test]
async fn rate_limits_answer_rate_limited_with_a_retry_after() {
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "[rate_limits]\n\
         sends = { per_sec = 1, burst = 3 }\n\
         receipts = { per_sec = 1, burst = 2 }\n\
         connects = { per_sec = 1, burst = 4 }\n\
         logins = { per_sec = 1, burst = 2 }\n\
         signups = { per_sec = 1, burst = 3 }\n",
    )
    .unwrap();
    let server = TestServer::start_with(
        env!("CARGO_BIN_EXE_lanes"),
        &["--config", config.path().to_str().unwrap()],
        &[],
    );
    let http = Http::new(&server.base_url());
    let alice = http.register("alice").await;
    http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    // Sign-ups per address: a burst of three, then refused.
    let (status, body) = http
        .call(
            "POST",
            "/v1/register",
            None,
            Some(json!({"username": "carol", "password": "long enough"})),
        )
        .await;
    assert_eq!(status, 201, "the third sign-up is within the burst: {body}");
    let (status, body) = http
        .call(
            "POST",
            "/v1/register",
            None,
            Some(json!({"username": "dave", "password": "long enough"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    assert!(body["retry_after_ms"].as_u64().unwrap() > 0);

    // Sends per user, over the WebSocket: an error frame naming the send, with a hint.
    let (mut ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let mut limited = None;
    for i in 0..10 {
        let id = format!("m{i}");
        ws.send(json!({"type": "send", "client_msg_id": id, "conversation_id": conversation, "body": "hi"}))
            .await;
        let answer = loop {
            let frame = ws.frame().await;
            if frame["client_msg_id"] == id.as_str() || frame["request_id"] == id.as_str() {
                break frame;
            }
        };
        if answer["type"] == "error" {
            limited = Some(answer);
            break;
        }
    }
    let limited = limited.expect("ten sends at once were never limited");
    assert_eq!(limited["code"], "rate_limited");
    assert!(limited["retry_after_ms"].as_u64().unwrap() > 0);
    // …and over HTTP: 429 with Retry-After.
    let response = reqwest::Client::new()
        .post(format!(
            "{}/v1/conversations/{conversation}/messages",
            http.base
        ))
        .bearer_auth(&alice)
        .json(&json!({"client_msg_id": "h1", "body": "hi"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());
    // The connection stays open: the limit says why and when, it does not hang up.
    ws.assert_no_frames_before_pong().await;

    // Logins per address.
    let mut login_statuses = Vec::new();
    for _ in 0..4 {
        let (status, _) = http
            .call(
                "POST",
                "/v1/login",
                None,
                Some(json!({"username": "alice", "password": "correct horse battery"})),
            )
            .await;
        login_statuses.push(status);
    }
    assert!(login_statuses.contains(&429), "{login_statuses:?}");

    // Connects per address: the upgrade is refused with 429 before any WebSocket exists.
    let mut refused = false;
    for _ in 0..6 {
        let result = tokio_tungstenite::connect_async(server.ws_url()).await;
        if let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = result {
            assert_eq!(response.status(), 429);
            refused = true;
            break;
        }
    }
    assert!(refused, "six connects at once were never limited");
}
