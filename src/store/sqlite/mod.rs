//! The embedded event store: one SQLite file (WAL, `synchronous=FULL`, so an
//! ack survives a crash and a power cut). One connection writes, one reads;
//! both run on tokio's blocking threads, never on an actor's thread. A third
//! connection, on a thread of its own, checkpoints the WAL into the database
//! file, so that no commit waits for a checkpoint (SQLite's automatic one
//! runs inside the commit that crosses its threshold and stalled appends for
//! hundreds of milliseconds under load).
//!
//! By job: this file (opening, the checkpointer, rows, the reads), `load.rs`
//! (what `plan` needs for a batch) and `write.rs` (a batch's transaction).

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, Context};
use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{params, Connection, OptionalExtension, Row, TransactionBehavior};

mod load;
mod write;

use super::migrations::{self, Dialect};
use super::{
    role_from_db, set_event_data, set_reactions, set_state, stateful_seqs, Access, AppendOutcome,
    AppendRequest, EventStore, Page, PageQuery, RoomRow, Snapshot, StateColumns, StoreError,
    UNREAD_SQL,
};
use crate::protocol::{
    now_micros, BanInfo, Event, EventKind, HistoryRange, Role, RoomName, Seq, UserId,
};

/// Every event column, and the message's current state beside it.
const EVENT_SELECT: &str = "SELECT e.id, e.room, e.seq, e.type, e.user_id, e.message,
    e.client_msg_id, e.node, e.at, e.target, e.data, e.target_seq,
    s.text, s.edited, s.deleted_by, s.state_seq
    FROM events e LEFT JOIN message_state s ON s.room = e.room AND s.seq = e.seq";

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
             PRAGMA secure_delete=ON;
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
    let mut ev = Event::new(
        EventKind::from_db(&kind).ok_or_else(|| bad(format!("event type {kind}")))?,
        RoomName::trusted(row.get(1)?),
        row.get(2)?,
        UserId::trusted(row.get(4)?),
        row.get(7)?,
        DateTime::parse_from_rfc3339(&at)
            .map_err(|e| bad(format!("event time {at}: {e}")))?
            .with_timezone(&Utc),
    );
    ev.id = row.get(0)?;
    ev.message = row.get(5)?;
    ev.client_msg_id = row.get(6)?;
    let data: Option<String> = row.get(10)?;
    set_event_data(&mut ev, row.get(9)?, row.get(11)?, data.as_deref())
        .map_err(|e| bad(e.to_string()))?;
    set_state(
        &mut ev,
        StateColumns {
            text: row.get(12)?,
            edited: row.get(13)?,
            deleted_by: row.get(14)?,
            state_seq: row.get(15)?,
        },
    );
    Ok(ev)
}

fn room_row(row: &Row<'_>, from: usize) -> rusqlite::Result<RoomRow> {
    let dm_a: Option<String> = row.get(from + 3)?;
    let dm_b: Option<String> = row.get(from + 4)?;
    Ok(RoomRow {
        last_seq: row.get(from)?,
        private: row.get(from + 1)?,
        owner: row.get::<_, Option<String>>(from + 2)?.map(UserId::trusted),
        dm: dm_a
            .zip(dm_b)
            .map(|(a, b)| (UserId::trusted(a), UserId::trusted(b))),
    })
}

fn role_of(s: String) -> rusqlite::Result<Role> {
    role_from_db(&s).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            e.to_string().into(),
        )
    })
}

/// The reactions of `room`'s messages among `events`, in the order made.
fn load_reactions(
    conn: &Connection,
    room: &RoomName,
    events: &mut [Event],
) -> Result<(), StoreError> {
    let seqs = stateful_seqs(events);
    let (Some(lo), Some(hi)) = (seqs.iter().min(), seqs.iter().max()) else {
        return Ok(());
    };
    let mut st = conn.prepare_cached(
        "SELECT seq, emoji, user_id FROM reactions WHERE room = ?1 AND seq BETWEEN ?2 AND ?3
         ORDER BY at_seq",
    )?;
    let rows = st.query_map(params![room.as_str(), lo, hi], |r| {
        Ok((r.get(0)?, r.get(1)?, UserId::trusted(r.get(2)?)))
    })?;
    let rows = rows.collect::<rusqlite::Result<Vec<(i64, String, UserId)>>>()?;
    set_reactions(events, rows);
    Ok(())
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
            write::append_blocking(conn, &batch, &node)
        })
        .await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        Self::with(&self.reader, |conn| {
            let mut snap = Snapshot::default();
            let mut rooms = conn.prepare(
                "SELECT name, last_seq, private, owner, dm_a, dm_b FROM rooms ORDER BY name",
            )?;
            let rows =
                rooms.query_map([], |r| Ok((RoomName::trusted(r.get(0)?), room_row(r, 1)?)))?;
            for row in rows {
                snap.rooms.push(row?);
            }
            let mut members = conn.prepare("SELECT room, user_id, role FROM room_members")?;
            let rows = members.query_map([], |r| {
                Ok((
                    RoomName::trusted(r.get(0)?),
                    UserId::trusted(r.get(1)?),
                    role_of(r.get(2)?)?,
                ))
            })?;
            for row in rows {
                snap.members.push(row?);
            }
            let mut invites = conn.prepare("SELECT room, user_id FROM room_invites")?;
            let rows = invites.query_map([], |r| {
                Ok((RoomName::trusted(r.get(0)?), UserId::trusted(r.get(1)?)))
            })?;
            for row in rows {
                snap.invites.push(row?);
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
                "{EVENT_SELECT}
                 WHERE e.room = ?1 AND e.seq > ?2 AND e.seq < ?3 ORDER BY e.seq {order} LIMIT ?4"
            ))?;
            let rows = st.query_map(
                params![room.as_str(), q.lower, q.upper, q.fetch],
                event_from_row,
            )?;
            let events = rows.collect::<rusqlite::Result<Vec<Event>>>()?;
            let mut page = q.finish(events);
            load_reactions(conn, &room, &mut page.events)?;
            Ok(page)
        })
        .await
    }

    async fn access(&self, room: &RoomName, reader: Option<&UserId>) -> Result<Access, StoreError> {
        let room = room.clone();
        let reader = reader.cloned();
        Self::with(&self.reader, move |conn| {
            let row = conn
                .prepare_cached(
                    "SELECT last_seq, private, owner, dm_a, dm_b FROM rooms WHERE name = ?1",
                )?
                .query_row([room.as_str()], |r| room_row(r, 0))
                .optional()?;
            let mut access = Access {
                room: row,
                ..Access::default()
            };
            if let (Some(_), Some(user)) = (&access.room, &reader) {
                let args = [room.as_str(), user.as_str()];
                access.role = conn
                    .prepare_cached(
                        "SELECT role FROM room_members WHERE room = ?1 AND user_id = ?2",
                    )?
                    .query_row(args, |r| role_of(r.get(0)?))
                    .optional()?;
                access.invited = conn
                    .prepare_cached("SELECT 1 FROM room_invites WHERE room = ?1 AND user_id = ?2")?
                    .exists(args)?;
            }
            Ok(access)
        })
        .await
    }

    async fn members(&self, room: &RoomName) -> Result<Vec<(UserId, Role, Seq)>, StoreError> {
        let room = room.clone();
        Self::with(&self.reader, move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT user_id, role, read_seq FROM room_members WHERE room = ?1
                 ORDER BY joined_seq",
            )?;
            let rows = st.query_map([room.as_str()], |r| {
                Ok((UserId::trusted(r.get(0)?), role_of(r.get(1)?)?, r.get(2)?))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn unread(&self, user: &UserId) -> Result<Vec<(RoomName, u64, u64)>, StoreError> {
        let user = user.clone();
        Self::with(&self.reader, move |conn| {
            let mut st = conn.prepare_cached(UNREAD_SQL)?;
            let rows = st.query_map([user.as_str()], |r| {
                Ok((
                    RoomName::trusted(r.get(0)?),
                    r.get::<_, i64>(1)?.try_into().unwrap_or(0),
                    r.get::<_, i64>(2)?.try_into().unwrap_or(0),
                ))
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn mark_read(
        &self,
        room: &RoomName,
        user: &UserId,
        seq: Seq,
    ) -> Result<Option<(Seq, bool)>, StoreError> {
        let (room, user) = (room.clone(), user.clone());
        Self::with(&self.writer, move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let row: Option<(Seq, Seq)> = tx
                .prepare_cached(
                    "SELECT m.read_seq, r.last_seq FROM room_members m
                     JOIN rooms r ON r.name = m.room WHERE m.room = ?1 AND m.user_id = ?2",
                )?
                .query_row([room.as_str(), user.as_str()], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()?;
            let Some((marker, last)) = row else {
                return Ok(None);
            };
            if seq > last {
                return Ok(None);
            }
            if seq <= marker {
                return Ok(Some((marker, false)));
            }
            tx.prepare_cached(
                "UPDATE room_members SET read_seq = ?3 WHERE room = ?1 AND user_id = ?2",
            )?
            .execute(params![room.as_str(), user.as_str(), seq])?;
            tx.commit()?;
            Ok(Some((seq, true)))
        })
        .await
    }

    async fn bans(&self, room: &RoomName) -> Result<Vec<BanInfo>, StoreError> {
        let room = room.clone();
        Self::with(&self.reader, move |conn| {
            let mut st = conn.prepare_cached(
                "SELECT user_id, by_user, reason, seq FROM room_bans WHERE room = ?1 ORDER BY seq",
            )?;
            let rows = st.query_map([room.as_str()], |r| {
                Ok(BanInfo {
                    user_id: UserId::trusted(r.get(0)?),
                    by: UserId::trusted(r.get(1)?),
                    reason: r.get(2)?,
                    seq: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn set_block(&self, user: &UserId, blocked: &UserId, on: bool) -> Result<(), StoreError> {
        let (user, blocked) = (user.clone(), blocked.clone());
        Self::with(&self.writer, move |conn| {
            if on {
                conn.prepare_cached(
                    "INSERT OR IGNORE INTO user_blocks (user_id, blocked, at) VALUES (?1, ?2, ?3)",
                )?
                .execute(params![
                    user.as_str(),
                    blocked.as_str(),
                    fmt_at(&now_micros())
                ])?;
            } else {
                conn.prepare_cached("DELETE FROM user_blocks WHERE user_id = ?1 AND blocked = ?2")?
                    .execute(params![user.as_str(), blocked.as_str()])?;
            }
            Ok(())
        })
        .await
    }

    async fn all_events(&self) -> Result<Vec<Event>, StoreError> {
        Self::with(&self.reader, |conn| {
            let mut st = conn.prepare(&format!("{EVENT_SELECT} ORDER BY e.id"))?;
            let rows = st.query_map([], event_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<Event>>>()?)
        })
        .await
    }

    async fn stats(&self) -> Result<(u64, u64), StoreError> {
        Self::with(&self.reader, |conn| {
            let (rooms, events): (i64, i64) = conn
                .prepare_cached("SELECT count(*), coalesce(sum(last_seq), 0) FROM rooms")?
                .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            Ok((
                rooms.try_into().unwrap_or(0),
                events.try_into().unwrap_or(0),
            ))
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
