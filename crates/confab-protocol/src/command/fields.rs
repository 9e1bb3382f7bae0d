//! Typed access to a command's fields, failing with the protocol's errors.

use serde_json::{Map, Value};

use super::{kinds::LIMIT_RULE, CommandLimits, MAX_MENTIONS};
use crate::{ErrorCode, ProtoError, RoomName, Seq, UserId, MAX_ID_CHARS};

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
