//! The event store: the durable log of every event, and the state kept
//! beside it in the same transactions (rooms, members and their roles,
//! invitations, bans, message states, reactions, read markers).
//!
//! One trait, [`EventStore`], two real implementations: [`sqlite::SqliteStore`]
//! (the embedded single-node default) and [`postgres::PgStore`] (the clustered
//! path). Both decide a batch the same way, through [`plan`]: each store loads
//! what the batch touches under its own locks, `plan` decides every request in
//! order, and the store writes the result in the same transaction. Only the
//! event writer calls [`EventStore::append`].
//!
//! By job: `request.rs` (what an append asks and what becomes of it),
//! `plan/` (deciding a batch), `access.rs` (who may read what), `rows.rs`
//! (what both stores share to read and write rows), `migrations.rs`, and
//! the two stores, `sqlite/` and `postgres/`.

mod access;
pub mod migrations;
mod plan;
pub mod postgres;
mod request;
mod rows;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::StoreConfig;
use crate::protocol::{BanInfo, Event, HistoryRange, Role, RoomName, Seq, UserId};

pub use access::{Access, Need};
pub use plan::{
    plan, plan_keyed, sorted, BanRow, Invitation, Keys, Loaded, Membership, MessageRow, NewRoom,
    Plan, RoomRow, StateRow,
};
pub use request::{AppendOp, AppendOutcome, AppendRequest, Refusal};
pub use rows::PageQuery;
pub(crate) use rows::{
    event_data, event_target, role_from_db, set_event_data, set_reactions, set_state,
    stateful_seqs, StateColumns, UNREAD_SQL,
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

    /// How many [`EventStore::append`]s may usefully run at once (the
    /// writer's lanes). One for a store that commits one transaction at a time.
    fn max_concurrent_appends(&self) -> usize {
        1
    }

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

#[cfg(test)]
mod tests;
