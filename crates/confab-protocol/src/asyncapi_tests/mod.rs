//! `asyncapi.json`, the AsyncAPI 3 description of the protocol, checked
//! against this crate's types. Nothing here lists the protocol's names by
//! hand: the commands come from [`Command::types`] (the table
//! [`Command::parse`] uses), the error codes and the event and notice kinds
//! from their enums' `ALL`, which are checked against the enums' variants as
//! serde sees them. So a command, error code, event kind or notice kind that
//! the document lacks fails a test here, and so does a document example that
//! the crate would not parse or send as written.
//!
//! The document's schemas are checked with a small validator of the JSON
//! Schema keywords the document uses (`$ref`, `type`, `const`, `enum`,
//! `properties`, `required`, `additionalProperties`, `items`, `allOf`,
//! `oneOf`, `anyOf`, lengths and bounds; `pattern` and `format` are not
//! checked).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::*;

mod validator;
use validator::{check_declared, declared, required, validate};

const LIMITS: CommandLimits = CommandLimits {
    max_message_chars: 4096,
};

fn doc() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::from_str(ASYNCAPI).expect("asyncapi.json is JSON"))
}

/// Follows `$ref`s (local JSON pointers) to the schema or object they name.
fn resolve(v: &Value) -> &Value {
    let mut v = v;
    while let Some(r) = v.get("$ref").and_then(Value::as_str) {
        let pointer = r
            .strip_prefix('#')
            .unwrap_or_else(|| panic!("{r}: only local references"));
        v = doc()
            .pointer(pointer)
            .unwrap_or_else(|| panic!("{r} names nothing"));
    }
    v
}

fn messages() -> &'static Map<String, Value> {
    doc()["components"]["messages"]
        .as_object()
        .expect("components.messages")
}

/// The message `key` of `components.messages`.
fn message(key: &str) -> &'static Value {
    messages()
        .get(key)
        .unwrap_or_else(|| panic!("asyncapi.json has no message {key}"))
}

/// The keys of `components.messages` that start with `prefix`, without it.
fn message_names(prefix: &str) -> BTreeSet<String> {
    messages()
        .keys()
        .filter_map(|k| k.strip_prefix(prefix).map(str::to_owned))
        .collect()
}

fn payload_schema(key: &str) -> &'static Value {
    resolve(&message(key)["payload"])
}

/// The example payloads of message `key` (at least one).
fn examples(key: &str) -> Vec<&'static Value> {
    let list: Vec<&Value> = message(key)["examples"]
        .as_array()
        .unwrap_or_else(|| panic!("{key} has no examples"))
        .iter()
        .map(|e| &e["payload"])
        .collect();
    assert!(!list.is_empty(), "{key} has no examples");
    list
}

fn named_schema(name: &str) -> &'static Value {
    &doc()["components"]["schemas"][name]
}

// ------------------------------------------------------------ the enums' lists

/// The names serde gives an enum's variants (`rename_all` applied), read
/// from its derived `Deserialize`: the list nobody maintains by hand.
fn variants<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Error, Visitor};
    struct Grab(Option<&'static [&'static str]>);
    impl<'de> serde::Deserializer<'de> for &mut Grab {
        type Error = serde::de::value::Error;
        fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
            Err(Error::custom("not an enum"))
        }
        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _name: &'static str,
            variants: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Self::Error> {
            self.0 = Some(variants);
            Err(Error::custom("variants read"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
            bytes byte_buf option unit unit_struct newtype_struct seq tuple
            tuple_struct map struct identifier ignored_any
        }
    }
    let mut grab = Grab(None);
    let _ = T::deserialize(&mut grab);
    grab.0.expect("an enum")
}

#[test]
fn the_all_lists_hold_every_variant() {
    assert_eq!(
        ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .collect::<Vec<_>>(),
        variants::<ErrorCode>(),
        "ErrorCode::ALL must list every ErrorCode, in order"
    );
    assert_eq!(
        EventKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>(),
        variants::<EventKind>(),
        "EventKind::ALL must list every EventKind, in order"
    );
    assert_eq!(
        NoticeKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect::<Vec<_>>(),
        variants::<NoticeKind>(),
        "NoticeKind::ALL must list every NoticeKind, in order"
    );
    // as_str is the wire name.
    for c in ErrorCode::ALL {
        assert_eq!(json!(c), json!(c.as_str()));
    }
    for k in NoticeKind::ALL {
        assert_eq!(json!(k), json!(k.as_str()));
    }
}

// ------------------------------------------------------------ the document

#[test]
fn the_document_is_asyncapi_3_for_the_ws_endpoint() {
    let d = doc();
    assert_eq!(d["asyncapi"], "3.0.0");
    assert_eq!(d["info"]["version"], PROTOCOL_VERSION.to_string());
    let server = &d["servers"]["confab"];
    assert_eq!(server["protocol"], "ws");
    assert_eq!(server["host"], "{host}");
    assert!(server["variables"]["host"]["default"].is_string());
    let ws = &d["channels"]["ws"];
    assert_eq!(ws["address"], "/ws");
    let query = &ws["bindings"]["ws"]["query"]["properties"];
    for param in ["user_id", "token"] {
        assert!(query[param]["description"].is_string(), "?{param}");
    }
    for close in ["1000", "1001", "1006", "1008", "1009", "4000", "4001"] {
        assert!(
            ws["description"]
                .as_str()
                .unwrap()
                .contains(&format!("| {close} |")),
            "close code {close} is described"
        );
    }
}

/// Every `$ref` in the document, with where it is.
fn refs(v: &Value, at: String, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push((at.clone(), x.as_str().unwrap().to_owned()));
                } else {
                    refs(x, format!("{at}/{k}"), out);
                }
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                refs(x, format!("{at}/{i}"), out);
            }
        }
        _ => {}
    }
}

#[test]
fn every_reference_resolves_and_every_message_is_used() {
    let mut all = Vec::new();
    refs(doc(), String::new(), &mut all);
    for (at, r) in &all {
        assert!(
            r.starts_with("#/") && doc().pointer(&r[1..]).is_some(),
            "{at}: {r} names nothing"
        );
    }
    // The channel offers every message, and some operation uses each.
    let channel: BTreeSet<&str> = doc()["channels"]["ws"]["messages"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            assert_eq!(v["$ref"], format!("#/components/messages/{k}"));
            k.as_str()
        })
        .collect();
    let components: BTreeSet<&str> = messages().keys().map(String::as_str).collect();
    assert_eq!(channel, components);
    let used: BTreeSet<&str> = all
        .iter()
        .filter(|(at, _)| at.starts_with("/operations/"))
        .filter_map(|(_, r)| r.strip_prefix("#/channels/ws/messages/"))
        .collect();
    assert_eq!(
        used, components,
        "every message is sent or received by an operation"
    );
}

/// Every property of every schema has a description, and so has every
/// named schema.
fn check_described(v: &Value, at: &str) {
    match v {
        Value::Object(m) => {
            if let Some(props) = m.get("properties").and_then(Value::as_object) {
                for (k, p) in props {
                    let d = p.get("description").and_then(Value::as_str).unwrap_or("");
                    assert!(
                        !d.trim().is_empty(),
                        "{at}.properties.{k} has no description"
                    );
                }
            }
            for (k, x) in m {
                check_described(x, &format!("{at}.{k}"));
            }
        }
        Value::Array(a) => a.iter().for_each(|x| check_described(x, at)),
        _ => {}
    }
}

#[test]
fn every_field_and_schema_is_described() {
    check_described(&doc()["components"], "components");
    check_described(&doc()["channels"], "channels");
    for (name, s) in doc()["components"]["schemas"].as_object().unwrap() {
        assert!(
            s["description"].is_string(),
            "schema {name} has no description"
        );
    }
    for (key, m) in messages() {
        assert!(m["summary"].is_string(), "message {key} has no summary");
        examples(key);
    }
}

// ------------------------------------------------------------ error codes

#[test]
fn every_error_code_is_in_the_code_enum_with_its_meaning_and_status() {
    let code = named_schema("ErrorCode");
    let listed: Vec<&str> = code["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let ours: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(
        listed, ours,
        "the code enum is exactly ErrorCode's codes, in order"
    );
    let table = code["description"].as_str().unwrap();
    for c in ErrorCode::ALL {
        let row = format!("| `{}` | {} | ", c.as_str(), c.http_status());
        let line = table
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("no row {row}… in ErrorCode's description"));
        assert!(line.len() > row.len() + 10, "{} has a meaning", c.as_str());
    }
    // The error frame's code is that enum.
    let error = payload_schema("frame.error");
    let props = declared(error, &json!({"type": "error"}));
    let code_field = props["code"];
    assert!(validate(code_field, &json!("not_a_code"), "").is_err());
    for c in ErrorCode::ALL {
        validate(code_field, &json!(c.as_str()), "code").unwrap();
    }
}

// ------------------------------------------------------------ commands

fn parse(v: &Value) -> Parsed {
    parse_command(&v.to_string(), LIMITS)
}

#[test]
fn every_command_has_a_message_whose_examples_parse_to_it() {
    let documented = message_names("command.");
    let ours: BTreeSet<String> = Command::types().map(str::to_owned).collect();
    assert_eq!(
        documented, ours,
        "a command.<type> message for every command Command::parse accepts"
    );
    for name in Command::types() {
        let key = format!("command.{name}");
        assert_eq!(message(&key)["name"], name);
        let schema = payload_schema(&key);
        for ex in examples(&key) {
            assert_eq!(ex["type"], name, "{key}: {ex}");
            validate(schema, ex, &key).unwrap();
            check_declared(schema, ex, &key);
            let parsed = parse(ex);
            let command = parsed
                .command
                .unwrap_or_else(|e| panic!("{key}: {ex} does not parse: {e}"));
            assert_eq!(command.name(), name, "{ex}");
            assert_eq!(
                parsed.reference.map(|r| json!(r)),
                ex.get("ref").cloned(),
                "{ex}: its ref"
            );
            assert_eq!(
                parsed.user_id.map(|u| json!(u)),
                ex.get("user_id")
                    .map(|u| json!(UserId::from_json(u).unwrap())),
                "{ex}: its user_id"
            );
        }
    }
}

#[test]
fn command_schemas_say_what_the_parser_reads() {
    // Every property some command declares.
    let mut everywhere = BTreeSet::new();
    for name in Command::types() {
        let key = format!("command.{name}");
        everywhere.extend(declared(payload_schema(&key), examples(&key)[0]).into_keys());
    }
    let odd = json!({"an": "object"});
    for name in Command::types() {
        let key = format!("command.{name}");
        let schema = payload_schema(&key);
        for ex in examples(&key) {
            let props = declared(schema, ex);
            let required = required(schema, ex);
            let with = |k: &str, v: Value| {
                let mut e = ex.clone();
                e[k] = v;
                e
            };
            for r in &required {
                assert!(ex.get(r).is_some(), "{key}: an example lacks required {r}");
                assert!(
                    props.contains_key(r),
                    "{key}: required {r} is not a property"
                );
            }
            // Required exactly when the parser needs it.
            for k in ex.as_object().unwrap().keys() {
                let mut e = ex.clone();
                e.as_object_mut().unwrap().remove(k);
                assert_eq!(
                    parse(&e).command.is_err(),
                    required.contains(k),
                    "{key}: without {k} ({e}) the parser and `required` disagree"
                );
            }
            for (k, p) in &props {
                // Every declared field is read: a value no field accepts fails.
                let e = with(k, odd.clone());
                assert!(
                    parse(&e).command.is_err(),
                    "{key}: {k} is declared but not read ({e})"
                );
                // null is read as absent exactly where the schema allows null.
                if k != "type" {
                    let e = with(k, Value::Null);
                    assert_eq!(
                        parse(&e).command.is_ok(),
                        validate(p, &Value::Null, k).is_ok(),
                        "{key}: {k}: null, the parser and the schema disagree ({e})"
                    );
                }
            }
            // A field the command does not declare is ignored.
            for k in everywhere.iter().filter(|k| !props.contains_key(*k)) {
                let e = with(k, odd.clone());
                assert!(
                    parse(&e).command.is_ok(),
                    "{key}: {k} is read but not declared ({e})"
                );
            }
        }
    }
}

#[test]
fn every_command_is_received_and_answered() {
    let ops = doc()["operations"].as_object().unwrap();
    let mut acked = BTreeSet::new();
    for name in Command::types() {
        let op = &ops[&format!("receive.{name}")];
        assert_eq!(op["action"], "receive");
        assert_eq!(op["channel"]["$ref"], "#/channels/ws");
        assert_eq!(
            op["messages"],
            json!([{"$ref": format!("#/channels/ws/messages/command.{name}")}])
        );
        let replies: Vec<&str> = op["reply"]["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                m["$ref"]
                    .as_str()
                    .unwrap()
                    .trim_start_matches("#/channels/ws/messages/")
            })
            .collect();
        assert!(replies.contains(&"frame.error"), "{name} can fail");
        assert_eq!(
            replies.len(),
            2,
            "{name}: an ack or a typed reply, and error"
        );
        if replies.contains(&"frame.ack") {
            acked.insert(name.to_owned());
        }
    }
    let ack = payload_schema("frame.ack");
    let command = declared(ack, &json!({}))["command"];
    let listed: BTreeSet<String> = resolve(command)["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        listed, acked,
        "ack.command lists the commands answered with ack"
    );
}

// ------------------------------------------------------------ events

#[test]
fn every_event_kind_has_a_message_whose_examples_are_events() {
    let stored: BTreeSet<String> = EventKind::ALL
        .iter()
        .filter(|k| !k.ephemeral())
        .map(|k| k.as_str().to_owned())
        .collect();
    assert_eq!(
        message_names("event."),
        stored,
        "an event.<kind> message for every stored kind"
    );
    for kind in EventKind::ALL {
        if kind.ephemeral() {
            // typing and read go out as frames of their own.
            message(&format!("frame.{}", kind.as_str()));
            continue;
        }
        let key = format!("event.{}", kind.as_str());
        let schema = payload_schema(&key);
        for ex in examples(&key) {
            validate(schema, ex, &key).unwrap();
            validate(named_schema("Event"), ex, &key).unwrap();
            check_declared(schema, ex, &key);
            let ev: Event = serde_json::from_value(ex.clone())
                .unwrap_or_else(|e| panic!("{key}: {ex} is not an Event: {e}"));
            assert_eq!(ev.kind, *kind);
            assert_eq!(
                &serde_json::from_str::<Value>(&ev.to_json()).unwrap(),
                ex,
                "{key}: the crate sends it as written"
            );
        }
    }
    // `Event` (the items of history) is any of them, and `send.event` sends them all.
    let union: BTreeSet<&str> = named_schema("Event")["oneOf"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["$ref"].as_str().unwrap())
        .collect();
    let payloads: BTreeSet<&str> = stored
        .iter()
        .map(|k| {
            message(&format!("event.{k}"))["payload"]["$ref"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(union, payloads);
    let sent: BTreeSet<String> = doc()["operations"]["send.event"]["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["$ref"]
                .as_str()
                .unwrap()
                .trim_start_matches("#/channels/ws/messages/event.")
                .to_owned()
        })
        .collect();
    assert_eq!(sent, stored);
}

#[test]
fn every_field_of_an_event_is_declared() {
    // An event with every field set: each must be declared by some kind.
    let at = chrono::DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap();
    let user = |s: &str| UserId::parse(s).unwrap();
    let mut ev = Event::new(
        EventKind::Message,
        RoomName::parse("g").unwrap(),
        3,
        user("a"),
        "n".into(),
        at,
    );
    ev.id = 1;
    ev.message = Some("m".into());
    ev.client_msg_id = Some("c".into());
    ev.target = Some(Target::User(user("b")));
    ev.role = Some(Role::Admin);
    ev.reason = Some("r".into());
    ev.private = true;
    ev.dm = true;
    ev.by = Some(user("b"));
    ev.reply_to = Some(1);
    ev.mentions = vec![user("b")];
    ev.emoji = Some("+1".into());
    ev.edited = 1;
    ev.deleted = true;
    ev.deleted_by = Some(user("a"));
    ev.reactions.insert(
        "+1".into(),
        Reaction {
            count: 1,
            users: vec![user("b")],
        },
    );
    ev.state_seq = Some(4);
    let full: Value = serde_json::from_str(&ev.to_json()).unwrap();
    let mut everywhere: BTreeMap<String, &Value> = BTreeMap::new();
    for kind in EventKind::ALL.iter().filter(|k| !k.ephemeral()) {
        let key = format!("event.{}", kind.as_str());
        everywhere.extend(declared(payload_schema(&key), examples(&key)[0]));
    }
    for k in full.as_object().unwrap().keys() {
        assert!(
            everywhere.contains_key(k),
            "the event field {k} is in no event schema"
        );
    }
    // The state of a message, reactions included.
    let mut msg = full.clone();
    for k in ["target", "role", "reason", "private", "dm", "by", "emoji"] {
        msg.as_object_mut().unwrap().remove(k);
    }
    check_declared(payload_schema("event.message"), &msg, "message");
    validate(payload_schema("event.message"), &msg, "message").unwrap();
}

// ------------------------------------------------------------ server frames

fn field<T: DeserializeOwned>(v: &Value, key: &str) -> Option<T> {
    v.get(key)
        .map(|x| serde_json::from_value(x.clone()).unwrap_or_else(|e| panic!("{key} of {v}: {e}")))
}

fn need<T: DeserializeOwned>(v: &Value, key: &str) -> T {
    field(v, key).unwrap_or_else(|| panic!("{v} has no {key}"))
}

/// A server frame rebuilt from its JSON through the crate's types and
/// serialised again: equal to the input when the input is what the crate sends.
fn rebuild(v: &Value) -> Value {
    let reference: Option<Ref> = field(v, "ref");
    let reference = reference.as_ref();
    let room: Option<RoomName> = field(v, "room");
    let room = room.as_ref();
    let the_room = || room.expect("a room");
    let text = match need::<String>(v, "type").as_str() {
        "hello" => Reply::Hello {
            node: &need::<String>(v, "node"),
            protocol: need(v, "protocol"),
            epoch: &need::<String>(v, "epoch"),
            user_id: need::<Option<UserId>>(v, "user_id").as_ref(),
            limits: &need(v, "limits"),
        }
        .to_json(),
        "ack" => Reply::Ack(Ack {
            reference,
            command: &need::<String>(v, "command"),
            room,
            seq: field(v, "seq"),
            id: field(v, "id"),
            duplicate: field(v, "duplicate"),
            recovered: field(v, "recovered"),
            unchanged: field(v, "unchanged"),
            with: field::<UserId>(v, "with").as_ref(),
            dropped_mentions: &field::<Vec<UserId>>(v, "dropped_mentions").unwrap_or_default(),
        })
        .to_json(),
        "error" => Reply::Error {
            reference,
            code: need(v, "code"),
            message: &need::<String>(v, "message"),
            room,
        }
        .to_json(),
        "history" => Reply::History {
            reference,
            room: the_room(),
            events: &need::<Vec<Event>>(v, "events"),
            more: need(v, "more"),
        }
        .to_json(),
        "rooms" => Reply::Rooms {
            reference,
            rooms: &need::<Vec<RoomInfo>>(v, "rooms"),
        }
        .to_json(),
        "members" => Reply::Members {
            reference,
            room: the_room(),
            members: &need::<Vec<MemberInfo>>(v, "members"),
        }
        .to_json(),
        "bans" => Reply::Bans {
            reference,
            room: the_room(),
            bans: &need::<Vec<BanInfo>>(v, "bans"),
        }
        .to_json(),
        "pong" => Reply::Pong { reference }.to_json(),
        "notice" => Reply::Notice {
            kind: need(v, "kind"),
            room: the_room(),
            seq: need(v, "seq"),
            by: &need(v, "by"),
            reason: field::<String>(v, "reason").as_deref(),
        }
        .to_json(),
        "typing" => Reply::Typing {
            room: the_room(),
            user_id: &need(v, "user_id"),
            typing: need(v, "typing"),
            ttl_ms: need(v, "ttl_ms"),
        }
        .to_json(),
        "read" => Reply::Read {
            room: the_room(),
            seq: need(v, "seq"),
            user_id: &need(v, "user_id"),
        }
        .to_json(),
        other => panic!("no frame of type {other} in the crate"),
    };
    serde_json::from_str(&text).unwrap()
}

/// The document's message for a frame the crate sends. The match is
/// exhaustive: a new kind of frame does not compile until it has a name
/// here, and then needs a message (and a full value in `every_frame`).
fn frame_key(reply: &Reply<'_>) -> String {
    let name = match reply {
        Reply::Hello { .. } => "hello",
        Reply::Ack(_) => "ack",
        Reply::Error { .. } => "error",
        Reply::History { .. } => "history",
        Reply::Rooms { .. } => "rooms",
        Reply::Members { .. } => "members",
        Reply::Pong { .. } => "pong",
        Reply::Bans { .. } => "bans",
        Reply::Notice { kind, .. } => return format!("notice.{}", kind.as_str()),
        Reply::Typing { .. } => "typing",
        Reply::Read { .. } => "read",
    };
    format!("frame.{name}")
}

#[test]
fn frame_and_notice_examples_are_what_the_crate_sends() {
    let mut keys: Vec<String> = message_names("frame.")
        .into_iter()
        .map(|n| format!("frame.{n}"))
        .collect();
    keys.extend(
        message_names("notice.")
            .into_iter()
            .map(|n| format!("notice.{n}")),
    );
    for key in keys {
        let schema = payload_schema(&key);
        for ex in examples(&key) {
            validate(schema, ex, &key).unwrap();
            check_declared(schema, ex, &key);
            assert_eq!(&rebuild(ex), ex, "{key}: the crate sends it as written");
        }
    }
}

#[test]
fn every_notice_kind_has_a_message() {
    let ours: BTreeSet<String> = NoticeKind::ALL
        .iter()
        .map(|k| k.as_str().to_owned())
        .collect();
    assert_eq!(message_names("notice."), ours);
    for k in NoticeKind::ALL {
        for ex in examples(&format!("notice.{}", k.as_str())) {
            assert_eq!(ex["type"], "notice");
            assert_eq!(ex["kind"], k.as_str());
        }
    }
    let sent = doc()["operations"]["send.notice"]["messages"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(sent, NoticeKind::ALL.len());
}

#[test]
fn every_frame_the_crate_sends_is_described_in_full() {
    let user = |s: &str| UserId::parse(s).unwrap();
    let (a, b) = (user("a"), user("b"));
    let room = RoomName::parse("g").unwrap();
    let reference = Ref::Str("r".into());
    let limits = HelloLimits {
        max_frame_bytes: 65536,
        max_message_chars: 4096,
        replay_limit: 10000,
        history_limit: 1000,
        rate_per_sec: 50,
        rate_burst: 100,
        max_rooms_per_connection: 500,
    };
    let at = chrono::DateTime::from_timestamp_micros(1_795_000_000_123_456).unwrap();
    let mut event = Event::new(EventKind::Join, room.clone(), 2, a.clone(), "n".into(), at);
    event.by = Some(b.clone());
    let events = [event];
    let rooms = [RoomInfo {
        name: room.clone(),
        members: 2,
        last_seq: 4,
        private: true,
        dm: true,
        with: Some(b.clone()),
        role: Some(Standing::Member),
        unread: Some(1),
        mentions_unread: Some(1),
    }];
    let members = [MemberInfo {
        user_id: a.clone(),
        online: true,
        role: Role::Owner,
        read_seq: 3,
    }];
    let bans = [BanInfo {
        user_id: b.clone(),
        by: a.clone(),
        reason: Some("spam".into()),
        seq: 5,
    }];
    let dropped = [b.clone()];
    let mut every_frame = vec![
        Reply::Hello {
            node: "n",
            protocol: PROTOCOL_VERSION,
            epoch: "e",
            user_id: Some(&a),
            limits: &limits,
        },
        Reply::Ack(Ack {
            reference: Some(&reference),
            command: "message",
            room: Some(&room),
            seq: Some(3),
            id: Some(9),
            duplicate: Some(true),
            recovered: Some(true),
            unchanged: Some(true),
            with: Some(&b),
            dropped_mentions: &dropped,
        }),
        Reply::Error {
            reference: Some(&reference),
            code: ErrorCode::NoSuchRoom,
            message: "m",
            room: Some(&room),
        },
        Reply::History {
            reference: Some(&reference),
            room: &room,
            events: &events,
            more: true,
        },
        Reply::Rooms {
            reference: Some(&reference),
            rooms: &rooms,
        },
        Reply::Members {
            reference: Some(&reference),
            room: &room,
            members: &members,
        },
        Reply::Pong {
            reference: Some(&reference),
        },
        Reply::Bans {
            reference: Some(&reference),
            room: &room,
            bans: &bans,
        },
        Reply::Typing {
            room: &room,
            user_id: &a,
            typing: true,
            ttl_ms: 6000,
        },
        Reply::Read {
            room: &room,
            seq: 3,
            user_id: &a,
        },
    ];
    for kind in NoticeKind::ALL {
        let reason = (*kind == NoticeKind::Ban).then_some("spam");
        every_frame.push(Reply::Notice {
            kind: *kind,
            room: &room,
            seq: 4,
            by: &b,
            reason,
        });
    }
    let mut described = BTreeSet::new();
    for reply in &every_frame {
        let key = frame_key(reply);
        let v: Value = serde_json::from_str(&reply.to_json()).unwrap();
        let schema = payload_schema(&key);
        validate(schema, &v, &key).unwrap();
        check_declared(schema, &v, &key);
        assert_eq!(rebuild(&v), v);
        described.insert(key);
    }
    let mut documented: BTreeSet<String> = message_names("frame.")
        .into_iter()
        .map(|n| format!("frame.{n}"))
        .collect();
    documented.extend(
        message_names("notice.")
            .into_iter()
            .map(|n| format!("notice.{n}")),
    );
    assert_eq!(
        described, documented,
        "a message for every frame, and a frame for every message"
    );
}
