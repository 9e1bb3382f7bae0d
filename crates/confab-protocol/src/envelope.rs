//! The bus envelope: what one `PUBLISH` on the Redis channel carries.
//!
//! One JSON object a person can read in RedisInsight: a small header and the
//! event exactly as clients receive it,
//!
//! ```text
//! {"v":1,"node":"n1","room":"general","seq":42,"kind":"message","user":"alice","event":{...}}
//! ```
//!
//! A peer parses and validates the header (a name from the bus is checked
//! like one from a client) and forwards the event's bytes without parsing or
//! re-serialising them. `to` names the target user of a user-addressed frame
//! (absent on room events).

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{EventKind, ProtoError, RoomName, Seq, UserId};

/// The envelope format's version, `v` on the wire.
pub const ENVELOPE_VERSION: u32 = 1;

/// The envelope's header: what a node needs to order and route an event.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    /// The node that committed the event (a node skips its own).
    pub node: String,
    pub room: RoomName,
    pub seq: Seq,
    pub kind: EventKind,
    /// Who the event is by (a join or leave changes this user's membership).
    pub user: UserId,
    /// The one user a user-addressed frame is for.
    pub to: Option<UserId>,
}

/// A decoded envelope: the validated header and the event's JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub header: Header,
    pub event: String,
}

/// Why a message on the bus was not an envelope.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("not an envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unknown envelope version {0}")]
    Version(u32),
    #[error("invalid {field} in the header: {error}")]
    Invalid {
        field: &'static str,
        error: ProtoError,
    },
    #[error("invalid seq {0} in the header")]
    Seq(Seq),
}

#[derive(Serialize)]
struct HeaderOut<'a> {
    v: u32,
    node: &'a str,
    room: &'a str,
    seq: Seq,
    kind: EventKind,
    user: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
}

#[derive(Deserialize)]
struct Wire<'a> {
    v: u32,
    #[serde(borrow)]
    node: Cow<'a, str>,
    #[serde(borrow)]
    room: Cow<'a, str>,
    seq: Seq,
    kind: EventKind,
    #[serde(borrow)]
    user: Cow<'a, str>,
    #[serde(borrow, default)]
    to: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event: &'a RawValue,
}

impl Header {
    /// The envelope's text: this header and `event_json` (the event as clients
    /// receive it, already serialised) placed inside without a copy through serde.
    pub fn encode(&self, event_json: &str) -> String {
        let head = crate::to_json(&HeaderOut {
            v: ENVELOPE_VERSION,
            node: &self.node,
            room: self.room.as_str(),
            seq: self.seq,
            kind: self.kind,
            user: self.user.as_str(),
            to: self.to.as_ref().map(UserId::as_str),
        });
        let mut out = String::with_capacity(head.len() + event_json.len() + 10);
        // `head` is a JSON object: reopen it before its closing brace.
        out.push_str(&head[..head.len() - 1]);
        out.push_str(",\"event\":");
        out.push_str(event_json);
        out.push('}');
        out
    }
}

impl Envelope {
    /// Parses and validates an envelope. The event's bytes are kept as they
    /// came (checked to be JSON, not parsed into a type).
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let wire: Wire<'_> = serde_json::from_slice(bytes)?;
        if wire.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(wire.v));
        }
        if wire.seq < 1 {
            return Err(EnvelopeError::Seq(wire.seq));
        }
        let invalid = |field| move |error| EnvelopeError::Invalid { field, error };
        let header = Header {
            node: wire.node.into_owned(),
            room: RoomName::parse(&wire.room).map_err(invalid("room"))?,
            seq: wire.seq,
            kind: wire.kind,
            user: UserId::parse(&wire.user).map_err(invalid("user"))?,
            to: wire
                .to
                .map(|t| UserId::parse(&t))
                .transpose()
                .map_err(invalid("to"))?,
        };
        Ok(Envelope {
            header,
            event: wire.event.get().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            node: "n\"1".into(),
            room: RoomName::parse("general").unwrap(),
            seq: 42,
            kind: EventKind::Message,
            user: UserId::parse("ålice").unwrap(),
            to: None,
        }
    }

    #[test]
    fn an_envelope_round_trips_and_keeps_the_event_bytes() {
        let event = r#"{"type":"message","room":"general","seq":42,"message":"hi \"you\""}"#;
        let text = header().encode(event);
        let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
        assert_eq!(v["room"], "general");
        assert_eq!(v["event"]["message"], "hi \"you\"");
        let back = Envelope::decode(text.as_bytes()).unwrap();
        assert_eq!(back.header, header());
        assert_eq!(back.event, event);
    }

    #[test]
    fn a_forged_header_is_refused() {
        let ok = header().encode("{}");
        let bad_room = ok.replace("\"general\"", "\"bad room\"");
        assert!(matches!(
            Envelope::decode(bad_room.as_bytes()),
            Err(EnvelopeError::Invalid { field: "room", .. })
        ));
        let bad_user = ok.replace("\"ålice\"", "\"a\\u0000b\"");
        assert!(matches!(
            Envelope::decode(bad_user.as_bytes()),
            Err(EnvelopeError::Invalid { field: "user", .. })
        ));
        let bad_seq = ok.replace("\"seq\":42", "\"seq\":0");
        assert!(matches!(
            Envelope::decode(bad_seq.as_bytes()),
            Err(EnvelopeError::Seq(0))
        ));
        assert!(Envelope::decode(b"{\"type\":\"message\"}").is_err());
        assert!(Envelope::decode(ok.replace("\"v\":1", "\"v\":9").as_bytes()).is_err());
    }
}
