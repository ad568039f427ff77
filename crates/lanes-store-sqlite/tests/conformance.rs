//! Runs the shared `Store` conformance suite against SQLite, each behaviour on a fresh database
//! in its own temporary directory, plus SQLite-only checks (durability setting, reopen).

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

/// Commits leave their pages in the WAL; the background checkpointer copies them into the
/// database file well before the writer's own inline checkpoint would (4,000 pages).
#[test]
fn the_wal_is_checkpointed_in_the_background() {
    use lanes_protocol::{ClientMsgId, Content, UnixMillis, UserId};
    use lanes_store::{AppendOutcome, NewMessage};

    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), Durability::Full).expect("open");
    let alice = UserId::parse("alice").expect("valid");
    let bob = UserId::parse("bob").expect("valid");
    store.ensure_user(&alice, UnixMillis(1)).expect("user");
    store.ensure_user(&bob, UnixMillis(1)).expect("user");
    let (conversation_id, _) = store
        .create_direct(&alice, &bob, UnixMillis(1))
        .expect("direct");
    let database_bytes = || {
        std::fs::metadata(dir.path().join("lanes.db"))
            .expect("database file")
            .len()
    };
    // One commit per message, each a few pages: ~1,000 pages in all.
    let before = database_bytes();
    for i in 0..200 {
        let message = NewMessage {
            sender_id: alice.clone(),
            client_msg_id: ClientMsgId::parse(&format!("m{i}")).expect("valid"),
            conversation_id,
            content: Content::Message {
                body: "x".repeat(2000),
                reply_to: None,
            },
        };
        let outcomes = store
            .append_batch(&[message], UnixMillis(2))
            .expect("append");
        assert!(matches!(outcomes[..], [AppendOutcome::Appended(_)]));
    }
    // 200 messages of 2,000 bytes need ~100 pages of their own in the database file.
    let grown = before + 100 * 4096;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while database_bytes() < grown {
        assert!(
            std::time::Instant::now() < deadline,
            "the database file stayed at {} bytes (was {before}): nothing was checkpointed",
            database_bytes()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    store.integrity_check().expect("intact");
}

/// A long read holds back every checkpoint, so the log grows past its usual size; once the read
/// ends and the writer starts the log over, the file is cut back to `WAL_SIZE_LIMIT_BYTES`
/// instead of keeping its largest size for good.
#[test]
fn a_log_grown_behind_a_long_read_shrinks_again() {
    use lanes_protocol::{ClientMsgId, Content, UnixMillis, UserId};
    use lanes_store::{AppendOutcome, NewMessage};
    use lanes_store_sqlite::WAL_SIZE_LIMIT_BYTES;

    let dir = tempfile::tempdir().expect("tempdir");
    let store = SqliteStore::open(dir.path(), Durability::Full).expect("open");
    let alice = UserId::parse("alice").expect("valid");
    let bob = UserId::parse("bob").expect("valid");
    store.ensure_user(&alice, UnixMillis(1)).expect("user");
    store.ensure_user(&bob, UnixMillis(1)).expect("user");
    let (conversation_id, _) = store
        .create_direct(&alice, &bob, UnixMillis(1))
        .expect("direct");
    let log_bytes = || {
        std::fs::metadata(dir.path().join("lanes.db-wal"))
            .expect("log file")
            .len()
    };
    let mut next = 0;
    let mut append = |count: usize| {
        let batch: Vec<NewMessage> = (0..count)
            .map(|_| {
                next += 1;
                NewMessage {
                    sender_id: alice.clone(),
                    client_msg_id: ClientMsgId::parse(&format!("m{next}")).expect("valid"),
                    conversation_id,
                    content: Content::Message {
                        body: "x".repeat(60 * 1024),
                        reply_to: None,
                    },
                }
            })
            .collect();
        let outcomes = store.append_batch(&batch, UnixMillis(2)).expect("append");
        assert!(
            outcomes
                .iter()
                .all(|outcome| matches!(outcome, AppendOutcome::Appended(_)))
        );
    };
    // A reader of its own holds a snapshot while ~90 MB of messages are committed.
    let reader = rusqlite::Connection::open(dir.path().join("lanes.db")).expect("reader");
    reader.execute_batch("BEGIN").expect("begin");
    let _: i64 = reader
        .query_row("SELECT COUNT(*) FROM messages", [], |row| row.get(0))
        .expect("snapshot");
    for _ in 0..15 {
        append(100);
    }
    let grown = log_bytes();
    assert!(
        grown > u64::try_from(WAL_SIZE_LIMIT_BYTES).expect("positive"),
        "the log grew to only {grown} bytes"
    );
    reader.execute_batch("COMMIT").expect("end the read");
    drop(reader);
    // Commits go on; the log is copied back and started over, and then cut to the limit.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while log_bytes() > u64::try_from(WAL_SIZE_LIMIT_BYTES).expect("positive") {
        assert!(
            std::time::Instant::now() < deadline,
            "the log kept {} bytes (grew to {grown})",
            log_bytes()
        );
        append(1);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    store.integrity_check().expect("intact");
}

/// The checkpointer thread runs at a lower priority than the rest of the server (Linux, where
/// the nice value is per thread): it reads its own nice value from `/proc`.
#[cfg(target_os = "linux")]
#[test]
fn the_checkpointer_yields_to_the_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let _store = SqliteStore::open(dir.path(), Durability::Full).expect("open");
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
                // Field 19 of `stat`, counted after the command name's closing parenthesis.
                let stat = std::fs::read_to_string(path.join("stat")).ok()?;
                let after_name = &stat[stat.rfind(')')? + 2..];
                after_name.split(' ').nth(16)?.parse().ok()
            })
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let nice = nice_of_checkpointers();
        let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("own stat");
        let own: i32 = stat[stat.rfind(')').expect("name") + 2..]
            .split(' ')
            .nth(16)
            .and_then(|field| field.parse().ok())
            .expect("nice field");
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
