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
    // The histograms saw every commit, and the batch sizes add up to the sends.
    let all_commits = metric(&http, "lanes_commits_total").await;
    assert_eq!(
        metric(&http, "lanes_commit_duration_seconds_count").await,
        all_commits
    );
    assert_eq!(
        metric(&http, "lanes_commit_batch_sends_count").await,
        all_commits
    );
    assert_eq!(
        metric(&http, "lanes_commit_batch_sends_sum").await,
        messages
    );
    server.assert_clean_log();
}

#[tokio::test]
async fn a_reader_that_stops_reading_is_cut_off_and_memory_stays_bounded() {
    let (server, http, _config) = common::start_with_config(
        "[websocket]\nqueue_len_max = 64\n[rate_limits]\nenabled = false\n",
    );
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
    let (server, http, _config) = common::start_with_config(
        "[rate_limits]\n\
         sends = { per_sec = 1, burst = 3 }\n\
         receipts = { per_sec = 1, burst = 2 }\n\
         connects = { per_sec = 1, burst = 4 }\n\
         logins = { per_sec = 1, burst = 2 }\n\
         signups = { per_sec = 1, burst = 3 }\n\
         memberships = { per_sec = 1, burst = 3 }\n",
    );
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    // Conversations created and members added per acting user: the direct conversation above,
    // a group and an add are the burst of three; the next creation is refused, and adds by
    // the same user too, while another user's are not.
    let group = http.group(&alice, "team", &[]).await;
    http.add_member(&alice, group, "bob").await;
    for (path, body) in [
        (
            "/v1/conversations/group".to_owned(),
            json!({"name": "more", "members": []}),
        ),
        (
            format!("/v1/conversations/{group}/members"),
            json!({"user_id": "bob"}),
        ),
    ] {
        let (status, answer) = http.call("POST", &path, Some(&alice), Some(body)).await;
        assert_eq!(
            (status, answer["code"].as_str()),
            (429, Some("rate_limited")),
            "{path}: {answer}"
        );
    }
    let (status, answer) = http
        .call(
            "POST",
            "/v1/conversations/group",
            Some(&bob),
            Some(json!({"name": "bob's", "members": ["alice"]})),
        )
        .await;
    assert_eq!(status, 201, "{answer}");
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

/// While a loud group floods the server, a quiet 1:1 conversation still gets each message
/// through promptly: per-connection queues are independent and the committer takes every
/// pending send into the next group commit, so a quiet send waits for at most one batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loud_group_does_not_starve_a_quiet_conversation() {
    const LOUD: usize = 8;
    /// Each loud member sends until the quiet pair is done, at most this many (so it ends).
    const PER_SENDER_MAX: usize = 20_000;
    let server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let http = Http::new(&server.base_url());
    let mut loud = Vec::new();
    for i in 0..LOUD {
        loud.push(http.register(&format!("loud{i}")).await);
    }
    let quinn = http.register("quinn").await;
    http.register("rita").await;
    let members: Vec<String> = (1..LOUD).map(|i| format!("loud{i}")).collect();
    let group = http.group(&loud[0], "loud", &members).await;
    let quiet = http.direct(&quinn, "rita").await;
    let rita_token = {
        let (_, session) = http
            .call(
                "POST",
                "/v1/login",
                None,
                Some(json!({"username": "rita", "password": "correct horse battery"})),
            )
            .await;
        session["token"].as_str().unwrap().to_owned()
    };
    let (mut quinn_ws, _) = RawWs::hello(&server.ws_url(), &quinn, json!([]), None).await;
    let (mut rita_ws, _) = RawWs::hello(&server.ws_url(), &rita_token, json!([]), None).await;

    // The flood: every loud member sends as fast as acks come back, reading all, until told
    // to stop (a fixed amount ended before the quiet pair was done once the server got faster).
    // Each also keeps what it has yet to read of the others' messages under 1,000: a member that
    // reads slower than the others send would otherwise be dropped as a slow consumer (4008)
    // once its queue holds 4,096, which is right, but not what this test measures.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let published = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut flood = Vec::new();
    for (i, token) in loud.iter().enumerate() {
        let (mut ws, _) = RawWs::hello(&server.ws_url(), token, json!([]), None).await;
        let (stop, published) = (
            std::sync::Arc::clone(&stop),
            std::sync::Arc::clone(&published),
        );
        flood.push(tokio::spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            let body = "z".repeat(256);
            // A window of unacked sends, reading everything that comes back meanwhile.
            let (mut sent, mut acks, mut received) = (0, 0, 0);
            loop {
                let backlog = published.load(Relaxed).saturating_sub(sent + received);
                let sending = !stop.load(Relaxed) && sent < PER_SENDER_MAX;
                if sending && sent - acks < 32 && backlog < 1000 {
                    published.fetch_add(1, Relaxed);
                    ws.send(json!({"type": "send", "client_msg_id": format!("l{i}-{sent}"), "conversation_id": group, "body": body}))
                        .await;
                    sent += 1;
                } else if !sending && acks == sent {
                    return sent;
                } else {
                    match ws.frame().await["type"].as_str() {
                        Some("ack") => acks += 1,
                        Some("message") => received += 1,
                        _ => {}
                    }
                }
            }
        }));
    }
    // Meanwhile the quiet pair talks; each message must reach rita promptly.
    let mut slowest = std::time::Duration::ZERO;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    for n in 1..=10u64 {
        let sent = std::time::Instant::now();
        quinn_ws
            .send(json!({"type": "send", "client_msg_id": format!("q{n}"), "conversation_id": quiet, "body": "psst"}))
            .await;
        let (message, _) = rita_ws.until_message_seq(n).await;
        assert_eq!(message["conversation_id"], quiet);
        slowest = slowest.max(sent.elapsed());
    }
    let flooding = flood.iter().any(|sender| !sender.is_finished());
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut flooded = 0;
    for sender in flood {
        flooded += sender.await.unwrap();
    }
    assert!(
        slowest < std::time::Duration::from_secs(2),
        "a quiet message took {slowest:?} during the flood"
    );
    // The measurement only means something if the flood was still going.
    assert!(
        flooding,
        "the flood ended before the quiet messages were sent"
    );
    assert!(
        flooded >= LOUD * 32,
        "the flood sent only {flooded} messages"
    );
    assert_eq!(http.history(&loud[0], group).await.len(), flooded);
}

#[tokio::test]
async fn a_user_is_in_at_most_conversations_per_user_max_conversations() {
    let (_server, http, _config) = common::start_with_config(
        "[limits]\nconversations_per_user_max = 2\n[rate_limits]\nenabled = false\n",
    );
    let alice = http.register("alice").await;
    for name in ["bob", "carol", "dave"] {
        http.register(name).await;
    }
    http.direct(&alice, "bob").await;
    http.group(&alice, "one", &[]).await;
    let (status, body) = http
        .call(
            "POST",
            "/v1/conversations/direct",
            Some(&alice),
            Some(json!({"user_id": "carol"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    // Nor can others pull her into more.
    let carol = http.register("erin").await;
    let group = http.group(&carol, "two", &[]).await;
    let (status, _) = http
        .call(
            "POST",
            &format!("/v1/conversations/{group}/members"),
            Some(&carol),
            Some(json!({"user_id": "alice"})),
        )
        .await;
    assert_eq!(status, 409);
    assert_eq!(
        http.call("GET", "/v1/conversations", Some(&alice), None)
            .await
            .1["conversations"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
}
