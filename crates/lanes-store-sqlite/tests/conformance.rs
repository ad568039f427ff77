//! Runs the shared `Store` conformance suite against SQLite, each behaviour on a fresh database
//! in its own temporary directory, plus SQLite-only checks (durability setting, reopen).
#![allow(clippy::expect_used)]

use lanes_store::Store;
use lanes_store_sqlite::{Durability, SqliteStore};

#[test]
fn conformance() {
    let dirs = std::sync::Mutex::new(Vec::new());
    lanes_store::conformance::run_all(&|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path(), Durability::Full).expect("open");
        dirs.lock().expect("lock").push(dir);
        Box::new(store)
    });
}

#[test]
fn full_durability_is_in_force_and_data_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let epoch = {
        let store = SqliteStore::open(dir.path(), Durability::Full).expect("open");
        assert_eq!(store.synchronous().expect("pragma"), 2, "synchronous=FULL");
        let alice = lanes_protocol::UserId::parse("alice").expect("valid");
        store
            .ensure_user(&alice, lanes_protocol::UnixMillis(1))
            .expect("user");
        store.epoch()
    };
    let store = SqliteStore::open(dir.path(), Durability::Normal).expect("reopen");
    assert_eq!(
        store.synchronous().expect("pragma"),
        1,
        "synchronous=NORMAL"
    );
    assert_eq!(store.epoch(), epoch, "the epoch survives a restart");
    store.integrity_check().expect("intact");
    let alice = lanes_protocol::UserId::parse("alice").expect("valid");
    assert!(store.user(&alice).expect("read").is_some());
}

/// A store in a temporary directory with one direct conversation, appending messages from
/// alice; for the checks that look at the files themselves.
struct Chat {
    dir: tempfile::TempDir,
    store: SqliteStore,
    alice: lanes_protocol::UserId,
    conversation_id: lanes_protocol::ConversationId,
    sent: usize,
}

impl Chat {
    fn open() -> Chat {
        use lanes_protocol::{UnixMillis, UserId};
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(dir.path(), Durability::Full).expect("open");
        let alice = UserId::parse("alice").expect("valid");
        let bob = UserId::parse("bob").expect("valid");
        store.ensure_user(&alice, UnixMillis(1)).expect("user");
        store.ensure_user(&bob, UnixMillis(1)).expect("user");
        let (conversation_id, _) = store
            .create_direct(&alice, &bob, UnixMillis(1))
            .expect("direct");
        Chat {
            dir,
            store,
            alice,
            conversation_id,
            sent: 0,
        }
    }

    /// Commits `count` new messages of `body_bytes` each in one batch.
    fn append(&mut self, count: usize, body_bytes: usize) {
        use lanes_protocol::{ClientMsgId, Content, UnixMillis};
        use lanes_store::{AppendOutcome, NewMessage};
        let batch: Vec<NewMessage> = (0..count)
            .map(|_| {
                self.sent += 1;
                NewMessage {
                    sender_id: self.alice.clone(),
                    client_msg_id: ClientMsgId::parse(&format!("m{}", self.sent)).expect("valid"),
                    conversation_id: self.conversation_id,
                    content: Content::Message {
                        body: "x".repeat(body_bytes),
                        reply_to: None,
                    },
                }
            })
            .collect();
        let outcomes = self
            .store
            .append_batch(&batch, UnixMillis(2))
            .expect("append");
        assert_eq!(outcomes.len(), count);
        assert!(
            outcomes
                .iter()
                .all(|outcome| matches!(outcome, AppendOutcome::Appended(_)))
        );
    }

    fn file_bytes(&self, name: &str) -> u64 {
        std::fs::metadata(self.dir.path().join(name))
            .expect("store file")
            .len()
    }

    /// Waits until a checkpoint has grown the database file to `bytes` (failing after 10 s).
    fn wait_for_database_bytes(&self, bytes: u64, was: u64) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.file_bytes("lanes.db") < bytes {
            assert!(
                std::time::Instant::now() < deadline,
                "the database file stayed at {} bytes (was {was}): nothing was checkpointed",
                self.file_bytes("lanes.db")
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Commits leave their pages in the WAL; the background checkpointer copies them into the
/// database file well before the writer's own inline checkpoint would (4,000 pages).
#[test]
fn the_wal_is_checkpointed_in_the_background() {
    let mut chat = Chat::open();
    // One commit per message, each a few pages: ~1,000 pages in all.
    let before = chat.file_bytes("lanes.db");
    for _ in 0..200 {
        chat.append(1, 2000);
    }
    // 200 messages of 2,000 bytes need ~100 pages of their own in the database file.
    chat.wait_for_database_bytes(before + 100 * 4096, before);
    chat.store.integrity_check().expect("intact");
}

/// A commit of 1,024 sends or more means the writer is the server's limit: for a while the
/// background checkpointer pauses and the writer checkpoints a larger log itself; then the
/// background passes and the usual threshold come back.
#[test]
fn a_saturated_writer_checkpoints_a_larger_log_itself() {
    let mut chat = Chat::open();
    assert_eq!(chat.store.inline_checkpoint_pages().expect("pragma"), 4000);
    // A few commits, so the background passes every 10 ms (not 100 ms, as when idle).
    for _ in 0..5 {
        chat.append(1, 10);
        std::thread::sleep(std::time::Duration::from_millis(15));
    }
    let started = std::time::Instant::now();
    // ~100 pages of new messages, in one commit.
    chat.append(1024, 200);
    let before = chat.file_bytes("lanes.db");
    assert_eq!(
        chat.store.inline_checkpoint_pages().expect("pragma"),
        16_000
    );
    std::thread::sleep(std::time::Duration::from_millis(60));
    let paused = chat.file_bytes("lanes.db");
    // The pause lasts 200 ms from the commit's start; past that (a stalled test thread) this
    // says nothing.
    if started.elapsed() < std::time::Duration::from_millis(190) {
        assert_eq!(
            paused, before,
            "the background copied while the writer was saturated"
        );
    }
    // Afterwards the background copies the pages into the database file.
    chat.wait_for_database_bytes(before + 50 * 4096, before);
    assert!(
        started.elapsed() >= std::time::Duration::from_millis(200),
        "copied during the pause"
    );
    // And the next small commit after the pause restores the usual threshold.
    chat.append(1, 10);
    assert_eq!(chat.store.inline_checkpoint_pages().expect("pragma"), 4000);
    chat.store.integrity_check().expect("intact");
}

/// A long read holds back every checkpoint, so the log grows past its usual size; once the read
/// ends and the writer starts the log over, the file is cut back to `WAL_SIZE_LIMIT_BYTES`
/// instead of keeping its largest size for good.
#[test]
fn a_log_grown_behind_a_long_read_shrinks_again() {
    let limit = u64::try_from(lanes_store_sqlite::WAL_SIZE_LIMIT_BYTES).expect("positive");
    let mut chat = Chat::open();
    // A reader of its own holds a snapshot while ~90 MB of messages are committed.
    let reader = rusqlite::Connection::open(chat.dir.path().join("lanes.db")).expect("reader");
    reader.execute_batch("BEGIN").expect("begin");
    let _: i64 = reader
        .query_row("SELECT COUNT(*) FROM messages", [], |row| row.get(0))
        .expect("snapshot");
    for _ in 0..15 {
        chat.append(100, 60 * 1024);
    }
    let grown = chat.file_bytes("lanes.db-wal");
    assert!(grown > limit, "the log grew to only {grown} bytes");
    reader.execute_batch("COMMIT").expect("end the read");
    drop(reader);
    // Commits go on; the log is copied back and started over, and then cut to the limit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while chat.file_bytes("lanes.db-wal") > limit {
        assert!(
            std::time::Instant::now() < deadline,
            "the log kept {} bytes (grew to {grown})",
            chat.file_bytes("lanes.db-wal")
        );
        chat.append(1, 60 * 1024);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    chat.store.integrity_check().expect("intact");
}

/// The checkpointer thread runs at a lower priority than the rest of the server (Linux, where
/// the nice value is per thread): it reads its own nice value from `/proc`.
#[cfg(target_os = "linux")]
#[test]
fn the_checkpointer_yields_to_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _store = SqliteStore::open(dir.path(), Durability::Full).expect("open");
    // Field 19 of a `stat` file, counted after the command name's closing parenthesis.
    let nice_in = |stat: &str| -> Option<i32> {
        stat[stat.rfind(')')? + 2..]
            .split(' ')
            .nth(16)?
            .parse()
            .ok()
    };
    let nice_of_checkpointers = || -> Vec<i32> {
        std::fs::read_dir("/proc/self/task")
            .expect("tasks")
            .filter_map(|task| {
                let path = task.expect("task").path();
                let comm = std::fs::read_to_string(path.join("comm")).ok()?;
                // Thread names are cut to 15 bytes: "lanes-checkpoint" reads "lanes-checkpoin".
                if !"lanes-checkpoint".starts_with(comm.trim()) || comm.trim().len() < 15 {
                    return None;
                }
                nice_in(&std::fs::read_to_string(path.join("stat")).ok()?)
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let nice = nice_of_checkpointers();
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("own stat");
        let own = nice_in(&stat).expect("nice field");
        assert_eq!(
            own, 0,
            "only the checkpointer's thread is lowered, not the process"
        );
        if !nice.is_empty()
            && nice
                .iter()
                .all(|&n| n == lanes_store_sqlite::CHECKPOINTER_NICENESS)
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "checkpointer nice values: {nice:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}
