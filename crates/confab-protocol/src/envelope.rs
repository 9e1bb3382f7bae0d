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
//! like one from a client), checks that the event is a JSON object whose
//! `type`, `room`, `seq` and `user_id` agree with the header, and forwards the
//! event's bytes without re-serialising them. `to` names the target user of a
//! user-addressed frame (absent on room events).
//!
//! With a bus secret (`BUS_SECRET`, a [`BusKey`]) every envelope ends with
//! `"sig"`: HMAC-SHA256 under the secret of the envelope's text without that
//! field, exactly as [`Header::encode`] writes it, in lowercase hex,
//!
//! ```text
//! {"v":1,...,"event":{...},"sig":"<64 hex digits>"}
//! ```
//!
//! so a receiver checks the bytes it got (the text before `,"sig":"…"` and a
//! closing brace) and never re-serialises anything to do so.

use std::borrow::Cow;
use std::fmt;

use hmac::{Hmac, KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Sha256;

use crate::{EventKind, Facts, ProtoError, Role, RoomName, Seq, UserId};

/// The envelope format's version, `v` on the wire.
pub const ENVELOPE_VERSION: u32 = 1;

/// What a signed envelope ends with before the signature's hex digits.
const SIG_OPEN: &[u8] = b",\"sig\":\"";
/// What a signed envelope ends with after them.
const SIG_CLOSE: &[u8] = b"\"}";
/// HMAC-SHA256 is 32 bytes: 64 hex digits.
const SIG_HEX: usize = 64;
/// Length of `,"sig":"<64 hex>"}`.
const SIG_TAIL: usize = SIG_OPEN.len() + SIG_HEX + SIG_CLOSE.len();

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

/// A decoded envelope: the validated header, what the event says about the
/// room's state, and the event's JSON text.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub header: Header,
    pub facts: Facts,
    pub event: String,
}

/// The bus secret, keyed once: signs what a node publishes and checks what
/// it receives. `Debug` never shows it.
#[derive(Clone)]
pub struct BusKey(Hmac<Sha256>);

impl BusKey {
    /// A key from the shared secret (any length; HMAC hashes a long one).
    pub fn new(secret: &[u8]) -> BusKey {
        // HMAC takes a key of any length: this cannot fail.
        match <Hmac<Sha256> as KeyInit>::new_from_slice(secret) {
            Ok(mac) => BusKey(mac),
            Err(_) => unreachable!("HMAC accepts keys of any length"),
        }
    }

    /// The MAC of `parts`, one after the other.
    fn mac(&self, parts: &[&[u8]]) -> Hmac<Sha256> {
        let mut mac = self.0.clone();
        for part in parts {
            Mac::update(&mut mac, part);
        }
        mac
    }
}

impl fmt::Debug for BusKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BusKey(***)")
    }
}

/// Why a message on the bus was not an envelope, or not one to deliver.
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
    #[error("the event is not a JSON object")]
    EventNotObject,
    #[error("the event is not an event: {0}")]
    Event(serde_json::Error),
    #[error("the event's {0} disagrees with the header")]
    Mismatch(&'static str),
    #[error("unsigned (BUS_SECRET is set here: every envelope must end with its \"sig\")")]
    Unsigned,
    #[error("bad signature (not signed with this node's BUS_SECRET)")]
    BadSignature,
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

/// An event's `target`: a message's seq or a user.
#[derive(Deserialize)]
#[serde(untagged)]
enum HeadTarget<'a> {
    Seq(#[allow(dead_code)] Seq),
    User(#[serde(borrow)] Cow<'a, str>),
}

/// The fields of an event that its header repeats.
#[derive(Deserialize)]
struct EventHead<'a> {
    #[serde(rename = "type")]
    kind: EventKind,
    #[serde(borrow)]
    room: Cow<'a, str>,
    /// Absent from a `typing` frame (ephemeral frames have no seq).
    #[serde(default)]
    seq: Seq,
    #[serde(borrow)]
    user_id: Cow<'a, str>,
    #[serde(borrow, default)]
    target: Option<HeadTarget<'a>>,
    #[serde(borrow, default)]
    mentions: Vec<Cow<'a, str>>,
    #[serde(default)]
    role: Option<Role>,
    #[serde(default)]
    private: bool,
    #[serde(default)]
    dm: bool,
    #[serde(borrow, default)]
    by: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
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
        let mut out = String::with_capacity(head.len() + event_json.len() + 10 + SIG_TAIL);
        // `head` is a JSON object: reopen it before its closing brace.
        out.push_str(&head[..head.len() - 1]);
        out.push_str(",\"event\":");
        out.push_str(event_json);
        out.push('}');
        out
    }

    /// [`Header::encode`], signed with `key` when there is one.
    pub fn encode_signed(&self, event_json: &str, key: Option<&BusKey>) -> String {
        let mut out = self.encode(event_json);
        if let Some(key) = key {
            sign(&mut out, key);
        }
        out
    }
}

/// Signs an envelope's text as [`Header::encode`] wrote it: replaces its
/// closing brace with `,"sig":"<HMAC-SHA256 of the text so far, hex>"}`.
pub fn sign(envelope: &mut String, key: &BusKey) {
    let tag = key.mac(&[envelope.as_bytes()]).finalize().into_bytes();
    envelope.pop();
    envelope.push_str(",\"sig\":\"");
    for b in tag.iter() {
        envelope.push(char::from(HEX[usize::from(b >> 4)]));
        envelope.push(char::from(HEX[usize::from(b & 0xf)]));
    }
    envelope.push_str("\"}");
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Checks the signature at the end of `bytes` (constant-time comparison).
fn verify(bytes: &[u8], key: &BusKey) -> Result<(), EnvelopeError> {
    let Some(cut) = bytes.len().checked_sub(SIG_TAIL) else {
        return Err(EnvelopeError::Unsigned);
    };
    let (signed, tail) = bytes.split_at(cut);
    let (open, rest) = tail.split_at(SIG_OPEN.len());
    let (digits, close) = rest.split_at(SIG_HEX);
    if open != SIG_OPEN || close != SIG_CLOSE || signed.is_empty() {
        return Err(EnvelopeError::Unsigned);
    }
    let mut tag = [0u8; SIG_HEX / 2];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        match (hex_digit(pair[0]), hex_digit(pair[1])) {
            (Some(hi), Some(lo)) => tag[i] = hi << 4 | lo,
            _ => return Err(EnvelopeError::BadSignature),
        }
    }
    key.mac(&[signed, b"}"])
        .verify_slice(&tag)
        .map_err(|_| EnvelopeError::BadSignature)
}

impl Envelope {
    /// Parses and validates an envelope, without looking at a signature (a
    /// `"sig"` is ignored). The event's bytes are kept as they came: checked
    /// to be a JSON object whose `type`, `room`, `seq` and `user_id` are the
    /// header's, not parsed into a type.
    pub fn decode(bytes: &[u8]) -> Result<Envelope, EnvelopeError> {
        let wire: Wire<'_> = serde_json::from_slice(bytes)?;
        if wire.v != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(wire.v));
        }
        // A stored event has a seq from 1; an ephemeral frame has none (0).
        if (wire.seq < 1) != wire.kind.ephemeral() || wire.seq < 0 {
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
        let event = wire.event.get();
        // A RawValue starts at its value's first byte: an object starts with `{`.
        if !event.starts_with('{') {
            return Err(EnvelopeError::EventNotObject);
        }
        let head: EventHead<'_> = serde_json::from_str(event).map_err(EnvelopeError::Event)?;
        if head.kind != header.kind {
            return Err(EnvelopeError::Mismatch("type"));
        }
        if head.room != header.room.as_str() {
            return Err(EnvelopeError::Mismatch("room"));
        }
        if head.seq != header.seq && !header.kind.ephemeral() {
            return Err(EnvelopeError::Mismatch("seq"));
        }
        if head.user_id != header.user.as_str() {
            return Err(EnvelopeError::Mismatch("user_id"));
        }
        let user = |name: Option<Cow<'_, str>>, field| {
            name.map(|n| UserId::parse(&n))
                .transpose()
                .map_err(invalid(field))
        };
        let target = match head.target {
            Some(HeadTarget::User(u)) => Some(u),
            Some(HeadTarget::Seq(_)) | None => None,
        };
        let mentions = head
            .mentions
            .iter()
            .map(|m| UserId::parse(m).map_err(invalid("mentions")))
            .collect::<Result<Vec<UserId>, EnvelopeError>>()?;
        let facts = Facts {
            target: user(target, "target")?,
            mentions,
            role: head.role,
            private: head.private,
            dm: head.dm,
            by: user(head.by, "by")?,
            reason: head.reason.map(Cow::into_owned),
        };
        let to = facts.addressed_to(header.kind, &header.user);
        if to != header.to.as_ref() {
            return Err(EnvelopeError::Mismatch("to"));
        }
        Ok(Envelope {
            header,
            facts,
            event: event.to_owned(),
        })
    }

    /// [`Envelope::decode`] for a node with a bus secret: the envelope must
    /// end with a valid `"sig"` (checked before anything is parsed). Without a
    /// key, any envelope is taken, signed or not.
    pub fn decode_verified(bytes: &[u8], key: Option<&BusKey>) -> Result<Envelope, EnvelopeError> {
        if let Some(key) = key {
            verify(bytes, key)?;
        }
        Envelope::decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EVENT: &str =
        r#"{"type":"message","room":"general","seq":42,"user_id":"ålice","message":"hi \"you\""}"#;

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

    fn key() -> BusKey {
        BusKey::new(b"correct horse battery staple")
    }

    #[test]
    fn an_envelope_round_trips_and_keeps_the_event_bytes() {
        let text = header().encode(EVENT);
        let v: serde_json::Value = serde_json::from_str(&text).expect("one JSON object");
        assert_eq!(v["room"], "general");
        assert_eq!(v["event"]["message"], "hi \"you\"");
        let back = Envelope::decode(text.as_bytes()).unwrap();
        assert_eq!(back.header, header());
        assert_eq!(back.event, EVENT);
    }

    #[test]
    fn a_forged_header_is_refused() {
        let ok = header().encode(EVENT);
        let bad_room = ok.replacen("\"general\"", "\"bad room\"", 1);
        assert!(matches!(
            Envelope::decode(bad_room.as_bytes()),
            Err(EnvelopeError::Invalid { field: "room", .. })
        ));
        let bad_user = ok.replacen("\"ålice\"", "\"a\\u0000b\"", 1);
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

    #[test]
    fn the_event_must_be_an_object_that_agrees_with_the_header() {
        for event in ["[1,2]", "\"text\"", "7", "null", "true"] {
            assert!(
                matches!(
                    Envelope::decode(header().encode(event).as_bytes()),
                    Err(EnvelopeError::EventNotObject)
                ),
                "{event}"
            );
        }
        assert!(matches!(
            Envelope::decode(header().encode("{}").as_bytes()),
            Err(EnvelopeError::Event(_))
        ));
        for (from, to, field) in [
            ("\"room\":\"general\"", "\"room\":\"other\"", "room"),
            ("\"seq\":42", "\"seq\":43", "seq"),
            ("\"type\":\"message\"", "\"type\":\"join\"", "type"),
            ("\"user_id\":\"ålice\"", "\"user_id\":\"bob\"", "user_id"),
        ] {
            let event = EVENT.replace(from, to);
            assert!(
                matches!(
                    Envelope::decode(header().encode(&event).as_bytes()),
                    Err(EnvelopeError::Mismatch(f)) if f == field
                ),
                "{event}"
            );
        }
        // Escapes that spell the same text agree.
        let escaped = EVENT.replace("ålice", "\\u00e5lice");
        assert!(Envelope::decode(header().encode(&escaped).as_bytes()).is_ok());
    }

    #[test]
    fn a_signed_envelope_verifies_and_a_tampered_one_does_not() {
        let signed = header().encode_signed(EVENT, Some(&key()));
        let unsigned = header().encode(EVENT);
        assert_eq!(signed.len(), unsigned.len() + SIG_TAIL - 1);
        assert!(signed.starts_with(&unsigned[..unsigned.len() - 1]));
        let v: serde_json::Value = serde_json::from_str(&signed).expect("still one JSON object");
        assert_eq!(v["sig"].as_str().unwrap().len(), 64);

        let back = Envelope::decode_verified(signed.as_bytes(), Some(&key())).unwrap();
        assert_eq!(back.header, header());
        assert_eq!(back.event, EVENT);
        // Without a key, signed and unsigned are both taken.
        assert!(Envelope::decode_verified(signed.as_bytes(), None).is_ok());
        assert!(Envelope::decode_verified(unsigned.as_bytes(), None).is_ok());
        // With one, unsigned, wrongly keyed and altered envelopes are not.
        assert!(matches!(
            Envelope::decode_verified(unsigned.as_bytes(), Some(&key())),
            Err(EnvelopeError::Unsigned)
        ));
        let other = header().encode_signed(EVENT, Some(&BusKey::new(b"another secret")));
        assert!(matches!(
            Envelope::decode_verified(other.as_bytes(), Some(&key())),
            Err(EnvelopeError::BadSignature)
        ));
        let altered = signed.replace("hi ", "ho ");
        assert!(matches!(
            Envelope::decode_verified(altered.as_bytes(), Some(&key())),
            Err(EnvelopeError::BadSignature)
        ));
        let upper = format!(
            "{}{}",
            &signed[..signed.len() - 66],
            signed[signed.len() - 66..].to_uppercase()
        );
        assert!(matches!(
            Envelope::decode_verified(upper.as_bytes(), Some(&key())),
            Err(EnvelopeError::BadSignature)
        ));
        for short in ["", "}", "{\"sig\":\"\"}"] {
            assert!(matches!(
                Envelope::decode_verified(short.as_bytes(), Some(&key())),
                Err(EnvelopeError::Unsigned)
            ));
        }
    }

    #[test]
    fn the_signature_is_hmac_sha256_of_the_unsigned_text() {
        // What a tool outside Confab computes to publish a signed envelope.
        let unsigned = header().encode(EVENT);
        let mut mac =
            <Hmac<Sha256> as KeyInit>::new_from_slice(b"correct horse battery staple").unwrap();
        Mac::update(&mut mac, unsigned.as_bytes());
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let expected = format!("{},\"sig\":\"{hex}\"}}", &unsigned[..unsigned.len() - 1]);
        assert_eq!(header().encode_signed(EVENT, Some(&key())), expected);
        // RFC 4231 test case 2, so the primitive itself is the standard one.
        let mut mac = <Hmac<Sha256> as KeyInit>::new_from_slice(b"Jefe").unwrap();
        Mac::update(&mut mac, b"what do ya want for nothing?");
        let tag: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            tag,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(format!("{:?}", key()), "BusKey(***)");
    }
}
