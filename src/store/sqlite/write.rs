//! One batch's transaction: load, decide with `plan`, write the events and
//! everything beside them.

use std::collections::HashMap;

use rusqlite::{params, Connection, TransactionBehavior};

use super::fmt_at;
use crate::protocol::{now_micros, UserId};
use crate::store::{
    event_data, event_target, plan_keyed, AppendOutcome, AppendRequest, Keys, Plan, StoreError,
};

use super::load::load;

pub(super) fn append_blocking(
    conn: &mut Connection,
    batch: &[AppendRequest],
    node: &str,
) -> Result<Vec<AppendOutcome>, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let keys = Keys::of(batch);
    let loaded = load(&tx, batch, &keys)?;
    let at = now_micros();
    let mut plan = plan_keyed(batch, &keys, loaded, node, at);
    let mut ids = HashMap::with_capacity(plan.events.len());
    {
        let mut create = tx.prepare_cached(
            "INSERT INTO rooms (name, created_by, created_at, last_seq, private, dm_a, dm_b)
             VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6)",
        )?;
        for new in &plan.created {
            let (a, b) = new
                .dm
                .as_ref()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .unzip();
            create.execute(params![
                new.name.as_str(),
                new.creator.as_str(),
                fmt_at(&at),
                new.private,
                a,
                b
            ])?;
        }
        let mut insert = tx.prepare_cached(
            "INSERT INTO events (room, seq, type, user_id, message, client_msg_id, node, at,
                                 target, data, target_seq)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
        )?;
        let at_text = fmt_at(&at);
        for ev in &plan.events {
            let (target, target_seq) = event_target(ev);
            insert.execute(params![
                ev.room.as_str(),
                ev.seq,
                ev.kind.as_str(),
                ev.user_id.as_str(),
                ev.message,
                ev.client_msg_id,
                ev.node,
                at_text,
                target,
                event_data(ev),
                target_seq,
            ])?;
            ids.insert((ev.room.clone(), ev.seq), tx.last_insert_rowid());
        }
        let mut last =
            tx.prepare_cached("UPDATE rooms SET last_seq = ?2, owner = ?3 WHERE name = ?1")?;
        for (room, seq, owner) in &plan.rooms {
            last.execute(params![
                room.as_str(),
                seq,
                owner.as_ref().map(UserId::as_str)
            ])?;
        }
        let mut join = tx.prepare_cached(
            "INSERT INTO room_members (room, user_id, joined_seq, role, read_seq)
             VALUES (?1, ?2, ?3, ?4, ?3)
             ON CONFLICT (room, user_id) DO UPDATE
             SET role = excluded.role,
                 read_seq = CASE WHEN joined_seq = excluded.joined_seq THEN read_seq
                                 ELSE excluded.read_seq END,
                 joined_seq = excluded.joined_seq",
        )?;
        let mut leave =
            tx.prepare_cached("DELETE FROM room_members WHERE room = ?1 AND user_id = ?2")?;
        for ((room, user), m) in &plan.membership {
            match m {
                Some(m) => join.execute(params![
                    room.as_str(),
                    user.as_str(),
                    m.joined_seq,
                    m.role.as_str()
                ])?,
                None => leave.execute(params![room.as_str(), user.as_str()])?,
            };
        }
        let mut invite = tx.prepare_cached(
            "INSERT OR REPLACE INTO room_invites (room, user_id, by_user, seq) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut uninvite =
            tx.prepare_cached("DELETE FROM room_invites WHERE room = ?1 AND user_id = ?2")?;
        for ((room, user), i) in &plan.invites {
            match i {
                Some(i) => {
                    invite.execute(params![room.as_str(), user.as_str(), i.by.as_str(), i.seq])?
                }
                None => uninvite.execute(params![room.as_str(), user.as_str()])?,
            };
        }
        let mut ban = tx.prepare_cached(
            "INSERT OR REPLACE INTO room_bans (room, user_id, by_user, reason, seq)
             VALUES (?1, ?2, ?3, ?4, ?5)",
        )?;
        let mut unban =
            tx.prepare_cached("DELETE FROM room_bans WHERE room = ?1 AND user_id = ?2")?;
        for ((room, user), b) in &plan.bans {
            match b {
                Some(b) => ban.execute(params![
                    room.as_str(),
                    user.as_str(),
                    b.by.as_str(),
                    b.reason,
                    b.seq
                ])?,
                None => unban.execute(params![room.as_str(), user.as_str()])?,
            };
        }
    }
    write_messages(&tx, &plan)?;
    tx.commit()?;
    plan.set_ids(&ids);
    Ok(plan.outcomes)
}

/// Writes what a plan changed of messages: their states, deleted texts,
/// reactions, mentions, and the read markers that posting moves.
fn write_messages(tx: &rusqlite::Transaction<'_>, plan: &Plan) -> Result<(), StoreError> {
    let mut read = tx.prepare_cached(
        "UPDATE room_members SET read_seq = max(read_seq, ?3) WHERE room = ?1 AND user_id = ?2",
    )?;
    for (room, user, seq) in &plan.reads {
        read.execute(params![room.as_str(), user.as_str(), seq])?;
    }
    if plan.states.is_empty() && plan.mentions.is_empty() {
        return Ok(());
    }
    let mut mention = tx.prepare_cached(
        "INSERT OR IGNORE INTO mentions (room, seq, user_id) VALUES (?1, ?2, ?3)",
    )?;
    for (room, seq, user) in &plan.mentions {
        mention.execute(params![room.as_str(), seq, user.as_str()])?;
    }
    let mut state = tx.prepare_cached(
        "INSERT OR REPLACE INTO message_state (room, seq, text, edited, deleted_by, state_seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?;
    for ((room, seq), s) in &plan.states {
        state.execute(params![
            room.as_str(),
            seq,
            s.text,
            s.edited,
            s.deleted_by.as_ref().map(UserId::as_str),
            s.state_seq
        ])?;
    }
    let mut redact = tx.prepare_cached(
        "UPDATE events SET message = NULL
         WHERE room = ?1 AND (seq = ?2 OR (target_seq = ?2 AND type = 'edit'))",
    )?;
    for (room, seq) in &plan.redact {
        redact.execute(params![room.as_str(), seq])?;
    }
    let mut react = tx.prepare_cached(
        "INSERT OR IGNORE INTO reactions (room, seq, emoji, user_id, at_seq) VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut unreact = tx.prepare_cached(
        "DELETE FROM reactions WHERE room = ?1 AND seq = ?2 AND emoji = ?3 AND user_id = ?4",
    )?;
    for ((room, seq, emoji, user), at) in &plan.reactions {
        match at {
            Some(at) => react.execute(params![room.as_str(), seq, emoji, user.as_str(), at])?,
            None => unreact.execute(params![room.as_str(), seq, emoji, user.as_str()])?,
        };
    }
    Ok(())
}
