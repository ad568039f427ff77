//! The Rust SDK (`lanes-client`) against the real binary: delivery to every device, resume from
//! cursors, sends across SIGKILL/SIGTERM restarts, membership events, definite errors, and the
//! messenger features (receipts, replies, reactions, edits, deletes, typing, presence).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lanes_client::{
    AckFrame, Client, ClientConfig, ClientError, ConversationId, Cursor, ErrorCode, Event,
    EventKind, Events, HttpApi, MessageFrame, PresenceState, Seq, Transport, TypingState, UserId,
};
use lanes_test_support::TestServer;
use tokio::sync::mpsc;

/// Longest wait for one expected event, result or response.
const WAIT: Duration = Duration::from_secs(20);
const PASSWORD: &str = "correct horse battery";

async fn within<T>(what: &str, future: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, future)
        .await
        .unwrap_or_else(|_| panic!("timed out after {WAIT:?} waiting for {what}"))
}

fn start() -> TestServer {
    TestServer::start(env!("CARGO_BIN_EXE_lanes"))
}

/// A registered user: its id, token and an HTTP handle authenticated as it.
struct User {
    id: UserId,
    token: String,
    api: HttpApi,
}

async fn register(server: &TestServer, name: &str) -> User {
    let anonymous = HttpApi::new(&server.base_url());
    let session = within("register", anonymous.register(name, PASSWORD))
        .await
        .unwrap_or_else(|err| panic!("register {name}: {err}"));
    assert_eq!(session.user_id.as_str(), name);
    User {
        api: anonymous.with_token(&session.token),
        id: session.user_id,
        token: session.token,
    }
}

/// Fast reconnects, so that a restart costs the tests little time.
fn config(server: &TestServer, user: &User) -> ClientConfig {
    let mut config = ClientConfig::new(&server.base_url(), &user.token);
    config.backoff_base = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(500);
    config
}

/// The next event other than receipts, which arrive whenever positions move (the clients
/// confirm what they receive); these tests are about messages.
async fn next_event(events: &mut Events) -> Event {
    loop {
        match within("an event", events.next()).await {
            Some(Event::Receipts { .. }) => continue,
            Some(event) => return event,
            None => panic!("events ended while an event was expected"),
        }
    }
}

/// The next event, which must be a message.
async fn next_message(events: &mut Events) -> MessageFrame {
    match next_event(events).await {
        Event::Message(message) => message,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Connects with `config` and takes `Connected`, the catch-up and `Synced`; returns the
/// messages caught up. Nothing else may come in between.
async fn connect_synced(config: ClientConfig, user: &User) -> (Client, Events, Vec<MessageFrame>) {
    let (client, mut events) = within("connect", Client::connect(config))
        .await
        .unwrap_or_else(|err| panic!("connect {}: {err}", user.id));
    match next_event(&mut events).await {
        Event::Connected { user_id, .. } => assert_eq!(user_id, user.id),
        other => panic!("expected Connected, got {other:?}"),
    }
    let mut caught_up = Vec::new();
    loop {
        match next_event(&mut events).await {
            Event::Synced => return (client, events, caught_up),
            Event::Message(message) => caught_up.push(message),
            other => panic!("expected catch-up or Synced, got {other:?}"),
        }
    }
}

async fn send(client: &Client, conversation_id: ConversationId, body: &str) -> AckFrame {
    within("an ack", client.send(conversation_id, body))
        .await
        .unwrap_or_else(|err| panic!("send {body:?}: {err}"))
}

/// The whole history of a conversation, paged with `history_after`.
async fn history(api: &HttpApi, conversation_id: ConversationId) -> Vec<MessageFrame> {
    let mut all: Vec<MessageFrame> = Vec::new();
    loop {
        let after = all.last().map_or(Seq::ZERO, |message| message.seq);
        let page = within(
            "a history page",
            api.history_after(conversation_id, after, 64),
        )
        .await
        .expect("history");
        let more = page.has_more;
        assert!(
            !more || !page.messages.is_empty(),
            "has_more with an empty page"
        );
        all.extend(page.messages);
        if !more {
            return all;
        }
    }
}

fn seqs(messages: &[MessageFrame]) -> Vec<u64> {
    messages.iter().map(|message| message.seq.0).collect()
}

fn bodies(messages: &[MessageFrame]) -> Vec<&str> {
    messages
        .iter()
        .map(|message| message.body.as_str())
        .collect()
}

fn assert_api_error(result: Result<impl std::fmt::Debug, ClientError>, expected: ErrorCode) {
    match result {
        Err(ClientError::Api { code, message, .. }) => {
            assert_eq!(code, expected, "{message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected an {expected:?} error, got {other:?}"),
    }
}

#[tokio::test]
async fn one_to_one_over_the_sdk() {
    let server = start();
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let direct = within("create direct", alice.api.create_direct(&bob.id))
        .await
        .unwrap();
    let conversation_id = direct.conversation_id;
    let (alice_client, mut alice_events, caught_up) =
        connect_synced(config(&server, &alice), &alice).await;
    assert!(caught_up.is_empty());
    let (bob_client, mut bob_events, caught_up) = connect_synced(config(&server, &bob), &bob).await;
    assert!(caught_up.is_empty());

    let ack = send(&alice_client, conversation_id, "hello bob").await;
    assert_eq!(ack.seq, Seq(1));
    assert_eq!(ack.conversation_id, conversation_id);
    let message = next_message(&mut bob_events).await;
    assert_eq!(message.conversation_id, conversation_id);
    assert_eq!(message.seq, Seq(1));
    assert_eq!(message.body, "hello bob");
    assert_eq!(message.sender_id, alice.id);
    assert_eq!(message.message_id, ack.message_id);
    assert_eq!(message.client_msg_id, ack.client_msg_id);
    assert_eq!(message.server_ts, ack.server_ts);

    let reply = send(&bob_client, conversation_id, "hi alice").await;
    assert_eq!(reply.seq, Seq(2));
    // Alice's own message comes back to her too, before the reply.
    let own = next_message(&mut alice_events).await;
    assert_eq!((own.seq, own.body.as_str()), (Seq(1), "hello bob"));
    let received = next_message(&mut alice_events).await;
    assert_eq!((received.seq, received.body.as_str()), (Seq(2), "hi alice"));
    assert_eq!(received.sender_id, bob.id);
    assert_eq!(
        alice_client.cursors(),
        vec![Cursor {
            conversation_id,
            seq: Seq(2)
        }]
    );
    alice_client.close().await;
    bob_client.close().await;
    server.assert_clean_log();
}

#[tokio::test]
async fn two_devices_of_one_user_both_receive() {
    let server = start();
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let conversation_id = within("create direct", alice.api.create_direct(&bob.id))
        .await
        .unwrap()
        .conversation_id;
    let (alice_phone, mut alice_phone_events, _) =
        connect_synced(config(&server, &alice), &alice).await;
    let (_alice_laptop, mut alice_laptop_events, _) =
        connect_synced(config(&server, &alice), &alice).await;
    let (_bob_phone, mut bob_phone_events, _) = connect_synced(config(&server, &bob), &bob).await;
    let (bob_laptop, mut bob_laptop_events, _) = connect_synced(config(&server, &bob), &bob).await;

    let ack = send(&alice_phone, conversation_id, "from alice's phone").await;
    for (device, events) in [
        ("alice's phone", &mut alice_phone_events),
        ("alice's laptop", &mut alice_laptop_events),
        ("bob's phone", &mut bob_phone_events),
        ("bob's laptop", &mut bob_laptop_events),
    ] {
        let message = next_message(events).await;
        assert_eq!(message.body, "from alice's phone", "{device}");
        assert_eq!(message.seq, Seq(1), "{device}");
        assert_eq!(message.message_id, ack.message_id, "{device}");
        assert_eq!(message.sender_id, alice.id, "{device}");
    }

    let ack = send(&bob_laptop, conversation_id, "from bob's laptop").await;
    assert_eq!(ack.seq, Seq(2));
    for (device, events) in [
        ("alice's phone", &mut alice_phone_events),
        ("alice's laptop", &mut alice_laptop_events),
        ("bob's phone", &mut bob_phone_events),
        ("bob's laptop", &mut bob_laptop_events),
    ] {
        let message = next_message(events).await;
        assert_eq!(message.body, "from bob's laptop", "{device}");
        assert_eq!(message.seq, Seq(2), "{device}");
        assert_eq!(message.sender_id, bob.id, "{device}");
    }
    server.assert_clean_log();
}

#[tokio::test]
async fn offline_then_resume_from_cursor() {
    const EARLY: u64 = 5;
    const MISSED: u64 = 30;
    let server = start();
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let conversation_id = within("create direct", alice.api.create_direct(&bob.id))
        .await
        .unwrap()
        .conversation_id;
    let (alice_client, _alice_events, _) = connect_synced(config(&server, &alice), &alice).await;
    let (bob_client, mut bob_events, _) = connect_synced(config(&server, &bob), &bob).await;

    for i in 1..=EARLY {
        send(&alice_client, conversation_id, &format!("early {i}")).await;
    }
    for i in 1..=EARLY {
        let message = next_message(&mut bob_events).await;
        assert_eq!((message.seq, message.body), (Seq(i), format!("early {i}")));
    }
    let cursors = bob_client.cursors();
    let epoch = bob_client.epoch();
    assert_eq!(
        cursors,
        vec![Cursor {
            conversation_id,
            seq: Seq(EARLY)
        }]
    );
    assert!(epoch.is_some());
    within("close", bob_client.close()).await;
    assert_eq!(within("events to end", bob_events.next()).await, None);

    for i in 1..=MISSED {
        send(&alice_client, conversation_id, &format!("missed {i}")).await;
    }

    let mut resume = config(&server, &bob);
    resume.cursors = cursors;
    resume.epoch = epoch.clone();
    let (bob_client, mut bob_events) = within("reconnect", Client::connect(resume)).await.unwrap();
    assert_eq!(
        next_event(&mut bob_events).await,
        Event::Connected {
            user_id: bob.id.clone(),
            epoch: epoch.unwrap(),
            receipts_members_max: 100,
        }
    );
    // Exactly the missed messages, in order: nothing at or below the cursor comes again.
    for i in 1..=MISSED {
        let message = next_message(&mut bob_events).await;
        assert_eq!(
            (message.seq, message.body),
            (Seq(EARLY + i), format!("missed {i}"))
        );
    }
    assert_eq!(next_event(&mut bob_events).await, Event::Synced);
    let ack = send(&alice_client, conversation_id, "live").await;
    let message = next_message(&mut bob_events).await;
    assert_eq!(message.seq, Seq(EARLY + MISSED + 1));
    assert_eq!(message.message_id, ack.message_id);
    assert_eq!(message.body, "live");
    assert_eq!(
        bob_client.cursors(),
        vec![Cursor {
            conversation_id,
            seq: Seq(EARLY + MISSED + 1)
        }]
    );
    server.assert_clean_log();
}

/// How the server goes down in [`sends_survive_a_restart`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outage {
    Kill,
    Stop,
}

/// Alice has `TOTAL` sends in flight when the server goes down and comes back on the same port
/// and data; a few more are started while it is down. Every send resolves with an ack, the
/// history holds each body once at seqs 1..=TOTAL, and bob, connected throughout, sees each
/// message once, in seq order.
async fn sends_survive_a_restart(outage: Outage) {
    sends_survive_a_restart_over(outage, Transport::Auto).await;
}

async fn sends_survive_a_restart_over(outage: Outage, transport: Transport) {
    const TOTAL: usize = 200;
    const WHILE_DOWN: usize = 40;
    let mut server = start();
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let conversation_id = within("create direct", alice.api.create_direct(&bob.id))
        .await
        .unwrap()
        .conversation_id;
    let configure = |user: &User| {
        let mut config = config(&server, user);
        config.transport = transport;
        config
    };
    let (alice_client, _alice_events, _) = connect_synced(configure(&alice), &alice).await;
    let (_bob_client, mut bob_events, _) = connect_synced(configure(&bob), &bob).await;

    let (resolved_sender, mut resolved) = mpsc::unbounded_channel();
    let spawn_send = |i: usize| {
        let client = alice_client.clone();
        let resolved_sender = resolved_sender.clone();
        tokio::spawn(async move {
            let result = client.send(conversation_id, &format!("send {i}")).await;
            let _ = resolved_sender.send((i, result));
        });
    };
    for i in 0..TOTAL - WHILE_DOWN {
        spawn_send(i);
    }
    let mut acks: HashMap<usize, AckFrame> = HashMap::new();
    let mut take = |(i, result): (usize, Result<AckFrame, ClientError>)| {
        let ack = result.unwrap_or_else(|err| panic!("send {i} failed: {err}"));
        assert!(acks.insert(i, ack).is_none(), "send {i} resolved twice");
    };
    // Mid-way: the first ack is in, most sends are not.
    take(within("the first ack", resolved.recv()).await.unwrap());
    match outage {
        Outage::Kill => server.kill(),
        Outage::Stop => assert!(server.stop(), "graceful exit; log:\n{}", server.log_text()),
    }
    // These wait in the client until it has reconnected.
    for i in TOTAL - WHILE_DOWN..TOTAL {
        spawn_send(i);
    }
    drop(resolved_sender);
    server.restart();
    while let Some(outcome) = within("the remaining acks", resolved.recv()).await {
        take(outcome);
    }
    assert_eq!(acks.len(), TOTAL);

    let stored = history(&alice.api, conversation_id).await;
    assert_eq!(seqs(&stored), (1..=TOTAL as u64).collect::<Vec<_>>());
    let distinct: HashSet<&str> = bodies(&stored).into_iter().collect();
    assert_eq!(distinct.len(), TOTAL, "a body stored twice");
    for (i, ack) in &acks {
        let message = &stored[usize::try_from(ack.seq.0 - 1).unwrap()];
        assert_eq!(message.body, format!("send {i}"), "ack {ack:?}");
        assert_eq!(message.message_id, ack.message_id);
        assert_eq!(message.client_msg_id, ack.client_msg_id);
    }

    // Bob: every message once, in seq order; the outage shows as a disconnect and a reconnect.
    let mut received: Vec<MessageFrame> = Vec::new();
    let mut lifecycle: Vec<String> = Vec::new();
    while received.len() < TOTAL || lifecycle.last().map(String::as_str) != Some("synced") {
        match next_event(&mut bob_events).await {
            Event::Message(message) => received.push(message),
            Event::Connected {
                user_id,
                receipts_members_max,
                ..
            } => {
                assert_eq!(user_id, bob.id);
                assert_eq!(
                    receipts_members_max, 100,
                    "the server's default, on either transport"
                );
                lifecycle.push("connected".into());
            }
            Event::Synced => lifecycle.push("synced".into()),
            Event::Disconnected { .. } => lifecycle.push("disconnected".into()),
            Event::ServerError(error) => lifecycle.push(format!("error {}", error.code.as_str())),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seqs(&received), seqs(&stored));
    assert_eq!(bodies(&received), bodies(&stored));
    let expected_lifecycle: &[&str] = match outage {
        Outage::Kill => &["disconnected", "connected", "synced"],
        Outage::Stop => &["error shutting_down", "disconnected", "connected", "synced"],
    };
    assert_eq!(
        lifecycle,
        expected_lifecycle,
        "server log:\n{}",
        server.log_text()
    );
    server.assert_clean_log();
}

// Multi-threaded: `TestServer` blocks while it kills, stops and restarts the process, and the
// SDK's tasks must keep running meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_survive_a_server_restart_without_duplicates() {
    sends_survive_a_restart(Outage::Kill).await;
}

// Both users long-poll (and send over HTTP) while the server is killed and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polling_sends_survive_a_server_restart_without_duplicates() {
    sends_survive_a_restart_over(Outage::Kill, Transport::LongPoll).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_then_restart() {
    sends_survive_a_restart(Outage::Stop).await;
}

#[tokio::test]
async fn removed_member_sees_left_and_nothing_after() {
    let server = start();
    let (alice, bob, carol, group, direct) = trio_and_direct(&server).await;
    let (alice_client, _alice_events, _) = connect_synced(config(&server, &alice), &alice).await;
    let (bob_client, mut bob_events, _) = connect_synced(config(&server, &bob), &bob).await;
    let (_carol_client, mut carol_events, _) =
        connect_synced(config(&server, &carol), &carol).await;

    send(&alice_client, group, "bob can see this").await;
    let message = next_message(&mut bob_events).await;
    assert_eq!(
        (message.conversation_id, message.body.as_str()),
        (group, "bob can see this")
    );

    within("remove bob", alice.api.remove_member(group, &bob.id))
        .await
        .unwrap();
    assert_eq!(next_event(&mut bob_events).await, Event::Left(group));

    send(&alice_client, group, "bob must not see this").await;
    assert_eq!(
        next_message(&mut carol_events).await.body,
        "bob can see this"
    );
    // The others hear that bob left, between the two messages.
    assert_eq!(
        next_event(&mut carol_events).await,
        Event::MemberRemoved {
            conversation_id: group,
            user_id: bob.id.clone(),
            member_count: 2
        }
    );
    assert_eq!(
        next_message(&mut carol_events).await.body,
        "bob must not see this"
    );
    // Carol has the group message, so its fan-out is done; a direct message sent after it is
    // the next thing bob may see.
    send(&alice_client, direct, "barrier").await;
    let message = next_message(&mut bob_events).await;
    assert_eq!(
        (message.conversation_id, message.body.as_str()),
        (direct, "barrier")
    );

    assert_api_error(
        within("a send to the group", bob_client.send(group, "still here?")).await,
        ErrorCode::NotFound,
    );
    assert_api_error(
        within("group history", bob.api.history_after(group, Seq::ZERO, 10)).await,
        ErrorCode::NotFound,
    );
    assert_eq!(
        bodies(&history(&carol.api, group).await),
        ["bob can see this", "bob must not see this"]
    );
    server.assert_clean_log();
}

#[tokio::test]
async fn joined_while_connected_gets_history_without_gap() {
    let server = start();
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let carol = register(&server, "carol").await;
    let group = within(
        "create group",
        alice
            .api
            .create_group("team", std::slice::from_ref(&carol.id)),
    )
    .await
    .unwrap()
    .conversation_id;
    let (alice_client, _alice_events, _) = connect_synced(config(&server, &alice), &alice).await;
    for i in 1..=3 {
        send(&alice_client, group, &format!("early {i}")).await;
    }
    let (_bob_client, mut bob_events, caught_up) =
        connect_synced(config(&server, &bob), &bob).await;
    assert!(caught_up.is_empty(), "{caught_up:?}");

    within("add bob", alice.api.add_member(group, &bob.id, None))
        .await
        .unwrap();
    assert_eq!(next_event(&mut bob_events).await, Event::Joined(group));
    for i in 1..=3 {
        let message = next_message(&mut bob_events).await;
        assert_eq!(message.conversation_id, group);
        assert_eq!((message.seq, message.body), (Seq(i), format!("early {i}")));
    }
    let ack = send(&alice_client, group, "live 4").await;
    let message = next_message(&mut bob_events).await;
    assert_eq!((message.seq, message.body.as_str()), (Seq(4), "live 4"));
    assert_eq!(message.message_id, ack.message_id);
    server.assert_clean_log();
}

/// alice, bob and carol, alice's group of the three, and alice's direct conversation with bob.
async fn trio_and_direct(
    server: &TestServer,
) -> (User, User, User, ConversationId, ConversationId) {
    let alice = register(server, "alice").await;
    let bob = register(server, "bob").await;
    let carol = register(server, "carol").await;
    let group = within(
        "create group",
        alice
            .api
            .create_group("team", &[bob.id.clone(), carol.id.clone()]),
    )
    .await
    .unwrap()
    .conversation_id;
    let direct = within("create direct", alice.api.create_direct(&bob.id))
        .await
        .unwrap()
        .conversation_id;
    (alice, bob, carol, group, direct)
}

/// The code of an API error (anything else fails the test).
fn api_code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Api { code, .. }) => code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn conversations_come_a_page_at_a_time() {
    let server = start();
    let alice = register(&server, "alice").await;
    for name in ["b0", "b1", "b2", "b3", "b4"] {
        let other = register(&server, name).await;
        within("create direct", alice.api.create_direct(&other.id))
            .await
            .unwrap();
    }
    let whole: Vec<ConversationId> = within("listing", alice.api.conversations())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.conversation_id)
        .collect();
    assert_eq!(whole.len(), 5);
    let (mut paged, mut after) = (Vec::new(), None::<String>);
    loop {
        let page = within("a page", alice.api.conversations_page(2, after.as_deref()))
            .await
            .unwrap();
        assert!(page.conversations.len() <= 2);
        paged.extend(page.conversations.iter().map(|c| c.conversation_id));
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    assert_eq!(paged, whole);
    for (limit, after) in [(0, None), (501, None), (2, Some("12")), (2, Some("x.1"))] {
        assert_eq!(
            api_code(alice.api.conversations_page(limit, after).await),
            ErrorCode::InvalidField,
            "limit {limit}, after {after:?}"
        );
    }
    server.assert_clean_log();
}

#[tokio::test]
async fn members_come_a_page_at_a_time() {
    let server = start();
    let owner = register(&server, "owner").await;
    let mut others = Vec::new();
    for name in ["m0", "m1", "m2", "m3"] {
        others.push(register(&server, name).await.id);
    }
    let outsider = register(&server, "outsider").await;
    let group = within("create group", owner.api.create_group("crowd", &others))
        .await
        .unwrap()
        .conversation_id;
    let mut seen = Vec::new();
    let mut after: Option<UserId> = None;
    loop {
        let page = within("members", owner.api.members(group, after.as_ref(), 2))
            .await
            .unwrap();
        assert!(page.members.len() <= 2);
        seen.extend(page.members.iter().map(|m| m.user_id.as_str().to_owned()));
        after = page.members.last().map(|m| m.user_id.clone());
        if !page.has_more {
            break;
        }
    }
    assert_eq!(seen, ["m0", "m1", "m2", "m3", "owner"]);
    assert_eq!(
        api_code(outsider.api.members(group, None, 10).await),
        ErrorCode::NotFound,
        "only members may look"
    );
    assert_eq!(
        api_code(owner.api.members(group, None, 0).await),
        ErrorCode::InvalidField
    );
    assert_eq!(
        api_code(owner.api.members(group, None, 1001).await),
        ErrorCode::InvalidField
    );
    let bad_after = reqwest::Client::new()
        .get(format!(
            "{}/v1/conversations/{group}/members?after=%20bad",
            server.base_url()
        ))
        .bearer_auth(&owner.token)
        .send()
        .await
        .unwrap();
    assert_eq!(bad_after.status(), 400);
    let body: serde_json::Value = bad_after.json().await.unwrap();
    assert_eq!(body["code"], "invalid_field", "{body}");
    server.assert_clean_log();
}

#[tokio::test]
async fn definite_errors_fail_the_send() {
    let server = start();
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let carol = register(&server, "carol").await;
    let direct = within("create direct", alice.api.create_direct(&bob.id))
        .await
        .unwrap()
        .conversation_id;
    let others = within(
        "create group",
        bob.api
            .create_group("without alice", std::slice::from_ref(&carol.id)),
    )
    .await
    .unwrap()
    .conversation_id;
    let (alice_client, _alice_events, _) = connect_synced(config(&server, &alice), &alice).await;

    let too_large = "x".repeat(16 * 1024 + 1);
    assert_api_error(
        within("a too large send", alice_client.send(direct, &too_large)).await,
        ErrorCode::MessageTooLarge,
    );
    assert_api_error(
        within(
            "a send to a group alice is not in",
            alice_client.send(others, "hi"),
        )
        .await,
        ErrorCode::NotFound,
    );
    assert_api_error(
        within(
            "a send to no conversation",
            alice_client.send(ConversationId(999_999), "hi"),
        )
        .await,
        ErrorCode::NotFound,
    );
    // Nothing was stored, and the client still works: the next send is seq 1.
    let exactly_the_limit = "y".repeat(16 * 1024);
    let ack = send(&alice_client, direct, &exactly_the_limit).await;
    assert_eq!(ack.seq, Seq(1));
    assert!(history(&bob.api, others).await.is_empty());
    assert_eq!(history(&bob.api, direct).await.len(), 1);

    let mut bad_token = config(&server, &alice);
    bad_token.token = "lt_not-a-real-token".into();
    assert_api_error(
        within("a refused connect", Client::connect(bad_token)).await,
        ErrorCode::Unauthorized,
    );
    server.assert_clean_log();
}

/// The next event for which `pick` returns something, skipping others (receipts included).
async fn next_matching<T>(events: &mut Events, mut pick: impl FnMut(Event) -> Option<T>) -> T {
    loop {
        let event = within("an event", events.next())
            .await
            .expect("events ended while an event was expected");
        if let Some(found) = pick(event) {
            return found;
        }
    }
}

#[tokio::test]
async fn messenger_features_over_the_sdk() {
    let server = start();
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let conversation_id = within("create direct", alice.api.create_direct(&bob.id))
        .await
        .unwrap()
        .conversation_id;
    let (alice_client, mut alice_events, _) = connect_synced(config(&server, &alice), &alice).await;
    let (bob_client, mut bob_events, _) = connect_synced(config(&server, &bob), &bob).await;

    // Bob's SDK confirms receipt by itself: alice sees "delivered".
    let first = send(&alice_client, conversation_id, "hello").await;
    assert_eq!(next_message(&mut bob_events).await.seq, first.seq);
    let delivered = next_matching(&mut alice_events, |event| match event {
        Event::Receipts { receipts, .. } => receipts
            .into_iter()
            .find(|receipt| receipt.user_id == bob.id && receipt.delivered_seq >= first.seq),
        _ => None,
    })
    .await;
    assert_eq!(delivered.read_seq, Some(Seq::ZERO));
    bob_client
        .mark_read(conversation_id, first.seq)
        .await
        .unwrap();
    next_matching(&mut alice_events, |event| match event {
        Event::Receipts { receipts, .. } => receipts
            .into_iter()
            .find(|receipt| receipt.user_id == bob.id && receipt.read_seq == Some(first.seq)),
        _ => None,
    })
    .await;

    // Reply, reaction, edit and delete arrive at bob as events of their kinds, in order.
    let reply = within("reply", bob_client.reply(conversation_id, first.seq, "hi!"))
        .await
        .unwrap();
    within(
        "react",
        alice_client.react(conversation_id, reply.seq, "👍", true),
    )
    .await
    .unwrap();
    within(
        "edit",
        alice_client.edit(conversation_id, first.seq, "hello there"),
    )
    .await
    .unwrap();
    within("delete", alice_client.delete(conversation_id, first.seq))
        .await
        .unwrap();
    let refused = within(
        "edit after delete",
        alice_client.edit(conversation_id, first.seq, "x"),
    )
    .await;
    assert_api_error(refused, ErrorCode::Conflict);
    let mut kinds = Vec::new();
    while kinds.len() < 4 {
        let message = next_message(&mut bob_events).await;
        kinds.push((message.seq.0, message.kind));
    }
    assert_eq!(
        kinds,
        [
            (2, EventKind::Message),
            (3, EventKind::ReactionAdd),
            (4, EventKind::Edit),
            (5, EventKind::Delete)
        ]
    );

    // Typing and presence.
    alice_client
        .watch_presence(vec![bob.id.clone()])
        .await
        .unwrap();
    let presence = next_matching(&mut alice_events, |event| match event {
        Event::Presence(users) => Some(users),
        _ => None,
    })
    .await;
    assert_eq!(presence.len(), 1);
    assert_eq!(presence[0].state, PresenceState::Online);
    bob_client.set_typing(conversation_id, true).await.unwrap();
    let (who, state) = next_matching(&mut alice_events, |event| match event {
        Event::Typing { user_id, state, .. } => Some((user_id, state)),
        _ => None,
    })
    .await;
    assert_eq!((who, state), (bob.id.clone(), TypingState::Start));
    server.assert_clean_log();
}

/// Over long-polling nothing pushes presence: the SDK asks for it when told to watch, then
/// every `presence_poll_interval`, and reports what changed.
/// A long-polling client's first poll asks which conversations are large, and the SDK confirms
/// delivery there on the large pace, as over a WebSocket.
#[tokio::test]
async fn long_polling_learns_the_large_conversations() {
    let config_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config_file.path(),
        "[realtime]\nreceipts_members_max = 2\nreceipts_flush_ms = 10\n",
    )
    .unwrap();
    let server = TestServer::start_with(
        env!("CARGO_BIN_EXE_lanes"),
        &["--config", config_file.path().to_str().unwrap()],
        &[],
    );
    let (alice, bob, _carol, group, direct) = trio_and_direct(&server).await;
    let mut polling = config(&server, &bob);
    polling.transport = Transport::LongPoll;
    polling.receipts_interval = Duration::from_millis(100);
    // Capped at a day: the first wait in a large conversation, a random part of it, outlasts
    // the test.
    polling.receipts_interval_large = Duration::MAX;
    let (_bob_client, mut bob_events, _) = connect_synced(polling, &bob).await;
    let (alice_client, _alice_events, _) = connect_synced(config(&server, &alice), &alice).await;
    send(&alice_client, group, "to the group").await;
    send(&alice_client, direct, "to bob").await;
    for _ in 0..2 {
        next_message(&mut bob_events).await;
    }
    let delivered_to_bob = |receipts: Vec<lanes_protocol::Receipt>| {
        receipts
            .into_iter()
            .find(|receipt| receipt.user_id == bob.id)
            .map_or(Seq::ZERO, |receipt| receipt.delivered_seq)
    };
    // The direct conversation is confirmed on the ordinary pace (the group's position would go
    // in the same batch, were the group not known as large)…
    within("bob's confirmation in the direct conversation", async {
        while delivered_to_bob(alice.api.receipts(direct).await.unwrap()) == Seq::ZERO {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // …the group's is not.
    assert_eq!(
        delivered_to_bob(alice.api.receipts(group).await.unwrap()),
        Seq::ZERO
    );
    server.assert_clean_log();
}

#[tokio::test]
async fn presence_is_polled_over_long_polling() {
    let config_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config_file.path(),
        "[realtime]\npresence_grace_ms = 100\npresence_flush_ms = 50\n",
    )
    .unwrap();
    let server = TestServer::start_with(
        env!("CARGO_BIN_EXE_lanes"),
        &["--config", config_file.path().to_str().unwrap()],
        &[],
    );
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    within("create direct", alice.api.create_direct(&bob.id))
        .await
        .unwrap();
    let mut polling = config(&server, &alice);
    polling.transport = Transport::LongPoll;
    polling.presence_poll_interval = Duration::from_millis(200);
    let (alice_client, mut alice_events, _) = connect_synced(polling, &alice).await;
    let (bob_client, _bob_events, _) = connect_synced(config(&server, &bob), &bob).await;
    alice_client
        .watch_presence(vec![bob.id.clone()])
        .await
        .unwrap();
    let presence = |state: PresenceState| {
        move |event: Event| match event {
            Event::Presence(users) => {
                assert_eq!(users.len(), 1, "{users:?}");
                assert_eq!(users[0].user_id.as_str(), "bob");
                (users[0].state == state).then_some(())
            }
            _ => None,
        }
    };
    next_matching(&mut alice_events, presence(PresenceState::Online)).await;
    // Polls that find nothing new say nothing.
    tokio::time::sleep(Duration::from_millis(700)).await;
    bob_client.close().await;
    // Only a change is reported: the first event after "online" must be "offline".
    let next = next_matching(&mut alice_events, |event| match event {
        Event::Presence(users) => Some(users),
        _ => None,
    })
    .await;
    assert_eq!(
        next.iter().map(|user| user.state).collect::<Vec<_>>(),
        [PresenceState::Offline],
        "{next:?}"
    );
    server.assert_clean_log();
}

/// An HTTP proxy that forwards plain requests to `upstream` and refuses every WebSocket upgrade
/// (403), as some corporate proxies do. Returns its base URL and how many upgrades it refused.
async fn websocket_blocking_proxy(upstream: String) -> (String, Arc<AtomicUsize>) {
    use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, UPGRADE};
    use axum::response::IntoResponse;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base_url = format!("http://{}", listener.local_addr().unwrap());
    let refused = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&refused);
    let client = reqwest::Client::new();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let (client, upstream, counter) = (client.clone(), upstream.clone(), Arc::clone(&counter));
        async move {
            if request.headers().contains_key(UPGRADE) {
                counter.fetch_add(1, Ordering::SeqCst);
                return (
                    axum::http::StatusCode::FORBIDDEN,
                    "websockets are blocked here",
                )
                    .into_response();
            }
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap();
            let path = parts.uri.path_and_query().map_or("/", |path| path.as_str());
            let mut forward = client
                .request(parts.method, format!("{upstream}{path}"))
                .body(body);
            for name in [AUTHORIZATION, CONTENT_TYPE] {
                if let Some(value) = parts.headers.get(&name) {
                    forward = forward.header(name, value);
                }
            }
            let Ok(response) = forward.send().await else {
                return axum::http::StatusCode::BAD_GATEWAY.into_response();
            };
            let status = response.status();
            let content_type = response.headers().get(CONTENT_TYPE).cloned();
            let body = response.bytes().await.unwrap_or_default();
            let mut answer = (status, body).into_response();
            if let Some(content_type) = content_type {
                answer.headers_mut().insert(CONTENT_TYPE, content_type);
            }
            answer
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    (base_url, refused)
}

#[tokio::test]
async fn behind_a_proxy_that_blocks_websockets_the_sdk_falls_back_to_long_polling() {
    let server = start();
    let alice = register(&server, "alice").await;
    let bob = register(&server, "bob").await;
    let conversation_id = within("create direct", alice.api.create_direct(&bob.id))
        .await
        .unwrap()
        .conversation_id;
    let (proxy_url, refused) = websocket_blocking_proxy(server.base_url()).await;

    // Only a WebSocket: the refusal is an error.
    let mut websocket_only = ClientConfig::new(&proxy_url, &bob.token);
    websocket_only.transport = Transport::WebSocket;
    let error = within("connect", Client::connect(websocket_only))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("upgrade refused"), "{error}");

    // Auto: tries the WebSocket, falls back to long-polling through the same proxy.
    let mut auto = config(&server, &bob);
    auto.base_url = proxy_url;
    let (bob_client, mut bob_events, _) = connect_synced(auto, &bob).await;
    assert!(
        refused.load(Ordering::SeqCst) >= 2,
        "a WebSocket was tried first"
    );
    let (alice_client, mut alice_events, _) = connect_synced(config(&server, &alice), &alice).await;

    let first = send(&alice_client, conversation_id, "can you hear me?").await;
    let received = next_message(&mut bob_events).await;
    assert_eq!(
        (received.seq, received.body.as_str()),
        (first.seq, "can you hear me?")
    );
    let answer = send(&bob_client, conversation_id, "loud and clear").await;
    assert_eq!(answer.seq.0, first.seq.0 + 1);
    assert_eq!(
        next_message(&mut bob_events).await.seq,
        answer.seq,
        "own message, once"
    );
    // Alice's events: her own message (from its ack), then bob's.
    assert_eq!(next_message(&mut alice_events).await.seq, first.seq);
    assert_eq!(next_message(&mut alice_events).await.body, "loud and clear");
    // Bob's receipts travel over HTTP too.
    next_matching(&mut alice_events, |event| match event {
        Event::Receipts { receipts, .. } => receipts
            .into_iter()
            .find(|receipt| receipt.user_id == bob.id && receipt.delivered_seq >= first.seq),
        _ => None,
    })
    .await;
    // And an edit from the long-polling side arrives as an edit.
    within(
        "edit",
        bob_client.edit(conversation_id, answer.seq, "loud and clear!"),
    )
    .await
    .unwrap();
    let edit = next_message(&mut alice_events).await;
    assert_eq!(
        (edit.kind, edit.target_seq),
        (EventKind::Edit, Some(answer.seq))
    );
    server.assert_clean_log();
}
