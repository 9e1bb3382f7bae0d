//! Loading what `plan` needs for a batch, inside its write transaction.

use rusqlite::{params, OptionalExtension};

use super::{event_from_row, role_of, room_row, EVENT_SELECT};
use crate::protocol::UserId;
use crate::store::{
    AppendRequest, BanRow, Invitation, Keys, Loaded, Membership, MessageRow, StateRow, StoreError,
};

pub(super) fn load(
    tx: &rusqlite::Transaction<'_>,
    batch: &[AppendRequest],
    keys: &Keys,
) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    let mut room = tx
        .prepare_cached("SELECT last_seq, private, owner, dm_a, dm_b FROM rooms WHERE name = ?1")?;
    for name in &keys.rooms {
        if let Some(row) = room
            .query_row([name.as_str()], |r| room_row(r, 0))
            .optional()?
        {
            loaded.rooms.insert(name.clone(), row);
        }
    }
    let mut member = tx.prepare_cached(
        "SELECT role, joined_seq FROM room_members WHERE room = ?1 AND user_id = ?2",
    )?;
    let mut invite = tx
        .prepare_cached("SELECT by_user, seq FROM room_invites WHERE room = ?1 AND user_id = ?2")?;
    let mut ban = tx.prepare_cached(
        "SELECT by_user, reason, seq FROM room_bans WHERE room = ?1 AND user_id = ?2",
    )?;
    // As in the PostgreSQL store: messages and leaves in public rooms need
    // no invitation or ban.
    let moderation = keys.moderation || loaded.rooms.values().any(|r| r.private);
    for key in keys.pairs.iter() {
        let args = [key.0.as_str(), key.1.as_str()];
        if let Some(m) = member
            .query_row(args, |r| {
                Ok(Membership {
                    role: role_of(r.get(0)?)?,
                    joined_seq: r.get(1)?,
                })
            })
            .optional()?
        {
            loaded.members.insert(key.clone(), m);
        }
        if !moderation {
            continue;
        }
        if let Some(i) = invite
            .query_row(args, |r| {
                Ok(Invitation {
                    by: UserId::trusted(r.get(0)?),
                    seq: r.get(1)?,
                })
            })
            .optional()?
        {
            loaded.invites.insert(key.clone(), i);
        }
        if let Some(b) = ban
            .query_row(args, |r| {
                Ok(BanRow {
                    by: UserId::trusted(r.get(0)?),
                    reason: r.get(1)?,
                    seq: r.get(2)?,
                })
            })
            .optional()?
        {
            loaded.bans.insert(key.clone(), b);
        }
    }
    let mut block =
        tx.prepare_cached("SELECT 1 FROM user_blocks WHERE user_id = ?1 AND blocked = ?2")?;
    for (blocker, blocked) in &keys.blocks {
        if block.exists([blocker.as_str(), blocked.as_str()])? {
            loaded.blocks.insert((blocker.clone(), blocked.clone()));
        }
    }
    let mut heirs = tx.prepare_cached(
        "SELECT user_id, role, joined_seq FROM room_members WHERE room = ?1 AND role <> 'owner'
         ORDER BY role = 'admin' DESC, joined_seq LIMIT ?2",
    )?;
    for (name, limit) in keys.succession(batch, &loaded.rooms) {
        let rows = heirs.query_map(params![name.as_str(), limit], |r| {
            Ok((
                UserId::trusted(r.get(0)?),
                Membership {
                    role: role_of(r.get(1)?)?,
                    joined_seq: r.get(2)?,
                },
            ))
        })?;
        let list = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        loaded.successors.insert(name, list);
    }
    let mut message = tx.prepare_cached(
        "SELECT e.user_id, s.text, s.edited, s.deleted_by, s.state_seq
         FROM events e LEFT JOIN message_state s ON s.room = e.room AND s.seq = e.seq
         WHERE e.room = ?1 AND e.seq = ?2 AND e.type = 'message'",
    )?;
    for (room, seq) in &keys.messages {
        let row = message
            .query_row(params![room.as_str(), seq], |r| {
                let state_seq: Option<i64> = r.get(4)?;
                Ok(MessageRow {
                    author: UserId::trusted(r.get(0)?),
                    state: match state_seq {
                        Some(state_seq) => Some(StateRow {
                            text: r.get(1)?,
                            edited: r.get::<_, i64>(2)?.try_into().unwrap_or(u32::MAX),
                            deleted_by: r.get::<_, Option<String>>(3)?.map(UserId::trusted),
                            state_seq,
                        }),
                        None => None,
                    },
                })
            })
            .optional()?;
        if let Some(row) = row {
            loaded.messages.insert((room.clone(), *seq), row);
        }
    }
    let mut reaction = tx.prepare_cached(
        "SELECT 1 FROM reactions WHERE room = ?1 AND seq = ?2 AND emoji = ?3 AND user_id = ?4",
    )?;
    for key in &keys.reactions {
        if reaction.exists(params![key.0.as_str(), key.1, key.2, key.3.as_str()])? {
            loaded.reactions.insert(key.clone());
        }
    }
    let mut sent = tx.prepare_cached(&format!(
        "{EVENT_SELECT} WHERE e.room = ?1 AND e.user_id = ?2 AND e.client_msg_id = ?3"
    ))?;
    for key in &keys.sent {
        if let Some(ev) = sent
            .query_row(
                [key.0.as_str(), key.1.as_str(), key.2.as_str()],
                event_from_row,
            )
            .optional()?
        {
            loaded.sent.insert(key.clone(), ev);
        }
    }
    Ok(loaded)
}
