//! The authorization matrix: for every HTTP route and WebSocket frame that names a
//! conversation, an outsider, a removed member and an anonymous client are refused, and an
//! outsider's answer about an existing conversation is byte-for-byte the answer about one that
//! does not exist: nobody learns that a conversation exists.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Http, RawWs};
use lanes_test_support::TestServer;
use serde_json::{Value, json};

/// A conversation id that does not exist.
const MISSING: u64 = 987_654;

/// Every route naming a conversation `{c}`: (method, path, body).
fn routes(c: u64) -> Vec<(&'static str, String, Option<Value>)> {
    let base = format!("/v1/conversations/{c}");
    vec![
        ("GET", base.clone(), None),
        (
            "POST",
            format!("{base}/members"),
            Some(json!({"user_id": "mallory"})),
        ),
        ("DELETE", format!("{base}/members/alice"), None),
        ("POST", format!("{base}/leave"), None),
        ("GET", format!("{base}/messages"), None),
        ("GET", format!("{base}/messages?after=0"), None),
        (
            "POST",
            format!("{base}/messages"),
            Some(json!({"client_msg_id": format!("m-{c}"), "body": "let me in"})),
        ),
        (
            "POST",
            format!("{base}/messages/1/edit"),
            Some(json!({"client_msg_id": format!("e-{c}"), "body": "mine"})),
        ),
        (
            "POST",
            format!("{base}/messages/1/delete"),
            Some(json!({"client_msg_id": format!("d-{c}")})),
        ),
        (
            "POST",
            format!("{base}/messages/1/reactions"),
            Some(json!({"client_msg_id": format!("r-{c}"), "emoji": "👍"})),
        ),
        ("POST", format!("{base}/received"), Some(json!({"seq": 1}))),
        ("POST", format!("{base}/read"), Some(json!({"seq": 1}))),
        ("GET", format!("{base}/receipts"), None),
        (
            "POST",
            format!("{base}/typing"),
            Some(json!({"state": "start"})),
        ),
    ]
}

/// Every WebSocket frame naming a conversation `{c}`.
fn frames(c: u64) -> Vec<Value> {
    vec![
        json!({"type": "send", "client_msg_id": format!("ws-m-{c}"), "conversation_id": c, "body": "hi"}),
        json!({"type": "edit", "client_msg_id": format!("ws-e-{c}"), "conversation_id": c, "target_seq": 1, "body": "x"}),
        json!({"type": "delete", "client_msg_id": format!("ws-d-{c}"), "conversation_id": c, "target_seq": 1}),
        json!({"type": "react", "client_msg_id": format!("ws-r-{c}"), "conversation_id": c, "target_seq": 1, "emoji": "👍"}),
        json!({"type": "received", "conversation_id": c, "seq": 1}),
        json!({"type": "read", "conversation_id": c, "seq": 1}),
        json!({"type": "typing", "conversation_id": c, "state": "start"}),
    ]
}

/// The answer to one frame: the error frame, with the ids that differ by construction removed.
async fn answer(ws: &mut RawWs, frame: Value) -> Value {
    ws.send(frame).await;
    let (mut error, _) = ws.until("error").await;
    let request_id = error["request_id"]
        .as_str()
        .map(|id| id.replace(&MISSING.to_string(), "C"));
    error["request_id"] = json!(request_id);
    error
}

/// Replaces the conversation id in a message so answers about two ids can be compared.
fn normalized(value: &Value, c: u64) -> Value {
    serde_json::from_str(&value.to_string().replace(&c.to_string(), "C")).unwrap()
}

#[tokio::test]
async fn outsiders_removed_members_and_anonymous_clients_learn_nothing() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let http = Http::new(&server.base_url());
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let mallory = http.register("mallory").await;
    let trudy = http.register("trudy").await;
    // Other conversations first, so the group's id is not a digit that also appears in the
    // seqs the answers mention (answers are compared with the id replaced).
    for other in ["bob", "mallory", "trudy"] {
        http.direct(&alice, other).await;
    }
    let group = http
        .group(&alice, "secret", &["bob".into(), "trudy".into()])
        .await;
    assert_eq!(group, 4);
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    alice_ws.send_message(group, "a1", "the plan").await;
    // Trudy was a member; now she is not.
    let (status, _) = http
        .call(
            "DELETE",
            &format!("/v1/conversations/{group}/members/trudy"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 204);
    alice_ws.send_message(group, "a2", "after trudy").await;

    for (who, token) in [("mallory", &mallory), ("trudy", &trudy)] {
        // HTTP: refused, and the same answer as for a conversation that does not exist.
        for ((method, path, body), (_, missing_path, missing_body)) in
            routes(group).into_iter().zip(routes(MISSING))
        {
            let (status, error) = http.call(method, &path, Some(token), body).await;
            let (missing_status, missing_error) = http
                .call(method, &missing_path, Some(token), missing_body)
                .await;
            assert!(status >= 400, "{who} {method} {path}: {status} {error}");
            assert_eq!(
                (status, normalized(&error, group)),
                (missing_status, normalized(&missing_error, MISSING)),
                "{who} {method} {path} tells an existing conversation from a missing one"
            );
        }
        // WebSocket frames: the same.
        let (mut ws, caught_up) = RawWs::hello(
            &server.ws_url(),
            token,
            json!([{"conversation_id": group, "seq": 0}]),
            None,
        )
        .await;
        assert!(
            caught_up
                .iter()
                .all(|frame| frame["conversation_id"] != group),
            "{who} caught up on the group: {caught_up:?}"
        );
        for (frame, missing_frame) in frames(group).into_iter().zip(frames(MISSING)) {
            let got = normalized(&answer(&mut ws, frame.clone()).await, group);
            let missing = normalized(&answer(&mut ws, missing_frame).await, MISSING);
            assert_eq!(got, missing, "{who}: {frame}");
        }
        // Presence of the group's members is not visible (bob shares nothing else with them;
        // alice does, through the direct conversations above).
        ws.send(json!({"type": "watch_presence", "user_ids": ["bob"]}))
            .await;
        let (presence, _) = ws.until("presence").await;
        assert_eq!(presence["users"], json!([]), "{who} sees presence");
        // A poll with a cursor on the group returns nothing of it.
        let (status, page) = http
            .call(
                "GET",
                &format!("/v1/events?cursors={group}:0&timeout_ms=0"),
                Some(token),
                None,
            )
            .await;
        assert_eq!(status, 200);
        assert!(
            page["events"]
                .as_array()
                .unwrap()
                .iter()
                .all(|event| event["conversation_id"] != group),
            "{who} polled the group: {page}"
        );
        // The listing does not mention it.
        let (_, list) = http
            .call("GET", "/v1/conversations", Some(token), None)
            .await;
        assert!(
            list["conversations"]
                .as_array()
                .unwrap()
                .iter()
                .all(|conversation| conversation["conversation_id"] != group),
            "{who} lists the group"
        );
        ws.close().await;
    }

    // Anonymous: every route that needs a user is refused with 401.
    for (method, path, body) in routes(group).into_iter().chain([
        ("GET", "/v1/conversations".to_owned(), None),
        ("GET", "/v1/events?timeout_ms=0".to_owned(), None),
        ("GET", "/v1/presence?user_ids=alice".to_owned(), None),
        (
            "POST",
            "/v1/presence".to_owned(),
            Some(json!({"state": "away"})),
        ),
        ("GET", "/v1/me/settings".to_owned(), None),
    ]) {
        let (status, error) = http.call(method, &path, None, body).await;
        assert_eq!(
            (status, error["code"].as_str()),
            (401, Some("unauthorized")),
            "anonymous {method} {path}"
        );
    }
    // A frame before hello is refused.
    let mut anonymous = RawWs::connect(&server.ws_url()).await;
    for frame in frames(group) {
        let error = answer(&mut anonymous, frame.clone()).await;
        assert_eq!(error["code"], "unauthorized", "{frame}");
    }
    // Members are unaffected: bob still reads both messages.
    let history = http.history(&bob, group).await;
    assert_eq!(history.len(), 2);
    server.assert_clean_log();
}
