//! Committed events: the same shape on the socket, on the bus, in `history`
//! and in the REST API.

use chrono::{DateTime, SecondsFormat, Utc};
use std::collections::BTreeMap;

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
    Edit,
    Delete,
    React,
    Unreact,
    /// Ephemeral: a `typing` frame on the bus (seq 0), never stored.
    Typing,
    /// Ephemeral: a `read` frame for one user's other connections, on the
    /// bus (seq 0), never stored.
    Read,
}

impl EventKind {
    /// Every kind, in declaration order (the stored kinds, then the
    /// ephemeral ones). A test checks it against the enum's variants.
    pub const ALL: &'static [EventKind] = &[
        EventKind::Create,
        EventKind::Join,
        EventKind::Leave,
        EventKind::Message,
        EventKind::Invite,
        EventKind::Uninvite,
        EventKind::Role,
        EventKind::Kick,
        EventKind::Ban,
        EventKind::Unban,
        EventKind::Edit,
        EventKind::Delete,
        EventKind::React,
        EventKind::Unreact,
        EventKind::Typing,
        EventKind::Read,
    ];

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
            EventKind::Edit => "edit",
            EventKind::Delete => "delete",
            EventKind::React => "react",
            EventKind::Unreact => "unreact",
            EventKind::Typing => "typing",
            EventKind::Read => "read",
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
            "edit" => EventKind::Edit,
            "delete" => EventKind::Delete,
            "react" => EventKind::React,
            "unreact" => EventKind::Unreact,
            _ => return None,
        })
    }

    /// Whether the event adds its user to the room's members.
    pub fn joins(self) -> bool {
        matches!(self, EventKind::Create | EventKind::Join)
    }

    /// Whether the kind is a frame that is never stored and has no seq.
    pub fn ephemeral(self) -> bool {
        matches!(self, EventKind::Typing | EventKind::Read)
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
    /// `role`; a DM's `create`: the other user), or the message (`edit`,
    /// `delete`, `react`, `unreact`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<Target>,
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
    /// `message`: the seq of the message it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Seq>,
    /// `message`: the members it mentions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mentions: Vec<UserId>,
    /// `react`, `unreact`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// `message`, current state: how many times it was edited.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub edited: u32,
    /// `message`, current state: deleted (its text is gone).
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted_by: Option<UserId>,
    /// `message`, current state: per emoji, the count and the first users.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reactions: BTreeMap<String, Reaction>,
    /// `message`: the seq of the last event folded into its state (absent:
    /// none was, it equals `seq`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_seq: Option<Seq>,
    pub node: String,
    #[serde(serialize_with = "serialize_micros")]
    pub at: DateTime<Utc>,
}

impl Event {
    /// An event of `kind` with none of the optional fields.
    pub fn new(
        kind: EventKind,
        room: RoomName,
        seq: Seq,
        user_id: UserId,
        node: String,
        at: DateTime<Utc>,
    ) -> Event {
        Event {
            kind,
            room,
            seq,
            id: 0,
            user_id,
            message: None,
            client_msg_id: None,
            target: None,
            role: None,
            reason: None,
            private: false,
            dm: false,
            by: None,
            reply_to: None,
            mentions: Vec::new(),
            emoji: None,
            edited: 0,
            deleted: false,
            deleted_by: None,
            reactions: BTreeMap::new(),
            state_seq: None,
            node,
            at,
        }
    }

    /// The event as JSON text, as clients receive it.
    pub fn to_json(&self) -> String {
        crate::to_json(self)
    }

    /// What the event says about the room beyond its kind and user.
    pub fn facts(&self) -> Facts {
        Facts {
            target: self.target.as_ref().and_then(Target::user).cloned(),
            mentions: self.mentions.clone(),
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
    /// A `message`'s mentions: each gets a notice.
    pub mentions: Vec<UserId>,
}

impl Facts {
    /// The one user an event or frame of `kind` by `user` is addressed to
    /// (the envelope's `to`): a notice's target, or a `read` frame's user.
    pub fn addressed_to<'a>(&'a self, kind: EventKind, user: &'a UserId) -> Option<&'a UserId> {
        if kind == EventKind::Read {
            return Some(user);
        }
        self.notice(kind, user).map(|(_, to, _)| to)
    }

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

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// What an event's `target` names: a message (a seq) or a user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Target {
    Seq(Seq),
    User(UserId),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Seq(s) => write!(f, "{s}"),
            Target::User(u) => write!(f, "{u}"),
        }
    }
}

impl Target {
    pub fn user(&self) -> Option<&UserId> {
        match self {
            Target::User(u) => Some(u),
            Target::Seq(_) => None,
        }
    }

    pub fn seq(&self) -> Option<Seq> {
        match self {
            Target::Seq(s) => Some(*s),
            Target::User(_) => None,
        }
    }
}

/// One emoji's reactions on a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    pub count: u32,
    /// The first [`MAX_REACTION_USERS`] users to react, in the order they did.
    pub users: Vec<UserId>,
}

/// How many users a message's `reactions` name per emoji.
pub const MAX_REACTION_USERS: usize = 20;

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
        let mut ev = Event::new(
            EventKind::Join,
            RoomName::parse("g").unwrap(),
            2,
            UserId::parse("1").unwrap(),
            "n".into(),
            at,
        );
        ev.id = 9;
        let v: Value = serde_json::from_str(&ev.to_json()).unwrap();
        assert_eq!(v["type"], "join");
        assert!(v.get("message").is_none());
        assert!(v["at"].as_str().unwrap().ends_with(".123456Z"));
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }
}
