//! Every frame the server sends that is not an event.

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, Event, ProtoError, Ref, RoomName, Seq, UserId};

/// Limits announced in `hello`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HelloLimits {
    pub max_frame_bytes: usize,
    pub max_message_chars: usize,
    pub replay_limit: i64,
    pub history_limit: i64,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
}

/// `rooms` reply entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomInfo {
    pub name: RoomName,
    pub members: usize,
    pub last_seq: Seq,
}

/// `members` reply entry.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberInfo {
    pub user_id: UserId,
    pub online: bool,
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
