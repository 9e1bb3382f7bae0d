//! Commands as types. Each command parses and validates itself from the
//! fields of one JSON object ([`Fields`]), so the WebSocket path (a frame)
//! and the REST path (a path, a query string, a body) apply one rule set.

use serde_json::{Map, Value};

use crate::{
    ErrorCode, ProtoError, Ref, RoomName, Seq, UserId, DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT,
    MAX_ID_CHARS,
};

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
}

/// `create`: make a room and join it.
#[derive(Debug, Clone, PartialEq)]
pub struct Create {
    pub room: RoomName,
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
    pub fn parse(fields: &Fields<'_>) -> Result<Create, ProtoError> {
        Ok(Create {
            room: fields.room()?,
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
    /// `room`, `message` (1 to `max_message_chars` characters) and an optional
    /// `client_msg_id` (1–64 characters).
    pub fn parse(fields: &Fields<'_>, limits: CommandLimits) -> Result<SendMessage, ProtoError> {
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
        Ok(SendMessage {
            room,
            text: text.to_owned(),
            client_msg_id,
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

impl Command {
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
        }
    }

    /// Whether the command speaks for a user (and so needs an identity).
    pub fn needs_user(&self) -> bool {
        matches!(
            self,
            Command::Create(_)
                | Command::Join(_)
                | Command::Leave(_)
                | Command::Message(_)
                | Command::History(_)
        )
    }

    /// The command named by `type`, from the rest of the object's fields.
    pub fn parse(fields: &Fields<'_>, limits: CommandLimits) -> Result<Command, ProtoError> {
        let kind = match fields.get("type") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(ProtoError::new(
                    ErrorCode::UnknownType,
                    "every command needs a type: create, join, leave, message, history, rooms, members or ping",
                ))
            }
        };
        Ok(match kind {
            "create" => Command::Create(Create::parse(fields)?),
            "join" => Command::Join(Join::parse(fields)?),
            "leave" => Command::Leave(Leave::parse(fields)?),
            "message" => Command::Message(SendMessage::parse(fields, limits)?),
            "history" => Command::History(History::parse(fields)?),
            "rooms" => Command::Rooms,
            "members" => Command::Members(Members::parse(fields)?),
            "ping" => Command::Ping,
            other => {
                return Err(ProtoError::new(
                    ErrorCode::UnknownType,
                    format!("unknown command type {:?}", truncate(other, 64)),
                ))
            }
        })
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

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).unwrap()
    }

    #[test]
    fn a_frame_that_is_not_an_object_is_invalid_json() {
        assert_eq!(code("not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidJson);
        assert_eq!(code("\"create\""), ErrorCode::InvalidJson);
    }

    #[test]
    fn hostile_json_is_invalid_json() {
        // serde_json refuses nesting deeper than 128, numbers past f64 and
        // lone surrogates: all are `invalid_json`, none a panic.
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(code(&deep), ErrorCode::InvalidJson);
        let deep = format!("{}1{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
        assert_eq!(code(&deep), ErrorCode::InvalidJson);
        for frame in [
            r#"{"type":"ping","ref":1e400}"#,
            r#"{"type":"ping","ref":"\ud800"}"#,
            r#"{"type":"ping","ref":"a\udfffb"}"#,
            r#"{"type":"ping","ref":"\ud800\u0041"}"#,
            r#"{"type":"ping"} {}"#,
        ] {
            assert_eq!(code(frame), ErrorCode::InvalidJson, "{frame}");
        }
        // A number too large for an integer is a number, refused by its field.
        assert_eq!(
            code(r#"{"type":"join","room":"g","since":99999999999999999999999}"#),
            ErrorCode::InvalidField
        );
        // A surrogate pair is one character.
        let p = parse(r#"{"type":"ping","ref":"\ud83d\ude00"}"#);
        assert_eq!(p.reference, Some(Ref::Str("😀".into())));
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
        assert_eq!(p.user_id, Some(UserId::parse("5").unwrap()));
        assert_eq!(p.command.unwrap_err().code, ErrorCode::InvalidRoom);
        let p = parse(r#"{"type":"ping","ref":{},"user_id":"9"}"#);
        assert_eq!(p.reference, None);
        assert_eq!(p.user_id, Some(UserId::parse("9").unwrap()));
        assert_eq!(p.command.unwrap_err().code, ErrorCode::InvalidField);
    }

    #[test]
    fn commands_parse_with_their_fields() {
        let p = parse(r#"{"type":"join","room":"g","since":3,"user_id":"1"}"#);
        assert_eq!(
            p.command.unwrap(),
            Command::Join(Join {
                room: room("g"),
                since: Some(3)
            })
        );
        let p = parse(r#"{"type":"message","room":"g","message":"hi","client_msg_id":"c1"}"#);
        assert_eq!(
            p.command.unwrap(),
            Command::Message(SendMessage {
                room: room("g"),
                text: "hi".into(),
                client_msg_id: Some("c1".into())
            })
        );
        let p = parse(r#"{"type":"history","room":"g","before":9,"limit":5}"#);
        assert_eq!(
            p.command.unwrap(),
            Command::History(History {
                room: room("g"),
                range: HistoryRange {
                    since: None,
                    before: Some(9),
                    limit: 5
                }
            })
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
    fn nul_is_refused_in_every_text_field_and_named() {
        for (frame, field) in [
            (
                r#"{"type":"message","room":"g","message":"a\u0000b"}"#,
                "message",
            ),
            (
                r#"{"type":"message","room":"g","message":"\u0000"}"#,
                "message",
            ),
            (
                r#"{"type":"message","room":"g","message":"x","client_msg_id":"c\u0000"}"#,
                "client_msg_id",
            ),
        ] {
            let e = parse(frame).command.unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidField, "{frame}");
            assert_eq!(
                e.message,
                format!("{field} must not contain the NUL character (U+0000)"),
                "{frame}"
            );
        }
        // A room name with NUL breaks the naming rule, like any control character.
        assert_eq!(
            code(r#"{"type":"join","room":"g\u0000"}"#),
            ErrorCode::InvalidRoom
        );
        // So does a user_id, and a ref is refused too.
        assert_eq!(
            code(r#"{"type":"ping","user_id":"a\u0000"}"#),
            ErrorCode::InvalidField
        );
        let p = parse(r#"{"type":"ping","ref":"r\u0000"}"#);
        assert_eq!(p.reference, None);
        assert_eq!(
            p.command.unwrap_err().message,
            "ref must not contain the NUL character (U+0000)"
        );
        // Other control characters are text like any other in a message.
        assert!(
            parse(r#"{"type":"message","room":"g","message":"a\tb\u0007"}"#)
                .command
                .is_ok()
        );
        // The REST path reads the same fields.
        let obj = Fields::object_from_query([("message", "a\0b")], [("room", Value::from("g"))]);
        let e = SendMessage::parse(&Fields::new(&obj), LIMITS).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidField);
        assert!(e.message.starts_with("message "), "{}", e.message);
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
    fn a_rest_query_follows_the_same_rules_as_a_frame() {
        let obj = Fields::object_from_query(
            [("since", "3"), ("before", ""), ("limit", "2")],
            [("room", Value::from("g"))],
        );
        let h = History::parse(&Fields::new(&obj)).unwrap();
        assert_eq!(
            h.range,
            HistoryRange {
                since: Some(3),
                before: None,
                limit: 2
            }
        );
        for (k, v, word) in [
            ("since", "x", "since"),
            ("since", "-1", "since"),
            ("limit", "0", "limit"),
            ("limit", "abc", "limit"),
        ] {
            let obj = Fields::object_from_query([(k, v)], [("room", Value::from("g"))]);
            let e = History::parse(&Fields::new(&obj)).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidField);
            assert!(e.message.contains(word), "{k}={v}: {}", e.message);
        }
    }
}
