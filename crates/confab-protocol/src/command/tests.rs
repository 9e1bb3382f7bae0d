//! Commands parse and validate themselves: frames, fields, REST queries.
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
            client_msg_id: Some("c1".into()),
            reply_to: None,
            mentions: Vec::new(),
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

#[test]
fn the_emoji_rule_counts_a_zwj_sequence_as_one_character() {
    use super::kinds::valid_emoji;
    for ok in [
        "👍",
        "+1",
        ":party:",
        "👩\u{200d}👩\u{200d}👧\u{200d}👦",
        &"a".repeat(32),
    ] {
        assert!(valid_emoji(ok), "{ok}");
    }
    // 32 family emoji joined by U+200D are 32 characters by the rule.
    let families = vec!["👩\u{200d}👧"; 32].join("");
    assert!(valid_emoji(&families) || families.len() > 128);
    for bad in [
        "",
        &"a".repeat(33),
        "a b",
        "tab\t",
        "\u{200d}",
        "a\u{200d}",
        "\u{200d}a",
        "a\u{200d}\u{200d}b",
        "\u{7}",
    ] {
        assert!(!valid_emoji(bad), "{bad:?}");
    }
}

#[test]
fn mentions_are_user_ids_without_repeats_and_at_most_fifty() {
    let limits = CommandLimits {
        max_message_chars: 100,
    };
    let p = parse_command(
        r#"{"type":"message","room":"g","message":"hi","mentions":["a","b","a",7],"reply_to":3}"#,
        limits,
    );
    match p.command.unwrap() {
        Command::Message(m) => {
            let ids: Vec<&str> = m.mentions.iter().map(|u| u.as_str()).collect();
            assert_eq!(ids, vec!["a", "b", "7"]);
            assert_eq!(m.reply_to, Some(3));
        }
        other => panic!("{other:?}"),
    }
    let many: Vec<String> = (0..51).map(|i| format!("u{i}")).collect();
    let frame = serde_json::json!({"type":"message","room":"g","message":"x","mentions":many});
    let p = parse_command(&frame.to_string(), limits);
    assert_eq!(p.command.unwrap_err().code, ErrorCode::InvalidField);
    for bad in [r#"[]"#, r#""a""#, r#"[""]"#] {
        let f = format!(r#"{{"type":"message","room":"g","message":"x","mentions":{bad}}}"#);
        assert_eq!(
            parse_command(&f, limits).command.unwrap_err().code,
            ErrorCode::InvalidField,
            "{bad}"
        );
    }
}

#[test]
fn the_missing_type_sentence_names_every_command_in_order() {
    let message = parse("{}").command.expect_err("no type").message;
    let (_, list) = message.split_once(": ").expect("a list after the colon");
    let listed: Vec<&str> = list
        .split(", ")
        .flat_map(|part| part.split(" or "))
        .collect();
    assert_eq!(listed, Command::types().collect::<Vec<_>>());
}
