//! The event store: the durable log of every create, join, leave and message,
//! and the `rooms` and `room_members` tables kept in the same transactions.
//!
//! One trait, [`EventStore`], two real implementations: [`sqlite::SqliteStore`]
//! (the embedded single-node default) and [`postgres::PgStore`] (the clustered
//! path). Both decide a batch the same way, through [`plan`]: each store loads
//! what the batch touches under its own locks, `plan` decides every request in
//! order, and the store writes the result in the same transaction. Only the
//! event writer calls [`EventStore::append`].

pub mod migrations;
mod plan;
pub mod postgres;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::StoreConfig;
use crate::protocol::{
    BanInfo, ErrorCode, Event, EventKind, HistoryRange, ProtoError, Role, RoomName, Seq, Target,
    UserId, MAX_REACTION_USERS,
};

pub use plan::{
    plan, sorted, BanRow, Invitation, Keys, Loaded, Membership, MessageRow, NewRoom, Plan, RoomRow,
    StateRow,
};

/// Why the store could not do what it was asked. Never shown to clients: they
/// get `unavailable`, and this is logged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("postgres pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("store: {0:#}")]
    Other(#[from] anyhow::Error),
}

impl StoreError {
    /// Whether the failure may be one request's fault, so that the batch's
    /// other requests could still be stored: a statement the database refused
    /// (PostgreSQL: an error with a SQLSTATE outside the classes that speak of
    /// the server or the connection; SQLite: a constraint, size or type
    /// error). Not when the store itself failed: a pool timeout, a connection
    /// that is closed or never opened, an I/O error, a lock. The writer
    /// retries a batch one request at a time only after the former, so that
    /// a store that is down is not asked N times.
    pub fn may_be_one_request(&self) -> bool {
        match self {
            StoreError::Postgres(e) => {
                !e.is_closed() && e.code().is_some_and(|c| statement_sqlstate(c.code()))
            }
            StoreError::Pool(_) | StoreError::Other(_) => false,
            StoreError::Sqlite(e) => matches!(
                e.sqlite_error_code(),
                Some(
                    rusqlite::ErrorCode::ConstraintViolation
                        | rusqlite::ErrorCode::TooBig
                        | rusqlite::ErrorCode::TypeMismatch
                )
            ),
        }
    }
}

/// Whether a SQLSTATE is about the statement (its data, a constraint, a
/// conflict with another transaction) rather than the server or the session:
/// classes 08 (connection exception), 28 (authorization), 3D (no such
/// database), 53 (insufficient resources: disk full, out of memory, too many
/// connections), 57 (operator intervention: shutdown, cancel, "cannot connect
/// now"), 58 (system error: I/O) and XX (internal error) are not.
fn statement_sqlstate(code: &str) -> bool {
    !matches!(
        code.get(..2),
        None | Some("08" | "28" | "3D" | "53" | "57" | "58" | "XX")
    )
}

/// One append the writer hands the store.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub room: RoomName,
    pub user: UserId,
    pub op: AppendOp,
}

#[derive(Debug, Clone, PartialEq)]
pub enum AppendOp {
    Create {
        private: bool,
    },
    Join,
    Leave,
    Message {
        text: String,
        client_msg_id: Option<String>,
        reply_to: Option<Seq>,
        mentions: Vec<UserId>,
    },
    Edit {
        target: Seq,
        text: String,
        client_msg_id: Option<String>,
    },
    Delete {
        target: Seq,
        client_msg_id: Option<String>,
    },
    /// `react` (`on`) or `unreact`.
    React {
        target: Seq,
        emoji: String,
        on: bool,
        client_msg_id: Option<String>,
    },
    Invite {
        target: UserId,
    },
    Uninvite {
        target: UserId,
    },
    Kick {
        target: UserId,
    },
    Ban {
        target: UserId,
        reason: Option<String>,
    },
    Unban {
        target: UserId,
    },
    SetRole {
        target: UserId,
        role: Role,
    },
    /// The request's room is `RoomName::dm(user, other)`.
    Dm {
        other: UserId,
    },
}

impl AppendOp {
    /// The user the op acts on, besides its caller.
    pub fn target(&self) -> Option<&UserId> {
        match self {
            AppendOp::Invite { target }
            | AppendOp::Uninvite { target }
            | AppendOp::Kick { target }
            | AppendOp::Ban { target, .. }
            | AppendOp::Unban { target }
            | AppendOp::SetRole { target, .. } => Some(target),
            AppendOp::Dm { other } => Some(other),
            _ => None,
        }
    }

    /// The message the op acts on (`edit`, `delete`, `react`, `unreact`) or
    /// answers (`reply_to`).
    pub fn target_seq(&self) -> Option<Seq> {
        match self {
            AppendOp::Edit { target, .. }
            | AppendOp::Delete { target, .. }
            | AppendOp::React { target, .. } => Some(*target),
            AppendOp::Message { reply_to, .. } => *reply_to,
            _ => None,
        }
    }

    /// The op's `client_msg_id`, if it has one.
    pub fn client_msg_id(&self) -> Option<&str> {
        match self {
            AppendOp::Message { client_msg_id, .. }
            | AppendOp::Edit { client_msg_id, .. }
            | AppendOp::Delete { client_msg_id, .. }
            | AppendOp::React { client_msg_id, .. } => client_msg_id.as_deref(),
            _ => None,
        }
    }

    /// The command's name, as its `ack` says it.
    pub fn command(&self) -> &'static str {
        match self {
            AppendOp::Create { .. } => "create",
            AppendOp::Join => "join",
            AppendOp::Leave => "leave",
            AppendOp::Message { .. } => "message",
            AppendOp::Edit { .. } => "edit",
            AppendOp::Delete { .. } => "delete",
            AppendOp::React { on: true, .. } => "react",
            AppendOp::React { .. } => "unreact",
            AppendOp::Invite { .. } => "invite",
            AppendOp::Uninvite { .. } => "uninvite",
            AppendOp::Kick { .. } => "kick",
            AppendOp::Ban { .. } => "ban",
            AppendOp::Unban { .. } => "unban",
            AppendOp::SetRole { .. } => "set_role",
            AppendOp::Dm { .. } => "dm",
        }
    }

    /// Whether the caller's connection is subscribed to the room once it is done.
    pub fn subscribes(&self) -> bool {
        matches!(
            self,
            AppendOp::Create { .. } | AppendOp::Join | AppendOp::Dm { .. }
        )
    }
}

/// What became of one [`AppendRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum AppendOutcome {
    /// New events, committed, in order: the command's own, then what it
    /// caused (an owner's `leave`, then the `role` that passes the room on;
    /// a DM's `create`, then the `join`s).
    Appended(Vec<Event>),
    /// A message whose `client_msg_id` was used before: the original event.
    Duplicate(Box<Event>),
    /// A join (or `dm`) by a member: no event; the room's last seq at the time.
    AlreadyMember { last_seq: Seq },
    /// Nothing to change (an invitee's `invite`, `set_role` to the same role).
    Unchanged { last_seq: Seq },
    /// Done before (a second `react` of the same emoji): acked as a duplicate.
    Repeated { last_seq: Seq },
    /// Refused by the rules of the protocol.
    Refused(Refusal),
}

/// Why the rules refused a request (docs/protocol.md, "Rooms with owners").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RoomExists,
    NoSuchRoom,
    NotAMember,
    Forbidden,
    Banned,
    NoSuchMember,
    AlreadyMember,
    NotInvited,
    NotBanned,
    /// Another node created the DM while this batch looked: retry.
    Busy,
    NoSuchEvent,
    NotAuthor,
    NoSuchReaction,
}

impl Refusal {
    /// The error for a request in `room` acting on `target` (if it does).
    pub fn to_error(self, room: &RoomName, target: Option<&UserId>) -> ProtoError {
        let who = target.map_or_else(|| "that user".to_owned(), |t| format!("user {t}"));
        match self {
            Refusal::RoomExists => ProtoError::room_exists(room),
            Refusal::NoSuchRoom => ProtoError::no_such_room(room),
            Refusal::NotAMember => ProtoError::not_a_member(room),
            Refusal::Forbidden => ProtoError::new(
                ErrorCode::Forbidden,
                format!("you may not do this in room {room}"),
            ),
            Refusal::Banned => ProtoError::new(
                ErrorCode::Banned,
                match target {
                    Some(t) => format!("user {t} is banned from room {room}; unban them first"),
                    None => format!("you are banned from room {room}"),
                },
            ),
            Refusal::NoSuchMember => ProtoError::new(
                ErrorCode::NoSuchMember,
                format!("{who} is not a member of room {room}"),
            ),
            Refusal::AlreadyMember => ProtoError::new(
                ErrorCode::AlreadyMember,
                format!("{who} is already a member of room {room}"),
            ),
            Refusal::NotInvited => ProtoError::new(
                ErrorCode::NotInvited,
                format!("{who} has no invitation to room {room}"),
            ),
            Refusal::NotBanned => ProtoError::new(
                ErrorCode::NotBanned,
                format!("{who} is not banned from room {room}"),
            ),
            Refusal::NoSuchEvent => ProtoError::new(
                ErrorCode::NoSuchEvent,
                format!("room {room} has no such message (or it was deleted)"),
            ),
            Refusal::NotAuthor => ProtoError::new(
                ErrorCode::NotAuthor,
                "only the author of a message may edit it",
            ),
            Refusal::NoSuchReaction => ProtoError::new(
                ErrorCode::NoSuchReaction,
                "you have not reacted to that message with that emoji",
            ),
            Refusal::Busy => ProtoError::new(
                ErrorCode::Unavailable,
                "another node made this room at the same moment; nothing was stored, retry",
            ),
        }
    }
}

/// Rooms, members and invitations as stored: what a node loads at start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Every room, by name.
    pub rooms: Vec<(RoomName, RoomRow)>,
    /// Every membership, with its role.
    pub members: Vec<(RoomName, UserId, Role)>,
    /// Every open invitation.
    pub invites: Vec<(RoomName, UserId)>,
}

/// What a reader is to a room, as the store has it: decides who may read
/// `history`, `members` and `bans` (see [`Access::check`]).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `None`: no such room.
    pub room: Option<RoomRow>,
    pub role: Option<Role>,
    pub invited: bool,
}

/// What a read needs of its reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// `history`: a member (or, without a reader, a public room).
    Member,
    /// `members`: anyone for a public room, a member for a private one.
    Visible,
    /// `bans`: the owner or an admin, not in a DM.
    Moderator,
}

impl Access {
    /// `None` when the reader may read; the refusal otherwise. An outsider
    /// of a private room gets `NoSuchRoom`, as for a room that does not exist.
    pub fn check(&self, reader: Option<&UserId>, need: Need) -> Option<Refusal> {
        let Some(room) = &self.room else {
            return Some(Refusal::NoSuchRoom);
        };
        let knows = self.role.is_some()
            || self.invited
            || reader.is_some_and(|r| room.dm.as_ref().is_some_and(|(a, b)| a == r || b == r));
        if room.private && !knows {
            return Some(Refusal::NoSuchRoom);
        }
        match (need, reader, self.role) {
            (Need::Visible, _, _) if !room.private => None,
            (Need::Member, None, _) => None,
            (_, _, None) => Some(Refusal::NotAMember),
            (Need::Moderator, _, _) if room.dm.is_some() => Some(Refusal::Forbidden),
            (Need::Moderator, _, Some(role)) if !role.moderates() => Some(Refusal::Forbidden),
            _ => None,
        }
    }
}

/// A page of a room's events, ascending by seq.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Page {
    pub events: Vec<Event>,
    pub more: bool,
}

/// The event store. Both implementations run the same test suite.
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// "sqlite" or "postgres", as `/health` lists it.
    fn name(&self) -> &'static str;

    /// Changes only when the store is a new one (so `since` no longer applies).
    fn epoch(&self) -> &str;

    /// Decides and commits a batch in one transaction, in order. An `Err`
    /// means nothing of the batch was stored.
    async fn append(
        &self,
        batch: &[AppendRequest],
        node: &str,
    ) -> Result<Vec<AppendOutcome>, StoreError>;

    /// Every room, membership and invitation (cost grows with rooms and
    /// members, not history).
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// What `reader` is to `room`, read from the store (not a node's memory).
    async fn access(&self, room: &RoomName, reader: Option<&UserId>) -> Result<Access, StoreError>;

    /// A room's members with their roles and read markers, in the order they joined.
    async fn members(&self, room: &RoomName) -> Result<Vec<(UserId, Role, Seq)>, StoreError>;

    /// For each room `user` is a member of: its unread messages and, of
    /// those, the ones that mention it (docs/protocol.md, Read markers).
    async fn unread(&self, user: &UserId) -> Result<Vec<(RoomName, u64, u64)>, StoreError>;

    /// Moves `user`'s read marker in `room` forward to `seq` (a member's,
    /// checked by the caller): the marker after, and whether it moved.
    /// `None` when `seq` is past the room's last seq.
    async fn mark_read(
        &self,
        room: &RoomName,
        user: &UserId,
        seq: Seq,
    ) -> Result<Option<(Seq, bool)>, StoreError>;

    /// A room's bans, by seq.
    async fn bans(&self, room: &RoomName) -> Result<Vec<BanInfo>, StoreError>;

    /// `user` blocks (`on`) or unblocks `blocked`.
    async fn set_block(&self, user: &UserId, blocked: &UserId, on: bool) -> Result<(), StoreError>;

    /// A page of a room's events (no membership check: callers do that).
    async fn events(&self, room: &RoomName, range: HistoryRange) -> Result<Page, StoreError>;

    /// Every event of the log in order, for the fold test and audits.
    async fn all_events(&self) -> Result<Vec<Event>, StoreError>;

    /// How many rooms there are and how many events they hold (the sum of
    /// their last seqs: each room's seqs are gap-free), from `rooms` alone.
    async fn stats(&self) -> Result<(u64, u64), StoreError>;

    /// A cheap round trip, for `/health`.
    async fn ping(&self) -> Result<(), StoreError>;
}

/// Opens (and migrates) the configured store.
pub async fn open(config: &StoreConfig) -> anyhow::Result<Arc<dyn EventStore>> {
    Ok(match config {
        StoreConfig::Sqlite { path } => Arc::new(sqlite::SqliteStore::open(path).await?),
        StoreConfig::Postgres { url, pool_size } => {
            Arc::new(postgres::PgStore::open(url.expose(), *pool_size).await?)
        }
    })
}

/// Applies the configured store's migrations and closes it (`confab migrate`).
pub async fn migrate(config: &StoreConfig) -> anyhow::Result<()> {
    let store = open(config).await?;
    log::info!("the {} store is migrated", store.name());
    Ok(())
}

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

#[cfg(test)]
mod tests;

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
