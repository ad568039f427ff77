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
