//! What the writer asks of a store and what becomes of it: an
//! [`AppendRequest`] (a room, a user and an [`AppendOp`]), its
//! [`AppendOutcome`], and the [`Refusal`]s of the protocol's rules.

use crate::protocol::{ErrorCode, Event, ProtoError, Role, RoomName, Seq, UserId};

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
