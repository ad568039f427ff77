//! A full disk: on a small tmpfs mounted by the test, sends get `storage_unavailable` and no
//! ack, nothing acked is lost or corrupted, and the server recovers by itself once space is freed.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{Http, RawWs};
use lanes_test_support::TestServer;
use serde_json::json;

/// A size-limited tmpfs, unmounted on drop.
struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "this test mounts a small tmpfs and needs root (CI runs as root): mount failed"
        );
        SmallDisk { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

/// Writes a file until the filesystem is full; returns its path.
fn fill(dir: &Path) -> PathBuf {
    let path = dir.join("filler");
    let mut file = std::fs::File::create(&path).unwrap();
    let chunk = vec![0u8; 4096];
    while file.write_all(&chunk).is_ok() {}
    let _ = file.sync_all();
    path
}

#[tokio::test]
async fn a_full_disk_refuses_sends_loses_nothing_and_recovers() {
    let disk = SmallDisk::mount("4m");
    let data_dir = disk.path().join("data");
    let mut server =
        TestServer::start_with_data_dir(env!("CARGO_BIN_EXE_lanes"), &data_dir, &[], &[]);
    server.allow_log("store failed");
    server.allow_log("commit of");
    server.allow_log("storage");
    let http = Http::new(&server.base_url());
    let alice = http.register("alice").await;
    let _bob = http.register("bob").await;
    let conversation = http.direct(&alice, "bob").await;
    let (mut ws, _) = RawWs::hello(&server.ws_url(), &alice, json!([]), None).await;
    let mut acked = Vec::new();
    for i in 0..20 {
        let ack = ws
            .send_message(conversation, &format!("before-{i}"), &format!("before {i}"))
            .await;
        acked.push(ack["seq"].as_u64().unwrap());
    }

    // The disk fills up: sends are refused with storage_unavailable, never acked.
    let filler = fill(disk.path());
    let body = "x".repeat(2000);
    let mut refused = None;
    for i in 0..200 {
        let id = format!("full-{i}");
        ws.send(json!({"type": "send", "client_msg_id": id, "conversation_id": conversation, "body": body}))
            .await;
        let answer = loop {
            let frame = ws.frame().await;
            if frame["client_msg_id"] == id.as_str() || frame["request_id"] == id.as_str() {
                break frame;
            }
        };
        if answer["type"] == "ack" {
            acked.push(answer["seq"].as_u64().unwrap());
        } else {
            assert_eq!(answer["code"], "storage_unavailable", "{answer}");
            refused = Some(id);
            break;
        }
    }
    let refused = refused.expect("a full disk never refused a send");

    // Space comes back: the refused send, retried under its id, and new ones are acked.
    std::fs::remove_file(filler).unwrap();
    let retried = ws.send_message(conversation, &refused, &body).await;
    acked.push(retried["seq"].as_u64().unwrap());
    let after = ws.send_message(conversation, "after", "after").await;
    acked.push(after["seq"].as_u64().unwrap());

    // Everything acked is stored once, gap-free; nothing refused was stored.
    let history = http.history(&alice, conversation).await;
    let seqs: Vec<u64> = history.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>());
    acked.sort_unstable();
    assert_eq!(seqs, acked, "stored exactly what was acked");
    let (status, _) = http.call("GET", "/healthz", None, None).await;
    assert_eq!(status, 200);

    // And the files are intact.
    server.kill();
    let store =
        lanes_store_sqlite::SqliteStore::open(&data_dir, lanes_store_sqlite::Durability::Full)
            .expect("reopen the store");
    store.integrity_check().expect("intact after a full disk");
}

/// A read position that reaches the server while the disk is full is not lost: it is stored,
/// and announced, once there is room, though nothing new is sent (clients send a position again
/// only when a newer message arrives).
#[tokio::test]
async fn a_read_position_refused_by_a_full_disk_is_stored_once_there_is_room() {
    let disk = SmallDisk::mount("4m");
    let data_dir = disk.path().join("data");
    let mut server =
        TestServer::start_with_data_dir(env!("CARGO_BIN_EXE_lanes"), &data_dir, &[], &[]);
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

    // A reader holding a snapshot keeps the server from starting its log over in place, so
    // the position's write must grow the log, which the full disk refuses.
    let mut reader = rusqlite::Connection::open(data_dir.join("lanes.db")).unwrap();
    let snapshot = reader.transaction().unwrap();
    let _: i64 = snapshot
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .unwrap();
    let filler = fill(disk.path());
    let (status, body) = http
        .call(
            "POST",
            &format!("/v1/conversations/{conversation}/read"),
            Some(&bob),
            Some(json!({"seq": 3})),
        )
        .await;
    assert_eq!(status, 204, "{body}");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(bob_read().await, None, "the full disk took the position");

    drop(snapshot);
    drop(reader);
    std::fs::remove_file(filler).unwrap();
    let (frame, _) = alice_ws.until("receipts").await;
    assert_eq!(frame["conversation_id"], conversation);
    assert_eq!(bob_read().await, Some(3));
}

/// A `hello` whose token the store cannot check (a JWT's first use writes its user, and the disk
/// is full) is not refused as `unauthorized`, which clients take as final: the server says what
/// failed and closes with 1011, and the client's next hello, once there is room, is welcome.
#[tokio::test]
async fn a_store_failure_at_hello_is_not_a_refused_token() {
    const SECRET: &str = "a-test-secret-that-is-at-least-32-bytes-long";
    let disk = SmallDisk::mount("4m");
    let data_dir = disk.path().join("data");
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!("[auth]\njwt_hs256_secret = \"{SECRET}\"\n"),
    )
    .unwrap();
    let mut server = TestServer::start_with_data_dir(
        env!("CARGO_BIN_EXE_lanes"),
        &data_dir,
        &["--config", config.path().to_str().unwrap()],
        &[],
    );
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
    // As above: a reader's snapshot makes the user's row need new room in the log.
    let mut reader = rusqlite::Connection::open(data_dir.join("lanes.db")).unwrap();
    let snapshot = reader.transaction().unwrap();
    let _: i64 = snapshot
        .query_row("SELECT count(*) FROM sqlite_master", [], |row| row.get(0))
        .unwrap();
    let filler = fill(disk.path());

    let mut ws = RawWs::connect(&server.ws_url()).await;
    ws.send(json!({"type": "hello", "token": token})).await;
    let error = ws.frame().await;
    assert_eq!(error["code"], "storage_unavailable", "{error}");
    match ws.next().await {
        common::Seen::Closed(code) => assert_eq!(code, Some(1011)),
        other => panic!("expected a close, got {other:?}"),
    }

    drop(snapshot);
    drop(reader);
    std::fs::remove_file(filler).unwrap();
    let (_ws, _) = RawWs::hello(&server.ws_url(), &token, json!([]), None).await;
}
