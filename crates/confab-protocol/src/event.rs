//! Committed events: the same shape on the socket, on the bus, in `history`
//! and in the REST API.

use chrono::{DateTime, SecondsFormat, Utc};
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

    /// The kind stored under `s` in the `events` table's `type` column.
    pub fn from_db(s: &str) -> Option<EventKind> {
        Some(match s {
            "create" => EventKind::Create,
            "join" => EventKind::Join,
            "leave" => EventKind::Leave,
            "message" => EventKind::Message,
            _ => return None,
        })
    }

    /// Whether the event adds its user to the room's members.
    pub fn joins(self) -> bool {
        matches!(self, EventKind::Create | EventKind::Join)
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
    pub node: String,
    #[serde(serialize_with = "serialize_micros")]
    pub at: DateTime<Utc>,
}

impl Event {
    /// The event as JSON text, as clients receive it.
    pub fn to_json(&self) -> String {
        crate::to_json(self)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn events_serialise_in_the_wire_shape() {
        let at = DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap();
        let ev = Event {
            kind: EventKind::Join,
            room: RoomName::parse("g").unwrap(),
            seq: 2,
            id: 9,
            user_id: UserId::parse("1").unwrap(),
            message: None,
            client_msg_id: None,
            node: "n".into(),
            at,
        };
        let v: Value = serde_json::from_str(&ev.to_json()).unwrap();
        assert_eq!(v["type"], "join");
        assert!(v.get("message").is_none());
        assert!(v["at"].as_str().unwrap().ends_with(".123456Z"));
        let back: Event = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }
}
