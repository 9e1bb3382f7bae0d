//! Commands as types. Each command parses and validates itself from the
//! fields of one JSON object ([`Fields`]), so the WebSocket path (a frame)
//! and the REST path (a path, a query string, a body) apply one rule set.

use serde_json::{Map, Value};

use crate::{
    ErrorCode, ProtoError, Ref, Role, RoomName, Seq, UserId, DEFAULT_HISTORY_LIMIT,
    MAX_HISTORY_LIMIT, MAX_ID_CHARS,
};

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

const LIMIT_RULE: &str = "limit must be an integer from 1 to 1000";

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

/// Refuses a text field that holds U+0000. PostgreSQL's `text` cannot store
/// it: one such string used to fail its whole write batch, so every text field
/// is checked here, where every command (and the REST API) reads it.
fn without_nul<'s>(name: &str, s: &'s str) -> Result<&'s str, ProtoError> {
    if s.contains('\0') {
        Err(ProtoError::invalid_field(format!(
            "{name} must not contain the NUL character (U+0000)"
        )))
    } else {
        Ok(s)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Typed access to a command's fields, failing with the protocol's errors
/// (each naming its field).
pub struct Fields<'a>(&'a Map<String, Value>);

impl<'a> Fields<'a> {
    pub fn new(obj: &'a Map<String, Value>) -> Fields<'a> {
        Fields(obj)
    }

    /// Builds the fields of a REST request: query parameters (an empty one
    /// counts as absent; one that reads as an integer is an integer, anything
    /// else stays a string and fails where an integer is due) plus `extra`
    /// (the path's parts, which win over the query).
    pub fn object_from_query<'q>(
        query: impl IntoIterator<Item = (&'q str, &'q str)>,
        extra: impl IntoIterator<Item = (&'static str, Value)>,
    ) -> Map<String, Value> {
        let mut obj = Map::new();
        for (k, v) in query {
            if v.is_empty() {
                continue;
            }
            let value = v
                .parse::<i64>()
                .map_or_else(|_| Value::from(v), Value::from);
            obj.insert(k.to_owned(), value);
        }
        for (k, v) in extra {
            obj.insert(k.to_owned(), v);
        }
        obj
    }

    pub fn get(&self, name: &str) -> Option<&'a Value> {
        self.0.get(name)
    }

    /// `user_id`, when present and not null.
    pub fn user_id(&self) -> Result<Option<UserId>, ProtoError> {
        match self.0.get("user_id") {
            None | Some(Value::Null) => Ok(None),
            Some(v) => UserId::from_json(v).map(Some),
        }
    }

    /// A string field that must be present. Like every text field, it may
    /// not hold U+0000 (PostgreSQL's `text` cannot store it).
    pub fn required_str(&self, name: &str) -> Result<&'a str, ProtoError> {
        match self.0.get(name) {
            Some(Value::String(s)) => without_nul(name, s),
            Some(_) => Err(ProtoError::invalid_field(format!(
                "{name} must be a string"
            ))),
            None => Err(ProtoError::invalid_field(format!("{name} is required"))),
        }
    }

    /// A string field that may be absent or null; never U+0000.
    pub fn optional_str(&self, name: &str) -> Result<Option<&'a str>, ProtoError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => without_nul(name, s).map(Some),
            Some(_) => Err(ProtoError::invalid_field(format!(
                "{name} must be a string"
            ))),
        }
    }

    /// `room`: a string that follows the naming rule (which already keeps
    /// out U+0000 and every other control character: `invalid_room`).
    pub fn room(&self) -> Result<RoomName, ProtoError> {
        match self.0.get("room") {
            Some(Value::String(s)) => RoomName::parse(s),
            Some(_) => Err(ProtoError::invalid_field("room must be a string")),
            None => Err(ProtoError::invalid_field("room is required")),
        }
    }

    /// `user`: the user a command acts on (`user_id` stays the caller).
    pub fn target(&self) -> Result<UserId, ProtoError> {
        match self.0.get("user") {
            None | Some(Value::Null) => Err(ProtoError::invalid_field("user is required")),
            Some(v) => UserId::from_json(v).map_err(|_| {
                ProtoError::invalid_field("user must be 1-64 characters without control characters")
            }),
        }
    }

    /// A message text: 1 to `max_message_chars` characters.
    pub fn text(&self, name: &str, limits: CommandLimits) -> Result<String, ProtoError> {
        let text = self.required_str(name)?;
        let chars = text.chars().count();
        if chars == 0 {
            return Err(ProtoError::invalid_field(format!(
                "{name} must not be empty"
            )));
        }
        if chars > limits.max_message_chars {
            return Err(ProtoError::new(
                ErrorCode::MessageTooLong,
                format!(
                    "{name} is {chars} characters; the maximum is {}",
                    limits.max_message_chars
                ),
            ));
        }
        Ok(text.to_owned())
    }

    /// An optional `client_msg_id` (1–64 characters).
    pub fn client_msg_id(&self) -> Result<Option<String>, ProtoError> {
        match self.optional_str("client_msg_id")? {
            Some(id) if id.is_empty() || id.chars().count() > MAX_ID_CHARS => Err(
                ProtoError::invalid_field("client_msg_id must be 1-64 characters"),
            ),
            other => Ok(other.map(str::to_owned)),
        }
    }

    /// `seq`: the message a command acts on (>= 1).
    pub fn target_seq(&self) -> Result<Seq, ProtoError> {
        match self.seq("seq")? {
            Some(s) if s >= 1 => Ok(s),
            _ => Err(ProtoError::invalid_field(
                "seq must be the seq of a message (>= 1)",
            )),
        }
    }

    /// `mentions`: an optional list of 1–50 user ids, repeats removed.
    pub fn mentions(&self) -> Result<Vec<UserId>, ProtoError> {
        let rule = || {
            ProtoError::invalid_field(format!(
                "mentions must be a list of 1-{MAX_MENTIONS} user ids"
            ))
        };
        let list = match self.0.get("mentions") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(list)) if !list.is_empty() && list.len() <= MAX_MENTIONS => list,
            Some(_) => return Err(rule()),
        };
        let mut out: Vec<UserId> = Vec::with_capacity(list.len());
        for v in list {
            let user = UserId::from_json(v).map_err(|_| rule())?;
            if !out.contains(&user) {
                out.push(user);
            }
        }
        Ok(out)
    }

    /// An optional boolean.
    pub fn bool(&self, name: &str) -> Result<Option<bool>, ProtoError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(ProtoError::invalid_field(format!(
                "{name} must be true or false"
            ))),
        }
    }

    /// An optional integer >= 0.
    pub fn seq(&self, name: &str) -> Result<Option<Seq>, ProtoError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if v >= 0 => Ok(Some(v)),
                _ => Err(Self::not_a_seq(name)),
            },
            Some(_) => Err(Self::not_a_seq(name)),
        }
    }

    fn not_a_seq(name: &str) -> ProtoError {
        if name == "limit" {
            ProtoError::invalid_field(LIMIT_RULE)
        } else {
            ProtoError::invalid_field(format!("{name} must be an integer >= 0"))
        }
    }
}

#[cfg(test)]
mod tests;
