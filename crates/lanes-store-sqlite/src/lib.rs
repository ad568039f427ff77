//! The embedded SQLite backend of `Store`: WAL mode, `synchronous=FULL` by default, one writer
//! connection (the committer's group commits and other writes share it) and a small pool of
//! reader connections. This crate and the other backends are the only places that hold SQL.

mod schema;

/// A conversation's head as an SQL expression: its highest seq (one seek in the
/// `(conversation_id, seq)` index), 0 before the first event. `$conversation` is the SQL for its
/// id: a parameter or a column of the outer query.
macro_rules! head_of {
    ($conversation:literal) => {
        concat!(
            "(SELECT COALESCE(MAX(seq), 0) FROM messages WHERE conversation_id = ",
            $conversation,
            ")"
        )
    };
}

/// SQL for the number of members of `$conversation`, counted only up to `$max + 1`: enough to
/// tell whether it has more than `$max`, at the same cost in a 10,000-member group as in a small
/// one.
macro_rules! members_up_to {
    ($conversation:literal, $max:literal) => {
        concat!(
            "(SELECT COUNT(*) FROM (SELECT 1 FROM members WHERE conversation_id = ",
            $conversation,
            " LIMIT ",
            $max,
            " + 1))"
        )
    };
}

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, Instant};

use lanes_protocol::http::{Conversation, ConversationKind, Member, Role, Settings};
use lanes_protocol::{
    ClientMsgId, Content, ConversationId, EventKind, MessageFrame, MessageId, Reaction, Seq,
    StoreEpoch, UnixMillis, UserId, limits,
};
use lanes_store::{
    AppendOutcome, AppendRejection, ConversationInfo, ListingCursor, ManageOutcome, MarkerUpdate,
    MayManage, MembershipChange, NewMessage, ReceiptRow, Store, StoreError, StoredUser,
    decide_removal,
};
use rusqlite::{Connection, OptionalExtension, Row, params};

/// How hard a commit waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `synchronous=FULL`: every commit is fsync'd before it returns. Survives power loss.
    Full,
    /// `synchronous=NORMAL`: survives a process crash, but the last commits may be lost on power
    /// loss or OS crash. Weaker than the Lanes promise; for benchmarks and throwaway setups.
    Normal,
}

impl Durability {
    /// The name used in configuration, logs and `/healthz`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Full => "full",
            Durability::Normal => "normal",
        }
    }
}

/// Readers kept open for reuse; more may be opened under a burst and are closed after use.
/// Opening one costs a file open and a schema read, so a connect storm that had to open a reader
/// per query was slower than the queries themselves.
const READERS_KEPT_MAX: usize = 64;

/// How long a connection waits for a lock held by another.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// How often the background checkpointer copies committed WAL frames into the database while
/// commits keep coming. Small passes keep each checkpoint's fsync of the database file small:
/// it shares the disk with the commits' fsyncs of the log.
const CHECKPOINT_INTERVAL_BUSY: Duration = Duration::from_millis(10);

/// How often it looks while nothing has been committed since its last pass.
const CHECKPOINT_INTERVAL_IDLE: Duration = Duration::from_millis(100);

/// The checkpointer's niceness: under full load the single writer is the server's limit, and
/// the copying can wait (the writer's inline checkpoint bounds the log if it falls behind).
/// Pairs throughput +4.6% in 7 alternating rounds, 5 of them better (docs/BENCHMARKS.md).
pub const CHECKPOINTER_NICENESS: i32 = 10;

/// WAL pages after which the writer checkpoints inline, right after a commit (SQLite's
/// `wal_autocheckpoint`). Under load the background passes rarely find the log fully copied at
/// a moment the writer could start it over, so the log is restarted here; by then the
/// background has copied nearly all of it. At SQLite's default of 1,000 pages, with no
/// background checkpointer, one commit in ~90 copied 4 MB and the e2e p99 at 3,000 msgs/s was
/// 3.3–3.8 ms instead of 2.0–2.7 (docs/BENCHMARKS.md, fifth session). With 16,000 pages, runs
/// with stalls of 200–700 ms were more frequent.
const INLINE_CHECKPOINT_PAGES: i64 = 4000;

/// A group commit carrying at least this many sends means the writer is the server's limit:
/// sends queue up while it commits (at 3,000 msgs/s a commit carries ~3; at full load ~3,500).
const SATURATED_BATCH_SENDS: usize = 1024;

/// How long after such a commit the store counts as saturated (full-load commits take ~30 ms,
/// and a few smaller ones come in between).
const SATURATION_HOLD: Duration = Duration::from_millis(200);

/// The writer's inline threshold while saturated; the background checkpointer pauses then.
/// Background passes every 10 ms copy each commit's pages separately, on cores the full load
/// already uses; the writer's own checkpoint of a 16,000-page log copies each of the pages the
/// commits keep rewriting (the newest leaves of the indexes) once. Pairs throughput +10%, better
/// in 5 of 5 alternating rounds (docs/BENCHMARKS.md, seventh session). Under light load the
/// 10 ms passes and the 4,000-page threshold stay: a big checkpoint then would stall commits.
const SATURATED_INLINE_CHECKPOINT_PAGES: i64 = 16_000;

/// The size the log file is cut back to when the writer starts it over (SQLite's
/// `journal_size_limit`). It normally peaks near the inline threshold (~16 MB; ~70 MB under full
/// load, `SATURATED_INLINE_CHECKPOINT_PAGES`), but while a long read (a backup, an export) holds
/// back every checkpoint it grows without bound, and without a limit the file would keep that
/// size for good.
pub const WAL_SIZE_LIMIT_BYTES: i64 = 64 * 1024 * 1024;

/// The writer's page cache, in KiB (SQLite's default is 2,000). A group commit of a few
/// thousand messages dirties a page or two per message; with 2 MB SQLite spilled dirty pages to
/// the log mid-transaction and re-read pages it had just written.
const WRITER_CACHE_KIB: i64 = 16 * 1024;

/// A Lanes store in one SQLite file.
pub struct SqliteStore {
    path: std::path::PathBuf,
    epoch: StoreEpoch,
    /// Declared first so it stops before the connections below close.
    _checkpointer: Option<Checkpointer>,
    /// Held for any checkpoint, so the writer's own (after deletes) never finds the background
    /// one in the way. Lock order: `writer` before `checkpoint`.
    checkpoint: Arc<Mutex<()>>,
    /// Whether the writer was the limit a moment ago; the checkpointer pauses while it is.
    saturation: Arc<Saturation>,
    /// The writer's `wal_autocheckpoint` now, or 0 when there is no background checkpointer
    /// (SQLite's default then stays).
    inline_checkpoint_pages: AtomicI64,
    /// The only connection that writes. Lock order: `writer` before `readers`, never the reverse.
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

/// A thread with a connection of its own that runs a `PASSIVE` checkpoint every 10 ms while
/// commits come (100 ms otherwise, none while the writer is saturated): it copies what no reader
/// still needs and never waits for the writer or readers, so commits rarely pay for copying;
/// the writer starts the log over when it finds everything copied, or after its inline
/// checkpoint. Dropping it stops the thread.
struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    fn start(
        connection: Connection,
        lock: Arc<Mutex<()>>,
        saturation: Arc<Saturation>,
    ) -> std::io::Result<Checkpointer> {
        let (stop, stopped) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("lanes-checkpoint".into())
            .spawn(move || {
                // On Linux the nice value belongs to the calling thread, not the process.
                #[cfg(target_os = "linux")]
                if let Err(err) = rustix::process::setpriority_process(None, CHECKPOINTER_NICENESS)
                {
                    tracing::debug!("checkpointer priority: {err}");
                }
                // (frames in the log, frames copied) after the last pass
                let mut last = (0, 0);
                let mut interval = CHECKPOINT_INTERVAL_IDLE;
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(interval) {
                    if saturation.active(Instant::now()) {
                        // The writer checkpoints a larger log itself (`SATURATED_INLINE_…`).
                        interval = CHECKPOINT_INTERVAL_BUSY;
                        continue;
                    }
                    let _held = lock.lock().unwrap_or_else(PoisonError::into_inner);
                    let pass: rusqlite::Result<(i64, i64)> =
                        connection.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |row| {
                            Ok((row.get(1)?, row.get(2)?))
                        });
                    match pass {
                        Ok(now) => {
                            interval = if now == last {
                                CHECKPOINT_INTERVAL_IDLE
                            } else {
                                CHECKPOINT_INTERVAL_BUSY
                            };
                            last = now;
                        }
                        // The writer's inline checkpoint still bounds the log.
                        Err(err) => tracing::debug!("background checkpoint: {err}"),
                    }
                }
            })?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Whether the writer has just been the server's limit (`SATURATED_BATCH_SENDS`), for
/// `SATURATION_HOLD` after the last such commit. Time is passed in, so it is tested without
/// waiting.
struct Saturation {
    opened: Instant,
    /// Until when, in µs since `opened`; 0 when never.
    until_micros: AtomicU64,
}

impl Saturation {
    fn new(opened: Instant) -> Saturation {
        Saturation {
            opened,
            until_micros: AtomicU64::new(0),
        }
    }

    fn micros(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.opened).as_micros()).unwrap_or(u64::MAX)
    }

    /// Notes a commit of `sends` at `now`; says whether the store counts as saturated.
    fn note_batch(&self, sends: usize, now: Instant) -> bool {
        if sends >= SATURATED_BATCH_SENDS {
            self.until_micros
                .store(self.micros(now + SATURATION_HOLD), Ordering::Relaxed);
        }
        self.active(now)
    }

    fn active(&self, now: Instant) -> bool {
        self.micros(now) < self.until_micros.load(Ordering::Relaxed)
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn unavailable(err: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(err.to_string())
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave a SQLite connection half-written: an open
    // transaction is rolled back when its guard drops. So a poisoned lock is still usable.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl SqliteStore {
    /// Opens (creating and migrating if needed) `lanes.db` in `dir`.
    pub fn open(dir: &Path, durability: Durability) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|err| StoreError::Unavailable(format!("create {}: {err}", dir.display())))?;
        let path = dir.join("lanes.db");
        let mut writer = open_connection(&path)?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(unavailable)?;
        let synchronous = match durability {
            Durability::Full => "FULL",
            Durability::Normal => "NORMAL",
        };
        writer
            .pragma_update(None, "synchronous", synchronous)
            .map_err(unavailable)?;
        let mode: String = writer
            .pragma_query_value(None, "journal_mode", |row| row.get(0))
            .map_err(unavailable)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Unavailable(format!(
                "journal_mode is {mode}, expected wal"
            )));
        }
        writer
            .pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(unavailable)?;
        writer
            .pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT_BYTES)
            .map_err(unavailable)?;
        let epoch = schema::migrate(&mut writer)?;
        let checkpoint = Arc::new(Mutex::new(()));
        let saturation = Arc::new(Saturation::new(Instant::now()));
        // A checkpoint syncs the log before and the database after copying as `synchronous`
        // says, so the checkpointer's connection keeps the writer's setting.
        let checkpointer = open_connection(&path)
            .and_then(|connection| {
                connection
                    .pragma_update(None, "synchronous", synchronous)
                    .map_err(unavailable)?;
                Checkpointer::start(connection, Arc::clone(&checkpoint), Arc::clone(&saturation))
                    .map_err(|err| StoreError::Unavailable(err.to_string()))
            })
            .inspect_err(|err| {
                tracing::warn!("background checkpointer not started, checkpointing inline: {err}");
            })
            .ok();
        let inline_checkpoint_pages = if checkpointer.is_some() {
            writer
                .pragma_update(None, "wal_autocheckpoint", INLINE_CHECKPOINT_PAGES)
                .map_err(unavailable)?;
            INLINE_CHECKPOINT_PAGES
        } else {
            0
        };
        Ok(SqliteStore {
            path,
            epoch,
            _checkpointer: checkpointer,
            checkpoint,
            saturation,
            inline_checkpoint_pages: AtomicI64::new(inline_checkpoint_pages),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
        })
    }

    /// The writer's inline checkpoint threshold in pages (`wal_autocheckpoint`) actually in force.
    pub fn inline_checkpoint_pages(&self) -> Result<i64, StoreError> {
        lock(&self.writer)
            .pragma_query_value(None, "wal_autocheckpoint", |row| row.get(0))
            .map_err(unavailable)
    }

    /// The `synchronous` setting actually in force (2 = FULL, 1 = NORMAL).
    pub fn synchronous(&self) -> Result<i64, StoreError> {
        lock(&self.writer)
            .pragma_query_value(None, "synchronous", |row| row.get(0))
            .map_err(unavailable)
    }

    /// Runs `PRAGMA integrity_check`; `Ok(())` when the database is intact.
    pub fn integrity_check(&self) -> Result<(), StoreError> {
        let result: String = lock(&self.writer)
            .query_row("PRAGMA integrity_check", [], |row| row.get(0))
            .map_err(unavailable)?;
        if result == "ok" {
            Ok(())
        } else {
            Err(StoreError::Unavailable(format!(
                "integrity check: {result}"
            )))
        }
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T, StoreError> {
        let pooled = lock(&self.readers).pop();
        let connection = match pooled {
            Some(connection) => connection,
            None => open_connection(&self.path)?,
        };
        let result = f(&connection).map_err(unavailable);
        let mut readers = lock(&self.readers);
        if readers.len() < READERS_KEPT_MAX {
            readers.push(connection);
        }
        result
    }

    /// Runs a page query (`?1` conversation, `?2` seq bound, `?3` limit) in one read
    /// transaction with the membership check, so both see the same snapshot. The page is
    /// returned ascending (`descending`: the query's order is reversed) with its reactions.
    fn read_as_member(
        &self,
        viewer: &UserId,
        conversation_id: ConversationId,
        sql: &str,
        bound: Seq,
        limit: usize,
        descending: bool,
    ) -> Result<Option<Vec<MessageFrame>>, StoreError> {
        self.read(|connection| {
            let transaction = connection.unchecked_transaction()?;
            if !is_member(&transaction, conversation_id, viewer)? {
                return Ok(None);
            }
            let page = transaction
                .prepare_cached(sql)?
                .query_map(
                    params![
                        sql_i64(conversation_id.0),
                        sql_i64(bound.0),
                        sql_i64(limit as u64)
                    ],
                    message_row,
                )?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut page = page;
            if descending {
                page.reverse();
            }
            attach_reactions(&transaction, &mut page)?;
            transaction.finish()?;
            Ok(Some(page))
        })
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut writer = lock(&self.writer);
        let transaction = writer
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(unavailable)?;
        let value = f(&transaction).map_err(unavailable)?;
        transaction.commit().map_err(unavailable)?;
        Ok(value)
    }

    /// `append_batch` without the checkpoint after deletes.
    fn append(
        &self,
        batch: &[NewMessage],
        now: UnixMillis,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let saturated = self.saturation.note_batch(batch.len(), Instant::now());
        self.write(|transaction| {
            let pages = self.inline_checkpoint_pages.load(Ordering::Relaxed);
            let wanted = if saturated {
                SATURATED_INLINE_CHECKPOINT_PAGES
            } else {
                INLINE_CHECKPOINT_PAGES
            };
            if pages != 0 && pages != wanted {
                transaction.pragma_update(None, "wal_autocheckpoint", wanted)?;
                self.inline_checkpoint_pages
                    .store(wanted, Ordering::Relaxed);
            }
            // On the common path a plain message costs a membership lookup and one single-row
            // insert, which skips a duplicate (sender, client_msg_id); only when it inserts
            // nothing do we look at why. (An `INSERT … SELECT … WHERE EXISTS` did both in one
            // statement, but SQLite keeps a statement journal for it: ~16% of the committer's
            // time, docs/BENCHMARKS.md.) Events that refer to another message (replies, edits,
            // deletes, reactions) are checked against it first. A conversation's head is its
            // highest seq, read once per batch from the (conversation_id, seq) index; nothing
            // besides the messages themselves is written. The application's system messages
            // need no membership, only an existing conversation.
            let mut insert = transaction.prepare_cached(
                "INSERT INTO messages (conversation_id, seq, sender_id, client_msg_id, kind, body,
                                       server_ts, target_seq, reply_to, emoji)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (sender_id, client_msg_id) DO NOTHING",
            )?;
            let mut find_duplicate = transaction.prepare_cached(&format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages WHERE sender_id = ?1 AND client_msg_id = ?2"
            ))?;
            let mut read_head = transaction.prepare_cached(concat!("SELECT ", head_of!("?1")))?;
            let mut exists = transaction
                .prepare_cached("SELECT 1 FROM conversations WHERE conversation_id = ?1")?;
            let mut heads: HashMap<ConversationId, u64> = HashMap::new();
            // Membership cannot change inside this transaction: a sender found a member once is
            // not looked up again for the rest of the batch.
            let mut members: HashSet<(ConversationId, &UserId)> = HashSet::new();
            let mut outcomes = Vec::with_capacity(batch.len());
            for message in batch {
                let conversation_id = message.conversation_id;
                let refers = !matches!(message.content, Content::Message { reply_to: None, .. });
                let system = matches!(message.content, Content::System { .. });
                if refers {
                    // A retried edit must get its original ack even if its target changed since.
                    let duplicate = find_duplicate
                        .query_row(
                            params![message.sender_id.as_str(), message.client_msg_id.as_str()],
                            message_row,
                        )
                        .optional()?;
                    if let Some(original) = duplicate {
                        outcomes.push(AppendOutcome::Duplicate(original));
                        continue;
                    }
                    if !system && !sender_is_member(transaction, &mut members, message)? {
                        outcomes.push(AppendOutcome::NotMember);
                        continue;
                    }
                    if let Err(rejection) = apply_to_target(transaction, message, now)? {
                        outcomes.push(AppendOutcome::Rejected(rejection));
                        continue;
                    }
                }
                let allowed = if system {
                    exists.exists([sql_i64(conversation_id.0)])?
                } else {
                    refers || sender_is_member(transaction, &mut members, message)?
                };
                let head = match heads.get(&conversation_id) {
                    Some(head) => *head,
                    None if allowed => read_head
                        .query_row([sql_i64(conversation_id.0)], |row| u64_column(row, 0))?,
                    None => 0,
                };
                let (kind, body, target_seq, reply_to, emoji) = event_columns(&message.content);
                let inserted = allowed
                    && insert.execute(params![
                        sql_i64(conversation_id.0),
                        sql_i64(head + 1),
                        message.sender_id.as_str(),
                        message.client_msg_id.as_str(),
                        kind.as_str(),
                        body,
                        now.0,
                        target_seq.map(|seq| sql_i64(seq.0)),
                        reply_to.map(|seq| sql_i64(seq.0)),
                        emoji
                    ])? == 1;
                if inserted {
                    let seq = head + 1;
                    heads.insert(conversation_id, seq);
                    let mut frame = MessageFrame::new_message(
                        conversation_id,
                        Seq(seq),
                        MessageId(u64::try_from(transaction.last_insert_rowid()).unwrap_or(0)),
                        message.sender_id.clone(),
                        message.client_msg_id.clone(),
                        body.to_owned(),
                        now,
                    );
                    frame.kind = kind;
                    frame.target_seq = target_seq;
                    frame.reply_to = reply_to;
                    frame.emoji = emoji.map(str::to_owned);
                    outcomes.push(AppendOutcome::Appended(frame));
                    continue;
                }
                let duplicate = find_duplicate
                    .query_row(
                        params![message.sender_id.as_str(), message.client_msg_id.as_str()],
                        message_row,
                    )
                    .optional()?;
                outcomes.push(match duplicate {
                    Some(original) => AppendOutcome::Duplicate(original),
                    None => AppendOutcome::NotMember,
                });
            }
            Ok(outcomes)
        })
    }
}

fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    // WAL mode is a property of the database file, set once by the writer at open.
    let connection = Connection::open(path).map_err(unavailable)?;
    connection.busy_timeout(BUSY_TIMEOUT).map_err(unavailable)?;
    connection.set_prepared_statement_cache_capacity(64);
    Ok(connection)
}

/// Receipt positions of `user_id`'s conversations (or only `conversation`): every member's in
/// conversations of at most `members_max` members, only the user's own in larger ones; with
/// `with_large`, also those larger conversations, judged by the same count (one marker row
/// each).
fn receipts_and_large(
    connection: &Connection,
    user_id: &UserId,
    conversation: Option<ConversationId>,
    members_max: usize,
    with_large: bool,
) -> rusqlite::Result<(Vec<ReceiptRow>, Vec<ConversationId>)> {
    let mut statement = connection.prepare_cached(concat!(
        "WITH mine AS MATERIALIZED (
             SELECT me.conversation_id, ",
        members_up_to!("me.conversation_id", "?3"),
        " <= ?3 AS open
             FROM members me
             WHERE me.user_id = ?1 AND (?2 IS NULL OR me.conversation_id = ?2)
         ),
         shown AS (
             SELECT m.conversation_id, m.user_id, m.delivered_seq, m.read_seq
             FROM mine JOIN members m ON m.conversation_id = mine.conversation_id
             WHERE mine.open
             UNION ALL
             SELECT m.conversation_id, m.user_id, m.delivered_seq, m.read_seq
             FROM mine JOIN members m
                  ON m.conversation_id = mine.conversation_id AND m.user_id = ?1
             WHERE NOT mine.open
         )
         SELECT s.conversation_id, s.user_id, s.delivered_seq, s.read_seq,
                COALESCE(u.hide_read_receipts, 0), 0 AS large
         FROM shown s LEFT JOIN users u ON u.user_id = s.user_id
         WHERE s.delivered_seq > 0
         UNION ALL
         SELECT conversation_id, NULL, 0, 0, 0, 1 FROM mine WHERE ?4 AND NOT open
         ORDER BY 1, 2"
    ))?;
    let mut rows = statement.query(params![
        user_id.as_str(),
        conversation.map(|id| sql_i64(id.0)),
        sql_limit(members_max),
        with_large,
    ])?;
    let (mut receipts, mut large) = (Vec::new(), Vec::new());
    while let Some(row) = rows.next()? {
        let conversation_id = ConversationId(u64_column(row, 0)?);
        if row.get::<_, bool>(5)? {
            large.push(conversation_id);
        } else {
            receipts.push(ReceiptRow {
                conversation_id,
                user_id: user_id_column(row, 1)?,
                delivered_seq: Seq(u64_column(row, 2)?),
                read_seq: Seq(u64_column(row, 3)?),
                hide_read: row.get(4)?,
            });
        }
    }
    Ok((receipts, large))
}

/// Reads a column that must hold a valid id; a bad value means a corrupt database.
fn user_id_column(row: &Row<'_>, index: usize) -> rusqlite::Result<UserId> {
    let text: String = row.get(index)?;
    UserId::parse(&text).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(err))
    })
}

fn client_msg_id_column(row: &Row<'_>, index: usize) -> rusqlite::Result<ClientMsgId> {
    let text: String = row.get(index)?;
    ClientMsgId::parse(&text).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(err))
    })
}

fn role_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Role> {
    let text: String = row.get(index)?;
    Role::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unknown role {text:?}").into(),
        )
    })
}

fn kind_column(row: &Row<'_>, index: usize) -> rusqlite::Result<ConversationKind> {
    let text: String = row.get(index)?;
    ConversationKind::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unknown conversation kind {text:?}").into(),
        )
    })
}

fn u64_column(row: &Row<'_>, index: usize) -> rusqlite::Result<u64> {
    let value: i64 = row.get(index)?;
    u64::try_from(value).map_err(|err| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Integer,
            Box::new(err),
        )
    })
}

/// A count for `LIMIT ?n + 1`: clamped so that adding one cannot overflow.
fn sql_limit(count: usize) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX).min(i64::MAX - 1)
}

fn sql_i64(value: u64) -> i64 {
    // Ids and seqs come from SQLite's own i64 columns or from clients; anything above i64::MAX
    // cannot exist in the database, so clamping turns it into "not found" rather than a wrap.
    i64::try_from(value).unwrap_or(i64::MAX)
}

const MESSAGE_COLUMNS: &str = "conversation_id, seq, message_id, sender_id, client_msg_id, \
     kind, body, server_ts, target_seq, reply_to, emoji, edited_at, deleted";

fn optional_seq_column(row: &Row<'_>, index: usize) -> rusqlite::Result<Option<Seq>> {
    let value: Option<i64> = row.get(index)?;
    value
        .map(|value| {
            u64::try_from(value).map(Seq).map_err(|err| {
                rusqlite::Error::FromSqlConversionFailure(
                    index,
                    rusqlite::types::Type::Integer,
                    Box::new(err),
                )
            })
        })
        .transpose()
}

fn event_kind_column(row: &Row<'_>, index: usize) -> rusqlite::Result<EventKind> {
    let text: String = row.get(index)?;
    EventKind::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            index,
            rusqlite::types::Type::Text,
            format!("unknown event kind {text:?}").into(),
        )
    })
}

/// A row of `MESSAGE_COLUMNS`; reactions are attached separately (`attach_reactions`).
fn message_row(row: &Row<'_>) -> rusqlite::Result<MessageFrame> {
    Ok(MessageFrame {
        conversation_id: ConversationId(u64_column(row, 0)?),
        seq: Seq(u64_column(row, 1)?),
        message_id: MessageId(u64_column(row, 2)?),
        sender_id: user_id_column(row, 3)?,
        client_msg_id: client_msg_id_column(row, 4)?,
        kind: event_kind_column(row, 5)?,
        body: row.get(6)?,
        server_ts: UnixMillis(row.get(7)?),
        target_seq: optional_seq_column(row, 8)?,
        reply_to: optional_seq_column(row, 9)?,
        emoji: row.get(10)?,
        edited_at: row.get::<_, Option<i64>>(11)?.map(UnixMillis),
        deleted: row.get(12)?,
        reactions: Vec::new(),
    })
}

/// Fills in the current reactions of the messages of one conversation's page.
fn attach_reactions(connection: &Connection, page: &mut [MessageFrame]) -> rusqlite::Result<()> {
    let (Some(first), Some(last)) = (page.first(), page.last()) else {
        return Ok(());
    };
    let conversation_id = first.conversation_id;
    let mut statement = connection.prepare_cached(
        "SELECT seq, emoji, user_id FROM reactions
         WHERE conversation_id = ?1 AND seq BETWEEN ?2 AND ?3 ORDER BY seq, emoji, user_id",
    )?;
    let rows = statement.query_map(
        params![
            sql_i64(conversation_id.0),
            sql_i64(first.seq.0),
            sql_i64(last.seq.0)
        ],
        |row| {
            Ok((
                Seq(u64_column(row, 0)?),
                row.get::<_, String>(1)?,
                user_id_column(row, 2)?,
            ))
        },
    )?;
    for row in rows {
        let (seq, emoji, user_id) = row?;
        // Pages are ascending by seq.
        let Ok(index) = page.binary_search_by_key(&seq, |message| message.seq) else {
            continue;
        };
        let reactions = &mut page[index].reactions;
        match reactions.last_mut() {
            Some(last) if last.emoji == emoji => last.user_ids.push(user_id),
            _ => reactions.push(Reaction {
                emoji,
                user_ids: vec![user_id],
            }),
        }
    }
    Ok(())
}

/// The row an edit, delete, reaction or reply refers to: its author, kind and deleted flag.
fn target_of(
    transaction: &rusqlite::Transaction<'_>,
    conversation_id: ConversationId,
    seq: Seq,
) -> rusqlite::Result<Option<(UserId, EventKind, bool)>> {
    transaction
        .prepare_cached(
            "SELECT sender_id, kind, deleted FROM messages WHERE conversation_id = ?1 AND seq = ?2",
        )?
        .query_row(params![sql_i64(conversation_id.0), sql_i64(seq.0)], |row| {
            Ok((
                user_id_column(row, 0)?,
                event_kind_column(row, 1)?,
                row.get(2)?,
            ))
        })
        .optional()
}

/// Checks an event against the message it refers to and applies its effect on that message.
/// Runs inside `append_batch`'s transaction, after the membership check.
fn apply_to_target(
    transaction: &rusqlite::Transaction<'_>,
    message: &NewMessage,
    now: UnixMillis,
) -> rusqlite::Result<Result<(), AppendRejection>> {
    let conversation_id = message.conversation_id;
    let (target_seq, must_be_author) = match &message.content {
        Content::Message { reply_to: None, .. } | Content::System { .. } => return Ok(Ok(())),
        Content::Message {
            reply_to: Some(seq),
            ..
        } => (*seq, false),
        Content::Edit { target_seq, .. } | Content::Delete { target_seq } => (*target_seq, true),
        Content::Reaction { target_seq, .. } => (*target_seq, false),
    };
    let Some((author, kind, deleted)) = target_of(transaction, conversation_id, target_seq)? else {
        return Ok(Err(AppendRejection::NoSuchMessage));
    };
    if kind != EventKind::Message {
        return Ok(Err(AppendRejection::NoSuchMessage));
    }
    if let Content::Message { .. } = message.content {
        // A reply may quote a deleted message: the client shows the tombstone.
        return Ok(Ok(()));
    }
    if must_be_author && author != message.sender_id {
        return Ok(Err(AppendRejection::NotAuthor));
    }
    if deleted {
        return Ok(Err(AppendRejection::Deleted));
    }
    let target = params![sql_i64(conversation_id.0), sql_i64(target_seq.0)];
    match &message.content {
        Content::Message { .. } | Content::System { .. } => {}
        Content::Edit { body, .. } => {
            transaction
                .prepare_cached(
                    "UPDATE messages SET body = ?3, edited_at = ?4
                     WHERE conversation_id = ?1 AND seq = ?2",
                )?
                .execute(params![
                    sql_i64(conversation_id.0),
                    sql_i64(target_seq.0),
                    body,
                    now.0
                ])?;
        }
        Content::Delete { .. } => {
            // The text is gone from storage, from the message and from every edit of it.
            transaction
                .prepare_cached(
                    "UPDATE messages SET body = '', deleted = 1
                     WHERE conversation_id = ?1 AND (seq = ?2 OR (target_seq = ?2 AND kind = 'edit'))",
                )?
                .execute(target)?;
            transaction
                .prepare_cached("DELETE FROM reactions WHERE conversation_id = ?1 AND seq = ?2")?
                .execute(target)?;
        }
        Content::Reaction { emoji, add, .. } => {
            let sql = if *add {
                "INSERT OR IGNORE INTO reactions (conversation_id, seq, emoji, user_id)
                 VALUES (?1, ?2, ?3, ?4)"
            } else {
                "DELETE FROM reactions
                 WHERE conversation_id = ?1 AND seq = ?2 AND emoji = ?3 AND user_id = ?4"
            };
            let changed = transaction.prepare_cached(sql)?.execute(params![
                sql_i64(conversation_id.0),
                sql_i64(target_seq.0),
                emoji,
                message.sender_id.as_str()
            ])?;
            if changed == 0 {
                return Ok(Err(AppendRejection::ReactionUnchanged));
            }
        }
    }
    Ok(Ok(()))
}

/// The stored columns of a new event: kind, body, target_seq, reply_to, emoji.
fn event_columns(content: &Content) -> (EventKind, &str, Option<Seq>, Option<Seq>, Option<&str>) {
    match content {
        Content::Message { body, reply_to } => (EventKind::Message, body, None, *reply_to, None),
        Content::Edit { target_seq, body } => {
            (EventKind::Edit, body, Some(*target_seq), None, None)
        }
        Content::Delete { target_seq } => (EventKind::Delete, "", Some(*target_seq), None, None),
        Content::System { body } => (EventKind::System, body, None, None, None),
        Content::Reaction {
            target_seq, emoji, ..
        } => (
            content.kind(),
            "",
            Some(*target_seq),
            None,
            Some(emoji.as_str()),
        ),
    }
}

fn members_of(
    connection: &Connection,
    conversation_id: ConversationId,
) -> rusqlite::Result<Vec<(UserId, Role)>> {
    let mut statement = connection.prepare_cached(
        "SELECT user_id, role FROM members WHERE conversation_id = ?1 ORDER BY joined_at, user_id",
    )?;
    let rows = statement.query_map([sql_i64(conversation_id.0)], |row| {
        Ok((user_id_column(row, 0)?, role_column(row, 1)?))
    })?;
    rows.collect()
}

/// At most `max` members: `viewer` first, then the others in user id order (the primary key's).
fn listed_members_of(
    connection: &Connection,
    conversation_id: ConversationId,
    viewer: &UserId,
    max: usize,
) -> rusqlite::Result<Vec<(UserId, Role)>> {
    let mut statement = connection.prepare_cached(
        "SELECT user_id, role FROM (
             SELECT user_id, role, 0 AS rank FROM members
             WHERE conversation_id = ?1 AND user_id = ?2
             UNION ALL
             SELECT * FROM (SELECT user_id, role, 1 FROM members
                            WHERE conversation_id = ?1 AND user_id != ?2
                            ORDER BY user_id LIMIT ?3))
         ORDER BY rank, user_id",
    )?;
    let others = i64::try_from(max.saturating_sub(1)).unwrap_or(i64::MAX);
    let rows = statement.query_map(
        params![sql_i64(conversation_id.0), viewer.as_str(), others],
        |row| Ok((user_id_column(row, 0)?, role_column(row, 1)?)),
    )?;
    rows.collect()
}

/// `is_member` for a send's sender, remembering who was found a member in `members`.
fn sender_is_member<'a>(
    connection: &Connection,
    members: &mut HashSet<(ConversationId, &'a UserId)>,
    message: &'a NewMessage,
) -> rusqlite::Result<bool> {
    let key = (message.conversation_id, &message.sender_id);
    if members.contains(&key) {
        return Ok(true);
    }
    let member = is_member(connection, message.conversation_id, &message.sender_id)?;
    if member {
        members.insert(key);
    }
    Ok(member)
}

fn is_member(
    connection: &Connection,
    conversation_id: ConversationId,
    user_id: &UserId,
) -> rusqlite::Result<bool> {
    connection
        .prepare_cached("SELECT 1 FROM members WHERE conversation_id = ?1 AND user_id = ?2")?
        .exists(params![sql_i64(conversation_id.0), user_id.as_str()])
}

/// `members_max`: list at most this many members, the viewer first, then by user id (an index
/// walk, not every member); `None`: all of them, in joining order.
fn view_of(
    connection: &Connection,
    conversation_id: ConversationId,
    viewer: &UserId,
    members_max: Option<usize>,
) -> rusqlite::Result<Option<Conversation>> {
    let head = connection
        .prepare_cached(concat!(
            "SELECT c.kind, c.name, ",
            head_of!("?1"),
            ", c.created_at, m.read_seq
             FROM conversations c JOIN members m ON m.conversation_id = c.conversation_id
             WHERE c.conversation_id = ?1 AND m.user_id = ?2"
        ))?
        .query_row(
            params![sql_i64(conversation_id.0), viewer.as_str()],
            |row| {
                Ok((
                    kind_column(row, 0)?,
                    row.get::<_, Option<String>>(1)?,
                    u64_column(row, 2)?,
                    row.get::<_, i64>(3)?,
                    u64_column(row, 4)?,
                ))
            },
        )
        .optional()?;
    let Some((kind, name, head_seq, created_at, read_seq)) = head else {
        return Ok(None);
    };
    // The newest text message (edits and reactions are not "last messages").
    let last_message = connection
        .prepare_cached(&format!(
            "SELECT {MESSAGE_COLUMNS} FROM messages
             WHERE conversation_id = ?1 AND kind = 'message' ORDER BY seq DESC LIMIT 1"
        ))?
        .query_row(params![sql_i64(conversation_id.0)], message_row)
        .optional()?;
    let unread_count: i64 = connection
        .prepare_cached(
            "SELECT COUNT(*) FROM (SELECT 1 FROM messages
             WHERE conversation_id = ?1 AND seq > ?2 AND sender_id != ?3
               AND kind = 'message' AND deleted = 0 LIMIT ?4)",
        )?
        .query_row(
            params![
                sql_i64(conversation_id.0),
                sql_i64(read_seq),
                viewer.as_str(),
                sql_i64(limits::UNREAD_COUNT_MAX)
            ],
            |row| row.get(0),
        )?;
    let members: Vec<Member> = match members_max {
        None => members_of(connection, conversation_id)?,
        Some(max) => listed_members_of(connection, conversation_id, viewer, max)?,
    }
    .into_iter()
    .map(|(user_id, role)| Member { user_id, role })
    .collect();
    let member_count = if members_max.is_some_and(|max| members.len() >= max) {
        let count: i64 = connection
            .prepare_cached("SELECT COUNT(*) FROM members WHERE conversation_id = ?1")?
            .query_row([sql_i64(conversation_id.0)], |row| row.get(0))?;
        u64::try_from(count).unwrap_or(0)
    } else {
        members.len() as u64
    };
    Ok(Some(Conversation {
        conversation_id,
        kind,
        name,
        head_seq: Seq(head_seq),
        last_message,
        unread_count: u64::try_from(unread_count).unwrap_or(0),
        read_seq: Seq(read_seq),
        members,
        member_count,
        created_at: UnixMillis(created_at),
    }))
}

/// The conversation's kind and `user_id`'s role in it; `None` unless they are a member.
fn kind_and_role(
    connection: &Connection,
    conversation_id: ConversationId,
    user_id: &UserId,
) -> rusqlite::Result<Option<(ConversationKind, Role)>> {
    connection
        .prepare_cached(
            "SELECT c.kind, m.role FROM conversations c
             JOIN members m ON m.conversation_id = c.conversation_id
             WHERE c.conversation_id = ?1 AND m.user_id = ?2",
        )?
        .query_row(
            params![sql_i64(conversation_id.0), user_id.as_str()],
            |row| Ok((kind_column(row, 0)?, role_column(row, 1)?)),
        )
        .optional()
}

/// Deletes a membership; when the owner goes, the longest-standing admin (else member) becomes
/// owner. False if `user_id` was not a member.
fn delete_member(
    transaction: &rusqlite::Transaction<'_>,
    conversation_id: ConversationId,
    user_id: &UserId,
) -> rusqlite::Result<bool> {
    let role: Option<String> = transaction
        .prepare_cached(
            "DELETE FROM members WHERE conversation_id = ?1 AND user_id = ?2 RETURNING role",
        )?
        .query_row(
            params![sql_i64(conversation_id.0), user_id.as_str()],
            |row| row.get(0),
        )
        .optional()?;
    let Some(role) = role else {
        return Ok(false);
    };
    if role == Role::Owner.as_str() {
        transaction.execute(
            "UPDATE members SET role = 'owner'
             WHERE conversation_id = ?1 AND user_id = (
                 SELECT user_id FROM members WHERE conversation_id = ?1
                 ORDER BY role = 'admin' DESC, joined_at, user_id LIMIT 1)",
            [sql_i64(conversation_id.0)],
        )?;
    }
    Ok(true)
}

fn insert_member(
    transaction: &rusqlite::Transaction<'_>,
    conversation_id: ConversationId,
    user_id: &UserId,
    role: Role,
    now: UnixMillis,
) -> rusqlite::Result<bool> {
    let inserted = transaction
        .prepare_cached(
            "INSERT OR IGNORE INTO members (conversation_id, user_id, role, joined_at)
             VALUES (?1, ?2, ?3, ?4)",
        )?
        .execute(params![
            sql_i64(conversation_id.0),
            user_id.as_str(),
            role.as_str(),
            now.0
        ])?;
    Ok(inserted == 1)
}

impl Store for SqliteStore {
    fn epoch(&self) -> StoreEpoch {
        self.epoch.clone()
    }

    fn create_user(&self, user: &StoredUser, now: UnixMillis) -> Result<bool, StoreError> {
        self.write(|transaction| {
            let inserted = transaction.execute(
                "INSERT OR IGNORE INTO users (user_id, password_hash, created_at) VALUES (?1, ?2, ?3)",
                params![user.user_id.as_str(), user.password_hash, now.0],
            )?;
            Ok(inserted == 1)
        })
    }

    fn ensure_user(&self, user_id: &UserId, now: UnixMillis) -> Result<(), StoreError> {
        // Most calls find the user: check with a reader before taking the writer.
        if self.user(user_id)?.is_some() {
            return Ok(());
        }
        self.write(|transaction| {
            transaction.execute(
                "INSERT OR IGNORE INTO users (user_id, password_hash, created_at) VALUES (?1, NULL, ?2)",
                params![user_id.as_str(), now.0],
            )?;
            Ok(())
        })
    }

    fn user(&self, user_id: &UserId) -> Result<Option<StoredUser>, StoreError> {
        self.read(|connection| {
            connection
                .prepare_cached("SELECT password_hash FROM users WHERE user_id = ?1")?
                .query_row([user_id.as_str()], |row| {
                    Ok(StoredUser {
                        user_id: user_id.clone(),
                        password_hash: row.get(0)?,
                    })
                })
                .optional()
        })
    }

    fn settings(&self, user_id: &UserId) -> Result<Settings, StoreError> {
        self.read(|connection| {
            let hide_read_receipts = connection
                .prepare_cached("SELECT hide_read_receipts FROM users WHERE user_id = ?1")?
                .query_row([user_id.as_str()], |row| row.get(0))
                .optional()?
                .unwrap_or(false);
            Ok(Settings { hide_read_receipts })
        })
    }

    fn set_settings(&self, user_id: &UserId, settings: &Settings) -> Result<(), StoreError> {
        self.write(|transaction| {
            transaction
                .prepare_cached("UPDATE users SET hide_read_receipts = ?2 WHERE user_id = ?1")?
                .execute(params![user_id.as_str(), settings.hide_read_receipts])?;
            Ok(())
        })
    }

    fn record_last_seen(&self, seen: &[(UserId, UnixMillis)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        self.write(|transaction| {
            let mut update = transaction.prepare_cached(
                "UPDATE users SET last_seen_at = MAX(COALESCE(last_seen_at, 0), ?2) WHERE user_id = ?1",
            )?;
            for (user_id, at) in seen {
                update.execute(params![user_id.as_str(), at.0])?;
            }
            Ok(())
        })
    }

    fn presence_visible(
        &self,
        viewer: &UserId,
        candidates: &[UserId],
    ) -> Result<Vec<(UserId, Option<UnixMillis>)>, StoreError> {
        self.read(|connection| {
            let transaction = connection.unchecked_transaction()?;
            let mut shares = transaction.prepare_cached(
                "SELECT 1 FROM members mine JOIN members theirs
                     ON theirs.conversation_id = mine.conversation_id
                 WHERE mine.user_id = ?1 AND theirs.user_id = ?2 LIMIT 1",
            )?;
            let mut last_seen =
                transaction.prepare_cached("SELECT last_seen_at FROM users WHERE user_id = ?1")?;
            let mut visible = Vec::new();
            for candidate in candidates {
                if candidate != viewer
                    && !shares.exists(params![viewer.as_str(), candidate.as_str()])?
                {
                    continue;
                }
                let seen: Option<i64> = last_seen
                    .query_row([candidate.as_str()], |row| row.get(0))
                    .optional()?
                    .flatten();
                visible.push((candidate.clone(), seen.map(UnixMillis)));
            }
            drop((shares, last_seen));
            transaction.finish()?;
            Ok(visible)
        })
    }

    fn create_session(
        &self,
        token_hash: &[u8; 32],
        user_id: &UserId,
        expires_at: UnixMillis,
        now: UnixMillis,
    ) -> Result<(), StoreError> {
        self.write(|transaction| {
            // Expired sessions are garbage; dropping a few with each new one keeps the table
            // small without ever making one login pay for a large cleanup.
            transaction.execute(
                "DELETE FROM sessions WHERE token_hash IN
                     (SELECT token_hash FROM sessions WHERE expires_at <= ?1 LIMIT 16)",
                [now.0],
            )?;
            transaction.execute(
                "INSERT INTO sessions (token_hash, user_id, expires_at, created_at) VALUES (?1, ?2, ?3, ?4)",
                params![&token_hash[..], user_id.as_str(), expires_at.0, now.0],
            )?;
            Ok(())
        })
    }

    fn session_user(
        &self,
        token_hash: &[u8; 32],
        now: UnixMillis,
    ) -> Result<Option<(UserId, UnixMillis)>, StoreError> {
        self.read(|connection| {
            connection
                .prepare_cached(
                    "SELECT user_id, expires_at FROM sessions
                     WHERE token_hash = ?1 AND expires_at > ?2",
                )?
                .query_row(params![&token_hash[..], now.0], |row| {
                    Ok((user_id_column(row, 0)?, UnixMillis(row.get(1)?)))
                })
                .optional()
        })
    }

    fn revoke_session(&self, token_hash: &[u8; 32]) -> Result<(), StoreError> {
        self.write(|transaction| {
            transaction.execute(
                "DELETE FROM sessions WHERE token_hash = ?1",
                [&token_hash[..]],
            )?;
            Ok(())
        })
    }

    fn create_direct(
        &self,
        a: &UserId,
        b: &UserId,
        now: UnixMillis,
    ) -> Result<(ConversationId, bool), StoreError> {
        assert_ne!(a, b, "a direct conversation needs two distinct users");
        let (low, high) = if a < b { (a, b) } else { (b, a) };
        // '/' cannot occur in a user id, so the key is unambiguous.
        let direct_key = format!("{low}/{high}");
        self.write(|transaction| {
            let existing: Option<i64> = transaction
                .prepare_cached("SELECT conversation_id FROM conversations WHERE direct_key = ?1")?
                .query_row([&direct_key], |row| row.get(0))
                .optional()?;
            if let Some(id) = existing {
                return Ok((ConversationId(u64::try_from(id).unwrap_or(0)), false));
            }
            transaction.execute(
                "INSERT INTO conversations (kind, name, direct_key, created_at)
                 VALUES ('direct', NULL, ?1, ?2)",
                params![direct_key, now.0],
            )?;
            let id = ConversationId(u64::try_from(transaction.last_insert_rowid()).unwrap_or(0));
            insert_member(transaction, id, low, Role::Member, now)?;
            insert_member(transaction, id, high, Role::Member, now)?;
            Ok((id, true))
        })
    }

    fn create_group(
        &self,
        owner: &UserId,
        name: &str,
        members: &[UserId],
        now: UnixMillis,
    ) -> Result<ConversationId, StoreError> {
        self.write(|transaction| {
            transaction.execute(
                "INSERT INTO conversations (kind, name, direct_key, created_at)
                 VALUES ('group', ?1, NULL, ?2)",
                params![name, now.0],
            )?;
            let id = ConversationId(u64::try_from(transaction.last_insert_rowid()).unwrap_or(0));
            insert_member(transaction, id, owner, Role::Owner, now)?;
            for member in members {
                insert_member(transaction, id, member, Role::Member, now)?;
            }
            Ok(id)
        })
    }

    fn conversation_info(
        &self,
        conversation_id: ConversationId,
    ) -> Result<Option<ConversationInfo>, StoreError> {
        self.read(|connection| {
            let kind = connection
                .prepare_cached("SELECT kind FROM conversations WHERE conversation_id = ?1")?
                .query_row([sql_i64(conversation_id.0)], |row| kind_column(row, 0))
                .optional()?;
            let Some(kind) = kind else {
                return Ok(None);
            };
            Ok(Some(ConversationInfo {
                conversation_id,
                kind,
                members: members_of(connection, conversation_id)?,
            }))
        })
    }

    fn members_page(
        &self,
        conversation_id: ConversationId,
        viewer: &UserId,
        after: Option<&UserId>,
        limit: usize,
    ) -> Result<Option<Vec<Member>>, StoreError> {
        self.read(|connection| {
            let transaction = connection.unchecked_transaction()?;
            if kind_and_role(&transaction, conversation_id, viewer)?.is_none() {
                return Ok(None);
            }
            // A walk of the primary key from `after`.
            let page = transaction
                .prepare_cached(
                    "SELECT user_id, role FROM members
                     WHERE conversation_id = ?1 AND user_id > ?2 ORDER BY user_id LIMIT ?3",
                )?
                .query_map(
                    params![
                        sql_i64(conversation_id.0),
                        after.map_or("", UserId::as_str),
                        sql_limit(limit)
                    ],
                    |row| {
                        Ok(Member {
                            user_id: user_id_column(row, 0)?,
                            role: role_column(row, 1)?,
                        })
                    },
                )?
                .collect::<rusqlite::Result<Vec<Member>>>()?;
            transaction.finish()?;
            Ok(Some(page))
        })
    }

    fn conversation_for(
        &self,
        conversation_id: ConversationId,
        viewer: &UserId,
    ) -> Result<Option<Conversation>, StoreError> {
        // One read transaction: the head, last message and unread count agree with each other.
        self.read(|connection| {
            let transaction = connection.unchecked_transaction()?;
            let view = view_of(
                &transaction,
                conversation_id,
                viewer,
                Some(limits::MEMBERS_LISTED_MAX),
            )?;
            transaction.finish()?;
            Ok(view)
        })
    }

    fn conversations_page(
        &self,
        user_id: &UserId,
        after: Option<ListingCursor>,
        limit: usize,
    ) -> Result<(Vec<Conversation>, Option<ListingCursor>), StoreError> {
        self.read(|connection| {
            // One read transaction: every view is of the same moment.
            let transaction = connection.unchecked_transaction()?;
            let connection: &Connection = &transaction;
            // One more than asked tells whether more follow.
            let mut page: Vec<ListingCursor> = connection
                .prepare_cached(
                    // Last activity: the newest event's time, or the creation for none yet.
                    "SELECT id, activity FROM (
                         SELECT c.conversation_id AS id, COALESCE(
                             (SELECT server_ts FROM messages e
                              WHERE e.conversation_id = c.conversation_id
                              ORDER BY e.seq DESC LIMIT 1),
                             c.created_at) AS activity
                         FROM members m
                         JOIN conversations c ON c.conversation_id = m.conversation_id
                         WHERE m.user_id = ?1)
                     WHERE ?2 IS NULL OR (activity, id) < (?2, ?3)
                     ORDER BY activity DESC, id DESC
                     LIMIT ?4",
                )?
                .query_map(
                    params![
                        user_id.as_str(),
                        after.map(|cursor| cursor.activity.0),
                        after.map(|cursor| sql_i64(cursor.conversation_id.0)),
                        sql_limit(limit).saturating_add(1),
                    ],
                    |row| {
                        Ok(ListingCursor {
                            conversation_id: ConversationId(u64_column(row, 0)?),
                            activity: UnixMillis(row.get(1)?),
                        })
                    },
                )?
                .collect::<rusqlite::Result<_>>()?;
            let more = page.len() > limit;
            page.truncate(limit);
            let mut conversations = Vec::with_capacity(page.len());
            for listed in &page {
                if let Some(view) = view_of(
                    connection,
                    listed.conversation_id,
                    user_id,
                    Some(limits::MEMBERS_LISTED_MAX),
                )? {
                    conversations.push(view);
                }
            }
            transaction.finish()?;
            Ok((conversations, page.last().copied().filter(|_| more)))
        })
    }

    fn heads_of(&self, user_id: &UserId) -> Result<Vec<(ConversationId, Seq)>, StoreError> {
        self.read(|connection| {
            connection
                .prepare_cached(concat!(
                    "SELECT m.conversation_id, ",
                    head_of!("m.conversation_id"),
                    " FROM members m WHERE m.user_id = ?1 ORDER BY m.conversation_id"
                ))?
                .query_map([user_id.as_str()], |row| {
                    Ok((
                        ConversationId(u64_column(row, 0)?),
                        Seq(u64_column(row, 1)?),
                    ))
                })?
                .collect()
        })
    }

    fn conversation_count(&self, user_id: &UserId) -> Result<usize, StoreError> {
        self.read(|connection| {
            let count: i64 = connection
                .prepare_cached("SELECT COUNT(*) FROM members WHERE user_id = ?1")?
                .query_row([user_id.as_str()], |row| row.get(0))?;
            Ok(usize::try_from(count).unwrap_or(0))
        })
    }

    fn add_member(
        &self,
        conversation_id: ConversationId,
        user_id: &UserId,
        role: Role,
        now: UnixMillis,
    ) -> Result<MembershipChange, StoreError> {
        self.write(|transaction| {
            Ok(
                if insert_member(transaction, conversation_id, user_id, role, now)? {
                    MembershipChange::Changed
                } else {
                    MembershipChange::Unchanged
                },
            )
        })
    }

    fn remove_member(
        &self,
        conversation_id: ConversationId,
        user_id: &UserId,
    ) -> Result<MembershipChange, StoreError> {
        self.write(|transaction| {
            Ok(if delete_member(transaction, conversation_id, user_id)? {
                MembershipChange::Changed
            } else {
                MembershipChange::Unchanged
            })
        })
    }

    fn add_member_as(
        &self,
        actor: &UserId,
        conversation_id: ConversationId,
        user_id: &UserId,
        role: Role,
        members_max: usize,
        may_manage: MayManage,
        now: UnixMillis,
    ) -> Result<ManageOutcome, StoreError> {
        self.write(|transaction| {
            let Some((kind, actor_role)) = kind_and_role(transaction, conversation_id, actor)?
            else {
                return Ok(ManageOutcome::NotFound);
            };
            if kind == ConversationKind::Direct {
                return Ok(ManageOutcome::Direct);
            }
            if !may_manage(actor_role, role) {
                return Ok(ManageOutcome::Forbidden);
            }
            if is_member(transaction, conversation_id, user_id)? {
                return Ok(ManageOutcome::Unchanged);
            }
            let exists = transaction
                .prepare_cached("SELECT 1 FROM users WHERE user_id = ?1")?
                .exists([user_id.as_str()])?;
            if !exists {
                return Ok(ManageOutcome::UnknownUser);
            }
            let members: i64 = transaction
                .prepare_cached("SELECT COUNT(*) FROM members WHERE conversation_id = ?1")?
                .query_row([sql_i64(conversation_id.0)], |row| row.get(0))?;
            if usize::try_from(members).unwrap_or(usize::MAX) >= members_max {
                return Ok(ManageOutcome::Full);
            }
            insert_member(transaction, conversation_id, user_id, role, now)?;
            Ok(ManageOutcome::Changed)
        })
    }

    fn remove_member_as(
        &self,
        actor: &UserId,
        conversation_id: ConversationId,
        target: &UserId,
        may_manage: MayManage,
    ) -> Result<ManageOutcome, StoreError> {
        self.write(|transaction| {
            let actor_row = kind_and_role(transaction, conversation_id, actor)?;
            let target_row = kind_and_role(transaction, conversation_id, target)?;
            let Some((kind, actor_role)) = actor_row else {
                return Ok(ManageOutcome::NotFound);
            };
            let decision = decide_removal(
                kind,
                Some(actor_role),
                target_row.map(|(_, role)| role),
                actor == target,
                may_manage,
            );
            if decision == ManageOutcome::Changed {
                delete_member(transaction, conversation_id, target)?;
            }
            Ok(decision)
        })
    }

    fn append_batch(
        &self,
        batch: &[NewMessage],
        now: UnixMillis,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let replaces_text = batch.iter().any(|message| {
            matches!(
                message.content,
                Content::Delete { .. } | Content::Edit { .. }
            )
        });
        if !replaces_text {
            return self.append(batch, now);
        }
        // Replaced and deleted text must not linger in free space: for this commit SQLite
        // overwrites what it frees (always on, it cost ~10% of throughput, so only here).
        lock(&self.writer)
            .pragma_update(None, "secure_delete", "ON")
            .map_err(unavailable)?;
        let outcomes = self.append(batch, now);
        let _ = lock(&self.writer).pragma_update(None, "secure_delete", "OFF");
        let outcomes = outcomes?;
        let deleted = outcomes.iter().any(|outcome| {
            matches!(outcome, AppendOutcome::Appended(frame) if frame.kind == EventKind::Delete)
        });
        if deleted {
            // The deleted text also lives on in the WAL's older page images until a checkpoint
            // copies the pages back and the log is truncated. Best effort: a checkpoint blocked
            // by readers completes with a later one.
            // Without waiting: the committer must not stall behind a long read.
            let writer = lock(&self.writer);
            let _checkpoint = lock(&self.checkpoint);
            let _ = writer.busy_timeout(Duration::ZERO);
            let _ = writer.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)");
            let _ = writer.busy_timeout(BUSY_TIMEOUT);
        }
        Ok(outcomes)
    }

    fn advance_markers(&self, updates: &[MarkerUpdate]) -> Result<Vec<ReceiptRow>, StoreError> {
        self.write(|transaction| {
            // Positions only move forward and never past the head; reading implies receiving.
            // A batch holds many members of few conversations (every member confirming the same
            // message): each head is read once, and plain statements do the rest (`UPDATE …
            // FROM` and `RETURNING` each built a temporary table per row).
            let mut head = transaction.prepare_cached(concat!("SELECT ", head_of!("?1")))?;
            let mut advance = transaction.prepare_cached(
                "UPDATE members SET delivered_seq = MAX(delivered_seq, ?3),
                                    read_seq = MAX(read_seq, ?4)
                 WHERE conversation_id = ?1 AND user_id = ?2
                   AND (delivered_seq < ?3 OR read_seq < ?4)",
            )?;
            let mut now = transaction.prepare_cached(
                "SELECT m.delivered_seq, m.read_seq, COALESCE(u.hide_read_receipts, 0)
                 FROM members m LEFT JOIN users u ON u.user_id = m.user_id
                 WHERE m.conversation_id = ?1 AND m.user_id = ?2",
            )?;
            let mut heads: HashMap<ConversationId, u64> = HashMap::new();
            let mut changed = Vec::new();
            for update in updates {
                let conversation = sql_i64(update.conversation_id.0);
                let head_seq = match heads.get(&update.conversation_id) {
                    Some(seq) => *seq,
                    None => {
                        let seq = head.query_row([conversation], |row| u64_column(row, 0))?;
                        heads.insert(update.conversation_id, seq);
                        seq
                    }
                };
                let delivered = update.delivered.0.max(update.read.0).min(head_seq);
                let read = update.read.0.min(head_seq);
                let moved = advance.execute(params![
                    conversation,
                    update.user_id.as_str(),
                    sql_i64(delivered),
                    sql_i64(read)
                ])?;
                if moved == 0 {
                    // Not a member, or nothing new.
                    continue;
                }
                let (delivered_seq, read_seq, hide_read) =
                    now.query_row(params![conversation, update.user_id.as_str()], |row| {
                        Ok((
                            Seq(u64_column(row, 0)?),
                            Seq(u64_column(row, 1)?),
                            row.get(2)?,
                        ))
                    })?;
                changed.push(ReceiptRow {
                    conversation_id: update.conversation_id,
                    user_id: update.user_id.clone(),
                    delivered_seq,
                    read_seq,
                    hide_read,
                });
            }
            Ok(changed)
        })
    }

    fn receipts_of(
        &self,
        user_id: &UserId,
        conversation: Option<ConversationId>,
        members_max: usize,
    ) -> Result<Vec<ReceiptRow>, StoreError> {
        self.read(|connection| {
            receipts_and_large(connection, user_id, conversation, members_max, false)
                .map(|(rows, _)| rows)
        })
    }

    fn sync_receipts_of(
        &self,
        user_id: &UserId,
        members_max: usize,
    ) -> Result<(Vec<ReceiptRow>, Vec<ConversationId>), StoreError> {
        self.read(|connection| receipts_and_large(connection, user_id, None, members_max, true))
    }

    fn larger_than(
        &self,
        conversations: &[ConversationId],
        members_max: usize,
    ) -> Result<Vec<ConversationId>, StoreError> {
        self.read(|connection| {
            let mut larger = connection.prepare_cached(concat!(
                "SELECT ",
                members_up_to!("?1", "?2"),
                " > ?2"
            ))?;
            let max = sql_limit(members_max);
            let mut found = Vec::new();
            for conversation_id in conversations {
                if larger.query_row(params![sql_i64(conversation_id.0), max], |row| row.get(0))? {
                    found.push(*conversation_id);
                }
            }
            Ok(found)
        })
    }

    fn messages_after(
        &self,
        viewer: &UserId,
        conversation_id: ConversationId,
        after: Seq,
        limit: usize,
    ) -> Result<Option<Vec<MessageFrame>>, StoreError> {
        self.read_as_member(
            viewer,
            conversation_id,
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                 WHERE conversation_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3"
            ),
            after,
            limit,
            false,
        )
    }

    fn messages_before(
        &self,
        viewer: &UserId,
        conversation_id: ConversationId,
        before: Seq,
        limit: usize,
    ) -> Result<Option<Vec<MessageFrame>>, StoreError> {
        self.read_as_member(
            viewer,
            conversation_id,
            &format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages
                 WHERE conversation_id = ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
            ),
            before,
            limit,
            true,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_commit_saturates_the_store_for_a_while() {
        let start = Instant::now();
        let saturation = Saturation::new(start);
        assert!(!saturation.active(start), "not before any commit");
        assert!(!saturation.note_batch(SATURATED_BATCH_SENDS - 1, start));
        let full = start + Duration::from_millis(5);
        assert!(saturation.note_batch(SATURATED_BATCH_SENDS, full));
        let later = full + SATURATION_HOLD / 2;
        assert!(
            saturation.note_batch(3, later),
            "a small commit in between changes nothing"
        );
        assert!(saturation.active(full + SATURATION_HOLD - Duration::from_millis(1)));
        assert!(!saturation.active(full + SATURATION_HOLD));
        assert!(!saturation.note_batch(3, full + SATURATION_HOLD * 2));
    }
}
