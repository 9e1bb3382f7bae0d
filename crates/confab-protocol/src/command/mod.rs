//! Commands as types. Each command parses and validates itself from the
//! fields of one JSON object ([`Fields`]), so the WebSocket path (a frame)
//! and the REST path (a path, a query string, a body) apply one rule set.
//!
//! By job: this file (the [`Command`] enum, the table of parsers, a frame's
//! parse), `kinds.rs` (each command's type and its rules) and `fields.rs`
//! (typed access to a command's fields).

mod fields;
mod kinds;

pub use fields::Fields;
pub use kinds::{
    Act, Ban, Block, Create, Delete, Dm, Edit, History, HistoryRange, Join, Leave, Members,
    Moderate, React, Read, SendMessage, SetRole, Typing,
};

use serde_json::{Map, Value};

use crate::{ErrorCode, ProtoError, Ref, RoomName, UserId};

/// Longest `reason` of a `ban`, in characters.
pub const MAX_REASON_CHARS: usize = 256;
/// Most users one `message` may mention.
pub const MAX_MENTIONS: usize = 50;
/// Longest `emoji`, in characters (a sequence joined by U+200D counts as one).
pub const MAX_EMOJI_CHARS: usize = 32;
/// Longest `emoji` in bytes of UTF-8.
const MAX_EMOJI_BYTES: usize = 128;

/// Limits that shape what a command may carry (from the node's configuration).
#[derive(Debug, Clone, Copy)]
pub struct CommandLimits {
    pub max_message_chars: usize,
}

/// A client command, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Create(Create),
    Join(Join),
    Leave(Leave),
    Message(SendMessage),
    History(History),
    Rooms,
    Members(Members),
    Ping,
    /// `invite`, `uninvite`, `kick`, `unban`: an act on a user in a room.
    Moderate(Moderate),
    Ban(Ban),
    /// `bans`: the room's bans (owner and admins).
    Bans(Members),
    SetRole(SetRole),
    Dm(Dm),
    /// `block` (true) or `unblock` (false).
    Block(Block),
    Edit(Edit),
    Delete(Delete),
    /// `react` (on) or `unreact`.
    React(React),
    Typing(Typing),
    Read(Read),
}

/// How the fields of one command type become a [`Command`].
type ParseFn = fn(&Fields<'_>, CommandLimits) -> Result<Command, ProtoError>;

/// Every command `type` and its parser: [`Command::parse`] accepts exactly
/// these names, and [`Command::types`] lists them (asyncapi.json is checked
/// against that list).
const PARSERS: &[(&str, ParseFn)] = &[
    ("create", |f, _| Create::parse(f).map(Command::Create)),
    ("join", |f, _| Join::parse(f).map(Command::Join)),
    ("leave", |f, _| Leave::parse(f).map(Command::Leave)),
    ("message", |f, l| {
        SendMessage::parse(f, l).map(Command::Message)
    }),
    ("history", |f, _| History::parse(f).map(Command::History)),
    ("rooms", |_, _| Ok(Command::Rooms)),
    ("members", |f, _| Members::parse(f).map(Command::Members)),
    ("ping", |_, _| Ok(Command::Ping)),
    ("invite", |f, _| {
        Moderate::parse(Act::Invite, f).map(Command::Moderate)
    }),
    ("uninvite", |f, _| {
        Moderate::parse(Act::Uninvite, f).map(Command::Moderate)
    }),
    ("kick", |f, _| {
        Moderate::parse(Act::Kick, f).map(Command::Moderate)
    }),
    ("ban", |f, _| Ban::parse(f).map(Command::Ban)),
    ("unban", |f, _| {
        Moderate::parse(Act::Unban, f).map(Command::Moderate)
    }),
    ("bans", |f, _| Members::parse(f).map(Command::Bans)),
    ("set_role", |f, _| SetRole::parse(f).map(Command::SetRole)),
    ("dm", |f, _| Dm::parse(f).map(Command::Dm)),
    ("block", |f, _| Block::parse(true, f).map(Command::Block)),
    ("unblock", |f, _| Block::parse(false, f).map(Command::Block)),
    ("edit", |f, l| Edit::parse(f, l).map(Command::Edit)),
    ("delete", |f, _| Delete::parse(f).map(Command::Delete)),
    ("react", |f, _| React::parse(true, f).map(Command::React)),
    ("unreact", |f, _| React::parse(false, f).map(Command::React)),
    ("typing", |f, _| Typing::parse(f).map(Command::Typing)),
    ("read", |f, _| Read::parse(f).map(Command::Read)),
];

impl Command {
    /// Every command `type` the protocol has: exactly the names
    /// [`Command::parse`] accepts.
    pub fn types() -> impl Iterator<Item = &'static str> {
        PARSERS.iter().map(|(name, _)| *name)
    }

    /// The command's `type`, as echoed in its `ack`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Create(_) => "create",
            Command::Join(_) => "join",
            Command::Leave(_) => "leave",
            Command::Message(_) => "message",
            Command::History(_) => "history",
            Command::Rooms => "rooms",
            Command::Members(_) => "members",
            Command::Ping => "ping",
            Command::Moderate(m) => match m.act {
                Act::Invite => "invite",
                Act::Uninvite => "uninvite",
                Act::Kick => "kick",
                Act::Unban => "unban",
            },
            Command::Ban(_) => "ban",
            Command::Bans(_) => "bans",
            Command::SetRole(_) => "set_role",
            Command::Dm(_) => "dm",
            Command::Block(b) if b.block => "block",
            Command::Block(_) => "unblock",
            Command::Edit(_) => "edit",
            Command::Delete(_) => "delete",
            Command::React(r) if r.on => "react",
            Command::React(_) => "unreact",
            Command::Typing(_) => "typing",
            Command::Read(_) => "read",
        }
    }

    /// The room the command names, if any.
    pub fn room(&self) -> Option<&RoomName> {
        match self {
            Command::Create(c) => Some(&c.room),
            Command::Join(j) => Some(&j.room),
            Command::Leave(l) => Some(&l.room),
            Command::Message(m) => Some(&m.room),
            Command::History(h) => Some(&h.room),
            Command::Members(m) | Command::Bans(m) => Some(&m.room),
            Command::Moderate(m) => Some(&m.room),
            Command::Ban(b) => Some(&b.room),
            Command::SetRole(s) => Some(&s.room),
            Command::Edit(e) => Some(&e.room),
            Command::Delete(d) => Some(&d.room),
            Command::React(r) => Some(&r.room),
            Command::Typing(t) => Some(&t.room),
            Command::Read(r) => Some(&r.room),
            Command::Rooms | Command::Ping | Command::Dm(_) | Command::Block(_) => None,
        }
    }

    /// Whether the command speaks for a user (and so needs an identity).
    pub fn needs_user(&self) -> bool {
        !matches!(self, Command::Rooms | Command::Members(_) | Command::Ping)
    }

    /// The command named by `type`, from the rest of the object's fields.
    pub fn parse(fields: &Fields<'_>, limits: CommandLimits) -> Result<Command, ProtoError> {
        let kind = match fields.get("type") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::UnknownType,
                    "every command needs a type: create, join, leave, message, history, rooms, members, ping, invite, uninvite, kick, ban, unban, bans, set_role, dm, block, unblock, edit, delete, react, unreact, typing or read",
                ))
            }
        };
        match PARSERS.iter().find(|(name, _)| *name == kind) {
            Some((_, parse)) => parse(fields, limits),
            None => Err(ProtoError::new(
                ErrorCode::UnknownType,
                format!("unknown command type {:?}", truncate(kind, 64)),
            )),
        }
    }
}

/// One text frame, parsed as far as it goes. The `ref` and the `user_id` are
/// read before the rest so that an error can echo the ref and a failing
/// command can still set the connection's identity (docs/protocol.md, Identity).
#[derive(Debug)]
pub struct Parsed {
    pub reference: Option<Ref>,
    pub user_id: Option<UserId>,
    pub command: Result<Command, ProtoError>,
}

/// Parses one text frame into a command.
pub fn parse_command(text: &str, limits: CommandLimits) -> Parsed {
    let obj: Map<String, Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Parsed {
                reference: None,
                user_id: None,
                command: Err(ProtoError::new(
                    ErrorCode::InvalidJson,
                    "each frame must be one JSON object",
                )),
            }
        }
    };
    let fields = Fields::new(&obj);
    let user_id = fields.user_id();
    // An invalid ref is answered without a ref, but a valid user_id beside it
    // still sets the connection's identity.
    let reference = match fields.get("ref").map(Ref::from_json).transpose() {
        Ok(r) => r,
        Err(e) => {
            return Parsed {
                reference: None,
                user_id: user_id.ok().flatten(),
                command: Err(e),
            }
        }
    };
    match user_id {
        Ok(user_id) => Parsed {
            reference,
            user_id,
            command: Command::parse(&fields, limits),
        },
        Err(e) => Parsed {
            reference,
            user_id: None,
            command: Err(e),
        },
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests;
