//! Each command's type and the rules its fields follow.

use super::{CommandLimits, Fields, MAX_EMOJI_BYTES, MAX_EMOJI_CHARS, MAX_REASON_CHARS};
use crate::{
    ErrorCode, ProtoError, Role, RoomName, Seq, UserId, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT,
};

/// `edit` {room, seq, message, client_msg_id?}.
#[derive(Debug, Clone, PartialEq)]
pub struct Edit {
    pub room: RoomName,
    pub seq: Seq,
    pub text: String,
    pub client_msg_id: Option<String>,
}

/// `delete` {room, seq, client_msg_id?}.
#[derive(Debug, Clone, PartialEq)]
pub struct Delete {
    pub room: RoomName,
    pub seq: Seq,
    pub client_msg_id: Option<String>,
}

/// `react` / `unreact` {room, seq, emoji, client_msg_id?}.
#[derive(Debug, Clone, PartialEq)]
pub struct React {
    pub room: RoomName,
    pub seq: Seq,
    pub emoji: String,
    pub on: bool,
    pub client_msg_id: Option<String>,
}

/// `typing` {room, typing}.
#[derive(Debug, Clone, PartialEq)]
pub struct Typing {
    pub room: RoomName,
    pub typing: bool,
}

/// `read` {room, seq}.
#[derive(Debug, Clone, PartialEq)]
pub struct Read {
    pub room: RoomName,
    pub seq: Seq,
}

/// `create`: make a room and join it.
#[derive(Debug, Clone, PartialEq)]
pub struct Create {
    pub room: RoomName,
    pub private: bool,
}

/// The acts of [`Moderate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    Invite,
    Uninvite,
    Kick,
    Unban,
}

/// `invite`, `uninvite`, `kick` or `unban` {room, user}.
#[derive(Debug, Clone, PartialEq)]
pub struct Moderate {
    pub act: Act,
    pub room: RoomName,
    pub user: UserId,
}

/// `ban` {room, user, reason?}.
#[derive(Debug, Clone, PartialEq)]
pub struct Ban {
    pub room: RoomName,
    pub user: UserId,
    pub reason: Option<String>,
}

/// `set_role` {room, user, role}.
#[derive(Debug, Clone, PartialEq)]
pub struct SetRole {
    pub room: RoomName,
    pub user: UserId,
    pub role: Role,
}

/// `dm` {user}.
#[derive(Debug, Clone, PartialEq)]
pub struct Dm {
    pub user: UserId,
}

/// `block` / `unblock` {user}.
#[derive(Debug, Clone, PartialEq)]
pub struct Block {
    pub user: UserId,
    pub block: bool,
}

/// `join`, optionally resuming after `since`.
#[derive(Debug, Clone, PartialEq)]
pub struct Join {
    pub room: RoomName,
    pub since: Option<Seq>,
}

/// `leave`.
#[derive(Debug, Clone, PartialEq)]
pub struct Leave {
    pub room: RoomName,
}

/// `message` (and `POST /rooms/{room}/messages`).
#[derive(Debug, Clone, PartialEq)]
pub struct SendMessage {
    pub room: RoomName,
    pub text: String,
    pub client_msg_id: Option<String>,
    /// The seq of the message this one answers.
    pub reply_to: Option<Seq>,
    /// Users mentioned, without repeats.
    pub mentions: Vec<UserId>,
}

/// `history` (and `GET /rooms/{room}/events`).
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    pub room: RoomName,
    pub range: HistoryRange,
}

/// `members`.
#[derive(Debug, Clone, PartialEq)]
pub struct Members {
    pub room: RoomName,
}

/// Which page of a room's events a `history` command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryRange {
    pub since: Option<Seq>,
    pub before: Option<Seq>,
    pub limit: i64,
}

impl HistoryRange {
    /// The latest `limit` events.
    pub fn latest(limit: i64) -> HistoryRange {
        HistoryRange {
            since: None,
            before: None,
            limit,
        }
    }

    /// `since`, `before` and `limit` (1–1000, default 100).
    pub fn parse(fields: &Fields<'_>) -> Result<HistoryRange, ProtoError> {
        let limit = match fields.seq("limit")? {
            None => DEFAULT_HISTORY_LIMIT,
            Some(v) if (1..=MAX_HISTORY_LIMIT).contains(&v) => v,
            Some(_) => return Err(ProtoError::invalid_field(LIMIT_RULE)),
        };
        Ok(HistoryRange {
            since: fields.seq("since")?,
            before: fields.seq("before")?,
            limit,
        })
    }
}

pub(super) const LIMIT_RULE: &str = "limit must be an integer from 1 to 1000";

impl Create {
    /// `room` (not starting with `dm:`, the names of DMs) and an optional `private`.
    pub fn parse(fields: &Fields<'_>) -> Result<Create, ProtoError> {
        let room = fields.room()?;
        if room.is_dm() {
            return Err(ProtoError::new(
                ErrorCode::InvalidRoom,
                "room names starting with dm: are kept for direct messages; use dm",
            ));
        }
        Ok(Create {
            room,
            private: fields.bool("private")?.unwrap_or(false),
        })
    }
}

impl Moderate {
    pub fn parse(act: Act, fields: &Fields<'_>) -> Result<Moderate, ProtoError> {
        Ok(Moderate {
            act,
            room: fields.room()?,
            user: fields.target()?,
        })
    }
}

impl Ban {
    pub fn parse(fields: &Fields<'_>) -> Result<Ban, ProtoError> {
        let reason = match fields.optional_str("reason")? {
            Some(r) if r.chars().count() > MAX_REASON_CHARS => {
                return Err(ProtoError::invalid_field(format!(
                    "reason must be at most {MAX_REASON_CHARS} characters"
                )))
            }
            Some("") | None => None,
            Some(r) => Some(r.to_owned()),
        };
        Ok(Ban {
            room: fields.room()?,
            user: fields.target()?,
            reason,
        })
    }
}

impl SetRole {
    pub fn parse(fields: &Fields<'_>) -> Result<SetRole, ProtoError> {
        let room = fields.room()?;
        let user = fields.target()?;
        let role = fields
            .optional_str("role")?
            .and_then(Role::parse)
            .ok_or_else(|| ProtoError::invalid_field("role must be owner, admin or member"))?;
        Ok(SetRole { room, user, role })
    }
}

impl Dm {
    pub fn parse(fields: &Fields<'_>) -> Result<Dm, ProtoError> {
        Ok(Dm {
            user: fields.target()?,
        })
    }
}

impl Block {
    pub fn parse(block: bool, fields: &Fields<'_>) -> Result<Block, ProtoError> {
        Ok(Block {
            user: fields.target()?,
            block,
        })
    }
}

impl Join {
    pub fn parse(fields: &Fields<'_>) -> Result<Join, ProtoError> {
        Ok(Join {
            room: fields.room()?,
            since: fields.seq("since")?,
        })
    }
}

impl Leave {
    pub fn parse(fields: &Fields<'_>) -> Result<Leave, ProtoError> {
        Ok(Leave {
            room: fields.room()?,
        })
    }
}

impl SendMessage {
    /// `room`, `message` (1 to `max_message_chars` characters), an optional
    /// `client_msg_id` (1–64 characters), `reply_to` (a seq) and `mentions`
    /// (1–50 user ids).
    pub fn parse(fields: &Fields<'_>, limits: CommandLimits) -> Result<SendMessage, ProtoError> {
        let room = fields.room()?;
        let text = fields.text("message", limits)?;
        let reply_to = match fields.seq("reply_to")? {
            Some(0) => return Err(ProtoError::invalid_field("reply_to must be a seq >= 1")),
            other => other,
        };
        Ok(SendMessage {
            room,
            text,
            client_msg_id: fields.client_msg_id()?,
            reply_to,
            mentions: fields.mentions()?,
        })
    }
}

impl Edit {
    pub fn parse(fields: &Fields<'_>, limits: CommandLimits) -> Result<Edit, ProtoError> {
        Ok(Edit {
            room: fields.room()?,
            seq: fields.target_seq()?,
            text: fields.text("message", limits)?,
            client_msg_id: fields.client_msg_id()?,
        })
    }
}

impl Delete {
    pub fn parse(fields: &Fields<'_>) -> Result<Delete, ProtoError> {
        Ok(Delete {
            room: fields.room()?,
            seq: fields.target_seq()?,
            client_msg_id: fields.client_msg_id()?,
        })
    }
}

impl React {
    pub fn parse(on: bool, fields: &Fields<'_>) -> Result<React, ProtoError> {
        let room = fields.room()?;
        let seq = fields.target_seq()?;
        let emoji = fields.required_str("emoji")?;
        if !valid_emoji(emoji) {
            return Err(ProtoError::invalid_field(
                "emoji must be 1-32 characters (a sequence joined by U+200D counts as one) \
                 with no whitespace or control character",
            ));
        }
        Ok(React {
            room,
            seq,
            emoji: emoji.to_owned(),
            on,
            client_msg_id: fields.client_msg_id()?,
        })
    }
}

/// The `emoji` rule: 1–32 characters, where a sequence joined by U+200D
/// (ZERO WIDTH JOINER) counts as one, no whitespace, no control character,
/// at most 128 bytes; not starting or ending with U+200D.
pub fn valid_emoji(s: &str) -> bool {
    const ZWJ: char = '\u{200d}';
    if s.is_empty()
        || s.len() > MAX_EMOJI_BYTES
        || s.starts_with(ZWJ)
        || s.ends_with(ZWJ)
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    // Each U+200D joins the characters on either side into one.
    let joiners = s.chars().filter(|c| *c == ZWJ).count();
    let chars = s.chars().count() - joiners;
    chars.saturating_sub(joiners) <= MAX_EMOJI_CHARS && !s.contains("\u{200d}\u{200d}")
}

impl Typing {
    pub fn parse(fields: &Fields<'_>) -> Result<Typing, ProtoError> {
        Ok(Typing {
            room: fields.room()?,
            typing: fields
                .bool("typing")?
                .ok_or_else(|| ProtoError::invalid_field("typing is required (true or false)"))?,
        })
    }
}

impl Read {
    pub fn parse(fields: &Fields<'_>) -> Result<Read, ProtoError> {
        Ok(Read {
            room: fields.room()?,
            seq: fields
                .seq("seq")?
                .ok_or_else(|| ProtoError::invalid_field("seq is required"))?,
        })
    }
}

impl History {
    pub fn parse(fields: &Fields<'_>) -> Result<History, ProtoError> {
        Ok(History {
            room: fields.room()?,
            range: HistoryRange::parse(fields)?,
        })
    }
}

impl Members {
    pub fn parse(fields: &Fields<'_>) -> Result<Members, ProtoError> {
        Ok(Members {
            room: fields.room()?,
        })
    }
}
