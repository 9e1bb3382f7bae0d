//! The token checks and the origin rules, without a socket.
use super::*;
use actix_web::test::TestRequest;
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

fn now() -> u64 {
    since_epoch().as_secs()
}

fn hs(leeway: u64) -> Auth {
    Auth::new(
        KeySource::Secret(SECRET),
        None,
        None,
        Duration::from_secs(leeway),
    )
    .unwrap()
}

fn mint(secret: &str, claims: serde_json::Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn code(r: Result<Identity, ProtoError>) -> ErrorCode {
    r.unwrap_err().code
}

#[test]
fn a_valid_token_names_its_subject() {
    let exp = now() + 600;
    let id = hs(30)
        .verify(&mint(SECRET, json!({"sub":"alice","exp":exp})))
        .unwrap();
    assert_eq!(id.user.as_str(), "alice");
    assert_eq!((id.exp, id.valid_until), (exp, exp + 30));
    assert!(id.remaining() > Duration::from_secs(600));
}

#[test]
fn refusals_say_which() {
    let a = hs(30);
    let t = now();
    assert_eq!(
        code(a.verify(&mint(SECRET, json!({"sub":"a","exp":t - 120})))),
        ErrorCode::TokenExpired
    );
    // Within the leeway it is still good.
    assert!(a
        .verify(&mint(SECRET, json!({"sub":"a","exp":t - 10})))
        .is_ok());
    let other = "another-secret-of-at-least-32-bytes!!";
    assert_eq!(
        code(a.verify(&mint(other, json!({"sub":"a","exp":t + 60})))),
        ErrorCode::TokenInvalid
    );
    assert_eq!(code(a.verify("not.a.jwt")), ErrorCode::TokenInvalid);
    assert_eq!(code(a.verify("garbage")), ErrorCode::TokenInvalid);
    // exp is required; sub is required and must be a user_id.
    assert_eq!(
        code(a.verify(&mint(SECRET, json!({"sub":"a"})))),
        ErrorCode::TokenInvalid
    );
    assert_eq!(
        code(a.verify(&mint(SECRET, json!({"exp":t + 60})))),
        ErrorCode::TokenInvalid
    );
    assert_eq!(
        code(a.verify(&mint(SECRET, json!({"sub":"","exp":t + 60})))),
        ErrorCode::TokenInvalid
    );
    assert_eq!(
        code(a.verify(&mint(SECRET, json!({"sub":"a\u{7}","exp":t + 60})))),
        ErrorCode::TokenInvalid
    );
    // nbf in the future.
    assert_eq!(
        code(a.verify(&mint(
            SECRET,
            json!({"sub":"a","exp":t + 600,"nbf":t + 300})
        ))),
        ErrorCode::TokenInvalid
    );
    // An audience without AUTH_AUDIENCE: minted for someone else.
    assert_eq!(
        code(a.verify(&mint(
            SECRET,
            json!({"sub":"a","exp":t + 60,"aud":"billing"})
        ))),
        ErrorCode::TokenInvalid
    );
}

#[test]
fn alg_none_and_other_algorithms_are_refused() {
    let a = hs(30);
    // {"alg":"none"} with an empty signature.
    let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    let body = "eyJzdWIiOiJhIiwiZXhwIjo0MTAyNDQ0ODAwfQ";
    assert_eq!(
        code(a.verify(&format!("{header}.{body}."))),
        ErrorCode::TokenInvalid
    );
    let hs512 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS512),
        &json!({"sub":"a","exp":now() + 60}),
        &EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap();
    let e = a.verify(&hs512).unwrap_err();
    assert_eq!(e.code, ErrorCode::TokenInvalid);
    assert!(e.message.contains("HS256"), "{e:?}");
}

#[test]
fn issuer_and_audience_are_required_when_set() {
    let a = Auth::new(
        KeySource::Secret(SECRET),
        Some("https://id.example".into()),
        Some("confab".into()),
        Duration::from_secs(0),
    )
    .unwrap();
    let t = now() + 60;
    let good = json!({"sub":"a","exp":t,"iss":"https://id.example","aud":"confab"});
    assert!(a.verify(&mint(SECRET, good)).is_ok());
    for bad in [
        json!({"sub":"a","exp":t,"aud":"confab"}),
        json!({"sub":"a","exp":t,"iss":"https://id.example"}),
        json!({"sub":"a","exp":t,"iss":"https://evil.example","aud":"confab"}),
        json!({"sub":"a","exp":t,"iss":"https://id.example","aud":"other"}),
    ] {
        assert_eq!(
            code(a.verify(&mint(SECRET, bad.clone()))),
            ErrorCode::TokenInvalid,
            "{bad}"
        );
    }
    // confab token includes them, so the node accepts what it signs.
    let user = UserId::parse("bob").unwrap();
    let token = a.sign(&user, Duration::from_secs(60)).unwrap();
    assert_eq!(a.verify(&token).unwrap().user, user);
}

#[test]
fn settings_are_checked_and_never_shown() {
    let short = Auth::new(KeySource::Secret("short"), None, None, Duration::ZERO);
    assert!(short.unwrap_err().to_string().contains("AUTH_SECRET"));
    let leeway = Auth::new(
        KeySource::Secret(SECRET),
        None,
        None,
        Duration::from_secs(3600),
    );
    assert!(leeway.unwrap_err().to_string().contains("AUTH_LEEWAY_SECS"));
    let missing = Auth::new(
        KeySource::PublicKeyFile("/nonexistent/key.pem"),
        None,
        None,
        Duration::ZERO,
    );
    assert!(missing.unwrap_err().to_string().contains("AUTH_PUBLIC_KEY"));
    let dir = tempfile::tempdir().unwrap();
    let junk = dir.path().join("junk.pem");
    std::fs::write(
        &junk,
        "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
    )
    .unwrap();
    let junk = Auth::new(
        KeySource::PublicKeyFile(junk.to_str().unwrap()),
        None,
        None,
        Duration::ZERO,
    );
    assert!(junk.unwrap_err().to_string().contains("AUTH_PUBLIC_KEY"));
    let shown = format!("{:?} {}", hs(30), hs(30).describe());
    assert!(!shown.contains(SECRET), "{shown}");
    assert!(shown.contains("HS256"), "{shown}");
}

#[test]
fn an_ed25519_public_key_verifies_eddsa() {
    // RFC 8032 test vector 1 (private key 9d61b1…, public key d75a98…).
    let private = "-----BEGIN PRIVATE KEY-----\n\
        MC4CAQAwBQYDK2VwBCIEIJ1hsZ3v/VpguoRK9JLsLMREScVpezJpGXA7rAMcrn9g\n\
        -----END PRIVATE KEY-----\n";
    let public = "-----BEGIN PUBLIC KEY-----\n\
        MCowBQYDK2VwAyEA11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=\n\
        -----END PUBLIC KEY-----\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ed.pem");
    std::fs::write(&path, public).unwrap();
    let a = Auth::new(
        KeySource::PublicKeyFile(path.to_str().unwrap()),
        None,
        None,
        Duration::ZERO,
    )
    .unwrap();
    assert_eq!(a.algorithm(), Algorithm::EdDSA);
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::EdDSA),
        &json!({"sub":"carol","exp":now() + 60}),
        &EncodingKey::from_ed_pem(private.as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(a.verify(&token).unwrap().user.as_str(), "carol");
    // An HS256 token signed with the public key's bytes is refused.
    let confused = mint(public, json!({"sub":"carol","exp":now() + 60}));
    assert_eq!(code(a.verify(&confused)), ErrorCode::TokenInvalid);
    assert!(a
        .sign(&UserId::parse("x").unwrap(), Duration::from_secs(1))
        .is_err());
}

#[test]
fn the_token_comes_from_the_query_or_the_header_once() {
    let a = hs(0);
    let token = mint(SECRET, json!({"sub":"dave","exp":now() + 60}));
    let plain = TestRequest::default().to_http_request();
    assert_eq!(
        a.authenticate_socket(&plain, None).unwrap_err().code,
        ErrorCode::TokenMissing
    );
    assert_eq!(
        a.authenticate_socket(&plain, Some("")).unwrap_err().code,
        ErrorCode::TokenMissing
    );
    assert!(a.authenticate_socket(&plain, Some(&token)).is_ok());
    let with_header = TestRequest::default()
        .insert_header(("Authorization", format!("bearer {token}")))
        .to_http_request();
    assert!(a.authenticate_socket(&with_header, None).is_ok());
    assert!(a.authenticate_rest(&with_header).is_ok());
    assert_eq!(
        a.authenticate_socket(&with_header, Some(&token))
            .unwrap_err()
            .code,
        ErrorCode::TokenInvalid
    );
    assert_eq!(
        a.authenticate_rest(&plain).unwrap_err().code,
        ErrorCode::TokenMissing
    );
    let basic = TestRequest::default()
        .insert_header(("Authorization", "Basic YTpi"))
        .to_http_request();
    assert_eq!(
        a.authenticate_rest(&basic).unwrap_err().code,
        ErrorCode::TokenInvalid
    );
}

#[test]
fn origins_are_normalised() {
    let o = Origins::parse(" https://Chat.Example.com , http://localhost:3000/,https://x.io:443")
        .unwrap();
    assert_eq!(
        o.list(),
        [
            "https://chat.example.com",
            "http://localhost:3000",
            "https://x.io"
        ]
    );
    assert!(Origins::parse("chat.example.com").is_err());
    assert!(Origins::parse("https://chat.example.com/app").is_err());
    assert!(Origins::parse(" , ").is_err());
    assert_eq!(
        normalize_origin("http://[::1]:8080").as_deref(),
        Some("http://[::1]:8080")
    );
    assert_eq!(normalize_origin("HTTP://A:80").as_deref(), Some("http://a"));
    assert_eq!(normalize_origin("null"), None);
    assert_eq!(normalize_origin("https://a:99999"), None);
    assert_eq!(normalize_origin("https://u@a"), None);
}

#[test]
fn origin_check() {
    let allowed = Origins::parse("https://chat.example.com").unwrap();
    let req = |origin: Option<&str>| {
        let mut r = TestRequest::default().insert_header(("Host", "node.internal:8080"));
        if let Some(o) = origin {
            r = r.insert_header(("Origin", o));
        }
        r.to_http_request()
    };
    assert!(check_origin(None, &req(Some("https://evil.example"))).is_ok());
    assert!(check_origin(Some(&allowed), &req(None)).is_ok());
    assert!(check_origin(Some(&allowed), &req(Some("https://chat.example.com"))).is_ok());
    assert!(check_origin(Some(&allowed), &req(Some("https://chat.example.com:443"))).is_ok());
    // The node's own origin: its web client at /.
    assert!(check_origin(Some(&allowed), &req(Some("http://node.internal:8080"))).is_ok());
    let e = check_origin(Some(&allowed), &req(Some("https://evil.example"))).unwrap_err();
    assert_eq!(e.code, ErrorCode::OriginNotAllowed);
    assert!(check_origin(Some(&allowed), &req(Some("null"))).is_err());
    assert!(check_origin(Some(&allowed), &req(Some("https://node.internal:8080"))).is_err());
}

#[test]
fn ttl_and_user_of_confab_token() {
    assert_eq!(parse_ttl("30s"), Ok(Duration::from_secs(30)));
    assert_eq!(parse_ttl("15m"), Ok(Duration::from_secs(900)));
    assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
    assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(2 * 86400)));
    assert!(parse_ttl("soon").is_err());
    assert!(parse_ttl("0s").is_err());
    assert!(parse_ttl("400d").is_err());
    assert!(parse_user("alice").is_ok());
    assert!(parse_user("").is_err());
}
