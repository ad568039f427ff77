//! Messenger features over real sockets: edits, deletes, reactions and replies as lane events,
//! delivery and read receipts, typing (provably never stored), presence, and a second device
//! that was offline during all of it converging with the first.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{Http, RawWs, start_with_config};
use lanes_test_support::TestServer;
use serde_json::{Value, json};

/// Sends a lane event and returns its ack, or the error answering it.
async fn append(ws: &mut RawWs, frame: Value) -> Value {
    let id = frame["client_msg_id"].clone();
    ws.send(frame).await;
    loop {
        let answer = ws.frame().await;
        if (answer["type"] == "ack" && answer["client_msg_id"] == id)
            || (answer["type"] == "error" && answer["request_id"] == id)
        {
            return answer;
        }
    }
}

async fn error_code(ws: &mut RawWs) -> String {
    let (error, _) = ws.until("error").await;
    error["code"].as_str().unwrap().to_owned()
}

/// The next `receipts` frame of `conversation`, as user → (delivered_seq, read_seq).
async fn receipts(ws: &mut RawWs, conversation: u64) -> BTreeMap<String, (u64, Option<u64>)> {
    loop {
        let (frame, _) = ws.until("receipts").await;
        if frame["conversation_id"] == conversation {
            return positions(&frame);
        }
    }
}

fn positions(frame: &Value) -> BTreeMap<String, (u64, Option<u64>)> {
    frame["receipts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|receipt| {
            (
                receipt["user_id"].as_str().unwrap().to_owned(),
                (
                    receipt["delivered_seq"].as_u64().unwrap(),
                    receipt["read_seq"].as_u64(),
                ),
            )
        })
        .collect()
}

/// Bytes of every file of the store (the `-shm` index is shared memory, not storage).
fn stored_files(server: &TestServer) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(server.data_dir())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| !path.to_string_lossy().ends_with("-shm"))
        .map(|path| {
            let bytes = std::fs::read(&path).unwrap_or_default();
            (path.to_string_lossy().into_owned(), bytes)
        })
        .collect()
}

/// The files once the store has settled: the background checkpointer copies committed pages
/// into the database file within ~100 ms of a write, and nothing changes after that until the
/// next write.
async fn settled_files(server: &TestServer) -> BTreeMap<String, Vec<u8>> {
    let mut files = stored_files(server);
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = stored_files(server);
        if now == files {
            return files;
        }
        files = now;
    }
    panic!("the store's files kept changing with nothing written");
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle.as_bytes())
}

/// A message as a client shows it: (body, deleted, edited, reactions emoji → users).
type Shown = (String, bool, bool, BTreeMap<String, Vec<String>>);

/// A client's view of a conversation, built only from frames in seq order: what every device
/// must converge to.
#[derive(Debug, Default, PartialEq)]
struct View {
    messages: BTreeMap<u64, Shown>,
    head: u64,
}

impl View {
    fn apply(&mut self, frame: &Value) {
        // Live and catch-up frames say `"type": "message"`; history entries are bare.
        assert!(
            frame["type"] == "message" || frame["type"].is_null(),
            "{frame}"
        );
        let seq = frame["seq"].as_u64().unwrap();
        assert_eq!(seq, self.head + 1, "gap-free, in order: {frame}");
        self.head = seq;
        let target = frame["target_seq"].as_u64();
        let sender = frame["sender_id"].as_str().unwrap().to_owned();
        match frame["kind"].as_str().unwrap() {
            "message" => {
                let reactions = frame["reactions"]
                    .as_array()
                    .map(|all| {
                        all.iter()
                            .map(|reaction| {
                                let users = reaction["user_ids"]
                                    .as_array()
                                    .unwrap()
                                    .iter()
                                    .map(|user| user.as_str().unwrap().to_owned())
                                    .collect();
                                (reaction["emoji"].as_str().unwrap().to_owned(), users)
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                self.messages.insert(
                    seq,
                    (
                        frame["body"].as_str().unwrap().to_owned(),
                        frame["deleted"] == true,
                        frame["edited_at"].is_number(),
                        reactions,
                    ),
                );
            }
            "edit" => {
                let message = self.messages.get_mut(&target.unwrap()).unwrap();
                if frame["deleted"] != true {
                    message.0 = frame["body"].as_str().unwrap().to_owned();
                }
                message.2 = true;
            }
            "delete" => {
                let message = self.messages.get_mut(&target.unwrap()).unwrap();
                *message = (String::new(), true, message.2, BTreeMap::new());
            }
            kind @ ("reaction_add" | "reaction_remove") => {
                let message = self.messages.get_mut(&target.unwrap()).unwrap();
                let users = message
                    .3
                    .entry(frame["emoji"].as_str().unwrap().to_owned())
                    .or_default();
                users.retain(|user| *user != sender);
                if kind == "reaction_add" {
                    users.push(sender);
                    users.sort();
                } else if users.is_empty() {
                    message.3.remove(frame["emoji"].as_str().unwrap());
                }
            }
            other => panic!("unknown kind {other}"),
        }
    }
}

#[tokio::test]
async fn edits_deletes_reactions_and_replies_are_lane_events() {
    let (server, http, _config) = start_with_config("");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let carol = http.register("carol").await;
    let conversation = http.direct(&alice, "bob").await;
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let (mut bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    // Bob's second device only watches: it receives his events as messages, not acks.
    let (mut bob_tablet, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    let (mut carol_ws, _) = RawWs::hello(&server.ws_url(), &carol, json!([]), None).await;
    let event = |id: &str, fields: Value| {
        let mut frame = json!({"client_msg_id": id, "conversation_id": conversation});
        frame
            .as_object_mut()
            .unwrap()
            .extend(fields.as_object().unwrap().clone());
        frame
    };

    let secret = "the secret plan is 42";
    let sent = append(
        &mut alice_ws,
        event("a1", json!({"type": "send", "body": secret})),
    )
    .await;
    assert_eq!(sent["seq"], 1);
    let reply = append(
        &mut bob_ws,
        event(
            "b1",
            json!({"type": "send", "body": "really?", "reply_to": 1}),
        ),
    )
    .await;
    assert_eq!(reply["seq"], 2);
    let thumbs = json!({"type": "react", "target_seq": 1, "emoji": "👍"});
    assert_eq!(
        append(&mut bob_ws, event("b2", thumbs.clone())).await["seq"],
        3
    );
    let edited_text = "the edited plan is 43";
    let edit = json!({"type": "edit", "target_seq": 1, "body": edited_text});
    assert_eq!(
        append(&mut alice_ws, event("a2", edit.clone())).await["seq"],
        4
    );
    // A retried edit is the same event.
    assert_eq!(append(&mut alice_ws, event("a2", edit)).await["seq"], 4);

    // Bad input: typed errors, nothing written.
    let refused = [
        (
            false,
            event(
                "b3",
                json!({"type": "edit", "target_seq": 1, "body": "mine now"}),
            ),
            "forbidden",
        ),
        (
            false,
            event("b4", json!({"type": "delete", "target_seq": 1})),
            "forbidden",
        ),
        (
            false,
            event(
                "b5",
                json!({"type": "react", "target_seq": 1, "emoji": ":+1:"}),
            ),
            "invalid_field",
        ),
        (
            false,
            event(
                "b6",
                json!({"type": "react", "target_seq": 99, "emoji": "👍"}),
            ),
            "invalid_field",
        ),
        (
            false,
            event(
                "b7",
                json!({"type": "react", "target_seq": 3, "emoji": "👍"}),
            ),
            "invalid_field",
        ),
        (false, event("b8", thumbs.clone()), "conflict"),
        (
            false,
            event("b9", json!({"type": "send", "body": "x", "reply_to": 50})),
            "invalid_field",
        ),
        (
            true,
            event(
                "c1",
                json!({"type": "react", "target_seq": 1, "emoji": "👍"}),
            ),
            "not_found",
        ),
    ];
    for (from_carol, frame, code) in refused {
        let ws = if from_carol {
            &mut carol_ws
        } else {
            &mut bob_ws
        };
        let answer = append(ws, frame.clone()).await;
        assert_eq!(answer["type"], "error", "{frame} → {answer}");
        assert_eq!(answer["code"], code, "{frame} → {answer}");
    }
    let deleted = append(
        &mut alice_ws,
        event("a3", json!({"type": "delete", "target_seq": 1})),
    )
    .await;
    assert_eq!(deleted["seq"], 5);
    let again = append(
        &mut alice_ws,
        event(
            "a4",
            json!({"type": "edit", "target_seq": 1, "body": "resurrect"}),
        ),
    )
    .await;
    assert_eq!(again["code"], "conflict");

    // Bob's other device saw every event live, in seq order, each with its kind.
    let mut live = Vec::new();
    while live.len() < 5 {
        let frame = bob_tablet.frame().await;
        assert_ne!(frame["type"], "error", "{frame}");
        if frame["type"] == "message" {
            live.push(frame);
        }
    }
    let kinds: Vec<(u64, &str)> = live
        .iter()
        .map(|frame| {
            (
                frame["seq"].as_u64().unwrap(),
                frame["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            (1, "message"),
            (2, "message"),
            (3, "reaction_add"),
            (4, "edit"),
            (5, "delete")
        ]
    );
    assert_eq!(live[1]["reply_to"], 1);
    assert_eq!(live[2]["emoji"], "👍");
    assert_eq!(live[3]["target_seq"], 1);
    assert_eq!(live[3]["body"], edited_text);

    // History: every seq kept; the deleted message and its edit have no text left.
    let (status, history) = http
        .call(
            "GET",
            &format!("/v1/conversations/{conversation}/messages"),
            Some(&bob),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let history = history["messages"].as_array().unwrap().clone();
    let mut view = View::default();
    for frame in &history {
        view.apply(frame);
    }
    assert_eq!(view.head, 5);
    assert_eq!(
        view.messages[&1],
        (String::new(), true, true, BTreeMap::new())
    );
    assert_eq!(history[1]["reply_to"], 1);
    assert_eq!(history[3]["body"], "", "the edit's text is gone");
    assert_eq!(history[3]["deleted"], true);

    // And gone from the files on disk, not just from what the API shows.
    for (path, bytes) in stored_files(&server) {
        assert!(!contains(&bytes, secret), "{path} still holds the text");
        assert!(
            !contains(&bytes, edited_text),
            "{path} still holds the edit"
        );
    }
    server.assert_clean_log();
}

#[tokio::test]
async fn receipts_show_delivered_and_read_and_hidden_reads_stay_hidden() {
    let (server, http, _config) = start_with_config("[realtime]\nreceipts_flush_ms = 10\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let carol = http.register("carol").await;
    let direct = http.direct(&alice, "bob").await;
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let (mut bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    for i in 1..=3 {
        alice_ws
            .send_message(direct, &format!("m{i}"), &format!("hello {i}"))
            .await;
    }
    bob_ws.until_message_seq(3).await;
    let unread = |http: &Http, token: String| {
        let http = Http::new(&http.base);
        async move {
            let (_, view) = http
                .call(
                    "GET",
                    &format!("/v1/conversations/{direct}"),
                    Some(&token),
                    None,
                )
                .await;
            (view["unread_count"].as_u64(), view["read_seq"].as_u64())
        }
    };
    assert_eq!(unread(&http, bob.clone()).await, (Some(3), Some(0)));

    // 1:1: sent → delivered → read.
    bob_ws
        .send(json!({"type": "received", "conversation_id": direct, "seq": 3}))
        .await;
    assert_eq!(
        receipts(&mut alice_ws, direct).await,
        BTreeMap::from([("bob".into(), (3, Some(0)))])
    );
    bob_ws
        .send(json!({"type": "read", "conversation_id": direct, "seq": 2}))
        .await;
    assert_eq!(receipts(&mut alice_ws, direct).await["bob"], (3, Some(2)));
    // Backwards is a no-op; beyond what bob holds is refused.
    bob_ws
        .send(json!({"type": "read", "conversation_id": direct, "seq": 1}))
        .await;
    bob_ws
        .send(json!({"type": "read", "conversation_id": direct, "seq": 9}))
        .await;
    assert_eq!(error_code(&mut bob_ws).await, "invalid_field");
    bob_ws
        .send(json!({"type": "read", "conversation_id": direct, "seq": 3}))
        .await;
    assert_eq!(
        receipts(&mut alice_ws, direct).await["bob"],
        (3, Some(3)),
        "the next change after the backwards read is the forward one"
    );
    assert_eq!(unread(&http, bob.clone()).await, (Some(0), Some(3)));

    // A sender who reconnects sees where its messages stand now.
    alice_ws.close().await;
    let (mut alice_ws, caught_up) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let snapshot = caught_up
        .iter()
        .find(|frame| frame["type"] == "receipts")
        .expect("receipts after catch-up");
    assert_eq!(
        positions(snapshot),
        BTreeMap::from([("bob".into(), (3, Some(3)))])
    );

    // Groups: delivered counts, and a member who hides read receipts.
    let (status, _) = http
        .call(
            "PUT",
            "/v1/me/settings",
            Some(&carol),
            Some(json!({"hide_read_receipts": true})),
        )
        .await;
    assert_eq!(status, 200);
    let group = http
        .group(&alice, "trio", &["bob".into(), "carol".into()])
        .await;
    alice_ws.until("joined").await;
    let (mut carol_ws, _) = RawWs::hello(&server.ws_url(), &carol, json!([]), None).await;
    let (mut carol_laptop, _) = RawWs::hello(&server.ws_url(), &carol, json!([]), None).await;
    bob_ws.until("joined").await;
    alice_ws.send_message(group, "g1", "team").await;
    bob_ws.until_message_seq(1).await;
    carol_ws.until_message_seq(1).await;
    bob_ws
        .send(json!({"type": "received", "conversation_id": group, "seq": 1}))
        .await;
    carol_ws
        .send(json!({"type": "read", "conversation_id": group, "seq": 1}))
        .await;
    let mut seen = BTreeMap::new();
    while seen.len() < 2 {
        seen.extend(receipts(&mut alice_ws, group).await);
    }
    let delivered = seen
        .values()
        .filter(|(delivered, _)| *delivered >= 1)
        .count();
    assert_eq!(delivered, 2, "delivered to both others: {seen:?}");
    assert_eq!(seen["carol"], (1, None), "carol's read position is hidden");
    assert_eq!(seen["bob"], (1, Some(0)));
    // Carol's own other device sees her read position (multi-device sync).
    loop {
        let mine = receipts(&mut carol_laptop, group).await;
        if let Some(position) = mine.get("carol") {
            assert_eq!(*position, (1, Some(1)));
            break;
        }
    }
    server.assert_clean_log();
}

/// A committer that lingers for more sends (`commit_linger_micros`) still commits them (its
/// timer was once made outside the runtime and panicked the committer).
#[tokio::test]
async fn a_lingering_committer_stores_sends() {
    let (server, http, _config) =
        start_with_config("commit_linger_micros = 2000\n[realtime]\nreceipts_flush_ms = 10\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let direct = http.direct(&alice, "bob").await;
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let (mut bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    for i in 1..=3 {
        alice_ws
            .send_message(direct, &format!("l{i}"), &format!("linger {i}"))
            .await;
    }
    bob_ws.until_message_seq(3).await;
    bob_ws
        .send(json!({"type": "read", "conversation_id": direct, "seq": 3}))
        .await;
    assert_eq!(receipts(&mut alice_ws, direct).await["bob"], (3, Some(3)));
    server.assert_clean_log();
}

/// `joined` tells a member added while connected whether the conversation is large (more than
/// `receipts_members_max` members), as `synced` does for the ones it had, and a `large` frame
/// tells the members online when an add takes a group past the bound (only then).
#[tokio::test]
async fn joined_and_large_say_whether_the_conversation_is_large() {
    let (server, http, _config) = start_with_config("[realtime]\nreceipts_members_max = 2\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let dave = http.register("dave").await;
    let (mut dave_ws, _) = RawWs::hello(&server.ws_url(), &dave, json!([]), None).await;
    let pair = http.group(&alice, "pair", &["dave".into()]).await;
    let (joined, _) = dave_ws.until("joined").await;
    assert_eq!(joined["conversation_id"], pair);
    assert!(joined.get("large").is_none(), "two members: {joined}");
    let trio = http
        .group(&alice, "trio", &["bob".into(), "dave".into()])
        .await;
    let (joined, _) = dave_ws.until("joined").await;
    assert_eq!(
        (&joined["conversation_id"], &joined["large"]),
        (&json!(trio), &json!(true))
    );
    // Added to a group that grew past the bound: counted after the add.
    http.add_member(&alice, pair, "bob").await;
    // Dave was in `pair` as it crossed the bound.
    let (large, _) = dave_ws.until("large").await;
    assert_eq!(large, json!({"type": "large", "conversation_id": pair}));
    let (mut bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    http.remove_member(&alice, pair, "bob").await;
    bob_ws.until("left").await;
    http.add_member(&alice, pair, "bob").await;
    let (joined, _) = bob_ws.until("joined").await;
    assert_eq!(
        (&joined["conversation_id"], &joined["large"]),
        (&json!(pair), &json!(true))
    );
    // Crossed again: everyone online hears it, the new member too.
    let (large, _) = bob_ws.until("large").await;
    assert_eq!(large["conversation_id"], pair);
    let (large, _) = dave_ws.until("large").await;
    assert_eq!(large["conversation_id"], pair);
    // An add to a group already past the bound is no news to its members.
    http.register("erin").await;
    http.add_member(&alice, pair, "erin").await;
    let mut dave_sends = RawWs::hello(&server.ws_url(), &dave, json!([]), None)
        .await
        .0;
    dave_sends.send_message(pair, "d1", "after erin").await;
    for ws in [&mut dave_ws, &mut bob_ws] {
        let (_, skipped) = ws.until("message").await;
        assert!(
            skipped.iter().all(|frame| frame["type"] != "large"),
            "{skipped:?}"
        );
    }
}

/// The members online hear who joins and leaves a group of at most `receipts_members_max`
/// members (`member_added`, `member_removed`, with the count); the joining member hears only its
/// `joined`, and changes past the bound are not announced (the crossing add says `large`).
#[tokio::test]
async fn members_hear_who_joins_and_leaves_a_small_group() {
    let (server, http, _config) = start_with_config("[realtime]\nreceipts_members_max = 3\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let carol = http.register("carol").await;
    http.register("dave").await;
    http.register("erin").await;
    let team = http.group(&alice, "team", &["bob".into()]).await;
    let (mut bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    let (mut carol_ws, _) = RawWs::hello(&server.ws_url(), &carol, json!([]), None).await;
    let (http, alice_token) = (&http, &alice);
    let add = |user_id: &'static str| http.add_member(alice_token, team, user_id);
    let remove = |user_id: &'static str| http.remove_member(alice_token, team, user_id);
    add("carol").await;
    let (added, _) = bob_ws.until("member_added").await;
    assert_eq!(
        added,
        json!({"type": "member_added", "conversation_id": team, "user_id": "carol",
               "role": "member", "member_count": 3})
    );
    carol_ws.until("joined").await;
    // Carol leaves by herself.
    let (status, body) = http
        .call(
            "POST",
            &format!("/v1/conversations/{team}/leave"),
            Some(&carol),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let (removed, _) = bob_ws.until("member_removed").await;
    assert_eq!(
        removed,
        json!({"type": "member_removed", "conversation_id": team, "user_id": "carol",
               "member_count": 2})
    );
    add("carol").await;
    let (added, _) = bob_ws.until("member_added").await;
    assert_eq!(added["member_count"], 3);
    // The fourth member takes the group past the bound: `large`, not `member_added`; then no
    // news until it is back within the bound.
    add("dave").await;
    let (_, skipped) = bob_ws.until("large").await;
    assert!(
        skipped.iter().all(|frame| frame["type"] != "member_added"),
        "{skipped:?}"
    );
    add("erin").await;
    remove("erin").await;
    remove("dave").await;
    let (removed, skipped) = bob_ws.until("member_removed").await;
    assert_eq!(
        (&removed["user_id"], &removed["member_count"]),
        (&json!("dave"), &json!(3))
    );
    assert!(
        skipped
            .iter()
            .all(|frame| !frame["type"].as_str().unwrap_or("").starts_with("member_")),
        "{skipped:?}"
    );
    // Carol heard of none of her own joins.
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    alice_ws.send_message(team, "a1", "all here").await;
    let (_, skipped) = carol_ws.until("message").await;
    let about_carol = skipped
        .iter()
        .filter(|frame| frame["type"] == "member_added" && frame["user_id"] == "carol");
    assert_eq!(about_carol.count(), 0, "{skipped:?}");
}

/// Past `realtime.receipts_members_max` members a position goes only to its own user's devices
/// (live and after catch-up), the welcome says where that starts, and the receipts endpoint
/// still has everyone's.
#[tokio::test]
async fn large_groups_share_only_own_receipts() {
    let (server, http, _config) =
        start_with_config("[realtime]\nreceipts_flush_ms = 10\nreceipts_members_max = 2\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    http.register("carol").await;
    // Created first, so in a flush that has both the group's frame would go out first.
    let group = http
        .group(&alice, "trio", &["bob".into(), "carol".into()])
        .await;
    let direct = http.direct(&alice, "bob").await;
    let mut alice_ws = RawWs::connect(&server.ws_url()).await;
    alice_ws
        .send(json!({"type": "hello", "token": alice, "cursors": []}))
        .await;
    let welcome = alice_ws.frame().await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["receipts_members_max"], 2);
    let (synced, _) = alice_ws.until("synced").await;
    assert_eq!(
        synced["large"],
        json!([group]),
        "the group is large, the direct conversation is not"
    );
    let (status, page) = http
        .call(
            "POST",
            "/v1/events",
            Some(&alice),
            Some(json!({"cursors": [], "timeout_ms": 0})),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["receipts_members_max"], 2,
        "a poll says it as welcome does"
    );
    assert!(page.get("large").is_none(), "only when asked: {page}");
    let (status, page) = http
        .call(
            "POST",
            "/v1/events",
            Some(&alice),
            Some(json!({"cursors": [], "timeout_ms": 0, "sync": true})),
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        page["large"],
        json!([group]),
        "a first poll learns what synced says"
    );
    let (mut bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    let (mut bob_laptop, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    alice_ws.send_message(group, "g1", "team").await;
    alice_ws.send_message(direct, "d1", "just us").await;
    bob_ws.until_message_seq(1).await;
    bob_ws.until_message_seq(1).await;
    // The next receipts frame of `ws` is the direct conversation's, none of the group before it.
    async fn next_is_direct(ws: &mut RawWs, direct: u64) -> BTreeMap<String, (u64, Option<u64>)> {
        let (frame, skipped) = ws.until("receipts").await;
        assert_eq!(frame["conversation_id"], direct, "{frame}");
        assert!(
            skipped.iter().all(|frame| frame["type"] != "receipts"),
            "{skipped:?}"
        );
        positions(&frame)
    }
    let bob_in_direct = |position| BTreeMap::from([("bob".to_owned(), position)]);
    // Delivered positions in the group go to no one (not even bob's other device)…
    for kind in ["received", "read"] {
        bob_ws
            .send(json!({"type": kind, "conversation_id": group, "seq": 1}))
            .await;
        bob_ws
            .send(json!({"type": kind, "conversation_id": direct, "seq": 1}))
            .await;
        let position = if kind == "read" {
            (1, Some(1))
        } else {
            (1, Some(0))
        };
        if kind == "received" {
            assert_eq!(
                next_is_direct(&mut bob_laptop, direct).await,
                bob_in_direct(position)
            );
        } else {
            // …a read one to bob's devices only (it syncs his unread count).
            assert_eq!(
                receipts(&mut bob_laptop, group).await,
                BTreeMap::from([("bob".into(), (1, Some(1)))])
            );
        }
        assert_eq!(
            next_is_direct(&mut alice_ws, direct).await,
            bob_in_direct(position)
        );
    }
    // After a reconnect: the same split.
    alice_ws.close().await;
    let (_alice_ws, caught_up) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let snapshots: Vec<&Value> = caught_up
        .iter()
        .filter(|frame| frame["type"] == "receipts")
        .collect();
    assert_eq!(snapshots.len(), 1, "{snapshots:?}");
    assert_eq!(snapshots[0]["conversation_id"], direct);
    let (_bob_phone, caught_up) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    let own = caught_up
        .iter()
        .find(|frame| frame["type"] == "receipts" && frame["conversation_id"] == group)
        .expect("bob's own position in the group after catch-up");
    assert_eq!(
        positions(own),
        BTreeMap::from([("bob".into(), (1, Some(1)))])
    );
    // Asked for, every member's.
    let (status, list) = http
        .call(
            "GET",
            &format!("/v1/conversations/{group}/receipts"),
            Some(&alice),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list["receipts"][0]["user_id"], "bob", "{list}");
    server.assert_clean_log();
}

#[tokio::test]
async fn typing_is_announced_expires_is_rate_limited_and_never_stored() {
    let (server, http, _config) = start_with_config(
        "[realtime]\ntyping_ttl_ms = 400\ntyping_starts_per_sec = 1\ntyping_starts_burst = 3\n",
    );
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    http.register("carol").await;
    let direct = http.direct(&alice, "bob").await;
    let other = http.direct(&bob, "carol").await;
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let (mut bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    let files_before = settled_files(&server).await;

    let typing = |state: &str| json!({"type": "typing", "conversation_id": direct, "state": state});
    alice_ws.send(typing("start")).await;
    let (frame, _) = bob_ws.until("typing").await;
    assert_eq!(
        frame,
        json!({"type": "typing", "conversation_id": direct, "user_id": "alice", "state": "start"})
    );
    alice_ws.send(typing("stop")).await;
    assert_eq!(bob_ws.until("typing").await.0["state"], "stop");
    // A start that is not refreshed expires by itself.
    alice_ws.send(typing("start")).await;
    assert_eq!(bob_ws.until("typing").await.0["state"], "start");
    assert_eq!(bob_ws.until("typing").await.0["state"], "stop");
    // The sender never hears its own typing.
    alice_ws.assert_no_frames_before_pong().await;
    // Not a member: nothing learned.
    alice_ws
        .send(json!({"type": "typing", "conversation_id": other, "state": "start"}))
        .await;
    assert_eq!(error_code(&mut alice_ws).await, "not_found");
    // Bursts past the limit are refused with a hint.
    for _ in 0..4 {
        alice_ws.send(typing("start")).await;
    }
    let (limited, _) = alice_ws.until("error").await;
    assert_eq!(limited["code"], "rate_limited");
    assert!(limited["retry_after_ms"].as_u64().unwrap() > 0);

    // None of it touched the store.
    assert_eq!(stored_files(&server), files_before, "typing was written");
    server.assert_clean_log();
}

#[tokio::test]
async fn typing_goes_nowhere_where_too_many_members_are_online() {
    let (server, http, _config) = start_with_config("[realtime]\ntyping_online_max = 2\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let carol = http.register("carol").await;
    let direct = http.direct(&alice, "bob").await;
    let group = http
        .group(&alice, "three", &["bob".to_owned(), "carol".to_owned()])
        .await;
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let (mut bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    let typing = |conversation: u64, state: &str| json!({"type": "typing", "conversation_id": conversation, "state": state});
    // Two of the group's three online: announced, as in the direct conversation.
    alice_ws.send(typing(group, "start")).await;
    let (frame, _) = bob_ws.until("typing").await;
    assert_eq!(frame["conversation_id"], group);
    alice_ws.send(typing(group, "stop")).await;
    assert_eq!(bob_ws.until("typing").await.0["state"], "stop");
    // All three online: accepted (no error), told to no one.
    let (mut carol_ws, _) = RawWs::hello(&server.ws_url(), &carol, json!([]), None).await;
    alice_ws.send(typing(group, "start")).await;
    alice_ws.send(typing(direct, "start")).await;
    let (frame, _) = bob_ws.until("typing").await;
    assert_eq!(
        frame["conversation_id"], direct,
        "the group's start reached bob: {frame}"
    );
    alice_ws.assert_no_frames_before_pong().await;
    carol_ws.assert_no_frames_before_pong().await;
    server.assert_clean_log();
}

/// A user online when the server stops gracefully is last seen then, not never: after the
/// restart a watcher sees them offline with that time (the grace period, a minute here, never
/// ran out to record it the usual way).
#[tokio::test]
async fn a_graceful_stop_records_who_was_last_seen() {
    let (mut server, http, _config) = start_with_config("[realtime]\npresence_grace_ms = 60000\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    http.direct(&alice, "bob").await;
    let (alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let before_stop = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(server.stop(), "a graceful stop exits cleanly");
    drop(alice_ws);
    server.restart();
    let (mut bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    bob_ws
        .send(json!({"type": "watch_presence", "user_ids": ["alice"]}))
        .await;
    let (frame, _) = bob_ws.until("presence").await;
    let alice_seen = &frame["users"][0];
    assert_eq!(alice_seen["state"], "offline", "{frame}");
    let last_seen = alice_seen["last_seen"].as_u64();
    assert!(
        last_seen.is_some_and(|at| at >= before_stop),
        "alice's last-seen time ({last_seen:?}) is not the stop's ({before_stop}): {frame}"
    );
    server.assert_clean_log();
}

#[tokio::test]
async fn presence_is_watched_coalesced_private_and_does_not_flap() {
    let (server, http, _config) =
        start_with_config("[realtime]\npresence_grace_ms = 1500\npresence_flush_ms = 50\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let carol = http.register("carol").await;
    http.direct(&alice, "bob").await;
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    alice_ws
        .send(json!({"type": "watch_presence", "user_ids": ["bob", "carol", "nobody"]}))
        .await;
    let (first, _) = alice_ws.until("presence").await;
    assert_eq!(
        first["users"],
        json!([{"user_id": "bob", "state": "offline"}]),
        "carol shares no conversation with alice; unknown users are not revealed"
    );

    let state = |frame: &Value| {
        let users = frame["users"].as_array().unwrap();
        assert_eq!(users.len(), 1, "{frame}");
        assert_eq!(users[0]["user_id"], "bob");
        users[0]["state"].as_str().unwrap().to_owned()
    };
    let (bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    assert_eq!(state(&alice_ws.until("presence").await.0), "online");
    let mut bob_ws = bob_ws;
    bob_ws
        .send(json!({"type": "presence", "state": "away"}))
        .await;
    assert_eq!(state(&alice_ws.until("presence").await.0), "away");
    // A quick reconnect within the grace period: no offline in between.
    bob_ws.close().await;
    let (mut bob_ws, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    assert_eq!(state(&alice_ws.until("presence").await.0), "online");
    // Five changes within one flush interval reach alice coalesced; then bob goes for good:
    // offline after the grace period (a later flush), with a last-seen time.
    for flip in ["away", "online", "away", "online", "away"] {
        bob_ws
            .send(json!({"type": "presence", "state": flip}))
            .await;
    }
    bob_ws.close().await;
    let mut burst = Vec::new();
    let gone = loop {
        let (frame, _) = alice_ws.until("presence").await;
        if state(&frame) == "offline" {
            break frame;
        }
        burst.push(state(&frame));
    };
    assert!(
        !burst.is_empty() && burst.len() <= 2 && burst.last().unwrap() == "away",
        "one burst of changes, coalesced: {burst:?}"
    );
    assert!(gone["users"][0]["last_seen"].as_i64().unwrap() > 0);

    // Someone who shares nothing with bob learns nothing about him.
    let (mut carol_ws, _) = RawWs::hello(&server.ws_url(), &carol, json!([]), None).await;
    carol_ws
        .send(json!({"type": "watch_presence", "user_ids": ["bob", "alice"]}))
        .await;
    assert_eq!(carol_ws.until("presence").await.0["users"], json!([]));
    server.assert_clean_log();
}

#[tokio::test]
async fn a_device_that_was_offline_converges_with_the_one_that_was_not() {
    let (server, http, _config) = start_with_config("[realtime]\nreceipts_flush_ms = 10\n");
    let alice = http.register("alice").await;
    let bob = http.register("bob").await;
    let direct = http.direct(&alice, "bob").await;
    let (mut alice_ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let (mut phone, _) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    alice_ws.send_message(direct, "a1", "first").await;
    // The laptop has seq 1, then goes offline.
    let (laptop, caught_up) = RawWs::hello(&server.ws_url(), &bob, json!([]), None).await;
    let mut laptop_view = View::default();
    for frame in caught_up.iter().filter(|frame| frame["type"] == "message") {
        laptop_view.apply(frame);
    }
    laptop.close().await;
    let epoch = http.epoch().await;

    // Meanwhile: messages, an edit, reactions from both sides, a delete, a read marker.
    alice_ws.send_message(direct, "a2", "second").await;
    alice_ws.send_message(direct, "a3", "third").await;
    let edit = json!({"type": "edit", "client_msg_id": "a4", "conversation_id": direct, "target_seq": 2, "body": "second, edited"});
    assert_eq!(append(&mut alice_ws, edit).await["type"], "ack");
    for (id, emoji) in [("p1", "🎉"), ("p2", "❤️")] {
        let react = json!({"type": "react", "client_msg_id": id, "conversation_id": direct, "target_seq": 2, "emoji": emoji});
        assert_eq!(append(&mut phone, react).await["type"], "ack");
    }
    let unreact = json!({"type": "react", "client_msg_id": "p3", "conversation_id": direct, "target_seq": 2, "emoji": "🎉", "remove": true});
    assert_eq!(append(&mut phone, unreact).await["type"], "ack");
    let delete = json!({"type": "delete", "client_msg_id": "a5", "conversation_id": direct, "target_seq": 3});
    assert_eq!(append(&mut alice_ws, delete).await["type"], "ack");
    phone.until_message_seq(8).await;
    phone
        .send(json!({"type": "read", "conversation_id": direct, "seq": 8}))
        .await;
    assert_eq!(receipts(&mut alice_ws, direct).await["bob"], (8, Some(8)));

    // The phone's view, from the whole history; the laptop's, from its cursor on.
    let (_, history) = http
        .call(
            "GET",
            &format!("/v1/conversations/{direct}/messages"),
            Some(&bob),
            None,
        )
        .await;
    let mut phone_view = View::default();
    for frame in history["messages"].as_array().unwrap() {
        phone_view.apply(frame);
    }
    let (_, caught_up) = RawWs::hello(
        &server.ws_url(),
        &bob,
        json!([{"conversation_id": direct, "seq": 1}]),
        epoch.as_deref(),
    )
    .await;
    for frame in caught_up.iter().filter(|frame| frame["type"] == "message") {
        laptop_view.apply(frame);
    }
    assert_eq!(laptop_view, phone_view);
    assert_eq!(laptop_view.head, 8);
    let message = &laptop_view.messages[&2];
    assert_eq!(message.0, "second, edited");
    assert_eq!(
        message.3,
        BTreeMap::from([("❤️".to_owned(), vec!["bob".to_owned()])])
    );
    assert!(laptop_view.messages[&3].1, "deleted");
    // And the read marker came along.
    let snapshot = caught_up
        .iter()
        .find(|frame| frame["type"] == "receipts")
        .expect("receipts after catch-up");
    assert_eq!(positions(snapshot)["bob"], (8, Some(8)));
    server.assert_clean_log();
}
