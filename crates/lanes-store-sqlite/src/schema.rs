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
