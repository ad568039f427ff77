//! Long-polling and the HTTP actions, over real HTTP: a WebSocket user and a long-polling user in
//! one conversation, a client switching transports mid-stream, polls answered the moment a
//! message arrives, and typed errors with proper HTTP statuses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::{Http, RawWs};
use lanes_test_support::TestServer;
use serde_json::{Value, json};

fn start() -> (TestServer, Http) {
    let server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let http = Http::new(&server.base_url());
    (server, http)
}

/// A long-polling client: its cursors and epoch, as the last poll returned them.
struct Poller {
    http: Http,
    token: String,
    cursors: Value,
    epoch: Option<String>,
}

impl Poller {
    fn new(base: &str, token: &str) -> Poller {
        Poller {
            http: Http::new(base),
            token: token.to_owned(),
            cursors: json!([]),
            epoch: None,
        }
    }

    /// One `POST /v1/events`; returns the events and remembers the new cursors.
    async fn poll(&mut self, timeout_ms: u64) -> Vec<Value> {
        let body = json!({"cursors": self.cursors, "epoch": self.epoch, "timeout_ms": timeout_ms});
        let (status, page) = self
            .http
            .call("POST", "/v1/events", Some(&self.token), Some(body))
            .await;
        assert_eq!(status, 200, "{page}");
        self.cursors = page["cursors"].clone();
        self.epoch = page["epoch"].as_str().map(str::to_owned);
        page["events"].as_array().unwrap().clone()
    }

    /// Polls until a message with `seq` of `conversation` arrived; returns every event seen.
    async fn until_seq(&mut self, conversation: u64, seq: u64) -> Vec<Value> {
        let mut seen = Vec::new();
        loop {
            let events = self.poll(5_000).await;
            let done = events.iter().any(|event| {
                event["type"] == "message"
                    && event["conversation_id"] == conversation
                    && event["seq"] == seq
            });
            seen.extend(events);
            if done {
                return seen;
            }
        }
    }
}

fn message_seqs(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter(|event| event["type"] == "message")
        .map(|event| event["seq"].as_u64().unwrap())
        .collect()
}

async fn http_send(http: &Http, token: &str, conversation: u64, id: &str, body: &str) -> Value {
    let (status, ack) = http
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/messages"),
            Some(token),
            Some(json!({"client_msg_id": id, "body": body})),
        )
        .await;
    assert_eq!(status, 200, "{ack}");
    ack
}

#[tokio::test]
async fn a_websocket_user_and_a_long_polling_user_talk() {
    let (server, http) = start();
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let mut bob_poll = Poller::new(&http.base, &bob);

    alice_ws.send_message(conversation, "a1", "hi bob").await;
    let events = bob_poll.until_seq(conversation, 1).await;
    assert_eq!(message_seqs(&events), [1]);
    assert_eq!(events[0]["body"], "hi bob");
    assert_eq!(
        bob_poll.cursors,
        json!([{"conversation_id": conversation, "seq": 1}])
    );

    // Bob sends over HTTP: the answer is the ack, after the commit; a retry is the same ack.
    let ack = http_send(&http, &bob, conversation, "b1", "hi alice").await;
    assert_eq!(ack["seq"], 2);
    assert_eq!(
        http_send(&http, &bob, conversation, "b1", "hi alice").await,
        ack
    );
    let (live, _) = alice_ws.until_message_seq(2).await;
    assert_eq!(
        (live["sender_id"].as_str(), live["body"].as_str()),
        (Some("bob"), Some("hi alice"))
    );
    // Bob's own send reaches his poll too (HTTP sends have no connection to stand in for).
    assert_eq!(
        message_seqs(&bob_poll.until_seq(conversation, 2).await),
        [2]
    );

    // Reactions, receipts and typing over HTTP reach the WebSocket user.
    let (status, reacted) = http
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/messages/1/reactions"),
            Some(&bob),
            Some(json!({"client_msg_id": "b2", "emoji": "🎉"})),
        )
        .await;
    assert_eq!((status, reacted["seq"].as_u64()), (200, Some(3)));
    let (reaction, _) = alice_ws.until_message_seq(3).await;
    assert_eq!(reaction["kind"], "reaction_add");
    let (status, _) = http
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/read"),
            Some(&bob),
            Some(json!({"seq": 1})),
        )
        .await;
    assert_eq!(status, 204);
    let (receipts, _) = alice_ws.until("receipts").await;
    assert_eq!(
        receipts["receipts"],
        json!([{"user_id": "bob", "delivered_seq": 1, "read_seq": 1}])
    );
    let (status, listed) = http
        .call(
            "GET",
            &format!("/v1/conversations/{conversation}/receipts"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(listed["receipts"], receipts["receipts"]);
    let (status, _) = http
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/typing"),
            Some(&bob),
            Some(json!({"state": "start"})),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(alice_ws.until("typing").await.0["user_id"], "bob");

    // And the WebSocket user's typing reaches a waiting poll.
    let waiting = {
        let mut poller = Poller::new(&http.base, &bob);
        poller.cursors = bob_poll.cursors.clone();
        poller.epoch = bob_poll.epoch.clone();
        tokio::spawn(async move {
            loop {
                let events = poller.poll(5_000).await;
                if let Some(typing) = events.iter().find(|event| event["type"] == "typing") {
                    return typing.clone();
                }
            }
        })
    };
    // Until the poll is waiting, typing is announced to nobody: repeat stop/start.
    let typing = loop {
        for state in ["stop", "start"] {
            alice_ws
                .send(json!({"type": "typing", "conversation_id": conversation, "state": state}))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        if waiting.is_finished() {
            break waiting.await.unwrap();
        }
    };
    assert_eq!(typing["user_id"], "alice");

    // Presence over HTTP: bob (polling) is online to alice, and unknown to a stranger.
    let (status, presence) = http
        .call("GET", "/v1/presence?user_ids=alice,carol", Some(&bob), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        presence["users"],
        json!([{"user_id": "alice", "state": "online"}])
    );
    server.assert_clean_log();
}

#[tokio::test]
async fn a_client_switches_transports_mid_stream_without_loss_or_duplicates() {
    const TOTAL: u64 = 60;
    let (server, http) = start();
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    let epoch = http.epoch().await;
    let sender = {
        let http = Http::new(&http.base);
        let alice = alice.clone();
        tokio::spawn(async move {
            for i in 1..=TOTAL {
                http_send(
                    &http,
                    &alice,
                    conversation,
                    &format!("m{i}"),
                    &format!("n{i}"),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        })
    };
    // Bob alternates: a WebSocket for a few frames, then a few polls, from the cursor he holds.
    let mut seen: Vec<u64> = Vec::new();
    let mut round = 0;
    while seen.last().copied() != Some(TOTAL) {
        let cursor = seen.last().copied().unwrap_or(0);
        let cursors = json!([{"conversation_id": conversation, "seq": cursor}]);
        if round % 2 == 0 {
            let (mut ws, caught_up) =
                RawWs::hello(&server.ws_url(), &bob, cursors, epoch.as_deref()).await;
            seen.extend(message_seqs(&caught_up));
            for _ in 0..5 {
                if seen.last().copied() == Some(TOTAL) {
                    break;
                }
                let frame = ws.frame().await;
                seen.extend(message_seqs(std::slice::from_ref(&frame)));
            }
            ws.close().await;
        } else {
            let mut poller = Poller::new(&http.base, &bob);
            poller.cursors = cursors;
            poller.epoch = epoch.clone();
            for _ in 0..2 {
                let events = poller.poll(2_000).await;
                seen.extend(message_seqs(&events));
                let returned = poller.cursors[0]["seq"].as_u64().unwrap_or(0);
                assert_eq!(Some(returned), seen.last().copied().or(Some(0)));
            }
        }
        round += 1;
    }
    sender.await.unwrap();
    assert_eq!(
        seen,
        (1..=TOTAL).collect::<Vec<_>>(),
        "after {round} switches"
    );
    assert!(round >= 4, "the test switched only {round} times");
    server.assert_clean_log();
}

#[tokio::test]
async fn a_poll_answers_at_once_when_behind_the_moment_a_message_arrives_or_empty_at_timeout() {
    let (server, http) = start();
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    for i in 1..=3 {
        http_send(&http, &alice, conversation, &format!("m{i}"), "missed").await;
    }
    let mut bob_poll = Poller::new(&http.base, &bob);
    // Behind: answered at once, though the poll could wait 20 s.
    let started = Instant::now();
    assert_eq!(message_seqs(&bob_poll.poll(20_000).await), [1, 2, 3]);
    assert!(started.elapsed() < Duration::from_secs(10));
    // Nothing new: empty at the timeout, cursors unchanged.
    let before = bob_poll.cursors.clone();
    assert!(bob_poll.poll(300).await.is_empty());
    assert_eq!(bob_poll.cursors, before);
    // Waiting: answered when the message arrives, long before the 20 s timeout.
    let mut waiting_poll = Poller::new(&http.base, &bob);
    waiting_poll.cursors = bob_poll.cursors.clone();
    waiting_poll.epoch = bob_poll.epoch.clone();
    let waiting = tokio::spawn(async move {
        let events = waiting_poll.poll(20_000).await;
        (events, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!waiting.is_finished(), "the poll did not wait");
    let sent_at = Instant::now();
    http_send(&http, &alice, conversation, "m4", "live").await;
    let (events, answered_at) = waiting.await.unwrap();
    assert_eq!(message_seqs(&events), [4]);
    assert!(answered_at.duration_since(sent_at) < Duration::from_secs(10));
    // The GET form, with cursors in the query, says the same.
    let (status, page) = http
        .call(
            "GET",
            &format!(
                "/v1/events?cursors={conversation}:2&epoch={}&timeout_ms=0",
                bob_poll.epoch.as_deref().unwrap()
            ),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(message_seqs(page["events"].as_array().unwrap()), [3, 4]);
    server.assert_clean_log();
}

#[tokio::test]
async fn http_errors_carry_codes_and_statuses() {
    let (server, http) = start();
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let carol = http.register("carol").await;
    let conversation = http.direct(&alice, "bob").await;
    http_send(&http, &alice, conversation, "a1", "hello").await;
    let react = json!({"client_msg_id": "b1", "emoji": "👍"});
    let (status, _) = http
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/messages/1/reactions"),
            Some(&bob),
            Some(react.clone()),
        )
        .await;
    assert_eq!(status, 200);
    let path = |suffix: &str| format!("/v1/conversations/{conversation}{suffix}");
    // (method, path, token, body, status, code)
    type Case<'a> = (
        &'a str,
        String,
        Option<&'a str>,
        Option<Value>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        (
            "POST",
            path("/messages"),
            Some(&alice),
            Some(json!({"client_msg_id": "x1", "body": " "})),
            400,
            "invalid_field",
        ),
        (
            "POST",
            path("/messages"),
            Some(&alice),
            Some(json!({"body": "no id"})),
            400,
            "bad_frame",
        ),
        (
            "POST",
            path("/messages"),
            None,
            Some(json!({"client_msg_id": "x2", "body": "hi"})),
            401,
            "unauthorized",
        ),
        (
            "POST",
            path("/messages/1/edit"),
            Some(&bob),
            Some(json!({"client_msg_id": "x3", "body": "mine"})),
            403,
            "forbidden",
        ),
        (
            "POST",
            path("/messages"),
            Some(&carol),
            Some(json!({"client_msg_id": "x4", "body": "hi"})),
            404,
            "not_found",
        ),
        (
            "POST",
            path("/read"),
            Some(&carol),
            Some(json!({"seq": 1})),
            404,
            "not_found",
        ),
        (
            "POST",
            path("/messages/1/reactions"),
            Some(&bob),
            Some(json!({"client_msg_id": "x5", "emoji": "👍"})),
            409,
            "conflict",
        ),
        (
            "POST",
            path("/messages"),
            Some(&alice),
            Some(json!({"client_msg_id": "x6", "body": "x".repeat(20_000)})),
            413,
            "message_too_large",
        ),
        (
            "POST",
            path("/read"),
            Some(&bob),
            Some(json!({"seq": 5})),
            400,
            "invalid_field",
        ),
        (
            "POST",
            path("/messages/1/reactions"),
            Some(&bob),
            Some(json!({"client_msg_id": "x7", "emoji": "+1"})),
            400,
            "invalid_field",
        ),
        (
            "GET",
            "/v1/events?cursors=oops".into(),
            Some(&bob),
            None,
            400,
            "invalid_field",
        ),
        (
            "GET",
            "/v1/events?timeout_ms=600000".into(),
            Some(&bob),
            None,
            400,
            "invalid_field",
        ),
        (
            "GET",
            "/v1/events?sync=maybe".into(),
            Some(&bob),
            None,
            400,
            "invalid_field",
        ),
        (
            "POST",
            "/v1/events".into(),
            Some(&bob),
            Some(json!({"cursors": [], "sync": "yes"})),
            400,
            "bad_frame",
        ),
        ("GET", "/v1/events".into(), None, None, 401, "unauthorized"),
        (
            "POST",
            "/v1/presence".into(),
            Some(&bob),
            Some(json!({"state": "offline"})),
            400,
            "invalid_field",
        ),
    ];
    for (method, path, token, body, status, code) in cases {
        let (got, error) = http.call(method, &path, token, body).await;
        assert_eq!(
            (got, error["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {error}"
        );
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    // Typing starts past the per-user limit: 429.
    let mut limited = false;
    for _ in 0..30 {
        let (status, error) = http
            .call(
                "POST",
                &path("/typing"),
                Some(&bob),
                Some(json!({"state": "start"})),
            )
            .await;
        if status == 429 {
            assert_eq!(error["code"], "rate_limited");
            limited = true;
            break;
        }
        assert_eq!(status, 204);
    }
    assert!(limited, "30 typing starts in a row were never limited");
    server.assert_clean_log();
}

/// More missed than one poll answers (500 events): the client keeps polling from the returned
/// cursors and gets every message once, in order.
#[tokio::test]
async fn a_long_backlog_comes_in_pages_without_loss_or_duplicates() {
    const TOTAL: u64 = 1_100;
    let (server, http) = start();
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    let mut sends = tokio::task::JoinSet::new();
    for chunk in 0..20 {
        let (http, alice) = (Http::new(&http.base), alice.clone());
        sends.spawn(async move {
            for i in (chunk..TOTAL).step_by(20) {
                http_send(&http, &alice, conversation, &format!("m{i}"), "backlog").await;
            }
        });
    }
    while let Some(done) = sends.join_next().await {
        done.unwrap();
    }
    let mut bob_poll = Poller::new(&http.base, &bob);
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    while seen.len() < TOTAL as usize {
        let events = bob_poll.poll(0).await;
        assert!(
            !events.is_empty(),
            "a poll answered nothing while {} remained",
            TOTAL as usize - seen.len()
        );
        pages.push(events.len());
        seen.extend(message_seqs(&events));
    }
    assert_eq!(seen, (1..=TOTAL).collect::<Vec<_>>());
    assert_eq!(pages[0], 500, "pages: {pages:?}");
    assert!(bob_poll.poll(0).await.is_empty());
    server.assert_clean_log();
}

/// Large messages come a megabyte or so per poll, not 500 at once (tens of megabytes the
/// server would hold until the client read them), still without loss or duplicates.
#[tokio::test]
async fn a_backlog_of_large_messages_comes_in_pages_of_bounded_size() {
    const TOTAL: u64 = 40;
    let (server, http) = start();
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    // Control characters are escaped in JSON: each message is ~96 KB once encoded.
    let body = "\u{1}".repeat(16 * 1024);
    for i in 0..TOTAL {
        http_send(&http, &alice, conversation, &format!("big{i}"), &body).await;
    }
    let mut bob_poll = Poller::new(&http.base, &bob);
    let mut seen = Vec::new();
    let mut pages = Vec::new();
    while seen.len() < TOTAL as usize {
        let events = bob_poll.poll(0).await;
        assert!(!events.is_empty(), "a poll answered nothing");
        pages.push(events.len());
        seen.extend(message_seqs(&events));
    }
    assert_eq!(seen, (1..=TOTAL).collect::<Vec<_>>());
    assert!(pages.len() >= 3, "pages: {pages:?}");
    assert!(pages.iter().all(|&page| page <= 12), "pages: {pages:?}");
    server.assert_clean_log();
}

/// Waiting polls count with the user's WebSockets against `connections_per_user_max`: past
/// it a poll is `429 rate_limited`, and once one ends there is room again.
#[tokio::test]
async fn polls_count_against_the_connections_per_user() {
    let (server, http, _config) =
        common::start_with_config("[websocket]\nconnections_per_user_max = 2\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    let (_bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    let waiting = tokio::spawn({
        let mut poller = Poller::new(&http.base, &bob);
        async move { poller.poll(10_000).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let poll_now = || {
        http.call(
            "POST",
            "/v1/events",
            Some(&bob),
            Some(json!({"cursors": [], "timeout_ms": 0})),
        )
    };
    let (status, body) = poll_now().await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("rate_limited")),
        "{body}"
    );
    http_send(&http, &alice, conversation, "m1", "wake up").await;
    let events = waiting.await.unwrap();
    assert_eq!(message_seqs(&events), [1]);
    let (status, body) = poll_now().await;
    assert_eq!(status, 200, "{body}");
}

/// A waiting long poll hears that a group grew past `receipts_members_max`, as a WebSocket
/// does (`large`), once.
#[tokio::test]
async fn a_poll_names_a_group_that_grew_large() {
    let (_server, http, _config) =
        common::start_with_config("[realtime]\nreceipts_members_max = 2\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    http.register("carol").await;
    http.register("dave").await;
    let pair = http.group(&alice, "pair", &["carol".into()]).await;
    // So that alice may see bob's presence.
    http.direct(&alice, "bob").await;
    let mut bob_poll = Poller::new(&http.base, &bob);
    let waiting = tokio::spawn(async move {
        let events = bob_poll.poll(5_000).await;
        (bob_poll, events)
    });
    // Bob counts as online once his poll is registered.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, presence) = http
            .call("GET", "/v1/presence?user_ids=bob", Some(&alice), None)
            .await;
        if presence["users"][0]["state"] == "online" {
            break;
        }
        assert!(Instant::now() < deadline, "bob never polled: {presence}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bob's own add takes the group past the bound.
    http.add_member(&alice, pair, "bob").await;
    let (mut bob_poll, mut events) = waiting.await.unwrap();
    if events.len() < 2 {
        events.extend(bob_poll.poll(5_000).await);
    }
    assert_eq!(
        events,
        [
            json!({"type": "joined", "conversation_id": pair, "large": true}),
            json!({"type": "large", "conversation_id": pair})
        ]
    );
    // Past the bound already: no news.
    http.add_member(&alice, pair, "dave").await;
    http_send(&http, &alice, pair, "a1", "four of us").await;
    let events = bob_poll.until_seq(pair, 1).await;
    assert!(
        events.iter().all(|event| event["type"] != "large"),
        "{events:?}"
    );
}
