//! The event store: the durable log of every create, join, leave and message,
//! and the `rooms` and `room_members` tables kept in the same transactions.
//!
//! One trait, [`EventStore`], two real implementations: [`sqlite::SqliteStore`]
//! (the embedded single-node default) and [`postgres::PgStore`] (the clustered
//! path). Both decide a batch the same way, through [`plan`]: each store loads
//! what the batch touches under its own locks, `plan` decides every request in
//! order, and the store writes the result in the same transaction. Only the
//! event writer calls [`EventStore::append`].

mod migrations;
pub mod postgres;
pub mod sqlite;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::StoreConfig;
use crate::protocol::{Event, EventKind, HistoryRange, ProtoError, RoomName, Seq, UserId};

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

#[derive(Debug, Clone)]
pub enum AppendOp {
    Create,
    Join,
    Leave,
    Message {
        text: String,
        client_msg_id: Option<String>,
    },
}

/// What became of one [`AppendRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum AppendOutcome {
    /// A new event, committed.
    Appended(Event),
    /// A message whose `client_msg_id` was used before: the original event.
    Duplicate(Event),
    /// A join by a member: no event; the room's last seq at the time.
    AlreadyMember { last_seq: Seq },
    /// Refused by the rules of the protocol.
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    RoomExists,
    NoSuchRoom,
    NotAMember,
}

impl Refusal {
    pub fn to_error(self, room: &RoomName) -> ProtoError {
        match self {
            Refusal::RoomExists => ProtoError::room_exists(room),
            Refusal::NoSuchRoom => ProtoError::no_such_room(room),
            Refusal::NotAMember => ProtoError::not_a_member(room),
        }
    }
}

/// Rooms and members as stored: what a node loads at start-up.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Every room with its last seq, by name.
    pub rooms: Vec<(RoomName, Seq)>,
    /// Every membership.
    pub members: Vec<(RoomName, UserId)>,
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

    /// Every room and membership (cost grows with rooms and members, not history).
    async fn snapshot(&self) -> Result<Snapshot, StoreError>;

    /// A page of a room's events (no membership check: callers do that).
    async fn events(&self, room: &RoomName, range: HistoryRange) -> Result<Page, StoreError>;

    /// `Ok(None)` when `user` may read `room`; the refusal otherwise. With no
    /// user, only checks that the room exists.
    async fn check_reader(
        &self,
        room: &RoomName,
        user: Option<&UserId>,
    ) -> Result<Option<Refusal>, StoreError>;

    /// Every event of the log in order, for the fold test and audits.
    async fn all_events(&self) -> Result<Vec<Event>, StoreError>;

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

/// What a store loaded, under its locks, for the rooms a batch touches.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Rooms that exist, with their last seq.
    pub rooms: HashMap<RoomName, Seq>,
    /// Rooms that exist but were created by a concurrent transaction after this
    /// one looked: `create` is refused, nothing else may use them in this batch.
    pub taken: HashSet<RoomName>,
    /// Current memberships among the (room, user) pairs of the batch.
    pub members: HashSet<(RoomName, UserId)>,
    /// Stored messages whose (room, user, client_msg_id) the batch repeats.
    pub sent: HashMap<(RoomName, UserId, String), Event>,
}

/// What a batch writes: the stores turn this into SQL.
#[derive(Debug, Default)]
pub struct Plan {
    pub outcomes: Vec<AppendOutcome>,
    /// New events in append order, `id` still 0.
    pub events: Vec<Event>,
    /// Rooms this batch creates, with their creator.
    pub created: Vec<(RoomName, UserId)>,
    /// The new last seq of every room the batch appended to.
    pub last_seqs: Vec<(RoomName, Seq)>,
    /// Memberships the batch changed: `Some(joined_seq)` for a member at the
    /// end of the batch, `None` for one that left.
    pub membership: Vec<(RoomName, UserId, Option<Seq>)>,
}

impl Plan {
    /// Fills in the ids the database gave the new events, keyed by (room, seq).
    pub fn set_ids(&mut self, ids: &HashMap<(RoomName, Seq), i64>) {
        for ev in self.events.iter_mut() {
            if let Some(id) = ids.get(&(ev.room.clone(), ev.seq)) {
                ev.id = *id;
            }
        }
        for outcome in self.outcomes.iter_mut() {
            if let AppendOutcome::Appended(ev) | AppendOutcome::Duplicate(ev) = outcome {
                if ev.id == 0 {
                    if let Some(id) = ids.get(&(ev.room.clone(), ev.seq)) {
                        ev.id = *id;
                    }
                }
            }
        }
    }
}

/// The pairs and triples a store must load for `batch`.
pub struct Keys {
    pub rooms: Vec<RoomName>,
    pub creates: Vec<RoomName>,
    pub pairs: Vec<(RoomName, UserId)>,
    pub sent: Vec<(RoomName, UserId, String)>,
}

impl Keys {
    pub fn of(batch: &[AppendRequest]) -> Keys {
        let mut rooms: Vec<RoomName> = batch.iter().map(|r| r.room.clone()).collect();
        rooms.sort();
        rooms.dedup();
        let mut creates: Vec<RoomName> = batch
            .iter()
            .filter(|r| matches!(r.op, AppendOp::Create))
            .map(|r| r.room.clone())
            .collect();
        creates.sort();
        creates.dedup();
        let pairs: HashSet<(RoomName, UserId)> = batch
            .iter()
            .map(|r| (r.room.clone(), r.user.clone()))
            .collect();
        let sent: HashSet<(RoomName, UserId, String)> = batch
            .iter()
            .filter_map(|r| match &r.op {
                AppendOp::Message {
                    client_msg_id: Some(c),
                    ..
                } => Some((r.room.clone(), r.user.clone(), c.clone())),
                _ => None,
            })
            .collect();
        Keys {
            rooms,
            creates,
            pairs: pairs.into_iter().collect(),
            sent: sent.into_iter().collect(),
        }
    }
}

/// Decides every request of `batch` in order against what was loaded, as one
/// transaction would: seqs continue each room's last seq with no gap.
pub fn plan(batch: &[AppendRequest], mut loaded: Loaded, node: &str, at: DateTime<Utc>) -> Plan {
    let mut plan = Plan::default();
    let mut touched: Vec<RoomName> = Vec::new();
    let mut membership: HashMap<(RoomName, UserId), Option<Seq>> = HashMap::new();
    for req in batch {
        let key = (req.room.clone(), req.user.clone());
        let is_member = loaded.members.contains(&key);
        let exists = loaded.rooms.contains_key(&req.room);
        let refusal = match &req.op {
            AppendOp::Create if exists || loaded.taken.contains(&req.room) => {
                Some(Refusal::RoomExists)
            }
            AppendOp::Create => None,
            _ if !exists => Some(Refusal::NoSuchRoom),
            AppendOp::Join if is_member => {
                plan.outcomes.push(AppendOutcome::AlreadyMember {
                    last_seq: loaded.rooms[&req.room],
                });
                continue;
            }
            AppendOp::Join => None,
            AppendOp::Leave | AppendOp::Message { .. } if !is_member => Some(Refusal::NotAMember),
            _ => None,
        };
        if let Some(refusal) = refusal {
            plan.outcomes.push(AppendOutcome::Refused(refusal));
            continue;
        }
        if let AppendOp::Message {
            client_msg_id: Some(c),
            ..
        } = &req.op
        {
            let sent_key = (req.room.clone(), req.user.clone(), c.clone());
            if let Some(original) = loaded.sent.get(&sent_key) {
                plan.outcomes
                    .push(AppendOutcome::Duplicate(original.clone()));
                continue;
            }
        }
        let (kind, message, client_msg_id) = match &req.op {
            AppendOp::Create => {
                loaded.rooms.insert(req.room.clone(), 0);
                plan.created.push(key.clone());
                (EventKind::Create, None, None)
            }
            AppendOp::Join => (EventKind::Join, None, None),
            AppendOp::Leave => (EventKind::Leave, None, None),
            AppendOp::Message {
                text,
                client_msg_id,
            } => (
                EventKind::Message,
                Some(text.clone()),
                client_msg_id.clone(),
            ),
        };
        // unwrap-free: the room is in `loaded.rooms` (checked or inserted above).
        let seq = match loaded.rooms.get_mut(&req.room) {
            Some(last) => {
                *last += 1;
                *last
            }
            None => continue,
        };
        if !touched.contains(&req.room) {
            touched.push(req.room.clone());
        }
        match kind {
            EventKind::Create | EventKind::Join => {
                loaded.members.insert(key.clone());
                membership.insert(key, Some(seq));
            }
            EventKind::Leave => {
                loaded.members.remove(&key);
                membership.insert(key, None);
            }
            EventKind::Message => {}
        }
        let event = Event {
            kind,
            room: req.room.clone(),
            seq,
            id: 0,
            user_id: req.user.clone(),
            message,
            client_msg_id,
            node: node.to_owned(),
            at,
        };
        if let Some(c) = &event.client_msg_id {
            loaded.sent.insert(
                (event.room.clone(), event.user_id.clone(), c.clone()),
                event.clone(),
            );
        }
        plan.events.push(event.clone());
        plan.outcomes.push(AppendOutcome::Appended(event));
    }
    plan.last_seqs = touched
        .into_iter()
        .map(|room| {
            let last = loaded.rooms[&room];
            (room, last)
        })
        .collect();
    plan.membership = membership
        .into_iter()
        .map(|((room, user), joined)| (room, user, joined))
        .collect();
    plan
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
