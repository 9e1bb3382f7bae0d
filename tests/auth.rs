//! Token mode and allowed origins (docs/security.md, "Identity and
//! origins"), end to end against real `confab` processes: who may connect,
//! as whom, for how long, from which web page; the REST API's bearer token;
//! `confab token`; and that a token never reaches a log line.

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{http_with, ws_handshake, Backend, Client, TestNode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Value};

const SECRET: &str = "test-secret-0123456789abcdef0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token signed with `secret`.
fn sign(secret: &str, claims: Value) -> String {
    common::hs256(secret, claims)
}

/// A token for `user`, valid for ten minutes.
fn token(user: &str) -> String {
    sign(SECRET, json!({"sub": user, "exp": now() + 600}))
}

async fn token_node(b: Backend, extra: &[(&str, &str)]) -> TestNode {
    let mut env = vec![("AUTH_SECRET", SECRET)];
    env.extend_from_slice(extra);
    TestNode::start_with(b, &env).await
}

fn key_file(name: &str) -> String {
    format!("{}/tests/keys/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The refusal's status, code and whether it says `WWW-Authenticate: Bearer`.
fn refusal(answer: (u16, String, String)) -> (u16, String, bool) {
    let (status, head, body) = answer;
    let v: Value = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {head}\n{body}"));
    assert_eq!(v["type"], "error", "{v}");
    assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(head.contains("content-type: application/json"), "{head}");
    let code = v["code"].as_str().unwrap().to_owned();
    (status, code, head.contains("www-authenticate: bearer"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_connects_as_its_subject() {
    let node = token_node(Backend::Sqlite, &[]).await;
    let url = format!("{}?token={}", node.ws_url(), token("alice"));
    let mut c = Client::connect(&url).await;
    assert_eq!(c.hello["user_id"], "alice");
    // Commands need no user_id: the connection is alice from the start.
    let frames = c.cmd(json!({"type":"create","room":"r"})).await;
    assert_eq!(frames[0]["user_id"], "alice", "{frames:?}");
    assert_eq!(frames[1]["type"], "ack");
    c.ok(json!({"user_id":"alice","type":"message","room":"r","message":"hi"}))
        .await;
    // Another user_id is refused, whatever the command.
    for cmd in [
        json!({"user_id":"bob","type":"message","room":"r","message":"as bob"}),
        json!({"user_id":"bob","type":"join","room":"r"}),
        json!({"user_id":"bob","type":"ping"}),
    ] {
        let e = c.err(cmd, "user_mismatch").await;
        assert_eq!(e["message"], "this connection speaks for user alice");
    }
    let page = c.reply(json!({"type":"history","room":"r"})).await;
    let users: Vec<&str> = page["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["user_id"].as_str().unwrap())
        .collect();
    assert_eq!(users, ["alice", "alice"], "{page}");

    // The token may come as a bearer header instead, with a matching ?user_id=.
    let bearer = format!("Bearer {}", token("bob"));
    let url = format!("{}?user_id=bob", node.ws_url());
    let b = Client::connect_with(&url, &[("Authorization", &bearer)]).await;
    assert_eq!(b.hello["user_id"], "bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_handshakes_get_401_and_say_why() {
    let node = token_node(Backend::Sqlite, &[]).await;
    let addr = node.addr.as_str();
    let t = now();
    let expired = sign(SECRET, json!({"sub":"a","exp":t - 120}));
    let forged = sign(
        "another-secret-0123456789abcdef012345",
        json!({"sub":"a","exp":t + 600}),
    );
    let no_exp = sign(SECRET, json!({"sub":"a"}));
    let bad_sub = sign(SECRET, json!({"sub":"","exp":t + 600}));
    let good = token("a");
    // (path, headers, the code of the 401)
    type Case = (String, Vec<(&'static str, String)>, &'static str);
    let cases: Vec<Case> = vec![
        ("/ws".into(), vec![], "token_missing"),
        ("/ws?token=".into(), vec![], "token_missing"),
        (format!("/ws?token={expired}"), vec![], "token_expired"),
        (format!("/ws?token={forged}"), vec![], "token_invalid"),
        ("/ws?token=not-a-jwt".into(), vec![], "token_invalid"),
        (format!("/ws?token={no_exp}"), vec![], "token_invalid"),
        (format!("/ws?token={bad_sub}"), vec![], "token_invalid"),
        (
            "/ws".into(),
            vec![("Authorization", format!("Bearer {expired}"))],
            "token_expired",
        ),
        (
            "/ws".into(),
            vec![("Authorization", "Basic YTpi".into())],
            "token_invalid",
        ),
        // The token is not user b's.
        (
            format!("/ws?token={good}&user_id=b"),
            vec![],
            "token_invalid",
        ),
        // Twice, two ways.
        (
            format!("/ws?token={good}"),
            vec![("Authorization", format!("Bearer {good}"))],
            "token_invalid",
        ),
    ];
    for (path, headers, want) in cases {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let (status, code, challenge) = refusal(ws_handshake(addr, &path, &headers).await);
        assert_eq!((status, code.as_str()), (401, want), "{path} {headers:?}");
        assert!(challenge, "401 without WWW-Authenticate: {path}");
    }
    // And the good one upgrades.
    let (status, _, _) = ws_handshake(addr, &format!("/ws?token={good}&user_id=a"), &[]).await;
    assert_eq!(status, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closes_with_4001_when_its_token_expires() {
    // Leeway 1 s: the token is good until exp + 1 s, then the socket closes.
    let node = token_node(Backend::Sqlite, &[("AUTH_LEEWAY_SECS", "1")]).await;
    let exp = now() + 2;
    let t = sign(SECRET, json!({"sub":"eve","exp":exp}));
    let mut c = Client::connect(&format!("{}?token={t}", node.ws_url())).await;
    assert_eq!(c.reply(json!({"type":"ping"})).await["type"], "pong");
    let (code, reason) = c.close_frame().await.expect("a close frame");
    let closed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert_eq!(code, 4001);
    assert_eq!(
        reason,
        "token expired: reconnect with a new token and resume with since"
    );
    // Not before exp + leeway (whole seconds: the clock may be just past a tick).
    assert!(
        closed_at >= (exp + 1) as f64 - 0.01,
        "closed at {closed_at}, exp {exp}"
    );
    assert!(
        closed_at < (exp + 5) as f64,
        "closed at {closed_at}, exp {exp}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_keys_verify_rs256_and_eddsa() {
    for (public, private, alg) in [
        ("rsa-public.pem", "rsa-private.pem", Algorithm::RS256),
        (
            "ed25519-public.pem",
            "ed25519-private.pem",
            Algorithm::EdDSA,
        ),
    ] {
        let path = key_file(public);
        let node = TestNode::start_with(Backend::Sqlite, &[("AUTH_PUBLIC_KEY", &path)]).await;
        let pem = std::fs::read(key_file(private)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ed_pem(&pem).unwrap(),
        };
        let claims = json!({"sub":"frank","exp":now() + 600});
        let good = jsonwebtoken::encode(&Header::new(alg), &claims, &key).unwrap();
        let c = Client::connect(&format!("{}?token={good}", node.ws_url())).await;
        assert_eq!(c.hello["user_id"], "frank", "{alg:?}");
        // HS256 with the public key's text as the secret: the old
        // algorithm-confusion forgery is refused.
        let public_pem = std::fs::read_to_string(&path).unwrap();
        let confused = sign(&public_pem, claims.clone());
        let (status, code, _) =
            refusal(ws_handshake(&node.addr, &format!("/ws?token={confused}"), &[]).await);
        assert_eq!((status, code.as_str()), (401, "token_invalid"), "{alg:?}");
        node.wait_for_log(&[&format!(
            "token mode: {alg:?} tokens verified with AUTH_PUBLIC_KEY="
        )])
        .await;
    }
}

async fn rest_needs_the_bearer_token(b: Backend) {
    let node = token_node(b, &[]).await;
    let addr = node.addr.as_str();
    let alice = format!("Bearer {}", token("alice"));
    let bob = format!("Bearer {}", token("bob"));
    let as_alice = [("Authorization", alice.as_str())];
    let as_bob = [("Authorization", bob.as_str())];
    let mut c = Client::connect(&format!("{}?token={}", node.ws_url(), token("alice"))).await;
    c.ok(json!({"type":"create","room":"r"})).await;

    // Without a token: 401, on every REST route.
    for (method, path) in [
        ("GET", "/rooms"),
        ("GET", "/rooms/r/events"),
        ("POST", "/rooms/r/messages"),
    ] {
        let body = json!({"message":"hi"});
        let answer = http_with(addr, method, path, &[], Some(&body)).await;
        assert_eq!(
            refusal(answer),
            (401, "token_missing".into(), true),
            "{path}"
        );
    }
    // A token in the query string is not read by the REST API.
    let q = format!("/rooms?token={}", token("alice"));
    let (status, ..) = http_with(addr, "GET", &q, &[], None).await;
    assert_eq!(status, 401);
    let expired = format!(
        "Bearer {}",
        sign(SECRET, json!({"sub":"alice","exp":now() - 120}))
    );
    let answer = http_with(addr, "GET", "/rooms", &[("Authorization", &expired)], None).await;
    assert_eq!(refusal(answer).1, "token_expired");

    // With one.
    let (status, _, body) = http_with(addr, "GET", "/rooms", &as_alice, None).await;
    assert_eq!(status, 200, "{body}");
    let msg = json!({"message":"from rest"});
    let (status, _, body) =
        http_with(addr, "POST", "/rooms/r/messages", &as_alice, Some(&msg)).await;
    assert_eq!(status, 201, "{body}");
    let event: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(event["user_id"], "alice");
    let same = json!({"user_id":"alice","message":"again"});
    let (status, ..) = http_with(addr, "POST", "/rooms/r/messages", &as_alice, Some(&same)).await;
    assert_eq!(status, 201);
    // A body that speaks for someone else.
    let other = json!({"user_id":"bob","message":"not mine"});
    let answer = http_with(addr, "POST", "/rooms/r/messages", &as_alice, Some(&other)).await;
    assert_eq!(refusal(answer), (403, "user_mismatch".into(), false));

    // History over REST is for members only in token mode.
    let (status, _, body) = http_with(addr, "GET", "/rooms/r/events", &as_alice, None).await;
    assert_eq!(status, 200, "{body}");
    let page: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["events"].as_array().unwrap().len(), 3, "{page}");
    let answer = http_with(addr, "GET", "/rooms/r/events", &as_bob, None).await;
    assert_eq!(refusal(answer), (403, "not_a_member".into(), false));
    let answer = http_with(addr, "POST", "/rooms/r/messages", &as_bob, Some(&msg)).await;
    assert_eq!(refusal(answer).1, "not_a_member");

    // /health and /metrics stay open.
    let (status, _, body) = http_with(addr, "GET", "/health", &[], None).await;
    assert_eq!(status, 200, "{body}");
    let (status, ..) = http_with(addr, "GET", "/metrics", &[], None).await;
    assert_eq!(status, 200);
}

on_both_stores!(rest_needs_the_bearer_token);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_origins_limit_web_pages() {
    let node = TestNode::start_with(
        Backend::Sqlite,
        &[(
            "ALLOWED_ORIGINS",
            "https://chat.example.com, http://localhost:3000",
        )],
    )
    .await;
    let addr = node.addr.as_str();
    let own = format!("http://{addr}");
    for (origin, want) in [
        (Some("https://chat.example.com"), 101),
        (Some("https://CHAT.example.com:443"), 101),
        (Some("http://localhost:3000"), 101),
        (None, 101),
        (Some(own.as_str()), 101),
        (Some("https://evil.example"), 403),
        (Some("http://chat.example.com"), 403),
        (Some("null"), 403),
    ] {
        let headers: Vec<(&str, &str)> = origin.iter().map(|o| ("Origin", *o)).collect();
        let answer = ws_handshake(addr, "/ws", &headers).await;
        if want == 101 {
            assert_eq!(answer.0, 101, "{origin:?}: {answer:?}");
        } else {
            assert_eq!(
                refusal(answer),
                (403, "origin_not_allowed".into(), false),
                "{origin:?}"
            );
        }
    }
    // A real client from a listed origin.
    let c = Client::connect_with(&node.ws_url(), &[("Origin", "https://chat.example.com")]).await;
    assert_eq!(c.hello["type"], "hello");

    // Unset: every origin.
    let open = TestNode::start(Backend::Sqlite).await;
    let (status, ..) = ws_handshake(&open.addr, "/ws", &[("Origin", "https://evil.example")]).await;
    assert_eq!(status, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_never_reaches_a_log_line() {
    let node = token_node(Backend::Sqlite, &[("RUST_LOG", "trace")]).await;
    let good = token("grace");
    let expired = sign(SECRET, json!({"sub":"grace","exp":now() - 120}));
    let mut c = Client::connect(&format!("{}?token={good}&user_id=grace", node.ws_url())).await;
    c.ok(json!({"type":"create","room":"logs"})).await;
    let (status, ..) = ws_handshake(&node.addr, &format!("/ws?token={expired}"), &[]).await;
    assert_eq!(status, 401);
    let (status, ..) = ws_handshake(&node.addr, &format!("/ws?token={good}&user_id=x"), &[]).await;
    assert_eq!(status, 401);
    let bearer = format!("Bearer {good}");
    let (status, ..) = http_with(
        &node.addr,
        "GET",
        "/rooms",
        &[("Authorization", &bearer)],
        None,
    )
    .await;
    assert_eq!(status, 200);
    drop(c);
    // Refusals are logged (without the token); the second one is the last thing logged.
    node.wait_for_log(&["refused a WebSocket handshake", "token_expired"])
        .await;
    node.wait_for_log(&["refused a WebSocket handshake", "token_invalid"])
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let lines = node.log_lines();
    assert!(
        lines.iter().filter(|l| l.contains("TRACE")).count() > 20,
        "RUST_LOG=trace should log plenty"
    );
    for t in [&good, &expired] {
        let signature = t.rsplit('.').next().unwrap();
        for line in &lines {
            assert!(!line.contains(signature), "a token in the log: {line}");
        }
    }
    // Not even the start of one (mio's "token=Token(1)" is another token).
    for line in &lines {
        assert!(!line.contains("token=ey"), "a token in the log: {line}");
        assert!(!line.contains("Bearer"), "a header in the log: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confab_token_prints_a_token_the_node_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let run = |env: &[(&str, &str)]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_confab"))
            .args(["token", "alice", "--ttl", "1h"])
            .current_dir(dir.path())
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .expect("run confab token")
    };
    let out = run(&[("AUTH_SECRET", SECRET)]);
    assert!(out.status.success(), "{out:?}");
    let printed = String::from_utf8(out.stdout).unwrap();
    let t = printed.trim();
    assert_eq!(t.split('.').count(), 3, "{printed:?}");
    assert_eq!(printed.lines().count(), 1);
    // It started nothing and created no store.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);

    let node = token_node(Backend::Sqlite, &[]).await;
    let c = Client::connect(&format!("{}?token={t}", node.ws_url())).await;
    assert_eq!(c.hello["user_id"], "alice");
    // About an hour.
    let claims: Value =
        serde_json::from_slice(&base64_decode(t.split('.').nth(1).unwrap())).unwrap();
    let ttl = claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap();
    assert_eq!(ttl, 3600);

    let out = run(&[]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("AUTH_SECRET is not set"));
}

/// Base64url without padding (a JWT part).
fn base64_decode(s: &str) -> Vec<u8> {
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut bits = 0u32;
    let mut n = 0;
    let mut out = Vec::new();
    for c in s.bytes() {
        let v = alphabet.iter().position(|&a| a == c).expect("base64url") as u32;
        bits = (bits << 6) | v;
        n += 6;
        if n >= 8 {
            n -= 8;
            out.push((bits >> n) as u8);
            bits &= (1 << n) - 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_mode_beyond_loopback_warns_at_start() {
    const WARNING: &str = "anyone who can reach this port can speak as any user";
    let wide = TestNode::start_with(Backend::Sqlite, &[("HOST", "0.0.0.0")]).await;
    wide.wait_for_log(&["WARN", "open mode on 0.0.0.0:", WARNING])
        .await;
    // The origins line comes after the mode's: once it is there, a warning would be too.
    let quiet = |n: &TestNode| !n.log_lines().iter().any(|l| l.contains(WARNING));
    let local = TestNode::start(Backend::Sqlite).await;
    local
        .wait_for_log(&["WebSocket handshakes from web pages"])
        .await;
    local
        .wait_for_log(&["open mode: clients choose their user_id"])
        .await;
    assert!(quiet(&local));
    let tokens = token_node(Backend::Sqlite, &[("HOST", "0.0.0.0")]).await;
    tokens
        .wait_for_log(&["WebSocket handshakes from web pages"])
        .await;
    assert!(quiet(&tokens));
}

#[test]
fn nginx_logs_no_query_string() {
    for file in ["nginx/confab.conf.template", "nginx/compose.conf"] {
        let text =
            std::fs::read_to_string(format!("{}/{file}", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let code: Vec<&str> = text
            .lines()
            .map(|l| l.split('#').next().unwrap_or(""))
            .collect();
        for forbidden in [
            "$request ",
            "$request\"",
            "$request'",
            "$request_uri",
            "$args",
            "$query_string",
            "$arg_token",
            "$http_referer",
            "$http_authorization",
        ] {
            assert!(
                !code.iter().any(|l| l.contains(forbidden)),
                "{file} logs {forbidden}"
            );
        }
        // Every access_log is off or uses the format without the query string.
        for line in code
            .iter()
            .filter(|l| l.trim_start().starts_with("access_log"))
        {
            assert!(
                line.contains(" off") || line.contains("confab_noquery"),
                "{file}: {line}"
            );
        }
        assert!(text.contains("log_format confab_noquery"), "{file}");
    }
}
