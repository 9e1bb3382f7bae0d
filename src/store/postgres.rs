//! The clustered event store: PostgreSQL through deadpool-postgres.
//!
//! A batch is one transaction of a few statements whatever its size: lock the
//! rooms it touches (`FOR UPDATE`, in name order, so that two nodes' batches
//! cannot deadlock), load memberships and earlier `client_msg_id`s, decide with
//! [`plan`], then write events, seqs and memberships through `unnest` arrays,
//! pipelined on one connection. Migrations are the files in `sql/`, applied in
//! order under an advisory lock and recorded in `schema_migrations`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::{NoTls, Row};

use super::migrations::{self, Dialect};
use super::{
    plan, AppendOp, AppendOutcome, AppendRequest, EventStore, Keys, Loaded, Page, PageQuery,
    Refusal, Snapshot, StoreError,
};
use crate::config::redact_url;
use crate::protocol::{now_micros, Event, EventKind, HistoryRange, RoomName, UserId};

/// Key of the advisory lock that serialises migrations between nodes starting together.
const MIGRATION_LOCK: i64 = 0x636f_6e66_6162;

const EVENT_COLUMNS: &str = "id, room, seq, type, user_id, message, client_msg_id, node, at";

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
    Ok(Event {
        id: row.try_get(0)?,
        room: RoomName::trusted(row.try_get(1)?),
        seq: row.try_get(2)?,
        kind: EventKind::from_db(&kind)
            .ok_or_else(|| anyhow::anyhow!("unknown event type {kind} in events"))?,
        user_id: UserId::trusted(row.try_get(4)?),
        message: row.try_get(5)?,
        client_msg_id: row.try_get(6)?,
        node: row.try_get(7)?,
        at: row.try_get::<_, DateTime<Utc>>(8)?,
    })
}

fn names(rooms: &[RoomName]) -> Vec<&str> {
    rooms.iter().map(RoomName::as_str).collect()
}

#[async_trait]
impl EventStore for PgStore {
    fn name(&self) -> &'static str {
        "postgres"
    }

    fn epoch(&self) -> &str {
        &self.epoch
    }

    async fn append(
        &self,
        batch: &[AppendRequest],
        node: &str,
    ) -> Result<Vec<AppendOutcome>, StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let keys = Keys::of(batch);
        let mut loaded = Loaded::default();

        let lock = tx
            .prepare_cached(
                "SELECT name, last_seq FROM rooms WHERE name = ANY($1)
                 ORDER BY name FOR UPDATE",
            )
            .await?;
        for row in tx.query(&lock, &[&names(&keys.rooms)]).await? {
            loaded
                .rooms
                .insert(RoomName::trusted(row.try_get(0)?), row.try_get(1)?);
        }

        let at = now_micros();
        // Rooms to create are inserted after the locks are taken, so every
        // transaction takes its row locks before it waits on another's insert.
        let candidates: Vec<(&RoomName, &UserId)> = keys
            .creates
            .iter()
            .filter(|room| !loaded.rooms.contains_key(*room))
            .filter_map(|room| {
                batch
                    .iter()
                    .find(|r| &r.room == room && matches!(r.op, AppendOp::Create))
                    .map(|r| (&r.room, &r.user))
            })
            .collect();
        if !candidates.is_empty() {
            let insert = tx
                .prepare_cached(
                    "INSERT INTO rooms (name, created_by, created_at, last_seq)
                     SELECT n, c, $3, 0 FROM unnest($1::text[], $2::text[]) AS t (n, c)
                     ON CONFLICT (name) DO NOTHING RETURNING name",
                )
                .await?;
            let rooms: Vec<&str> = candidates.iter().map(|(r, _)| r.as_str()).collect();
            let users: Vec<&str> = candidates.iter().map(|(_, u)| u.as_str()).collect();
            let inserted: HashSet<String> = tx
                .query(&insert, &[&rooms, &users, &at])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect();
            for room in rooms.iter().filter(|r| !inserted.contains(**r)) {
                loaded.taken.insert(RoomName::trusted((*room).to_owned()));
            }
        }

        let pair_rooms: Vec<&str> = keys.pairs.iter().map(|(r, _)| r.as_str()).collect();
        let pair_users: Vec<&str> = keys.pairs.iter().map(|(_, u)| u.as_str()).collect();
        let members = tx
            .prepare_cached(
                "SELECT m.room, m.user_id FROM room_members m
                 JOIN unnest($1::text[], $2::text[]) AS k (room, user_id)
                   ON m.room = k.room AND m.user_id = k.user_id",
            )
            .await?;
        for row in tx.query(&members, &[&pair_rooms, &pair_users]).await? {
            loaded.members.insert((
                RoomName::trusted(row.try_get(0)?),
                UserId::trusted(row.try_get(1)?),
            ));
        }

        if !keys.sent.is_empty() {
            let sent = tx
                .prepare_cached(&format!(
                    "SELECT {EVENT_COLUMNS} FROM events e
                     JOIN unnest($1::text[], $2::text[], $3::text[]) AS k (r, u, c)
                       ON e.room = k.r AND e.user_id = k.u AND e.client_msg_id = k.c"
                ))
                .await?;
            let r: Vec<&str> = keys.sent.iter().map(|k| k.0.as_str()).collect();
            let u: Vec<&str> = keys.sent.iter().map(|k| k.1.as_str()).collect();
            let c: Vec<&str> = keys.sent.iter().map(|k| k.2.as_str()).collect();
            for row in tx.query(&sent, &[&r, &u, &c]).await? {
                let ev = event_from_row(&row)?;
                let key = (
                    ev.room.clone(),
                    ev.user_id.clone(),
                    ev.client_msg_id.clone().unwrap_or_default(),
                );
                loaded.sent.insert(key, ev);
            }
        }

        let mut plan = plan(batch, loaded, node, at);

        // The writes are independent of each other: send them together and let
        // tokio-postgres pipeline them on the connection.
        let insert_events = tx
            .prepare_cached(
                "INSERT INTO events (room, seq, type, user_id, message, client_msg_id, node, at)
                 SELECT r, s, t, u, m, c, $7, $8
                 FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[], $6::text[])
                   AS e (r, s, t, u, m, c)
                 RETURNING id, room, seq",
            )
            .await?;
        let set_last = tx
            .prepare_cached(
                "UPDATE rooms r SET last_seq = v.s
                 FROM unnest($1::text[], $2::int8[]) AS v (n, s) WHERE r.name = v.n",
            )
            .await?;
        let join = tx
            .prepare_cached(
                "INSERT INTO room_members (room, user_id, joined_seq)
                 SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
                 ON CONFLICT (room, user_id) DO UPDATE SET joined_seq = EXCLUDED.joined_seq",
            )
            .await?;
        let leave = tx
            .prepare_cached(
                "DELETE FROM room_members m USING unnest($1::text[], $2::text[]) AS k (r, u)
                 WHERE m.room = k.r AND m.user_id = k.u",
            )
            .await?;

        let ev_rooms: Vec<&str> = plan.events.iter().map(|e| e.room.as_str()).collect();
        let ev_seqs: Vec<i64> = plan.events.iter().map(|e| e.seq).collect();
        let ev_types: Vec<&str> = plan.events.iter().map(|e| e.kind.as_str()).collect();
        let ev_users: Vec<&str> = plan.events.iter().map(|e| e.user_id.as_str()).collect();
        let ev_msgs: Vec<Option<&str>> = plan.events.iter().map(|e| e.message.as_deref()).collect();
        let ev_cids: Vec<Option<&str>> = plan
            .events
            .iter()
            .map(|e| e.client_msg_id.as_deref())
            .collect();
        let last_rooms: Vec<&str> = plan.last_seqs.iter().map(|(r, _)| r.as_str()).collect();
        let last_seqs: Vec<i64> = plan.last_seqs.iter().map(|(_, s)| *s).collect();
        let (joined, left): (Vec<_>, Vec<_>) =
            plan.membership.iter().partition(|(_, _, j)| j.is_some());
        let join_rooms: Vec<&str> = joined.iter().map(|(r, _, _)| r.as_str()).collect();
        let join_users: Vec<&str> = joined.iter().map(|(_, u, _)| u.as_str()).collect();
        let join_seqs: Vec<i64> = joined.iter().map(|(_, _, j)| j.unwrap_or(0)).collect();
        let left_rooms: Vec<&str> = left.iter().map(|(r, _, _)| r.as_str()).collect();
        let left_users: Vec<&str> = left.iter().map(|(_, u, _)| u.as_str()).collect();
        let node = node.to_owned();

        let event_params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
            &ev_rooms, &ev_seqs, &ev_types, &ev_users, &ev_msgs, &ev_cids, &node, &at,
        ];
        let last_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&last_rooms, &last_seqs];
        let join_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
            [&join_rooms, &join_users, &join_seqs];
        let leave_params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
            [&left_rooms, &left_users];
        let (rows, _, _, _) = futures_util::try_join!(
            tx.query(&insert_events, &event_params),
            tx.execute(&set_last, &last_params),
            tx.execute(&join, &join_params),
            tx.execute(&leave, &leave_params),
        )?;
        tx.commit().await?;

        let mut ids = HashMap::with_capacity(rows.len());
        for row in rows {
            ids.insert(
                (RoomName::trusted(row.try_get(1)?), row.try_get(2)?),
                row.try_get(0)?,
            );
        }
        plan.set_ids(&ids);
        Ok(plan.outcomes)
    }

    async fn snapshot(&self) -> Result<Snapshot, StoreError> {
        let client = self.pool.get().await?;
        let mut snap = Snapshot::default();
        for row in client
            .query("SELECT name, last_seq FROM rooms ORDER BY name", &[])
            .await?
        {
            snap.rooms
                .push((RoomName::trusted(row.try_get(0)?), row.try_get(1)?));
        }
        for row in client
            .query("SELECT room, user_id FROM room_members", &[])
            .await?
        {
            snap.members.push((
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
                "SELECT {EVENT_COLUMNS} FROM events
                 WHERE room = $1 AND seq > $2 AND seq < $3 ORDER BY seq {order} LIMIT $4"
            ))
            .await?;
        let rows = client
            .query(&st, &[&room.as_str(), &q.lower, &q.upper, &q.fetch])
            .await?;
        let events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(q.finish(events))
    }

    async fn check_reader(
        &self,
        room: &RoomName,
        user: Option<&UserId>,
    ) -> Result<Option<Refusal>, StoreError> {
        let client = self.pool.get().await?;
        let st = client
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM rooms WHERE name = $1),
                        EXISTS (SELECT 1 FROM room_members WHERE room = $1 AND user_id = $2)",
            )
            .await?;
        let row = client
            .query_one(&st, &[&room.as_str(), &user.map(UserId::as_str)])
            .await?;
        let (exists, member): (bool, bool) = (row.try_get(0)?, row.try_get(1)?);
        Ok(if !exists {
            Some(Refusal::NoSuchRoom)
        } else if user.is_some() && !member {
            Some(Refusal::NotAMember)
        } else {
            None
        })
    }

    async fn all_events(&self) -> Result<Vec<Event>, StoreError> {
        let client = self.pool.get().await?;
        let rows = client
            .query(
                &format!("SELECT {EVENT_COLUMNS} FROM events ORDER BY id"),
                &[],
            )
            .await?;
        rows.iter().map(event_from_row).collect()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        client.simple_query("SELECT 1").await?;
        Ok(())
    }
}
