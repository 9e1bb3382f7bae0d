//! The embedded event store: one SQLite file (WAL, `synchronous=FULL`, so an
//! ack survives a crash and a power cut). One connection writes, one reads;
//! both run on tokio's blocking threads, never on an actor's thread. A third
//! connection, on a thread of its own, checkpoints the WAL into the database
//! file, so that no commit waits for a checkpoint (SQLite's automatic one
//! runs inside the commit that crosses its threshold and stalled appends for
//! hundreds of milliseconds under load).

use std::collections::HashMap;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

use super::migrations::{self, Dialect};
use super::{
    plan, AppendOutcome, AppendRequest, EventStore, Keys, Loaded, Page, PageQuery, Refusal,
    Snapshot, StoreError,
};
use crate::protocol::{now_micros, Event, EventKind, HistoryRange, RoomName, UserId};

const EVENT_COLUMNS: &str = "id, room, seq, type, user_id, message, client_msg_id, node, at";

/// How often the checkpointer copies the WAL into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);

pub struct SqliteStore {
    writer: Arc<Mutex<Connection>>,
    reader: Arc<Mutex<Connection>>,
    epoch: String,
    /// Dropping it stops the checkpointer thread.
    _checkpointer: mpsc::Sender<()>,
}

impl SqliteStore {
    /// Opens (creating and migrating) the database at `path`; `:memory:` is
    /// not supported because the reader needs to see the writer's file.
    pub async fn open(path: &str) -> anyhow::Result<SqliteStore> {
        let path = path.to_owned();
        tokio::task::spawn_blocking(move || SqliteStore::open_blocking(&path))
            .await
            .context("sqlite open task")?
    }

    fn open_blocking(path: &str) -> anyhow::Result<SqliteStore> {
        let mut writer =
            Connection::open(path).with_context(|| format!("cannot open SQLITE_PATH={path}"))?;
        writer.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
             PRAGMA busy_timeout=5000; PRAGMA wal_autocheckpoint=0;",
        )?;
        migrate(&mut writer).with_context(|| format!("cannot migrate SQLITE_PATH={path}"))?;
        let epoch: String =
            writer.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
                r.get(0)
            })?;
        let reader = Connection::open(path)?;
        reader.execute_batch("PRAGMA busy_timeout=5000; PRAGMA query_only=ON;")?;
        let checkpointer = Connection::open(path)?;
        checkpointer.execute_batch("PRAGMA busy_timeout=5000; PRAGMA synchronous=FULL;")?;
        let (stop, stopped) = mpsc::channel();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || checkpoint_loop(&checkpointer, &stopped))
            .context("cannot start the SQLite checkpointer thread")?;
        Ok(SqliteStore {
            writer: Arc::new(Mutex::new(writer)),
            reader: Arc::new(Mutex::new(reader)),
            epoch,
            _checkpointer: stop,
        })
    }

    /// Runs `f` on a connection on a blocking thread.
    async fn with<T, F>(conn: &Arc<Mutex<Connection>>, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = conn.clone();
        tokio::task::spawn_blocking(move || {
            let mut guard = conn
                .lock()
                .map_err(|_| StoreError::Other(anyhow!("sqlite connection lock poisoned")))?;
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Other(anyhow!("sqlite task failed: {e}")))?
    }
}

/// Copies the WAL into the database file every [`CHECKPOINT_INTERVAL`] until
/// the store is dropped. PASSIVE: it never blocks the writer or a reader.
fn checkpoint_loop(conn: &Connection, stop: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(CHECKPOINT_INTERVAL) {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            log::warn!("sqlite checkpoint failed: {e}");
        }
    }
}

/// Applies the migrations (see `store::migrations`), adopting a database
/// whose migrations the pre-refinery runner recorded.
pub(super) fn migrate(conn: &mut Connection) -> anyhow::Result<()> {
    let table = |conn: &Connection, name: &str| -> rusqlite::Result<bool> {
        conn.query_row(
            "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?1)",
            [name],
            |r| r.get(0),
        )
    };
    if table(conn, "schema_migrations")? && !table(conn, "refinery_schema_history")? {
        let last: i64 = conn.query_row("SELECT max(version) FROM schema_migrations", [], |r| {
            r.get(0)
        })?;
        migrations::runner(Dialect::Sqlite, Some(last))?.run(conn)?;
    }
    let report = migrations::runner(Dialect::Sqlite, None)?.run(conn)?;
    migrations::log_report(Dialect::Sqlite, &report);
    Ok(())
}

fn fmt_at(at: &DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn event_from_row(row: &Row<'_>) -> rusqlite::Result<Event> {
    let kind: String = row.get(3)?;
    let at: String = row.get(8)?;
    let bad = |what: String| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, what.into())
    };
    Ok(Event {
        id: row.get(0)?,
        room: RoomName::trusted(row.get(1)?),
        seq: row.get(2)?,
        kind: EventKind::from_db(&kind).ok_or_else(|| bad(format!("event type {kind}")))?,
        user_id: UserId::trusted(row.get(4)?),
        message: row.get(5)?,
        client_msg_id: row.get(6)?,
        node: row.get(7)?,
        at: DateTime::parse_from_rfc3339(&at)
            .map_err(|e| bad(format!("event time {at}: {e}")))?
            .with_timezone(&Utc),
    })
}

fn append_blocking(
    conn: &mut Connection,
    batch: &[AppendRequest],
    node: &str,
) -> Result<Vec<AppendOutcome>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let keys = Keys::of(batch);
    let mut loaded = Loaded::default();
    {
        let mut room = tx.prepare_cached("SELECT last_seq FROM rooms WHERE name = ?1")?;
        for name in &keys.rooms {
            if let Some(last) = room.query_row([name.as_str()], |r| r.get(0)).optional()? {
                loaded.rooms.insert(name.clone(), last);
            }
        }
        let mut member =
            tx.prepare_cached("SELECT 1 FROM room_members WHERE room = ?1 AND user_id = ?2")?;
        for (room, user) in keys.pairs {
            if member.exists([room.as_str(), user.as_str()])? {
                loaded.members.insert((room, user));
            }
        }
        let mut sent = tx.prepare_cached(&format!(
            "SELECT {EVENT_COLUMNS} FROM events
             WHERE room = ?1 AND user_id = ?2 AND client_msg_id = ?3"
        ))?;
        for key in keys.sent {
            if let Some(ev) = sent
                .query_row(
                    [key.0.as_str(), key.1.as_str(), key.2.as_str()],
                    event_from_row,
                )
                .optional()?
            {
                loaded.sent.insert(key, ev);
            }
        }
    }
    let at = now_micros();
    let mut plan = plan(batch, loaded, node, at);
    let mut ids = HashMap::with_capacity(plan.events.len());
    {
        let mut create = tx.prepare_cached(
            "INSERT INTO rooms (name, created_by, created_at, last_seq) VALUES (?1, ?2, ?3, 0)",
        )?;
        for (room, user) in &plan.created {
            create.execute(params![room.as_str(), user.as_str(), fmt_at(&at)])?;
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (room, seq, type, user_id, message, client_msg_id, node, at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let at_text = fmt_at(&at);
        for ev in &plan.events {
            insert.execute(params![
                ev.room.as_str(),
                ev.seq,
                ev.kind.as_str(),
                ev.user_id.as_str(),
                ev.message,
                ev.client_msg_id,
                ev.node,
                at_text
            ])?;
            ids.insert((ev.room.clone(), ev.seq), tx.last_insert_rowid());
        }
        let mut last = tx.prepare_cached("UPDATE rooms SET last_seq = ?2 WHERE name = ?1")?;
        for (room, seq) in &plan.last_seqs {
            last.execute(params![room.as_str(), seq])?;
        }
        let mut join = tx.prepare_cached(
            "INSERT INTO room_members (room, user_id, joined_seq) VALUES (?1, ?2, ?3)
             ON CONFLICT (room, user_id) DO UPDATE SET joined_seq = excluded.joined_seq",
        )?;
        let mut leave =
            tx.prepare_cached("DELETE FROM room_members WHERE room = ?1 AND user_id = ?2")?;
        for (room, user, joined) in &plan.membership {
            match joined {
                Some(seq) => join.execute(params![room.as_str(), user.as_str(), seq])?,
                None => leave.execute(params![room.as_str(), user.as_str()])?,
            };
        }
    }
    tx.commit()?;
    plan.set_ids(&ids);
    Ok(plan.outcomes)
}

#[async_trait]
impl EventStore for SqliteStore {
    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    async fn append(
        &self,
        batch: &[AppendRequest],
        node: &str,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let batch = batch.to_vec();
        let node = node.to_owned();
        Self::with(&self.writer, move |conn| {
            append_blocking(conn, &batch, &node)
        })
        .await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Self::with(&self.reader, |conn| {
            let mut snap = Snapshot::default();
            let mut rooms = conn.prepare("SELECT name, last_seq FROM rooms ORDER BY name")?;
            let rows = rooms.query_map([], |r| Ok((RoomName::trusted(r.get(0)?), r.get(1)?)))?;
            for row in rows {
                snap.rooms.push(row?);
            }
            let mut members = conn.prepare("SELECT room, user_id FROM room_members")?;
            let rows = members.query_map([], |r| {
                Ok((RoomName::trusted(r.get(0)?), UserId::trusted(r.get(1)?)))
            })?;
            for row in rows {
                snap.members.push(row?);
            }
            Ok(snap)
        })
        .await
    }

    async fn events(&self, room: &RoomName, range: HistoryRange) -> Result<Page, StoreError> {
        let room = room.clone();
        Self::with(&self.reader, move |conn| {
            let q = PageQuery::of(range);
            let order = if q.descending { "DESC" } else { "ASC" };
            let mut st = conn.prepare_cached(&format!(
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE room = ?1 AND seq > ?2 AND seq < ?3 ORDER BY seq {order} LIMIT ?4"
            ))?;
            let rows = st.query_map(
                params![room.as_str(), q.lower, q.upper, q.fetch],
                event_from_row,
            )?;
            let events = rows.collect::<rusqlite::Result<Vec<Event>>>()?;
            Ok(q.finish(events))
        })
        .await
    }

    async fn check_reader(
        &self,
        room: &RoomName,
        user: Option<&UserId>,
    ) -> Result<Option<Refusal>, StoreError> {
        let room = room.clone();
        let user = user.cloned();
        Self::with(&self.reader, move |conn| {
            let exists = conn
                .prepare_cached("SELECT 1 FROM rooms WHERE name = ?1")?
                .exists([room.as_str()])?;
            if !exists {
                return Ok(Some(Refusal::NoSuchRoom));
            }
            if let Some(user) = user {
                let member = conn
                    .prepare_cached("SELECT 1 FROM room_members WHERE room = ?1 AND user_id = ?2")?
                    .exists([room.as_str(), user.as_str()])?;
                if !member {
                    return Ok(Some(Refusal::NotAMember));
                }
            }
            Ok(None)
        })
        .await
    }

    async fn all_events(&self) -> Result<Vec<Event>, StoreError> {
        Self::with(&self.reader, |conn| {
            let mut st =
                conn.prepare(&format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY id"))?;
            let rows = st.query_map([], event_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<Event>>>()?)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Self::with(&self.reader, |conn| {
            conn.query_row("SELECT 1", [], |_| Ok(()))?;
            Ok(())
        })
        .await
    }
}
