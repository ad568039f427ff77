//! Schema creation and migration, keyed on `PRAGMA user_version`. Each migration runs in one
//! transaction; the store's epoch is created with the schema and never changes.

use lanes_protocol::StoreEpoch;
use lanes_store::StoreError;
use rand::RngCore;
use rusqlite::{Connection, OptionalExtension};

use crate::unavailable;

/// Migrations in order; index + 1 is the `user_version` after applying it.
const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        password_hash TEXT,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,
        user_id TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE conversations (
        conversation_id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
        name TEXT,
        direct_key TEXT UNIQUE,
        head_seq INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        last_activity_at INTEGER NOT NULL
    );
    CREATE TABLE members (
        conversation_id INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('owner', 'admin', 'member')),
        joined_at INTEGER NOT NULL,
        read_seq INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (conversation_id, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX members_by_user ON members (user_id, conversation_id);
    CREATE TABLE messages (
        message_id INTEGER PRIMARY KEY AUTOINCREMENT,
        conversation_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        sender_id TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        body TEXT NOT NULL,
        server_ts INTEGER NOT NULL,
        UNIQUE (conversation_id, seq),
        UNIQUE (sender_id, client_msg_id)
    );
",
    "
    CREATE INDEX sessions_by_expiry ON sessions (expires_at);
",
    // Lane events besides messages (edits, deletes, reactions, replies), receipt positions,
    // per-user settings and last-seen times.
    "
    ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message';
    ALTER TABLE messages ADD COLUMN target_seq INTEGER;
    ALTER TABLE messages ADD COLUMN reply_to INTEGER;
    ALTER TABLE messages ADD COLUMN emoji TEXT;
    ALTER TABLE messages ADD COLUMN edited_at INTEGER;
    ALTER TABLE messages ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX messages_by_target ON messages (conversation_id, target_seq)
        WHERE target_seq IS NOT NULL;
    CREATE TABLE reactions (
        conversation_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        emoji TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (conversation_id, seq, emoji, user_id)
    ) WITHOUT ROWID;
    ALTER TABLE members ADD COLUMN delivered_seq INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN hide_read_receipts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN last_seen_at INTEGER;
",
    // Less written per commit (docs/BENCHMARKS.md, sixth session): a conversation's head and
    // last activity are read from its newest message (one seek in the (conversation_id, seq)
    // index) instead of being rewritten with every commit, and message ids are plain rowids
    // (messages are never deleted, so ids still only grow) instead of AUTOINCREMENT, which
    // rewrote its `sqlite_sequence` row with every insert. SQLite cannot drop AUTOINCREMENT in
    // place: the table is copied once.
    "
    CREATE TABLE messages_new (
        message_id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        sender_id TEXT NOT NULL,
        client_msg_id TEXT NOT NULL,
        body TEXT NOT NULL,
        server_ts INTEGER NOT NULL,
        kind TEXT NOT NULL DEFAULT 'message',
        target_seq INTEGER,
        reply_to INTEGER,
        emoji TEXT,
        edited_at INTEGER,
        deleted INTEGER NOT NULL DEFAULT 0
    );
    INSERT INTO messages_new (message_id, conversation_id, seq, sender_id, client_msg_id, body,
                              server_ts, kind, target_seq, reply_to, emoji, edited_at, deleted)
        SELECT message_id, conversation_id, seq, sender_id, client_msg_id, body,
               server_ts, kind, target_seq, reply_to, emoji, edited_at, deleted
        FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_new RENAME TO messages;
    CREATE UNIQUE INDEX messages_by_seq ON messages (conversation_id, seq);
    CREATE UNIQUE INDEX messages_by_client_id ON messages (sender_id, client_msg_id);
    CREATE INDEX messages_by_target ON messages (conversation_id, target_seq)
        WHERE target_seq IS NOT NULL;
    ALTER TABLE conversations DROP COLUMN head_seq;
    ALTER TABLE conversations DROP COLUMN last_activity_at;
",
];

/// Brings the database to the newest schema and returns its epoch.
pub(crate) fn migrate(connection: &mut Connection) -> Result<StoreEpoch, StoreError> {
    let version: usize = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(unavailable)?;
    if version > MIGRATIONS.len() {
        return Err(StoreError::Unavailable(format!(
            "database schema version {version} is newer than this lanes ({}); upgrade lanes",
            MIGRATIONS.len()
        )));
    }
    for (index, migration) in MIGRATIONS.iter().enumerate().skip(version) {
        let transaction = connection.transaction().map_err(unavailable)?;
        transaction.execute_batch(migration).map_err(unavailable)?;
        transaction
            .pragma_update(None, "user_version", index + 1)
            .map_err(unavailable)?;
        transaction.commit().map_err(unavailable)?;
    }
    let existing: Option<String> = connection
        .query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |row| {
            row.get(0)
        })
        .optional()
        .map_err(unavailable)?;
    if let Some(epoch) = existing {
        return Ok(StoreEpoch(epoch));
    }
    let mut bytes = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut bytes);
    let epoch: String = bytes.iter().map(|byte| format!("{byte:02x}")).collect();
    connection
        .execute(
            "INSERT INTO meta (key, value) VALUES ('epoch', ?1)",
            [&epoch],
        )
        .map_err(unavailable)?;
    Ok(StoreEpoch(epoch))
}

#[cfg(test)]
mod tests {
    use lanes_protocol::{ClientMsgId, Content, ConversationId, Seq, UnixMillis, UserId};
    use lanes_store::{AppendOutcome, NewMessage, Store};
    use rusqlite::Connection;

    use super::MIGRATIONS;
    use crate::{Durability, SqliteStore};

    /// A database written by the schema before migration 4 (AUTOINCREMENT ids, heads and
    /// last activity stored in `conversations`) opens with its messages, ids, heads and
    /// conversation order intact, and later sends continue both.
    #[test]
    fn migration_4_keeps_messages_ids_and_heads() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let connection = Connection::open(dir.path().join("lanes.db")).expect("open");
            for migration in &MIGRATIONS[..3] {
                connection.execute_batch(migration).expect("old schema");
            }
            connection
                .execute_batch(
                    "PRAGMA user_version = 3;
                     INSERT INTO meta (key, value) VALUES ('epoch', 'e3');
                     INSERT INTO users (user_id, created_at) VALUES ('alice', 1), ('bob', 1);
                     INSERT INTO conversations (kind, direct_key, head_seq, created_at, last_activity_at)
                         VALUES ('direct', 'alice|bob', 2, 1, 30), ('group', NULL, 1, 2, 20);
                     INSERT INTO members (conversation_id, user_id, role, joined_at) VALUES
                         (1, 'alice', 'member', 1), (1, 'bob', 'member', 1),
                         (2, 'alice', 'owner', 2);
                     INSERT INTO messages (message_id, conversation_id, seq, sender_id,
                                           client_msg_id, body, server_ts)
                         VALUES (3, 1, 1, 'alice', 'a1', 'hi', 10),
                                (7, 2, 1, 'alice', 'a2', 'team', 20),
                                (9, 1, 2, 'bob', 'b1', 'yo', 30);",
                )
                .expect("old rows");
        }
        let store = SqliteStore::open(dir.path(), Durability::Full).expect("migrate");
        assert_eq!(store.epoch().0, "e3");
        let alice = UserId::parse("alice").expect("valid");
        assert_eq!(
            store.heads_of(&alice).expect("heads"),
            [(ConversationId(1), Seq(2)), (ConversationId(2), Seq(1))]
        );
        let order: Vec<u64> = store
            .conversations_of(&alice)
            .expect("list")
            .iter()
            .map(|conversation| conversation.conversation_id.0)
            .collect();
        assert_eq!(order, [1, 2], "newest activity first");
        let history = store
            .messages_after(&alice, ConversationId(1), Seq::ZERO, 10)
            .expect("read")
            .expect("member");
        let ids: Vec<(u64, u64, &str)> = history
            .iter()
            .map(|m| (m.seq.0, m.message_id.0, m.body.as_str()))
            .collect();
        assert_eq!(ids, [(1, 3, "hi"), (2, 9, "yo")]);
        let send = |id: &str| NewMessage {
            sender_id: alice.clone(),
            client_msg_id: ClientMsgId::parse(id).expect("valid"),
            conversation_id: ConversationId(1),
            content: Content::Message {
                body: "again".into(),
                reply_to: None,
            },
        };
        let outcomes = store
            .append_batch(&[send("a1"), send("a3")], UnixMillis(40))
            .expect("append");
        assert!(
            matches!(&outcomes[0], AppendOutcome::Duplicate(frame) if frame.seq == Seq(1)),
            "the client id index came along: {outcomes:?}"
        );
        assert!(
            matches!(&outcomes[1], AppendOutcome::Appended(frame) if frame.seq == Seq(3) && frame.message_id.0 == 10),
            "the next seq and id follow the old ones: {outcomes:?}"
        );
        store.integrity_check().expect("intact");
    }
}
