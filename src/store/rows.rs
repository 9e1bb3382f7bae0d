//! What both stores share to read and write rows: the page a history read
//! asks for ([`PageQuery`]), an event's `target`, `target_seq` and `data`
//! columns, a message's state and reactions on its event, and the unread
//! counts' SQL.

use super::{Page, StoreError};
use crate::protocol::{
    Event, EventKind, HistoryRange, Role, Seq, Target, UserId, MAX_REACTION_USERS,
};

/// Splits a history range into the query the stores run: rows with
/// `lower < seq < upper`, `descending` to take the latest, `limit + 1` rows to
/// learn whether there is more.
pub struct PageQuery {
    pub lower: Seq,
    pub upper: Seq,
    pub descending: bool,
    pub fetch: i64,
    pub limit: usize,
}

impl PageQuery {
    pub fn of(range: HistoryRange) -> PageQuery {
        PageQuery {
            lower: range.since.unwrap_or(0),
            upper: range.before.unwrap_or(i64::MAX),
            descending: range.since.is_none(),
            fetch: range.limit.saturating_add(1),
            limit: usize::try_from(range.limit).unwrap_or(usize::MAX),
        }
    }

    /// Turns the fetched rows into a page in ascending order.
    pub fn finish(&self, mut events: Vec<Event>) -> Page {
        let more = events.len() > self.limit;
        events.truncate(self.limit);
        if self.descending {
            events.reverse();
        }
        Page { events, more }
    }
}

/// The `data` column of an event: the fields of its kind beyond the common
/// columns and `target`, as a JSON object (absent when there are none).
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct EventData {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    role: Option<Role>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    private: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    dm: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    by: Option<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reply_to: Option<Seq>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    mentions: Vec<UserId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    emoji: Option<String>,
}

/// An event's `data` column; `None` for the kinds that have none (a plain
/// message stays as cheap to store as before).
pub(crate) fn event_data(ev: &Event) -> Option<String> {
    if ev.role.is_none()
        && ev.reason.is_none()
        && !ev.private
        && !ev.dm
        && ev.by.is_none()
        && ev.reply_to.is_none()
        && ev.mentions.is_empty()
        && ev.emoji.is_none()
    {
        return None;
    }
    serde_json::to_string(&EventData {
        role: ev.role,
        reason: ev.reason.clone(),
        private: ev.private,
        dm: ev.dm,
        by: ev.by.clone(),
        reply_to: ev.reply_to,
        mentions: ev.mentions.clone(),
        emoji: ev.emoji.clone(),
    })
    .ok()
}

/// An event's `target` as stored: a user in `target`, a message in `target_seq`.
pub(crate) fn event_target(ev: &Event) -> (Option<&str>, Option<Seq>) {
    match &ev.target {
        Some(Target::User(u)) => (Some(u.as_str()), None),
        Some(Target::Seq(s)) => (None, Some(*s)),
        None => (None, None),
    }
}

/// Sets an event's fields from its `target`, `target_seq` and `data` columns.
pub(crate) fn set_event_data(
    ev: &mut Event,
    target: Option<String>,
    target_seq: Option<Seq>,
    data: Option<&str>,
) -> Result<(), StoreError> {
    ev.target = match (target, target_seq) {
        (Some(u), _) => Some(Target::User(UserId::trusted(u))),
        (None, Some(s)) => Some(Target::Seq(s)),
        (None, None) => None,
    };
    if let Some(data) = data {
        let d: EventData = serde_json::from_str(data)
            .map_err(|e| StoreError::Other(anyhow::anyhow!("event data {data}: {e}")))?;
        ev.role = d.role;
        ev.reason = d.reason;
        ev.private = d.private;
        ev.dm = d.dm;
        ev.by = d.by;
        ev.reply_to = d.reply_to;
        ev.mentions = d.mentions;
        ev.emoji = d.emoji;
    }
    Ok(())
}

/// The `message_state` columns of a row, as read beside an event.
pub(crate) struct StateColumns {
    pub text: Option<String>,
    pub edited: Option<i64>,
    pub deleted_by: Option<String>,
    pub state_seq: Option<Seq>,
}

/// Puts a message's current state on its event: the latest text, `edited`,
/// `deleted` and who deleted it, `state_seq` (reactions: [`set_reactions`]).
pub(crate) fn set_state(ev: &mut Event, state: StateColumns) {
    let Some(state_seq) = state.state_seq else {
        return;
    };
    ev.state_seq = Some(state_seq);
    ev.edited = u32::try_from(state.edited.unwrap_or(0)).unwrap_or(u32::MAX);
    if ev.edited > 0 {
        ev.message = state.text;
    }
    if let Some(by) = state.deleted_by {
        ev.deleted = true;
        ev.deleted_by = Some(UserId::trusted(by));
        ev.message = None;
    }
}

/// The messages of `events` whose state may hold reactions (those with a state row).
pub(crate) fn stateful_seqs(events: &[Event]) -> Vec<Seq> {
    events
        .iter()
        .filter(|e| e.kind == EventKind::Message && e.state_seq.is_some())
        .map(|e| e.seq)
        .collect()
}

/// Puts reactions, `(seq, emoji, user)` in the order they were made, on
/// the messages of `events`: per emoji the count and the first users.
pub(crate) fn set_reactions(events: &mut [Event], rows: Vec<(Seq, String, UserId)>) {
    for (seq, emoji, user) in rows {
        if let Some(ev) = events
            .iter_mut()
            .find(|e| e.seq == seq && e.kind == EventKind::Message)
        {
            let r = ev.reactions.entry(emoji).or_default();
            r.count += 1;
            if r.users.len() < MAX_REACTION_USERS {
                r.users.push(user);
            }
        }
    }
}

/// A role as stored in `room_members.role`.
pub(crate) fn role_from_db(s: &str) -> Result<Role, StoreError> {
    Role::parse(s).ok_or_else(|| StoreError::Other(anyhow::anyhow!("stored role {s}")))
}

/// `unread` for both stores: per room the user is a member of, the messages
/// after its marker that are not its own and not deleted, and of those the
/// ones that mention it. `$1` is the user.
pub(crate) const UNREAD_SQL: &str = "SELECT m.room,
    (SELECT count(*) FROM events e
      WHERE e.room = m.room AND e.seq > m.read_seq AND e.type = 'message'
        AND e.user_id <> m.user_id
        AND NOT EXISTS (SELECT 1 FROM message_state s
                        WHERE s.room = e.room AND s.seq = e.seq AND s.deleted_by IS NOT NULL)),
    (SELECT count(*) FROM mentions x JOIN events e ON e.room = x.room AND e.seq = x.seq
      WHERE x.room = m.room AND x.user_id = m.user_id AND x.seq > m.read_seq
        AND e.user_id <> m.user_id
        AND NOT EXISTS (SELECT 1 FROM message_state s
                        WHERE s.room = x.room AND s.seq = x.seq AND s.deleted_by IS NOT NULL))
    FROM room_members m WHERE m.user_id = $1";
