//! The clustered event store: PostgreSQL through deadpool-postgres.
//!
//! A batch is one transaction of a few statements whatever its size: lock the
//! rooms it touches (`FOR UPDATE`, in name order, so that two nodes' batches
//! cannot deadlock), load what the batch names (`load.rs`), decide with
//! `store::plan`, then write events and the state beside them through
//! `unnest` arrays, pipelined on one connection (`write.rs`). Migrations are
//! the files in `sql/`, applied by refinery under an advisory lock (here).

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{NoTls, Row};

mod load;
mod write;

use super::migrations::{self, Dialect};
use super::{
    role_from_db, set_event_data, set_reactions, set_state, stateful_seqs, Access, AppendOutcome,
    AppendRequest, EventStore, Page, PageQuery, RoomRow, Snapshot, StateColumns, StoreError,
    UNREAD_SQL,
};
use crate::config::redact_url;
use crate::protocol::{
    now_micros, BanInfo, Event, EventKind, HistoryRange, Role, RoomName, Seq, UserId,
};

/// Key of the advisory lock that serialises migrations between nodes starting together.
const MIGRATION_LOCK: i64 = 0x636f_6e66_6162;

/// Every event column, and the message's current state beside it.
const EVENT_SELECT: &str = "SELECT e.id, e.room, e.seq, e.type, e.user_id, e.message,
    e.client_msg_id, e.node, e.at, e.target, e.data, e.target_seq,
    s.text, s.edited, s.deleted_by, s.state_seq
    FROM events e LEFT JOIN message_state s ON s.room = e.room AND s.seq = e.seq";

pub struct PgStore {
    pool: Pool,
    epoch: String,
}

impl PgStore {
    pub async fn open(url: &str, pool_size: usize) -> anyhow::Result<PgStore> {
        let shown = redact_url(url);
        let mut pg: tokio_postgres::Config = url
            .parse()
            .with_context(|| format!("DATABASE_URL={shown} is not a valid PostgreSQL URL"))?;
        pg.connect_timeout(Duration::from_secs(3));
        pg.keepalives_idle(Duration::from_secs(10));
        pg.tcp_user_timeout(Duration::from_secs(10));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size)
            .wait_timeout(Some(Duration::from_secs(2)))
            .create_timeout(Some(Duration::from_secs(3)))
            .recycle_timeout(Some(Duration::from_secs(1)))
            .runtime(Runtime::Tokio1)
            .build()
            .context("cannot build the PostgreSQL pool")?;
        let mut client = pool
            .get()
            .await
            .with_context(|| format!("cannot connect to DATABASE_URL={shown}"))?;
        migrate(&mut client)
            .await
            .with_context(|| format!("cannot migrate DATABASE_URL={shown}"))?;
        let epoch: String = client
            .query_one("SELECT value FROM meta WHERE key = 'epoch'", &[])
            .await?
            .get(0);
        drop(client);
        Ok(PgStore { pool, epoch })
    }
}

/// Applies the migrations (see `store::migrations`) under an advisory lock,
/// so that nodes starting together migrate one after the other, adopting a
/// database whose migrations the pre-refinery runner recorded.
async fn migrate(client: &mut deadpool_postgres::Client) -> anyhow::Result<()> {
    client
        .execute("SELECT pg_advisory_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    let result = async {
        let row = client
            .query_one(
                "SELECT to_regclass('schema_migrations') IS NOT NULL,
                        to_regclass('refinery_schema_history') IS NOT NULL",
                &[],
            )
            .await?;
        let (legacy, recorded): (bool, bool) = (row.get(0), row.get(1));
        let pg: &mut tokio_postgres::Client = &mut *client;
        if legacy && !recorded {
            let last: i64 = pg
                .query_one("SELECT max(version) FROM schema_migrations", &[])
                .await?
                .get(0);
            migrations::runner(Dialect::Postgres, Some(last))?
                .run_async(pg)
                .await?;
        }
        let report = migrations::runner(Dialect::Postgres, None)?
            .run_async(pg)
            .await?;
        migrations::log_report(Dialect::Postgres, &report);
        anyhow::Ok(())
    }
    .await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK])
        .await?;
    result
}

fn event_from_row(row: &Row) -> Result<Event, StoreError> {
    let kind: String = row.try_get(3)?;
    let mut ev = Event::new(
        EventKind::from_db(&kind)
            .ok_or_else(|| anyhow::anyhow!("unknown event type {kind} in events"))?,
        RoomName::trusted(row.try_get(1)?),
        row.try_get(2)?,
        UserId::trusted(row.try_get(4)?),
        row.try_get(7)?,
        row.try_get::<_, DateTime<Utc>>(8)?,
    );
    ev.id = row.try_get(0)?;
    ev.message = row.try_get(5)?;
    ev.client_msg_id = row.try_get(6)?;
    let data: Option<&str> = row.try_get(10)?;
    set_event_data(&mut ev, row.try_get(9)?, row.try_get(11)?, data)?;
    set_state(
        &mut ev,
        StateColumns {
            text: row.try_get(12)?,
            edited: row.try_get::<_, Option<i32>>(13)?.map(i64::from),
            deleted_by: row.try_get(14)?,
            state_seq: row.try_get(15)?,
        },
    );
    Ok(ev)
}

/// A `rooms` row from `last_seq, private, owner, dm_a, dm_b` at `from`.
fn room_row(row: &Row, from: usize) -> Result<RoomRow, StoreError> {
    let dm_a: Option<String> = row.try_get(from + 3)?;
    let dm_b: Option<String> = row.try_get(from + 4)?;
    Ok(RoomRow {
        last_seq: row.try_get(from)?,
        private: row.try_get(from + 1)?,
        owner: row
            .try_get::<_, Option<String>>(from + 2)?
            .map(UserId::trusted),
        dm: dm_a
            .zip(dm_b)
            .map(|(a, b)| (UserId::trusted(a), UserId::trusted(b))),
    })
}

fn names(rooms: &[RoomName]) -> Vec<&str> {
    rooms.iter().map(RoomName::as_str).collect()
}

type Params<'a, const N: usize> = [&'a (dyn tokio_postgres::types::ToSql + Sync); N];

#[async_trait]
impl EventStore for PgStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    /// Batches of different rooms commit side by side, each on a connection
    /// of the pool; half of it stays for reads (history, replays).
    fn max_concurrent_appends(&self) -> usize {
        (self.pool.status().max_size / 2).max(1)
    }

    async fn append(
        &self,
        batch: &[AppendRequest],
        node: &str,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        write::append(&self.pool, batch, node).await
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let client = self.pool.get().await?;
        let mut snap = Snapshot::default();
        for row in client
            .query(
                "SELECT name, last_seq, private, owner, dm_a, dm_b FROM rooms ORDER BY name",
                &[],
            )
            .await?
        {
            snap.rooms
                .push((RoomName::trusted(row.try_get(0)?), room_row(&row, 1)?));
        }
        for row in client
            .query("SELECT room, user_id, role FROM room_members", &[])
            .await?
        {
            let role: &str = row.try_get(2)?;
            snap.members.push((
                RoomName::trusted(row.try_get(0)?),
                UserId::trusted(row.try_get(1)?),
                role_from_db(role)?,
            ));
        }
        for row in client
            .query("SELECT room, user_id FROM room_invites", &[])
            .await?
        {
            snap.invites.push((
                RoomName::trusted(row.try_get(0)?),
                UserId::trusted(row.try_get(1)?),
            ));
        }
        Ok(snap)
    }

    async fn events(&self, room: &RoomName, range: HistoryRange) -> Result<Page, StoreError> {
        let client = self.pool.get().await?;
        let q = PageQuery::of(range);
        let order = if q.descending { "DESC" } else { "ASC" };
        let st = client
            .prepare_cached(&format!(
                "{EVENT_SELECT}
                 WHERE e.room = $1 AND e.seq > $2 AND e.seq < $3 ORDER BY e.seq {order} LIMIT $4"
            ))
            .await?;
        let rows = client
            .query(&st, &[&room.as_str(), &q.lower, &q.upper, &q.fetch])
            .await?;
        let events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        let mut page = q.finish(events);
        let seqs = stateful_seqs(&page.events);
        if !seqs.is_empty() {
            let st = client
                .prepare_cached(
                    "SELECT seq, emoji, user_id FROM reactions WHERE room = $1 AND seq = ANY($2)
                     ORDER BY at_seq",
                )
                .await?;
            let rows = client
                .query(&st, &[&room.as_str(), &seqs])
                .await?
                .iter()
                .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, UserId::trusted(r.try_get(2)?))))
                .collect::<Result<Vec<_>, StoreError>>()?;
            set_reactions(&mut page.events, rows);
        }
        Ok(page)
    }

    async fn access(&self, room: &RoomName, reader: Option<&UserId>) -> Result<Access, StoreError> {
        let client = self.pool.get().await?;
        let st = client
            .prepare_cached(
                "SELECT r.last_seq, r.private, r.owner, r.dm_a, r.dm_b,
                        (SELECT role FROM room_members WHERE room = $1 AND user_id = $2),
                        EXISTS (SELECT 1 FROM room_invites WHERE room = $1 AND user_id = $2)
                 FROM rooms r WHERE r.name = $1",
            )
            .await?;
        let Some(row) = client
            .query_opt(&st, &[&room.as_str(), &reader.map(UserId::as_str)])
            .await?
        else {
            return Ok(Access::default());
        };
        let role: Option<&str> = row.try_get(5)?;
        Ok(Access {
            room: Some(room_row(&row, 0)?),
            role: role.map(role_from_db).transpose()?,
            invited: row.try_get(6)?,
        })
    }

    async fn members(&self, room: &RoomName) -> Result<Vec<(UserId, Role, Seq)>, StoreError> {
        let client = self.pool.get().await?;
        let st = client
            .prepare_cached(
                "SELECT user_id, role, read_seq FROM room_members WHERE room = $1
                 ORDER BY joined_seq",
            )
            .await?;
        client
            .query(&st, &[&room.as_str()])
            .await?
            .iter()
            .map(|row| {
                let role: &str = row.try_get(1)?;
                Ok((
                    UserId::trusted(row.try_get(0)?),
                    role_from_db(role)?,
                    row.try_get(2)?,
                ))
            })
            .collect()
    }

    async fn unread(&self, user: &UserId) -> Result<Vec<(RoomName, u64, u64)>, StoreError> {
        let client = self.pool.get().await?;
        let st = client.prepare_cached(UNREAD_SQL).await?;
        client
            .query(&st, &[&user.as_str()])
            .await?
            .iter()
            .map(|row| {
                Ok((
                    RoomName::trusted(row.try_get(0)?),
                    row.try_get::<_, i64>(1)?.try_into().unwrap_or(0),
                    row.try_get::<_, i64>(2)?.try_into().unwrap_or(0),
                ))
            })
            .collect()
    }

    async fn mark_read(
        &self,
        room: &RoomName,
        user: &UserId,
        seq: Seq,
    ) -> Result<Option<(Seq, bool)>, StoreError> {
        let client = self.pool.get().await?;
        // One statement: the marker before, the room's last seq, and the
        // update when it moves the marker forward within the room.
        let st = client
            .prepare_cached(
                "WITH cur AS (
                     SELECT m.read_seq, r.last_seq FROM room_members m
                     JOIN rooms r ON r.name = m.room WHERE m.room = $1 AND m.user_id = $2),
                 upd AS (
                     UPDATE room_members m SET read_seq = $3 FROM cur
                     WHERE m.room = $1 AND m.user_id = $2 AND $3 > cur.read_seq
                       AND $3 <= cur.last_seq
                     RETURNING m.read_seq)
                 SELECT cur.read_seq, cur.last_seq, (SELECT count(*) FROM upd) FROM cur",
            )
            .await?;
        let Some(row) = client
            .query_opt(&st, &[&room.as_str(), &user.as_str(), &seq])
            .await?
        else {
            return Ok(None);
        };
        let (marker, last, moved): (i64, i64, i64) =
            (row.try_get(0)?, row.try_get(1)?, row.try_get(2)?);
        Ok(if seq > last {
            None
        } else if moved > 0 {
            Some((seq, true))
        } else {
            Some((marker, false))
        })
    }

    async fn bans(&self, room: &RoomName) -> Result<Vec<BanInfo>, StoreError> {
        let client = self.pool.get().await?;
        let st = client
            .prepare_cached(
                "SELECT user_id, by_user, reason, seq FROM room_bans WHERE room = $1 ORDER BY seq",
            )
            .await?;
        client
            .query(&st, &[&room.as_str()])
            .await?
            .iter()
            .map(|row| {
                Ok(BanInfo {
                    user_id: UserId::trusted(row.try_get(0)?),
                    by: UserId::trusted(row.try_get(1)?),
                    reason: row.try_get(2)?,
                    seq: row.try_get(3)?,
                })
            })
            .collect()
    }

    async fn set_block(&self, user: &UserId, blocked: &UserId, on: bool) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        if on {
            client
                .execute(
                    "INSERT INTO user_blocks (user_id, blocked, at) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                    &[&user.as_str(), &blocked.as_str(), &now_micros()],
                )
                .await?;
        } else {
            client
                .execute(
                    "DELETE FROM user_blocks WHERE user_id = $1 AND blocked = $2",
                    &[&user.as_str(), &blocked.as_str()],
                )
                .await?;
        }
        Ok(())
    }

    async fn all_events(&self) -> Result<Vec<Event>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(&format!("{EVENT_SELECT} ORDER BY e.id"), &[])
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn stats(&self) -> Result<(u64, u64), StoreError> {
        let client = self.pool.get().await?;
        let st = client
            .prepare_cached("SELECT count(*), coalesce(sum(last_seq), 0)::int8 FROM rooms")
            .await?;
        let row = client.query_one(&st, &[]).await?;
        let (rooms, events): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
        Ok((
            rooms.try_into().unwrap_or(0),
            events.try_into().unwrap_or(0),
        ))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}
