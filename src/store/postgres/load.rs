//! Loading what `plan` needs for a batch, under the rooms' row locks.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use tokio_postgres::Row;

use super::{event_from_row, names, room_row, Params, EVENT_SELECT};
use crate::protocol::{RoomName, UserId};
use crate::store::{
    role_from_db, AppendRequest, BanRow, Invitation, Keys, Loaded, Membership, MessageRow, NewRoom,
    StateRow, StoreError,
};

/// An append touches a few rows of `rooms` and `room_members` by key, but
/// the planner cannot see how many: its generic plans take the `unnest`
/// arrays for 10 rows and, while those tables are small (a few thousand
/// rows), scan them whole and hash-join, once per statement and batch; under
/// steady appends the scans also walk the rows' dead versions. Off for the
/// append's transaction only, the same statements use the primary keys (the
/// plans and the measurements are in docs/benchmarks.md). Reads are not
/// affected.
const INDEX_PLANS: &str = "SET LOCAL enable_seqscan = off";

/// Loads what `plan` needs for `batch`, locking the batch's rooms (in name
/// order, so that two nodes' batches cannot deadlock) and inserting the rooms
/// it may create.
pub(super) async fn load(
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
    // Sent ahead of the lock on the same connection (pipelined, no extra
    // round trip), so every statement of the append is planned with it.
    let room_names = names(&keys.rooms);
    let lock_params: Params<'_, 1> = [&room_names];
    let (_, locked) = futures_util::try_join!(
        tx.batch_execute(INDEX_PLANS),
        tx.query(&lock, &lock_params)
    )?;
    for row in locked {
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
