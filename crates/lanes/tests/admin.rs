//! The admin API over real HTTP, as an application backend uses it: API-key authentication,
//! users, conversations, members and system messages, without any user session.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Http, RawWs};
use lanes_test_support::TestServer;
use serde_json::json;

const KEY: &str = "test-admin-key-0123456789abcdef0123456789";

fn start() -> (TestServer, Http, tempfile::NamedTempFile) {
    common::start_with_config(&format!("[admin]\napi_keys = [\"{KEY}\"]\n"))
}

/// Creates `user` (no password) over the admin API.
async fn create_user(http: &Http, user: &str) {
    let (status, body) = http
        .call(
            "POST",
            "/v1/admin/users",
            Some(KEY),
            Some(json!({"user_id": user})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn an_application_backend_sets_up_users_and_conversations_and_posts() {
    let (server, http, _config) = start();
    let admin = Some(KEY);
    for (user, password) in [
        ("alice", Some("alice-password")),
        ("bob", None),
        ("carol", None),
    ] {
        let (status, body) = http
            .call(
                "POST",
                "/v1/admin/users",
                admin,
                Some(json!({"user_id": user, "password": password})),
            )
            .await;
        assert_eq!(
            (status, body["user_id"].as_str()),
            (201, Some(user)),
            "{body}"
        );
    }
    let (status, body) = http
        .call(
            "POST",
            "/v1/admin/users",
            admin,
            Some(json!({"user_id": "bob"})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (409, Some("conflict")));
    // A user created with a password logs in with it.
    let (status, session) = http
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "alice", "password": "alice-password"})),
        )
        .await;
    assert_eq!(status, 200, "{session}");
    let alice = session["token"].as_str().unwrap().to_owned();

    let (status, group) = http
        .call(
            "POST",
            "/v1/admin/conversations",
            admin,
            Some(json!({"kind": "group", "name": "support", "owner": "alice", "members": ["bob"]})),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let group_id = group["conversation_id"].as_u64().unwrap();
    assert_eq!(
        group["members"][0],
        json!({"user_id": "alice", "role": "owner"})
    );
    let (status, direct) = http
        .call(
            "POST",
            "/v1/admin/conversations",
            admin,
            Some(json!({"kind": "direct", "members": ["alice", "carol"]})),
        )
        .await;
    assert_eq!(status, 201, "{direct}");

    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let (status, _) = http
        .call(
            "POST",
            &format!("/v1/admin/conversations/{group_id}/members"),
            admin,
            Some(json!({"user_id": "carol"})),
        )
        .await;
    assert_eq!(status, 204);
    let post = json!({"client_msg_id": "welcome-1", "body": "Welcome to support!"});
    let (status, ack) = http
        .call(
            "POST",
            &format!("/v1/admin/conversations/{group_id}/messages"),
            admin,
            Some(post.clone()),
        )
        .await;
    assert_eq!((status, ack["seq"].as_u64()), (200, Some(1)), "{ack}");
    // Idempotent like any send.
    let (_, again) = http
        .call(
            "POST",
            &format!("/v1/admin/conversations/{group_id}/messages"),
            admin,
            Some(post),
        )
        .await;
    assert_eq!(again, ack);
    let (message, _) = alice_ws.until_message_seq(1).await;
    assert_eq!(message["kind"], "system");
    assert_eq!(message["sender_id"], "@system");
    assert_eq!(message["body"], "Welcome to support!");
    let history = http.history(&alice, group_id).await;
    assert_eq!(history, [(1, "Welcome to support!".to_owned())]);

    // Refused: bad keys, user tokens, reserved ids, malformed conversations.
    let no_key = http
        .call(
            "POST",
            "/v1/admin/users",
            None,
            Some(json!({"user_id": "dave"})),
        )
        .await;
    assert_eq!(
        (no_key.0, no_key.1["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let user_token = http
        .call(
            "POST",
            "/v1/admin/users",
            Some(&alice),
            Some(json!({"user_id": "dave"})),
        )
        .await;
    assert_eq!(user_token.0, 401);
    let reserved = http
        .call(
            "POST",
            "/v1/admin/users",
            admin,
            Some(json!({"user_id": "@system"})),
        )
        .await;
    assert_eq!(
        (reserved.0, reserved.1["code"].as_str()),
        (400, Some("invalid_field"))
    );
    let lonely = http
        .call(
            "POST",
            "/v1/admin/conversations",
            admin,
            Some(json!({"kind": "direct", "members": ["alice"]})),
        )
        .await;
    assert_eq!(lonely.0, 400);
    let missing = http
        .call(
            "POST",
            "/v1/admin/conversations/999/messages",
            admin,
            Some(json!({"client_msg_id": "x", "body": "hi"})),
        )
        .await;
    assert_eq!(
        (missing.0, missing.1["code"].as_str()),
        (404, Some("not_found"))
    );
    let (status, body) = http
        .call(
            "POST",
            "/v1/register",
            None,
            Some(json!({"username": "@admin", "password": "long enough password"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("invalid_field"))
    );
    server.assert_clean_log();
}

#[tokio::test]
async fn the_admin_api_is_off_without_keys() {
    let server = TestServer::start(env!("CARGO_BIN_EXE_lanes"));
    let http = Http::new(&server.base_url());
    let (status, body) = http
        .call(
            "POST",
            "/v1/admin/users",
            Some(KEY),
            Some(json!({"user_id": "dave"})),
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    server.assert_clean_log();
}

/// `@system` is one sender for every backend and conversation: its posts are not held to a
/// user's send rate, and an id already used in another conversation is a conflict, not an ack
/// of a post that was never stored.
#[tokio::test]
async fn system_posts_have_no_user_rate_and_ids_do_not_cross_conversations() {
    let (server, http, _config) = common::start_with_config(&format!(
        "[admin]\napi_keys = [\"{KEY}\"]\n[rate_limits]\nsends = {{ per_sec = 1, burst = 2 }}\n"
    ));
    let alice = http.register("alice").await;
    http.register("bob").await;
    let first = http.direct(&alice, "bob").await;
    let second = http.group(&alice, "team", &["bob".to_owned()]).await;
    let post = |conversation: u64, id: String| {
        let http = &http;
        async move {
            http.call(
                "POST",
                &format!("/v1/admin/conversations/{conversation}/messages"),
                Some(KEY),
                Some(json!({"client_msg_id": id, "body": "notice"})),
            )
            .await
        }
    };
    for n in 0..6 {
        let (status, ack) = post(first, format!("notice-{n}")).await;
        assert_eq!((status, ack["seq"].as_u64()), (200, Some(n + 1)), "{ack}");
    }
    // Users still are limited: two sends, then rate_limited.
    let send = |n: u64| {
        let http = &http;
        let alice = &alice;
        async move {
            http.call(
                "POST",
                &format!("/v1/conversations/{second}/messages"),
                Some(alice),
                Some(json!({"client_msg_id": format!("a-{n}"), "body": "hi"})),
            )
            .await
            .0
        }
    };
    assert_eq!(
        [send(0).await, send(1).await, send(2).await],
        [200, 200, 429]
    );
    // The same id in another conversation: refused, and nothing stored there.
    let (status, body) = post(second, "notice-0".to_owned()).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    assert_eq!(http.history(&alice, second).await.len(), 2);
    // In its own conversation the id is still a retry, answered with the original ack.
    let (status, ack) = post(first, "notice-0".to_owned()).await;
    assert_eq!((status, ack["seq"].as_u64()), (200, Some(1)), "{ack}");
    server.assert_clean_log();
}

#[tokio::test]
async fn admin_adds_follow_the_same_rules_as_user_adds() {
    let (server, http, _config) = common::start_with_config(&format!(
        "[admin]\napi_keys = [\"{KEY}\"]\n[limits]\nconversations_per_user_max = 1\n"
    ));
    let admin = Some(KEY);
    for user in ["alice", "bob", "carol"] {
        create_user(&http, user).await;
    }
    let create =
        |body: serde_json::Value| http.call("POST", "/v1/admin/conversations", admin, Some(body));
    let (_, direct) = create(json!({"kind": "direct", "members": ["alice", "bob"]})).await;
    let (_, group) = create(json!({"kind": "group", "name": "g", "owner": "carol"})).await;
    let add = |conversation: u64, user: &'static str| {
        let path = format!("/v1/admin/conversations/{conversation}/members");
        let http = Http::new(&http.base);
        async move {
            http.call("POST", &path, admin, Some(json!({"user_id": user})))
                .await
        }
    };
    let (direct, group) = (
        direct["conversation_id"].as_u64().unwrap(),
        group["conversation_id"].as_u64().unwrap(),
    );
    // Direct conversations have fixed members.
    let (status, body) = add(direct, "dave").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("forbidden")),
        "{body}"
    );
    // Alice is already in as many conversations as allowed.
    let (status, body) = add(group, "alice").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("conflict")),
        "{body}"
    );
    let (status, body) = add(999, "dave").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (404, Some("not_found")),
        "{body}"
    );
    server.assert_clean_log();
}

/// A listing names at most 100 members of a large group (the caller first) and counts them all;
/// so does the group's own view, and the members endpoint pages the rest.
#[tokio::test]
async fn a_listing_names_at_most_a_hundred_members_and_counts_all() {
    let (_server, http, _config) = start();
    let admin = Some(KEY);
    let mut members = Vec::new();
    for n in 0..120 {
        let user = format!("u{n:03}");
        create_user(&http, &user).await;
        members.push(user);
    }
    let (status, _) = http
        .call(
            "POST",
            "/v1/admin/users",
            admin,
            Some(json!({"user_id": "zoe", "password": "zoe-password"})),
        )
        .await;
    assert_eq!(status, 201);
    members.push("zoe".to_owned());
    let (status, group) = http
        .call(
            "POST",
            "/v1/admin/conversations",
            admin,
            Some(
                json!({"kind": "group", "name": "crowd", "owner": "u000", "members": members[1..]}),
            ),
        )
        .await;
    assert_eq!(status, 201, "{group}");
    let group_id = group["conversation_id"].as_u64().unwrap();
    let (_, session) = http
        .call(
            "POST",
            "/v1/login",
            None,
            Some(json!({"username": "zoe", "password": "zoe-password"})),
        )
        .await;
    let zoe = session["token"].as_str().unwrap().to_owned();

    let (status, list) = http
        .call("GET", "/v1/conversations", Some(&zoe), None)
        .await;
    assert_eq!(status, 200);
    let listed = &list["conversations"][0];
    assert_eq!(listed["member_count"], 121, "{listed}");
    let names: Vec<&str> = listed["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|member| member["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 100);
    assert_eq!(names[0], "zoe", "the caller first");
    assert_eq!(names[1..], members[..99], "then the others by user id");
    let (status, whole) = http
        .call(
            "GET",
            &format!("/v1/conversations/{group_id}"),
            Some(&zoe),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(whole["members"], listed["members"], "capped as the listing");
    assert_eq!(whole["member_count"], 121);
    let (status, rest) = http
        .call(
            "GET",
            &format!(
                "/v1/conversations/{group_id}/members?after={}&limit=1000",
                names[99]
            ),
            Some(&zoe),
            None,
        )
        .await;
    assert_eq!(status, 200, "{rest}");
    // u099…u119 and zoe.
    assert_eq!(rest["members"].as_array().unwrap().len(), 22, "{rest}");
    assert_eq!(rest["has_more"], false);
}
