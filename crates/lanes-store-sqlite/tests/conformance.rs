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
