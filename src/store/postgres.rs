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
    event_data, event_target, plan, role_from_db, set_event_data, set_reactions, set_state,
    stateful_seqs, Access, AppendOutcome, AppendRequest, BanRow, EventStore, Invitation, Keys,
    Loaded, Membership, MessageRow, NewRoom, Page, PageQuery, Plan, RoomRow, Snapshot,
    StateColumns, StateRow, StoreError, UNREAD_SQL,
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

/// Loads what `plan` needs for `batch`, locking the batch's rooms (in name
/// order, so that two nodes' batches cannot deadlock) and inserting the rooms
/// it may create.
async fn load(
    tx: &deadpool_postgres::Transaction<'_>,
    batch: &[AppendRequest],
    keys: &Keys,
    at: &DateTime<Utc>,
) -> Result<(Loaded, Vec<RoomName>), StoreError> {
    let mut loaded = Loaded::default();
    let lock = tx
        .prepare_cached(
            "SELECT name, last_seq, private, owner, dm_a, dm_b FROM rooms WHERE name = ANY($1)
             ORDER BY name FOR UPDATE",
        )
        .await?;
    for row in tx.query(&lock, &[&names(&keys.rooms)]).await? {
        loaded
            .rooms
            .insert(RoomName::trusted(row.try_get(0)?), room_row(&row, 1)?);
    }

    // Rooms to create are inserted after the locks are taken, so every
    // transaction takes its row locks before it waits on another's insert.
    let candidates: Vec<&NewRoom> = keys
        .creates
        .iter()
        .filter(|new| !loaded.rooms.contains_key(&new.name))
        .collect();
    let mut inserted_rooms = Vec::new();
    if !candidates.is_empty() {
        let insert = tx
            .prepare_cached(
                "INSERT INTO rooms (name, created_by, created_at, last_seq, private, dm_a, dm_b)
                 SELECT n, c, $3, 0, p, a, b
                 FROM unnest($1::text[], $2::text[], $4::bool[], $5::text[], $6::text[])
                   AS t (n, c, p, a, b)
                 ON CONFLICT (name) DO NOTHING RETURNING name",
            )
            .await?;
        let rooms: Vec<&str> = candidates.iter().map(|c| c.name.as_str()).collect();
        let users: Vec<&str> = candidates.iter().map(|c| c.creator.as_str()).collect();
        let private: Vec<bool> = candidates.iter().map(|c| c.private).collect();
        let dm_a: Vec<Option<&str>> = candidates
            .iter()
            .map(|c| c.dm.as_ref().map(|(a, _)| a.as_str()))
            .collect();
        let dm_b: Vec<Option<&str>> = candidates
            .iter()
            .map(|c| c.dm.as_ref().map(|(_, b)| b.as_str()))
            .collect();
        let inserted: HashSet<String> = tx
            .query(&insert, &[&rooms, &users, at, &private, &dm_a, &dm_b])
            .await?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let mut dms_taken = Vec::new();
        for c in &candidates {
            if inserted.contains(c.name.as_str()) {
                inserted_rooms.push(c.name.clone());
            } else if c.dm.is_some() {
                dms_taken.push(c.name.clone());
            } else {
                loaded.taken.insert(c.name.clone());
            }
        }
        // A DM another node made at the same moment: it committed (our insert
        // waited for it), so this statement sees it. `dm` then returns it.
        if !dms_taken.is_empty() {
            for row in tx.query(&lock, &[&names(&dms_taken)]).await? {
                loaded
                    .rooms
                    .insert(RoomName::trusted(row.try_get(0)?), room_row(&row, 1)?);
            }
            for name in dms_taken {
                if !loaded.rooms.contains_key(&name) {
                    loaded.taken.insert(name);
                }
            }
        }
    }

    let pair_rooms: Vec<&str> = keys.pairs.iter().map(|(r, _)| r.as_str()).collect();
    let pair_users: Vec<&str> = keys.pairs.iter().map(|(_, u)| u.as_str()).collect();
    let members = tx
        .prepare_cached(
            "SELECT m.room, m.user_id, m.role, m.joined_seq FROM room_members m
             JOIN unnest($1::text[], $2::text[]) AS k (room, user_id)
               ON m.room = k.room AND m.user_id = k.user_id",
        )
        .await?;
    let invites = tx
        .prepare_cached(
            "SELECT i.room, i.user_id, i.by_user, i.seq FROM room_invites i
             JOIN unnest($1::text[], $2::text[]) AS k (room, user_id)
               ON i.room = k.room AND i.user_id = k.user_id",
        )
        .await?;
    let bans = tx
        .prepare_cached(
            "SELECT b.room, b.user_id, b.by_user, b.reason, b.seq FROM room_bans b
             JOIN unnest($1::text[], $2::text[]) AS k (room, user_id)
               ON b.room = k.room AND b.user_id = k.user_id",
        )
        .await?;
    let blocks = tx
        .prepare_cached(
            "SELECT b.user_id, b.blocked FROM user_blocks b
             JOIN unnest($1::text[], $2::text[]) AS k (u, x) ON b.user_id = k.u AND b.blocked = k.x",
        )
        .await?;
    let pair_params: Params<'_, 2> = [&pair_rooms, &pair_users];
    let blockers: Vec<&str> = keys.blocks.iter().map(|(a, _)| a.as_str()).collect();
    let blocked: Vec<&str> = keys.blocks.iter().map(|(_, b)| b.as_str()).collect();
    let block_params: Params<'_, 2> = [&blockers, &blocked];
    // A batch of messages and leaves in public rooms needs no invitation,
    // ban or block: those reads are skipped. In a private room an
    // invitation decides between `no_such_room` and `not_a_member`.
    let private = loaded.rooms.values().any(|r| r.private);
    let (member_rows, invite_rows, ban_rows, block_rows) = if keys.moderation || private {
        futures_util::try_join!(
            tx.query(&members, &pair_params),
            tx.query(&invites, &pair_params),
            tx.query(&bans, &pair_params),
            tx.query(&blocks, &block_params),
        )?
    } else {
        (
            tx.query(&members, &pair_params).await?,
            Vec::new(),
            Vec::new(),
            Vec::new(),
        )
    };
    let pair = |row: &Row| -> Result<(RoomName, UserId), StoreError> {
        Ok((
            RoomName::trusted(row.try_get(0)?),
            UserId::trusted(row.try_get(1)?),
        ))
    };
    for row in &member_rows {
        let role: &str = row.try_get(2)?;
        loaded.members.insert(
            pair(row)?,
            Membership {
                role: role_from_db(role)?,
                joined_seq: row.try_get(3)?,
            },
        );
    }
    for row in &invite_rows {
        loaded.invites.insert(
            pair(row)?,
            Invitation {
                by: UserId::trusted(row.try_get(2)?),
                seq: row.try_get(3)?,
            },
        );
    }
    for row in &ban_rows {
        loaded.bans.insert(
            pair(row)?,
            BanRow {
                by: UserId::trusted(row.try_get(2)?),
                reason: row.try_get(3)?,
                seq: row.try_get(4)?,
            },
        );
    }
    for row in &block_rows {
        loaded.blocks.insert((
            UserId::trusted(row.try_get(0)?),
            UserId::trusted(row.try_get(1)?),
        ));
    }

    let succession = keys.succession(batch, &loaded.rooms);
    if !succession.is_empty() {
        let heirs = tx
            .prepare_cached(
                "SELECT k.r, m.user_id, m.role, m.joined_seq
                 FROM unnest($1::text[], $2::int8[]) AS k (r, n)
                 CROSS JOIN LATERAL (
                     SELECT user_id, role, joined_seq FROM room_members
                     WHERE room = k.r AND role <> 'owner'
                     ORDER BY role = 'admin' DESC, joined_seq LIMIT k.n) m",
            )
            .await?;
        let rooms: Vec<&str> = succession.iter().map(|(r, _)| r.as_str()).collect();
        let limits: Vec<i64> = succession.iter().map(|(_, n)| *n).collect();
        for row in tx.query(&heirs, &[&rooms, &limits]).await? {
            let role: &str = row.try_get(2)?;
            loaded
                .successors
                .entry(RoomName::trusted(row.try_get(0)?))
                .or_default()
                .push((
                    UserId::trusted(row.try_get(1)?),
                    Membership {
                        role: role_from_db(role)?,
                        joined_seq: row.try_get(3)?,
                    },
                ));
        }
    }

    if !keys.messages.is_empty() {
        let messages = tx
            .prepare_cached(
                "SELECT e.room, e.seq, e.user_id, s.text, s.edited, s.deleted_by, s.state_seq
                 FROM events e
                 JOIN unnest($1::text[], $2::int8[]) AS k (r, q) ON e.room = k.r AND e.seq = k.q
                 LEFT JOIN message_state s ON s.room = e.room AND s.seq = e.seq
                 WHERE e.type = 'message'",
            )
            .await?;
        let r: Vec<&str> = keys.messages.iter().map(|k| k.0.as_str()).collect();
        let q: Vec<i64> = keys.messages.iter().map(|k| k.1).collect();
        for row in tx.query(&messages, &[&r, &q]).await? {
            let state_seq: Option<i64> = row.try_get(6)?;
            let state = match state_seq {
                Some(state_seq) => Some(StateRow {
                    text: row.try_get(3)?,
                    edited: row.try_get::<_, i32>(4)?.try_into().unwrap_or(0),
                    deleted_by: row.try_get::<_, Option<String>>(5)?.map(UserId::trusted),
                    state_seq,
                }),
                None => None,
            };
            loaded.messages.insert(
                (RoomName::trusted(row.try_get(0)?), row.try_get(1)?),
                MessageRow {
                    author: UserId::trusted(row.try_get(2)?),
                    state,
                },
            );
        }
    }
    if !keys.reactions.is_empty() {
        let reactions = tx
            .prepare_cached(
                "SELECT x.room, x.seq, x.emoji, x.user_id FROM reactions x
                 JOIN unnest($1::text[], $2::int8[], $3::text[], $4::text[]) AS k (r, q, e, u)
                   ON x.room = k.r AND x.seq = k.q AND x.emoji = k.e AND x.user_id = k.u",
            )
            .await?;
        let r: Vec<&str> = keys.reactions.iter().map(|k| k.0.as_str()).collect();
        let q: Vec<i64> = keys.reactions.iter().map(|k| k.1).collect();
        let e: Vec<&str> = keys.reactions.iter().map(|k| k.2.as_str()).collect();
        let u: Vec<&str> = keys.reactions.iter().map(|k| k.3.as_str()).collect();
        for row in tx.query(&reactions, &[&r, &q, &e, &u]).await? {
            loaded.reactions.insert((
                RoomName::trusted(row.try_get(0)?),
                row.try_get(1)?,
                row.try_get(2)?,
                UserId::trusted(row.try_get(3)?),
            ));
        }
    }

    if !keys.sent.is_empty() {
        let sent = tx
            .prepare_cached(&format!(
                "{EVENT_SELECT}
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
    Ok((loaded, inserted_rooms))
}

/// Writes what a plan changed of messages: their states, deleted texts,
/// reactions and mentions (a batch of plain messages has none: no statement).
async fn write_messages(
    tx: &deadpool_postgres::Transaction<'_>,
    plan: &Plan,
) -> Result<(), StoreError> {
    if !plan.mentions.is_empty() {
        let r: Vec<&str> = plan.mentions.iter().map(|m| m.0.as_str()).collect();
        let q: Vec<i64> = plan.mentions.iter().map(|m| m.1).collect();
        let u: Vec<&str> = plan.mentions.iter().map(|m| m.2.as_str()).collect();
        tx.execute(
            "INSERT INTO mentions (room, seq, user_id)
             SELECT * FROM unnest($1::text[], $2::int8[], $3::text[]) ON CONFLICT DO NOTHING",
            &[&r, &q, &u],
        )
        .await?;
    }
    for ((room, seq), s) in &plan.states {
        let edited = i32::try_from(s.edited).unwrap_or(i32::MAX);
        tx.execute(
            "INSERT INTO message_state (room, seq, text, edited, deleted_by, state_seq)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (room, seq) DO UPDATE SET text = $3, edited = $4, deleted_by = $5,
                                                   state_seq = $6",
            &[
                &room.as_str(),
                seq,
                &s.text,
                &edited,
                &s.deleted_by.as_ref().map(UserId::as_str),
                &s.state_seq,
            ],
        )
        .await?;
    }
    for (room, seq) in &plan.redact {
        tx.execute(
            "UPDATE events SET message = NULL
             WHERE room = $1 AND (seq = $2 OR (target_seq = $2 AND type = 'edit'))",
            &[&room.as_str(), seq],
        )
        .await?;
    }
    for ((room, seq, emoji, user), at) in &plan.reactions {
        match at {
            Some(at) => {
                tx.execute(
                    "INSERT INTO reactions (room, seq, emoji, user_id, at_seq)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[&room.as_str(), seq, emoji, &user.as_str(), at],
                )
                .await?
            }
            None => {
                tx.execute(
                    "DELETE FROM reactions WHERE room = $1 AND seq = $2 AND emoji = $3
                     AND user_id = $4",
                    &[&room.as_str(), seq, emoji, &user.as_str()],
                )
                .await?
            }
        };
    }
    Ok(())
}

/// Writes a plan's invitations and bans, and removes the rooms `load`
/// inserted that the plan did not create (a `dm` refused by a block).
async fn write_moderation(
    tx: &deadpool_postgres::Transaction<'_>,
    plan: &Plan,
    inserted: &[RoomName],
) -> Result<(), StoreError> {
    let unused: Vec<&str> = inserted
        .iter()
        .filter(|r| !plan.created.iter().any(|c| &c.name == *r))
        .map(RoomName::as_str)
        .collect();
    if plan.invites.is_empty() && plan.bans.is_empty() && unused.is_empty() {
        return Ok(());
    }
    for ((room, user), invitation) in &plan.invites {
        match invitation {
            Some(i) => {
                tx.execute(
                    "INSERT INTO room_invites (room, user_id, by_user, seq) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (room, user_id) DO UPDATE SET by_user = $3, seq = $4",
                    &[&room.as_str(), &user.as_str(), &i.by.as_str(), &i.seq],
                )
                .await?
            }
            None => {
                tx.execute(
                    "DELETE FROM room_invites WHERE room = $1 AND user_id = $2",
                    &[&room.as_str(), &user.as_str()],
                )
                .await?
            }
        };
    }
    for ((room, user), ban) in &plan.bans {
        match ban {
            Some(b) => {
                tx.execute(
                    "INSERT INTO room_bans (room, user_id, by_user, reason, seq)
                     VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (room, user_id) DO UPDATE SET by_user = $3, reason = $4, seq = $5",
                    &[
                        &room.as_str(),
                        &user.as_str(),
                        &b.by.as_str(),
                        &b.reason,
                        &b.seq,
                    ],
                )
                .await?
            }
            None => {
                tx.execute(
                    "DELETE FROM room_bans WHERE room = $1 AND user_id = $2",
                    &[&room.as_str(), &user.as_str()],
                )
                .await?
            }
        };
    }
    if !unused.is_empty() {
        tx.execute("DELETE FROM rooms WHERE name = ANY($1)", &[&unused])
            .await?;
    }
    Ok(())
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
        let at = now_micros();
        let (loaded, inserted) = load(&tx, batch, &keys, &at).await?;
        let mut plan = plan(batch, loaded, node, at);

        // The writes are independent of each other: send them together and let
        // tokio-postgres pipeline them on the connection.
        let insert_events = tx
            .prepare_cached(
                "INSERT INTO events (room, seq, type, user_id, message, client_msg_id, node, at,
                                     target, data, target_seq)
                 SELECT r, s, t, u, m, c, $7, $8, x, d, q
                 FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[],
                             $6::text[], $9::text[], $10::text[], $11::int8[])
                   AS e (r, s, t, u, m, c, x, d, q)
                 RETURNING id, room, seq",
            )
            .await?;
        let set_rooms = tx
            .prepare_cached(
                "UPDATE rooms r SET last_seq = v.s, owner = v.o
                 FROM unnest($1::text[], $2::int8[], $3::text[]) AS v (n, s, o) WHERE r.name = v.n",
            )
            .await?;
        let join = tx
            .prepare_cached(
                "INSERT INTO room_members AS m (room, user_id, joined_seq, role, read_seq)
                 SELECT r, u, j, o, j FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[])
                   AS k (r, u, j, o)
                 ON CONFLICT (room, user_id) DO UPDATE
                 SET role = EXCLUDED.role,
                     read_seq = CASE WHEN m.joined_seq = EXCLUDED.joined_seq THEN m.read_seq
                                     ELSE EXCLUDED.read_seq END,
                     joined_seq = EXCLUDED.joined_seq",
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
        let (ev_targets, ev_target_seqs): (Vec<Option<&str>>, Vec<Option<i64>>) =
            plan.events.iter().map(event_target).unzip();
        let read_rooms: Vec<&str> = plan.reads.iter().map(|(r, _, _)| r.as_str()).collect();
        let read_users: Vec<&str> = plan.reads.iter().map(|(_, u, _)| u.as_str()).collect();
        let read_seqs: Vec<i64> = plan.reads.iter().map(|(_, _, s)| *s).collect();
        let ev_data: Vec<Option<String>> = plan.events.iter().map(event_data).collect();
        let room_names: Vec<&str> = plan.rooms.iter().map(|(r, _, _)| r.as_str()).collect();
        let room_seqs: Vec<i64> = plan.rooms.iter().map(|(_, s, _)| *s).collect();
        let room_owners: Vec<Option<&str>> = plan
            .rooms
            .iter()
            .map(|(_, _, o)| o.as_ref().map(UserId::as_str))
            .collect();
        let (joined, left): (Vec<_>, Vec<_>) =
            plan.membership.iter().partition(|(_, m)| m.is_some());
        let join_rooms: Vec<&str> = joined.iter().map(|((r, _), _)| r.as_str()).collect();
        let join_users: Vec<&str> = joined.iter().map(|((_, u), _)| u.as_str()).collect();
        let join_seqs: Vec<i64> = joined
            .iter()
            .map(|(_, m)| m.map_or(0, |m| m.joined_seq))
            .collect();
        let join_roles: Vec<&str> = joined
            .iter()
            .map(|(_, m)| m.map_or("member", |m| m.role.as_str()))
            .collect();
        let left_rooms: Vec<&str> = left.iter().map(|((r, _), _)| r.as_str()).collect();
        let left_users: Vec<&str> = left.iter().map(|((_, u), _)| u.as_str()).collect();
        let node = node.to_owned();

        let event_params: Params<'_, 11> = [
            &ev_rooms,
            &ev_seqs,
            &ev_types,
            &ev_users,
            &ev_msgs,
            &ev_cids,
            &node,
            &at,
            &ev_targets,
            &ev_data,
            &ev_target_seqs,
        ];
        // Posting moves the poster's read marker (docs/protocol.md, Read markers).
        let reads = tx
            .prepare_cached(
                "UPDATE room_members m SET read_seq = GREATEST(m.read_seq, v.s)
                 FROM unnest($1::text[], $2::text[], $3::int8[]) AS v (r, u, s)
                 WHERE m.room = v.r AND m.user_id = v.u",
            )
            .await?;
        let read_params: Params<'_, 3> = [&read_rooms, &read_users, &read_seqs];
        let room_params: Params<'_, 3> = [&room_names, &room_seqs, &room_owners];
        let join_params: Params<'_, 4> = [&join_rooms, &join_users, &join_seqs, &join_roles];
        let leave_params: Params<'_, 2> = [&left_rooms, &left_users];
        let (rows, _, _, _, _) = futures_util::try_join!(
            tx.query(&insert_events, &event_params),
            tx.execute(&set_rooms, &room_params),
            tx.execute(&join, &join_params),
            tx.execute(&leave, &leave_params),
            tx.execute(&reads, &read_params),
        )?;
        write_moderation(&tx, &plan, &inserted).await?;
        write_messages(&tx, &plan).await?;
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
