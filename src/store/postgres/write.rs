//! One batch's transaction: load under the locks, decide with `plan`, then
//! write the events and everything beside them, pipelined on one connection.

use std::collections::HashMap;

use super::load::load;
use super::Params;
use crate::protocol::{now_micros, RoomName, UserId};
use crate::store::{
    event_data, event_target, plan_keyed, AppendOutcome, AppendRequest, Keys, Plan, StoreError,
};

/// Decides and commits `batch` in one transaction (`EventStore::append`).
pub(super) async fn append(
    pool: &deadpool_postgres::Pool,
    batch: &[AppendRequest],
    node: &str,
) -> Result<Vec<AppendOutcome>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let keys = Keys::of(batch);
    let at = now_micros();
    let (loaded, inserted) = load(&tx, batch, &keys, &at).await?;
    let mut plan = plan_keyed(batch, &keys, loaded, node, at);

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
    let (joined, left): (Vec<_>, Vec<_>) = plan.membership.iter().partition(|(_, m)| m.is_some());
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
