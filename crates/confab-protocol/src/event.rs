//! Committed events: the same shape on the socket, on the bus, in `history`
//! and in the REST API.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};

use crate::{RoomName, Seq, UserId};

/// The kind of a stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Create,
    Join,
    Leave,
    Message,
    Invite,
    Uninvite,
    Role,
    Kick,
    Ban,
    Unban,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Create => "create",
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::Message => "message",
            EventKind::Invite => "invite",
            EventKind::Uninvite => "uninvite",
            EventKind::Role => "role",
            EventKind::Kick => "kick",
            EventKind::Ban => "ban",
            EventKind::Unban => "unban",
        }
    }

    /// The kind stored under `s` in the `events` table's `type` column.
    pub fn from_db(s: &str) -> Option<EventKind> {
        Some(match s {
            "create" => EventKind::Create,
            "join" => EventKind::Join,
            "leave" => EventKind::Leave,
            "message" => EventKind::Message,
            "invite" => EventKind::Invite,
            "uninvite" => EventKind::Uninvite,
            "role" => EventKind::Role,
            "kick" => EventKind::Kick,
            "ban" => EventKind::Ban,
            "unban" => EventKind::Unban,
            _ => return None,
        })
    }

    /// Whether the event adds its user to the room's members.
    pub fn joins(self) -> bool {
        matches!(self, EventKind::Create | EventKind::Join)
    }

    /// Whether the event ends its target's membership (`kick`, `ban`).
    pub fn removes_target(self) -> bool {
        matches!(self, EventKind::Kick | EventKind::Ban)
    }
}

/// A member's role in a room (docs/protocol.md, Roles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(s: &str) -> Option<Role> {
        Some(match s {
            "owner" => Role::Owner,
            "admin" => Role::Admin,
            "member" => Role::Member,
            _ => return None,
        })
    }

    /// Owner or admin: may moderate.
    pub fn moderates(self) -> bool {
        matches!(self, Role::Owner | Role::Admin)
    }
}

/// A committed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventKind,
    pub room: RoomName,
    pub seq: Seq,
    pub id: i64,
    pub user_id: UserId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// The user acted on (`invite`, `uninvite`, `kick`, `ban`, `unban`,
    /// `role`; a DM's `create`: the other user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<UserId>,
    /// `role`: the target's new role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// `ban`: why, when given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `create` of a private room (or a DM): true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub private: bool,
    /// `create` of a DM: true.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dm: bool,
    /// A `join` made by someone else (the caller of `dm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<UserId>,
    pub node: String,
    #[serde(serialize_with = "serialize_micros")]
    pub at: DateTime<Utc>,
}

impl Event {
    /// The event as JSON text, as clients receive it.
    pub fn to_json(&self) -> String {
        crate::to_json(self)
    }

    /// What the event says about the room beyond its kind and user.
    pub fn facts(&self) -> Facts {
        Facts {
            target: self.target.clone(),
            role: self.role,
            private: self.private,
            dm: self.dm,
            by: self.by.clone(),
            reason: self.reason.clone(),
        }
    }
}

/// The fields of an event that change a room's state besides `type` and
/// `user_id`: what a node needs to apply an event it did not commit.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub target: Option<UserId>,
    pub role: Option<Role>,
    pub private: bool,
    pub dm: bool,
    pub by: Option<UserId>,
    /// A `ban`'s reason, which its notice repeats.
    pub reason: Option<String>,
}

impl Facts {
    /// The notice an event of `kind` by `user` causes: its kind, the user it
    /// is for and who caused it (docs/protocol.md, Notices).
    pub fn notice<'a>(
        &'a self,
        kind: EventKind,
        user: &'a UserId,
    ) -> Option<(crate::NoticeKind, &'a UserId, &'a UserId)> {
        use crate::NoticeKind as N;
        let notice = match kind {
            EventKind::Invite => N::Invite,
            EventKind::Kick => N::Kick,
            EventKind::Ban => N::Ban,
            EventKind::Join => return self.by.as_ref().map(|by| (N::Dm, user, by)),
            _ => return None,
        };
        self.target.as_ref().map(|to| (notice, to, user))
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn serialize_micros<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// The current time, cut to the microseconds that PostgreSQL keeps.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn events_serialise_in_the_wire_shape() {
        let at = DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap();
        let ev = Event {
            kind: EventKind::Join,
            room: RoomName::parse("g").unwrap(),
            seq: 2,
            id: 9,
            user_id: UserId::parse("1").unwrap(),
            message: None,
            client_msg_id: None,
            target: None,
            role: None,
            reason: None,
            private: false,
            dm: false,
            by: None,
            node: "n".into(),
            at,
        };
        let v: Value = serde_json::from_str(&ev.to_json()).unwrap();
        assert_eq!(v["type"], "join");
        assert!(v.get("message").is_none());
        assert!(v["at"].as_str().unwrap().ends_with(".123456Z"));
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }
}
