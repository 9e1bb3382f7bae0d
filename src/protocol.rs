//! The wire protocol, version 1 (docs/protocol.md): every frame in and out as
//! typed values, the validated newtypes, and the command parser.
//!
//! This module owns the shape of JSON on the wire. It must not know about
//! sockets, actors or storage: it turns text into a [`Command`] (or a
//! [`ProtoError`] with the protocol's code) and typed replies into text.

use std::fmt;

use bytestring::ByteString;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Map, Value};

/// The protocol version announced in `hello`.
pub const PROTOCOL_VERSION: u32 = 1;
/// Longest `ref`, `client_msg_id`, room name and user id, in characters.
pub const MAX_ID_CHARS: usize = 64;
/// Largest `limit` a `history` command may ask for.
pub const MAX_HISTORY_LIMIT: i64 = 1000;
/// `limit` of a `history` command that gives none.
pub const DEFAULT_HISTORY_LIMIT: i64 = 100;

/// Per-room sequence number: 1, 2, 3, … with no gap.
pub type Seq = i64;

/// A room name that passed the protocol's rule: 1–64 characters from ASCII
/// letters, digits and `-_.:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RoomName(String);

impl RoomName {
    pub fn parse(s: &str) -> Result<RoomName, ProtoError> {
        let ok = !s.is_empty()
            && s.len() <= MAX_ID_CHARS
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if ok {
            Ok(RoomName(s.to_owned()))
        } else {
            Err(ProtoError::new(
                ErrorCode::InvalidRoom,
                "room names are 1-64 characters from A-Z, a-z, 0-9 and -_.:",
            ))
        }
    }

    /// A name read back from our own store or bus, where it was validated on the way in.
    pub fn trusted(s: String) -> RoomName {
        RoomName(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A user id: 1–64 characters without control characters. A JSON integer is
/// read as its decimal string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserId(String);

impl UserId {
    pub fn parse(s: &str) -> Result<UserId, ProtoError> {
        let n = s.chars().count();
        if (1..=MAX_ID_CHARS).contains(&n) && !s.chars().any(char::is_control) {
            Ok(UserId(s.to_owned()))
        } else {
            Err(ProtoError::invalid_field(
                "user_id must be 1-64 characters without control characters",
            ))
        }
    }

    /// Reads a `user_id` field: a string, or an integer read as its decimal string.
    pub fn from_json(v: &Value) -> Result<UserId, ProtoError> {
        match v {
            Value::String(s) => UserId::parse(s),
            Value::Number(n) if n.is_i64() || n.is_u64() => UserId::parse(&n.to_string()),
            _ => Err(ProtoError::invalid_field(
                "user_id must be a string or an integer",
            )),
        }
    }

    /// An id read back from our own store or bus.
    pub fn trusted(s: String) -> UserId {
        UserId(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The `ref` a client puts on a command, echoed on its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    Int(i64),
    Str(String),
}

impl Ref {
    fn from_json(v: &Value) -> Result<Ref, ProtoError> {
        match v {
            Value::String(s) if s.chars().count() <= MAX_ID_CHARS => Ok(Ref::Str(s.clone())),
            Value::Number(n) if n.is_i64() => Ok(Ref::Int(n.as_i64().unwrap_or_default())),
            _ => Err(ProtoError::invalid_field(
                "ref must be a string of at most 64 characters or an integer",
            )),
        }
    }
}

/// The protocol's error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJson,
    UnknownType,
    InvalidField,
    InvalidRoom,
    MessageTooLong,
    RoomExists,
    NoSuchRoom,
    NotAMember,
    UserMismatch,
    RateLimited,
    Unavailable,
    UnsupportedFrame,
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::MessageTooLong => "message_too_long",
            ErrorCode::RoomExists => "room_exists",
            ErrorCode::NoSuchRoom => "no_such_room",
            ErrorCode::NotAMember => "not_a_member",
            ErrorCode::UserMismatch => "user_mismatch",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UnsupportedFrame => "unsupported_frame",
            ErrorCode::Internal => "internal",
        }
    }

    /// The HTTP status the REST API answers this error with.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::NoSuchRoom => 404,
            ErrorCode::NotAMember | ErrorCode::UserMismatch => 403,
            ErrorCode::RoomExists => 409,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
            _ => 400,
        }
    }
}

/// A command's failure in the protocol's terms: a code and a sentence for a person.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtoError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtoError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtoError {
        ProtoError {
            code,
            message: message.into(),
        }
    }

    pub fn invalid_field(message: impl Into<String>) -> ProtoError {
        ProtoError::new(ErrorCode::InvalidField, message)
    }

    pub fn unavailable() -> ProtoError {
        ProtoError::new(
            ErrorCode::Unavailable,
            "the event store cannot take this command now; nothing was stored, retry later",
        )
    }

    pub fn internal() -> ProtoError {
        ProtoError::new(ErrorCode::Internal, "internal error; it has been logged")
    }

    pub fn no_such_room(room: &RoomName) -> ProtoError {
        ProtoError::new(ErrorCode::NoSuchRoom, format!("room {room} does not exist"))
    }

    pub fn not_a_member(room: &RoomName) -> ProtoError {
        ProtoError::new(
            ErrorCode::NotAMember,
            format!("you are not a member of room {room}"),
        )
    }

    pub fn room_exists(room: &RoomName) -> ProtoError {
        ProtoError::new(ErrorCode::RoomExists, format!("room {room} already exists"))
    }
}

/// Limits that shape what a command may carry (from `Config`).
#[derive(Debug, Clone, Copy)]
pub struct CommandLimits {
    pub max_message_chars: usize,
}

/// A client command, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Create {
        room: RoomName,
    },
    Join {
        room: RoomName,
        since: Option<Seq>,
    },
    Leave {
        room: RoomName,
    },
    Message {
        room: RoomName,
        text: String,
        client_msg_id: Option<String>,
    },
    History {
        room: RoomName,
        range: HistoryRange,
    },
    Rooms,
    Members {
        room: RoomName,
    },
    Ping,
}

impl Command {
    /// The command's `type`, as echoed in its `ack`.
    pub fn name(&self) -> &'static str {
        match self {
            Command::Create { .. } => "create",
            Command::Join { .. } => "join",
            Command::Leave { .. } => "leave",
            Command::Message { .. } => "message",
            Command::History { .. } => "history",
            Command::Rooms => "rooms",
            Command::Members { .. } => "members",
            Command::Ping => "ping",
        }
    }

    /// Whether the command speaks for a user (and so needs an identity).
    pub fn needs_user(&self) -> bool {
        matches!(
            self,
            Command::Create { .. }
                | Command::Join { .. }
                | Command::Leave { .. }
                | Command::Message { .. }
                | Command::History { .. }
        )
    }
}

/// Which page of a room's events a `history` command (or the REST API) asks for.
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
}

/// One text frame, parsed as far as it goes. The `ref` and the `user_id` are
/// read before the rest so that an error can echo the ref and a failing command
/// can still set the connection's identity.
#[derive(Debug)]
pub struct Parsed {
    pub reference: Option<Ref>,
    pub user_id: Option<UserId>,
    pub command: Result<Command, ProtoError>,
}

impl Parsed {
    fn failed(reference: Option<Ref>, err: ProtoError) -> Parsed {
        Parsed {
            reference,
            user_id: None,
            command: Err(err),
        }
    }
}

/// Parses one text frame into a command.
pub fn parse_command(text: &str, limits: CommandLimits) -> Parsed {
    let obj: Map<String, Value> = match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(m)) => m,
        _ => {
            return Parsed::failed(
                None,
                ProtoError::new(ErrorCode::InvalidJson, "each frame must be one JSON object"),
            )
        }
    };
    let user_id = match obj.get("user_id") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => UserId::from_json(v).map(Some),
    };
    // An invalid ref is answered without a ref, but a valid user_id beside it
    // still sets the connection's identity (PROTOCOL.md, Identity).
    let reference = match obj.get("ref").map(Ref::from_json).transpose() {
        Ok(r) => r,
        Err(e) => {
            return Parsed {
                reference: None,
                user_id: user_id.ok().flatten(),
                command: Err(e),
            }
        }
    };
    let user_id = match user_id {
        Ok(u) => u,
        Err(e) => return Parsed::failed(reference, e),
    };
    let command = parse_fields(&obj, limits);
    Parsed {
        reference,
        user_id,
        command,
    }
}

fn parse_fields(obj: &Map<String, Value>, limits: CommandLimits) -> Result<Command, ProtoError> {
    let kind = match obj.get("type") {
        Some(Value::String(s)) => s.as_str(),
        _ => {
            return Err(ProtoError::new(
                ErrorCode::UnknownType,
                "every command needs a type: create, join, leave, message, history, rooms, members or ping",
            ))
        }
    };
    let fields = Fields(obj);
    Ok(match kind {
        "create" => Command::Create {
            room: fields.room()?,
        },
        "join" => Command::Join {
            room: fields.room()?,
            since: fields.seq("since")?,
        },
        "leave" => Command::Leave {
            room: fields.room()?,
        },
        "message" => {
            let room = fields.room()?;
            let text = fields.required_str("message")?;
            let chars = text.chars().count();
            if chars == 0 {
                return Err(ProtoError::invalid_field("message must not be empty"));
            }
            if chars > limits.max_message_chars {
                return Err(ProtoError::new(
                    ErrorCode::MessageTooLong,
                    format!(
                        "message is {chars} characters; the maximum is {}",
                        limits.max_message_chars
                    ),
                ));
            }
            let client_msg_id = match fields.optional_str("client_msg_id")? {
                Some(id) if id.is_empty() || id.chars().count() > MAX_ID_CHARS => {
                    return Err(ProtoError::invalid_field(
                        "client_msg_id must be 1-64 characters",
                    ))
                }
                other => other.map(str::to_owned),
            };
            Command::Message {
                room,
                text: text.to_owned(),
                client_msg_id,
            }
        }
        "history" => Command::History {
            room: fields.room()?,
            range: HistoryRange {
                since: fields.seq("since")?,
                before: fields.seq("before")?,
                limit: fields.limit()?,
            },
        },
        "rooms" => Command::Rooms,
        "members" => Command::Members {
            room: fields.room()?,
        },
        "ping" => Command::Ping,
        other => {
            return Err(ProtoError::new(
                ErrorCode::UnknownType,
                format!("unknown command type {:?}", truncate(other, 64)),
            ))
        }
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// Typed access to a command's fields with the protocol's errors.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn required_str(&self, name: &str) -> Result<&str, ProtoError> {
        match self.0.get(name) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(ProtoError::invalid_field(format!(
                "{name} must be a string"
            ))),
            None => Err(ProtoError::invalid_field(format!("{name} is required"))),
        }
    }

    fn optional_str(&self, name: &str) -> Result<Option<&str>, ProtoError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ProtoError::invalid_field(format!(
                "{name} must be a string"
            ))),
        }
    }

    fn room(&self) -> Result<RoomName, ProtoError> {
        RoomName::parse(self.required_str("room")?)
    }

    fn seq(&self, name: &str) -> Result<Option<Seq>, ProtoError> {
        match self.0.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if v >= 0 => Ok(Some(v)),
                _ => Err(ProtoError::invalid_field(format!(
                    "{name} must be an integer >= 0"
                ))),
            },
            Some(_) => Err(ProtoError::invalid_field(format!(
                "{name} must be an integer >= 0"
            ))),
        }
    }

    fn limit(&self) -> Result<i64, ProtoError> {
        match self.0.get("limit") {
            None | Some(Value::Null) => Ok(DEFAULT_HISTORY_LIMIT),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(v) if (1..=MAX_HISTORY_LIMIT).contains(&v) => Ok(v),
                _ => Err(ProtoError::invalid_field(
                    "limit must be an integer from 1 to 1000",
                )),
            },
            Some(_) => Err(ProtoError::invalid_field(
                "limit must be an integer from 1 to 1000",
            )),
        }
    }
}

/// The kind of a stored event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Create,
    Join,
    Leave,
    Message,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Create => "create",
            EventKind::Join => "join",
            EventKind::Leave => "leave",
            EventKind::Message => "message",
        }
    }

    pub fn from_db(s: &str) -> Option<EventKind> {
        Some(match s {
            "create" => EventKind::Create,
            "join" => EventKind::Join,
            "leave" => EventKind::Leave,
            "message" => EventKind::Message,
            _ => return None,
        })
    }
}

/// A committed event: the same shape on the socket, on Redis, in `history`
/// and in the REST API.
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
    pub node: String,
    #[serde(serialize_with = "serialize_micros")]
    pub at: DateTime<Utc>,
}

impl Event {
    /// The event as one text frame, serialised once and shared by every recipient.
    pub fn to_frame(&self) -> ByteString {
        to_frame(self)
    }
}

fn serialize_micros<S: Serializer>(at: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Micros, true))
}

/// The current time, cut to the microseconds that PostgreSQL keeps.
pub fn now_micros() -> DateTime<Utc> {
    let now = Utc::now();
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Limits announced in `hello`.
#[derive(Debug, Clone, Serialize)]
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
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
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
    pub fn to_frame(&self) -> ByteString {
        to_frame(self)
    }
}

/// An error frame for `err`, echoing `reference`.
pub fn error_frame(
    reference: Option<&Ref>,
    err: &ProtoError,
    room: Option<&RoomName>,
) -> ByteString {
    Reply::Error {
        reference,
        code: err.code,
        message: &err.message,
        room,
    }
    .to_frame()
}

fn to_frame<T: Serialize>(value: &T) -> ByteString {
    match serde_json::to_string(value) {
        Ok(s) => s.into(),
        // Our own types serialise to JSON without fail (string keys only); this
        // arm exists so that a bug shows as a protocol error, not a crash.
        Err(e) => {
            log::error!("cannot serialise a frame: {e}");
            ByteString::from_static(
                r#"{"type":"error","code":"internal","message":"internal error; it has been logged"}"#,
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CommandLimits = CommandLimits {
        max_message_chars: 10,
    };

    fn parse(s: &str) -> Parsed {
        parse_command(s, LIMITS)
    }

    fn code(s: &str) -> ErrorCode {
        parse(s).command.expect_err("should fail").code
    }

    #[test]
    fn room_names_follow_the_rule() {
        for ok in ["general", "a", "A-z_0.9:x", &"r".repeat(64)] {
            assert!(RoomName::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "has space", "émoji", "slash/", &"r".repeat(65), "tab\t"] {
            assert_eq!(
                RoomName::parse(bad).unwrap_err().code,
                ErrorCode::InvalidRoom,
                "{bad}"
            );
        }
    }

    #[test]
    fn user_ids_are_strings_or_integers_without_control_characters() {
        assert_eq!(
            UserId::from_json(&serde_json::json!(42)).unwrap().as_str(),
            "42"
        );
        assert_eq!(
            UserId::from_json(&serde_json::json!("ünï"))
                .unwrap()
                .as_str(),
            "ünï"
        );
        assert!(UserId::parse(&"ü".repeat(64)).is_ok());
        assert!(UserId::parse(&"u".repeat(65)).is_err());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse("a\nb").is_err());
        assert!(UserId::from_json(&serde_json::json!(1.5)).is_err());
        assert!(UserId::from_json(&serde_json::json!(true)).is_err());
    }

    #[test]
    fn a_frame_that_is_not_an_object_is_invalid_json() {
        assert_eq!(code("not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidJson);
        assert_eq!(code("\"create\""), ErrorCode::InvalidJson);
    }

    #[test]
    fn type_must_be_a_known_command() {
        assert_eq!(code("{}"), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":7}"#), ErrorCode::UnknownType);
        assert_eq!(code(r#"{"type":"dance"}"#), ErrorCode::UnknownType);
    }

    #[test]
    fn ref_is_echoed_unless_it_is_invalid() {
        let p = parse(r#"{"type":"dance","ref":"r1"}"#);
        assert_eq!(p.reference, Some(Ref::Str("r1".into())));
        let p = parse(r#"{"type":"ping","ref":7}"#);
        assert_eq!(p.reference, Some(Ref::Int(7)));
        assert_eq!(p.command, Ok(Command::Ping));
        let long = format!(r#"{{"type":"ping","ref":"{}"}}"#, "x".repeat(65));
        let p = parse(&long);
        assert_eq!(p.reference, None);
        assert_eq!(p.command.unwrap_err().code, ErrorCode::InvalidField);
        let p = parse(r#"{"type":"ping","ref":{"a":1}}"#);
        assert_eq!(p.command.unwrap_err().code, ErrorCode::InvalidField);
    }

    #[test]
    fn user_id_is_read_even_when_the_command_fails() {
        let p = parse(r#"{"type":"message","user_id":5,"room":"bad room"}"#);
        assert_eq!(p.user_id, Some(UserId::trusted("5".into())));
        assert_eq!(p.command.unwrap_err().code, ErrorCode::InvalidRoom);
        let p = parse(r#"{"type":"ping","ref":{},"user_id":"9"}"#);
        assert_eq!(p.reference, None);
        assert_eq!(p.user_id, Some(UserId::trusted("9".into())));
        assert_eq!(p.command.unwrap_err().code, ErrorCode::InvalidField);
    }

    #[test]
    fn commands_parse_with_their_fields() {
        let p = parse(r#"{"type":"join","room":"g","since":3,"user_id":"1"}"#);
        assert_eq!(
            p.command.unwrap(),
            Command::Join {
                room: RoomName::trusted("g".into()),
                since: Some(3)
            }
        );
        let p = parse(r#"{"type":"message","room":"g","message":"hi","client_msg_id":"c1"}"#);
        assert_eq!(
            p.command.unwrap(),
            Command::Message {
                room: RoomName::trusted("g".into()),
                text: "hi".into(),
                client_msg_id: Some("c1".into())
            }
        );
        let p = parse(r#"{"type":"history","room":"g","before":9,"limit":5}"#);
        assert_eq!(
            p.command.unwrap(),
            Command::History {
                room: RoomName::trusted("g".into()),
                range: HistoryRange {
                    since: None,
                    before: Some(9),
                    limit: 5
                }
            }
        );
        assert_eq!(
            parse(r#"{"type":"rooms"}"#).command.unwrap(),
            Command::Rooms
        );
    }

    #[test]
    fn field_errors_name_the_field() {
        let e = parse(r#"{"type":"join"}"#).command.unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidField);
        assert!(e.message.contains("room"));
        let e = parse(r#"{"type":"join","room":"g","since":-1}"#)
            .command
            .unwrap_err();
        assert!(e.message.contains("since"));
        let e = parse(r#"{"type":"history","room":"g","limit":1001}"#)
            .command
            .unwrap_err();
        assert!(e.message.contains("limit"));
        let e = parse(r#"{"type":"message","room":"g"}"#)
            .command
            .unwrap_err();
        assert!(e.message.contains("message"));
        assert_eq!(
            code(r#"{"type":"message","room":"g","message":""}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"message","room":"g","message":5}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(code(r#"{"type":"join","room":5}"#), ErrorCode::InvalidField);
        assert_eq!(
            code(r#"{"type":"join","room":"g","since":"1"}"#),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code(r#"{"type":"message","room":"g","message":"x","client_msg_id":""}"#),
            ErrorCode::InvalidField
        );
    }

    #[test]
    fn message_length_counts_characters_against_the_limit() {
        assert!(
            parse(r#"{"type":"message","room":"g","message":"éééééééééé"}"#)
                .command
                .is_ok()
        );
        assert_eq!(
            code(r#"{"type":"message","room":"g","message":"01234567890"}"#),
            ErrorCode::MessageTooLong
        );
    }

    #[test]
    fn events_serialise_in_the_wire_shape() {
        let at = DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap();
        let ev = Event {
            kind: EventKind::Join,
            room: RoomName::trusted("g".into()),
            seq: 2,
            id: 9,
            user_id: UserId::trusted("1".into()),
            message: None,
            client_msg_id: None,
            node: "n".into(),
            at,
        };
        let v: Value = serde_json::from_str(&ev.to_frame()).unwrap();
        assert_eq!(v["type"], "join");
        assert!(v.get("message").is_none());
        assert!(v["at"].as_str().unwrap().ends_with(".123456Z"));
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }
}
