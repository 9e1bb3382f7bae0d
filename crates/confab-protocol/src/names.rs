//! The validated names of the protocol: a [`RoomName`] or [`UserId`] in a
//! signature means it passed its rule.

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ErrorCode, ProtoError, MAX_ID_CHARS};

/// What every validated name shares: `as_str`, `Display`, and serde through
/// `String` with the name's own `parse` (so a name read from JSON is checked too).
macro_rules! validated_name {
    ($name:ident) => {
        impl $name {
            /// A name read back from our own store, where it was validated on
            /// the way in. Never for what arrives from outside the process
            /// (the bus included).
            pub fn trusted(s: String) -> $name {
                $name(s)
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = ProtoError;
            fn try_from(s: String) -> Result<$name, ProtoError> {
                $name::parse(&s)
            }
        }

        impl From<$name> for String {
            fn from(n: $name) -> String {
                n.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

/// Per-room sequence number: 1, 2, 3, … with no gap.
pub type Seq = i64;

/// A room name that passed the protocol's rule: 1–64 characters from ASCII
/// letters, digits and `-_.:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
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
}

validated_name!(RoomName);

/// What every DM's name starts with; `create` refuses it.
pub const DM_PREFIX: &str = "dm:";

impl RoomName {
    /// The name of the DM of two users: `dm:` and the first 32 lowercase hex
    /// digits of SHA-256(a, U+000A, b), the ids in byte order (a user id has
    /// no control character, so the separator is unambiguous).
    pub fn dm(one: &UserId, other: &UserId) -> RoomName {
        use sha2::{Digest, Sha256};
        let (a, b) = if one.as_str() <= other.as_str() {
            (one, other)
        } else {
            (other, one)
        };
        let mut h = Sha256::new();
        h.update(a.as_str().as_bytes());
        h.update(b"\n");
        h.update(b.as_str().as_bytes());
        let digest = h.finalize();
        let mut name = String::with_capacity(DM_PREFIX.len() + 32);
        name.push_str(DM_PREFIX);
        for byte in &digest[..16] {
            name.push_str(&format!("{byte:02x}"));
        }
        RoomName(name)
    }

    /// Whether the name is a DM's (starts with `dm:`).
    pub fn is_dm(&self) -> bool {
        self.0.starts_with(DM_PREFIX)
    }
}

/// A user id: 1–64 characters without control characters. A JSON integer is
/// read as its decimal string.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
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
}

validated_name!(UserId);

/// The `ref` a client puts on a command, echoed on its reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Ref {
    Int(i64),
    Str(String),
}

impl Ref {
    pub fn from_json(v: &Value) -> Result<Ref, ProtoError> {
        match v {
            Value::String(s) if s.contains('\0') => Err(ProtoError::invalid_field(
                "ref must not contain the NUL character (U+0000)",
            )),
            Value::String(s) if s.chars().count() <= MAX_ID_CHARS => Ok(Ref::Str(s.clone())),
            Value::Number(n) => match n.as_i64() {
                Some(i) => Ok(Ref::Int(i)),
                None => Err(Ref::invalid()),
            },
            _ => Err(Ref::invalid()),
        }
    }

    fn invalid() -> ProtoError {
        ProtoError::invalid_field("ref must be a string of at most 64 characters or an integer")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_dm_name_is_the_same_from_both_sides_and_a_valid_room_name() {
        let a = UserId::parse("alice").unwrap();
        let b = UserId::parse(&"ü".repeat(64)).unwrap();
        let name = RoomName::dm(&a, &b);
        assert_eq!(name, RoomName::dm(&b, &a));
        assert!(name.is_dm());
        assert_eq!(name.as_str().len(), 35);
        assert_eq!(RoomName::parse(name.as_str()).unwrap(), name);
        assert_ne!(name, RoomName::dm(&a, &UserId::parse("bob").unwrap()));
        // sha256("alice\nbob"), first 16 bytes
        assert_eq!(
            RoomName::dm(&a, &UserId::parse("bob").unwrap()).as_str(),
            "dm:1cb15457d1ddab60e205c0fe3ca2f65d"
        );
    }

    #[test]
    fn deserialising_validates_names() {
        assert!(serde_json::from_str::<RoomName>(r#""ok""#).is_ok());
        assert!(serde_json::from_str::<RoomName>(r#""not ok""#).is_err());
        assert!(serde_json::from_str::<UserId>(r#""a\u0007b""#).is_err());
    }
}
