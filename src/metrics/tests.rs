//! The metrics' unit tests: series names, registries per node, histograms, escaping.
use super::*;

/// The sample line of `series` (name and label set up to the value).
fn sample<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with([' ', '{']))
}

fn value(text: &str, series: &str) -> f64 {
    let line = sample(text, series).unwrap_or_else(|| panic!("no {series} in\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Parses one sample line the way an OpenMetrics reader would: a name,
/// an optional `{k="v",…}` whose values use only `\\`, `\"` and `\n`
/// escapes, a space and a number. Returns the unescaped label pairs.
fn parse_sample(line: &str) -> Result<Vec<(String, String)>, String> {
    let name_end = line.find([' ', '{']).ok_or("no value")?;
    let name = &line[..name_end];
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("bad name {name:?}"));
    }
    let mut labels = Vec::new();
    let mut rest = &line[name_end..];
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices();
        let mut quotes = 0;
        let end = loop {
            let (i, c) = chars.next().ok_or("unterminated label set")?;
            if c == '}' {
                break i;
            }
            let key: String = std::iter::once(c)
                .chain(chars.by_ref().map(|(_, c)| c).take_while(|&c| c != '='))
                .collect();
            if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad label name {key:?}"));
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            quotes += 1;
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().ok_or("dangling escape")?.1 {
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        'n' => value.push('\n'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    '\n' => return Err("raw newline in label value".into()),
                    c => value.push(c),
                }
            }
            quotes += 1;
            labels.push((key, value));
            match chars.clone().next() {
                Some((_, ',')) => {
                    chars.next();
                }
                Some((_, '}')) => {}
                _ => return Err("expected , or }".into()),
            }
        };
        assert_eq!(quotes % 2, 0);
        rest = &body[end + 1..];
    }
    let value = rest.strip_prefix(' ').ok_or("no space before the value")?;
    match value {
        "+Inf" | "-Inf" | "NaN" => {}
        v => {
            v.parse::<f64>()
                .map_err(|e| format!("bad value {v:?}: {e}"))?;
        }
    }
    Ok(labels)
}

#[test]
fn metrics_are_shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Metrics>();
}

#[test]
fn two_registries_do_not_share_counts() {
    let a = Metrics::new("a");
    let b = Metrics::new("b");
    a.commands.inc();
    a.commands.inc();
    b.commands.inc();
    a.connections.inc();
    a.ack_latency.observe(0.001);

    assert_eq!((a.commands.get(), b.commands.get()), (2, 1));
    assert_eq!((a.connections.get(), b.connections.get()), (1, 0));
    let (ra, rb) = (a.render(), b.render());
    assert_eq!(value(&ra, r#"confab_commands_total{node="a"}"#), 2.0);
    assert_eq!(value(&rb, r#"confab_commands_total{node="b"}"#), 1.0);
    assert_eq!(value(&rb, r#"confab_connections{node="b"}"#), 0.0);
    assert_eq!(
        value(&rb, r#"confab_ack_latency_seconds_count{node="b"}"#),
        0.0
    );
    assert!(!ra.contains(r#"node="b""#) && !rb.contains(r#"node="a""#));
}

#[test]
fn a_counter_increment_renders_under_todays_name() {
    let m = Metrics::new("n1");
    m.commands.inc();
    m.deliveries.add(5);
    m.connections_total.inc();
    m.connections.inc();
    m.connections.inc();
    m.connections.dec();
    m.rooms.set(7);
    m.batch_seconds.add_duration(Duration::from_millis(1500));
    let text = m.render();

    assert_eq!(m.deliveries.get(), 5);
    assert_eq!(m.rooms.get(), 7);
    assert_eq!(value(&text, r#"confab_commands_total{node="n1"}"#), 1.0);
    assert_eq!(value(&text, r#"confab_deliveries_total{node="n1"}"#), 5.0);
    assert_eq!(value(&text, r#"confab_connections{node="n1"}"#), 1.0);
    assert_eq!(
        value(&text, r#"confab_connections_accepted_total{node="n1"}"#),
        1.0
    );
    assert_eq!(value(&text, r#"confab_rooms{node="n1"}"#), 7.0);
    assert_eq!(
        value(&text, r#"confab_append_seconds_total{node="n1"}"#),
        1.5
    );
    assert_eq!(m.batch_seconds.get(), 1.5);

    for series in [
        "confab_connections",
        "confab_connections_accepted_total",
        "confab_commands_total",
        "confab_command_errors_total",
        "confab_rate_limited_total",
        "confab_evictions_total",
        "confab_events_committed_total",
        "confab_deliveries_total",
        "confab_append_batches_total",
        "confab_append_batched_total",
        "confab_append_seconds_total",
        "confab_store_errors_total",
        "confab_replays_total",
        "confab_replayed_events_total",
        "confab_gap_repairs_total",
        "confab_bus_published_total",
        "confab_bus_received_total",
        "confab_bus_errors_total",
        "confab_rooms",
    ] {
        let full = format!(r#"{series}{{node="n1"}}"#);
        assert!(sample(&text, &full).is_some(), "no {full} in\n{text}");
    }
    // Today's HELP texts, with one period.
    assert!(text.contains("# HELP confab_commands Commands received.\n"));
    assert!(text.contains("# HELP confab_evictions Slow consumers evicted (close 4000).\n"));
    assert!(!text.contains(".."), "{text}");
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn a_histogram_observation_renders_buckets_count_and_sum() {
    let m = Metrics::new("n1");
    m.ack_latency.observe(0.0003);
    m.ack_latency.observe_duration(Duration::from_millis(20));
    m.batch_size.observe(3.0);
    m.replay_size.observe(12_000.0);
    m.commit_latency.observe(0.002);
    let text = m.render();

    let ack = "confab_ack_latency_seconds";
    assert!(text.contains(&format!("# TYPE {ack} histogram\n")));
    assert_eq!(value(&text, &format!(r#"{ack}_count{{node="n1"}}"#)), 2.0);
    assert!((value(&text, &format!(r#"{ack}_sum{{node="n1"}}"#)) - 0.0203).abs() < 1e-9);
    assert_eq!(
        value(&text, &format!(r#"{ack}_bucket{{node="n1",le="0.0004"}}"#)),
        1.0
    );
    assert_eq!(
        value(&text, &format!(r#"{ack}_bucket{{node="n1",le="+Inf"}}"#)),
        2.0
    );
    assert_eq!(
        value(
            &text,
            r#"confab_append_batch_size_bucket{node="n1",le="4.0"}"#
        ),
        1.0
    );
    assert_eq!(
        value(
            &text,
            r#"confab_append_batch_size_bucket{node="n1",le="2.0"}"#
        ),
        0.0
    );
    assert!(sample(
        &text,
        r#"confab_append_batch_size_bucket{node="n1",le="4096.0"}"#
    )
    .is_some());
    assert_eq!(
        value(
            &text,
            r#"confab_replay_size_bucket{node="n1",le="16384.0"}"#
        ),
        1.0
    );
    assert_eq!(
        value(&text, r#"confab_commit_latency_seconds_count{node="n1"}"#),
        1.0
    );
    // The latency buckets run from 50 µs to ~10 s.
    assert!(sample(&text, &format!(r#"{ack}_bucket{{node="n1",le="0.00005"}}"#)).is_some());
    assert!(sample(&text, &format!(r#"{ack}_bucket{{node="n1",le="13.1072"}}"#)).is_some());
}

#[test]
fn build_info_has_the_version() {
    let text = Metrics::new("n1").render();
    let line = format!(
        r#"confab_build_info{{node="n1",version="{}"}} 1"#,
        env!("CARGO_PKG_VERSION")
    );
    assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    assert!(text.contains("# TYPE confab_build info\n"));
}

#[test]
fn the_sample_parser_rejects_unescaped_values() {
    assert!(parse_sample(r#"x{node="n"1\x"} 1"#).is_err());
    assert!(parse_sample(r#"x{node="n\"} 1"#).is_err());
    assert!(parse_sample("x{node=\"n\n1\"} 1").is_err());
    assert_eq!(
        parse_sample(r#"x{node="n\"1\\x",le="+Inf"} 1"#),
        Ok(vec![
            ("node".into(), "n\"1\\x".into()),
            ("le".into(), "+Inf".into())
        ])
    );
}

#[test]
fn a_node_id_with_a_quote_renders_valid_text() {
    let m = Metrics::new("n\"1\\x");
    m.commands.inc();
    m.ack_latency.observe(0.01);
    let text = m.render();

    assert!(text.contains(r#"node="n\"1\\x""#), "{text}");
    let mut samples = 0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let labels = parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            labels.contains(&("node".into(), "n\"1\\x".into())),
            "{line}"
        );
        samples += 1;
    }
    assert!(samples > 20, "{text}");

    // A newline stays inside its label value too.
    let text = Metrics::new("n\n1").render();
    assert!(text.contains(r#"confab_rooms{node="n\n1"} 0"#), "{text}");
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        parse_sample(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
}

#[test]
fn commands_are_counted_by_type_and_errors_by_code_from_the_start() {
    let m = Metrics::new("n");
    m.command("message");
    m.command("message");
    m.command("invalid");
    m.command_error(crate::protocol::ErrorCode::NotAMember);
    let text = m.render();
    let value = |needle: &str| {
        text.lines()
            .find(|l| l.starts_with(needle))
            .unwrap_or_else(|| panic!("no {needle} in\n{text}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .to_owned()
    };
    assert_eq!(
        value("confab_commands_by_type_total{node=\"n\",command=\"message\""),
        "2"
    );
    assert_eq!(
        value("confab_commands_by_type_total{node=\"n\",command=\"invalid\""),
        "1"
    );
    // Every type and code has its series before it is first used.
    assert_eq!(
        value("confab_commands_by_type_total{node=\"n\",command=\"unreact\""),
        "0"
    );
    assert_eq!(
        value("confab_command_errors_by_code_total{node=\"n\",code=\"not_a_member\""),
        "1"
    );
    assert_eq!(
        value("confab_command_errors_by_code_total{node=\"n\",code=\"banned\""),
        "0"
    );
    assert_eq!(value("confab_commands_total{"), "3");
}
