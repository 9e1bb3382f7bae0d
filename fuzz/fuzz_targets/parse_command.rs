//! Any text frame through `parse_command`, as a session and the REST API
//! read it: no panic, never `internal`, and what parses is valid.
#![no_main]

use confab_protocol::{
    parse_command, Command, CommandLimits, ErrorCode, Fields, History, SendMessage,
};
use libfuzzer_sys::fuzz_target;

fn check(text: &str, max_message_chars: usize) {
    let parsed = parse_command(text, CommandLimits { max_message_chars });
    match parsed.command {
        Ok(Command::Message(m)) => {
            let n = m.text.chars().count();
            assert!(n >= 1 && n <= max_message_chars, "{n} characters passed");
            assert!(!m.text.contains('\0'), "NUL passed in a message");
            if let Some(c) = &m.client_msg_id {
                assert!(!c.is_empty() && c.chars().count() <= 64 && !c.contains('\0'));
            }
        }
        Ok(Command::History(h)) => assert!((1..=1000).contains(&h.range.limit)),
        Ok(_) => {}
        Err(e) => assert_ne!(e.code, ErrorCode::Internal, "{e}"),
    }
    if let Some(u) = parsed.user_id {
        let n = u.as_str().chars().count();
        assert!((1..=64).contains(&n) && !u.as_str().chars().any(char::is_control));
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    check(text, 4096);
    check(text, 3);
    // The REST path: the same text as a query string's values.
    let pairs: Vec<(&str, &str)> = text
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    let obj = Fields::object_from_query(pairs, [("room", serde_json::Value::from("g"))]);
    let fields = Fields::new(&obj);
    let _ = History::parse(&fields);
    let _ = SendMessage::parse(
        &fields,
        CommandLimits {
            max_message_chars: 10,
        },
    );
});
