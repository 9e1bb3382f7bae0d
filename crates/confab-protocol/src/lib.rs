//! Confab's wire protocol, version 1 (`docs/protocol.md`): every frame a
//! client sends and receives as typed values, the validated names, the error
//! codes, and the envelope that carries events between nodes on the bus.
//!
//! This crate owns the shape of JSON on the wire and nothing else: it knows no
//! socket, actor or store, so any Rust client (and `confab-bench`) can use it.
//! Text goes in and comes out as [`Command`]s (or a [`ProtoError`] carrying
//! the protocol's code) and typed replies go out as JSON text.

#[cfg(test)]
mod asyncapi_tests;
mod command;
mod envelope;
mod error;
mod event;
mod names;
mod reply;

pub use command::{
    parse_command, Act, Ban, Block, Command, CommandLimits, Create, Delete, Dm, Edit, Fields,
    History, HistoryRange, Join, Leave, Members, Moderate, Parsed, React, Read, SendMessage,
    SetRole, Typing, MAX_EMOJI_CHARS, MAX_MENTIONS, MAX_REASON_CHARS,
};
pub use envelope::{sign, BusKey, Envelope, EnvelopeError, Header};
pub use error::{ErrorCode, ProtoError};
pub use event::{now_micros, Event, EventKind, Facts, Reaction, Role, Target, MAX_REACTION_USERS};
pub use names::{Ref, RoomName, Seq, UserId, DM_PREFIX};
pub use reply::{
    error_json, Ack, BanInfo, HelloLimits, MemberInfo, NoticeKind, Reply, RoomInfo, Standing,
};

/// The AsyncAPI 3 description of this protocol (served at `/asyncapi.json`):
/// every command, reply, event, notice and error code, checked against this
/// crate's types by `asyncapi_tests`.
pub const ASYNCAPI: &str = include_str!("../asyncapi.json");

/// The protocol version announced in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest `ref`, `client_msg_id`, room name and user id, in characters.
pub const MAX_ID_CHARS: usize = 64;
/// Largest `limit` a `history` command may ask for.
pub const MAX_HISTORY_LIMIT: i64 = 1000;
/// `limit` of a `history` command that gives none.
pub const DEFAULT_HISTORY_LIMIT: i64 = 100;

/// Serialises one of this crate's values as JSON text. Our types serialise
/// without fail (string keys only); the fallback exists so that a bug shows
/// as a protocol error on the wire, not a crash.
pub(crate) fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| {
        r#"{"type":"error","code":"internal","message":"internal error; it has been logged"}"#
            .to_owned()
    })
}
