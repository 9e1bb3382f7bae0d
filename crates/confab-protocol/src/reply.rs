//! Every frame the server sends that is not an event.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Event, ProtoError, Ref, Role, RoomName, Seq, UserId};

/// Limits announced in `hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloLimits {
    pub max_frame_bytes: usize,
    pub max_message_chars: usize,
    pub replay_limit: i64,
    pub history_limit: i64,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Most rooms one connection may be subscribed to.
    pub max_rooms_per_connection: usize,
}

/// `rooms` reply entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomInfo {
    pub name: RoomName,
    pub members: usize,
    pub last_seq: Seq,
    #[serde(default)]
    pub private: bool,
    #[serde(default)]
    pub dm: bool,
    /// A DM: the other user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<UserId>,
    /// The asking user's place in the room; absent when not in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Standing>,
    /// A member's unread messages (after its read marker, not its own, not deleted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
    /// Of those, the ones that mention the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mentions_unread: Option<u64>,
}

/// A user's place in a room, as `rooms` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Standing {
    Owner,
    Admin,
    Member,
    Invited,
}

impl From<Role> for Standing {
    fn from(r: Role) -> Standing {
        match r {
            Role::Owner => Standing::Owner,
            Role::Admin => Standing::Admin,
            Role::Member => Standing::Member,
        }
    }
}

/// `members` reply entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    pub user_id: UserId,
    pub online: bool,
    pub role: Role,
    /// The member's read marker.
    pub read_seq: Seq,
}

/// `bans` reply entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BanInfo {
    pub user_id: UserId,
    pub by: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub seq: Seq,
}

/// The kinds of `notice`: a frame addressed to a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeKind {
    Invite,
    Dm,
    Kick,
    Ban,
    Mention,
}

impl NoticeKind {
    /// Every kind, in declaration order. A test checks it against the
    /// enum's variants.
    pub const ALL: &'static [NoticeKind] = &[
        NoticeKind::Invite,
        NoticeKind::Dm,
        NoticeKind::Kick,
        NoticeKind::Ban,
        NoticeKind::Mention,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NoticeKind::Invite => "invite",
            NoticeKind::Dm => "dm",
            NoticeKind::Kick => "kick",
            NoticeKind::Ban => "ban",
            NoticeKind::Mention => "mention",
        }
    }
}

/// Every frame the server sends that is not an event.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<'a> {
    Hello {
        node: &'a str,
        protocol: u32,
        epoch: &'a str,
        user_id: Option<&'a UserId>,
        limits: &'a HelloLimits,
    },
    Ack(Ack<'a>),
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        code: ErrorCode,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a RoomName>,
    },
    History {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        room: &'a RoomName,
        events: &'a [Event],
        more: bool,
    },
    Rooms {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        rooms: &'a [RoomInfo],
    },
    Members {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        room: &'a RoomName,
        members: &'a [MemberInfo],
    },
    Pong {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
    },
    Bans {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<&'a Ref>,
        room: &'a RoomName,
        bans: &'a [BanInfo],
    },
    Notice {
        kind: NoticeKind,
        room: &'a RoomName,
        seq: Seq,
        by: &'a UserId,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
    },
    /// Someone in the room is typing (or stopped); never stored.
    Typing {
        room: &'a RoomName,
        user_id: &'a UserId,
        typing: bool,
        ttl_ms: u64,
    },
    /// The user's read marker moved on another of its connections.
    Read {
        room: &'a RoomName,
        seq: Seq,
        user_id: &'a UserId,
    },
}

/// An `ack`: the command succeeded (and, where it appended, is durable).
#[derive(Debug, Default, Serialize)]
pub struct Ack<'a> {
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<&'a Ref>,
    pub command: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<&'a RoomName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<Seq>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duplicate: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovered: Option<bool>,
    /// `invite` of an invitee, `set_role` to the same role: nothing changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unchanged: Option<bool>,
    /// `dm`: the other user.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub with: Option<&'a UserId>,
    /// `message`: mentions of users who are not members, dropped.
    #[serde(skip_serializing_if = "<[UserId]>::is_empty")]
    pub dropped_mentions: &'a [UserId],
}

impl Reply<'_> {
    /// The reply as JSON text.
    pub fn to_json(&self) -> String {
        crate::to_json(self)
    }
}

/// The `error` frame for `err`, echoing `reference`: also the body of every
/// REST error.
pub fn error_json(reference: Option<&Ref>, err: &ProtoError, room: Option<&RoomName>) -> String {
    Reply::Error {
        reference,
        code: err.code,
        message: &err.message,
        room,
    }
    .to_json()
}
