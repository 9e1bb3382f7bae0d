//! Signed identity ("token mode") and allowed origins (docs/security.md,
//! "Identity and origins").
//!
//! With `AUTH_SECRET` (HS256) or `AUTH_PUBLIC_KEY` (a PEM file: RS256 or
//! EdDSA) a node runs in token mode: a WebSocket handshake must carry a JWT
//! (`?token=` or `Authorization: Bearer`), the REST API `Authorization:
//! Bearer`, and the token's `sub` is the user. [`Auth`] verifies tokens;
//! [`Origins`] is `ALLOWED_ORIGINS`. Neither ever logs or shows a token or
//! a secret.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use actix_web::http::header;
use actix_web::HttpRequest;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::{ErrorCode, ProtoError, UserId};

/// Close code for a connection whose token expired (docs/protocol.md, Closing).
pub const CLOSE_TOKEN_EXPIRED: u16 = 4001;
/// The reason sent with [`CLOSE_TOKEN_EXPIRED`].
pub const TOKEN_EXPIRED_REASON: &str =
    "token expired: reconnect with a new token and resume with since";
/// The shortest `AUTH_SECRET` accepted, in bytes (HS256's output size, RFC 7518 §3.2).
pub const MIN_SECRET_BYTES: usize = 32;
/// The largest `AUTH_LEEWAY_SECS` accepted.
pub const MAX_LEEWAY_SECS: u64 = 300;

/// Where a node's verifying key comes from.
pub enum KeySource<'a> {
    /// `AUTH_SECRET`: a shared secret, HS256.
    Secret(&'a str),
    /// `AUTH_PUBLIC_KEY`: the path of a PEM public key, RS256 or EdDSA.
    PublicKeyFile(&'a str),
}

/// How a node verifies tokens: the key, the algorithm it accepts, and the
/// claims it checks. `Debug` never shows the key.
#[derive(Clone)]
pub struct Auth {
    key: DecodingKey,
    algorithm: Algorithm,
    validation: Validation,
    leeway: u64,
    /// HS256 only: the secret, so that `confab token` can sign.
    signing: Option<EncodingKey>,
    issuer: Option<String>,
    audience: Option<String>,
    /// Which setting the key came from, for logs: never the key itself.
    source: String,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Auth")
            .field("algorithm", &self.algorithm)
            .field("key", &self.source)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("leeway_secs", &self.leeway)
            .finish()
    }
}

/// The claims Confab reads; others are ignored (`jsonwebtoken` has
/// already checked `exp`, `nbf`, `iss` and `aud` when it gets here).
#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// A NumericDate; a fractional one is accepted, as `jsonwebtoken` does.
    exp: f64,
}

/// The claims `confab token` signs.
#[derive(Serialize)]
struct MintClaims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
}

/// Who a verified token speaks for, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub user: UserId,
    /// The token's `exp` (seconds since the epoch).
    pub exp: u64,
    /// `exp` + the leeway, in seconds since the epoch: the connection is
    /// closed with 4001 at this moment.
    pub valid_until: u64,
}

impl Identity {
    /// How long from now until [`Identity::valid_until`] (zero when past).
    pub fn remaining(&self) -> Duration {
        Duration::from_secs(self.valid_until).saturating_sub(since_epoch())
    }
}

fn since_epoch() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn missing(message: &str) -> ProtoError {
    ProtoError::new(ErrorCode::TokenMissing, message)
}

fn invalid(message: impl Into<String>) -> ProtoError {
    ProtoError::new(ErrorCode::TokenInvalid, message)
}

impl Auth {
    /// Builds the verifier. Errors name the setting at fault and never
    /// contain the key.
    pub fn new(
        key: KeySource<'_>,
        issuer: Option<String>,
        audience: Option<String>,
        leeway: Duration,
    ) -> anyhow::Result<Auth> {
        let leeway = leeway.as_secs();
        if leeway > MAX_LEEWAY_SECS {
            anyhow::bail!("AUTH_LEEWAY_SECS must be at most {MAX_LEEWAY_SECS}");
        }
        let (key, algorithm, signing, source) = match key {
            KeySource::Secret(secret) => {
                if secret.len() < MIN_SECRET_BYTES {
                    anyhow::bail!(
                        "AUTH_SECRET must be at least {MIN_SECRET_BYTES} bytes \
                         (for example: openssl rand -base64 32)"
                    );
                }
                let bytes = secret.as_bytes();
                let decoding = DecodingKey::from_secret(bytes)
                    .map_err(|_| anyhow::anyhow!("AUTH_SECRET is not a usable HS256 key"))?;
                let encoding = EncodingKey::from_secret(bytes)
                    .map_err(|_| anyhow::anyhow!("AUTH_SECRET is not a usable HS256 key"))?;
                (
                    decoding,
                    Algorithm::HS256,
                    Some(encoding),
                    "AUTH_SECRET".to_owned(),
                )
            }
            KeySource::PublicKeyFile(path) => {
                let pem = std::fs::read(path).map_err(|e| {
                    anyhow::anyhow!("AUTH_PUBLIC_KEY={path}: cannot read the key file: {e}")
                })?;
                let (key, algorithm) = public_key(&pem).ok_or_else(|| {
                    anyhow::anyhow!(
                        "AUTH_PUBLIC_KEY={path}: not a PEM public key of RSA (RS256) or \
                         Ed25519 (EdDSA)"
                    )
                })?;
                (key, algorithm, None, format!("AUTH_PUBLIC_KEY={path}"))
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = leeway;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        // Without AUTH_AUDIENCE a token that names an audience is refused
        // (it was minted for some other service); with it, `aud` is required.
        if let Some(aud) = &audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        Ok(Auth {
            key,
            algorithm,
            validation,
            leeway,
            signing,
            issuer,
            audience,
            source,
        })
    }

    /// The algorithm tokens must be signed with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The clock-skew allowance on `exp` and `nbf`.
    pub fn leeway(&self) -> Duration {
        Duration::from_secs(self.leeway)
    }

    /// One line for the start-up log: algorithm, key source, claims checked.
    pub fn describe(&self) -> String {
        let mut s = format!(
            "token mode: {:?} tokens verified with {}",
            self.algorithm, self.source
        );
        if let Some(iss) = &self.issuer {
            s.push_str(&format!(", iss must be {iss:?}"));
        }
        if let Some(aud) = &self.audience {
            s.push_str(&format!(", aud must be {aud:?}"));
        }
        s.push_str(&format!(", leeway {} s", self.leeway));
        s
    }

    /// Verifies a token: signature, algorithm, `exp` (required, with the
    /// leeway), `nbf` when present, `iss` and `aud` as configured, and `sub`
    /// as a `user_id`.
    pub fn verify(&self, token: &str) -> Result<Identity, ProtoError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| self.refusal(e.kind()))?;
        let claims = data.claims;
        let user = UserId::parse(&claims.sub).map_err(|_| {
            invalid("the token's sub is not a valid user_id (1-64 characters without control characters)")
        })?;
        if !(claims.exp.is_finite() && claims.exp >= 0.0) {
            return Err(invalid("the token's exp is not a valid time"));
        }
        let exp = claims.exp as u64;
        Ok(Identity {
            user,
            exp,
            valid_until: exp.saturating_add(self.leeway),
        })
    }

    /// What the client is told; the reason is about its own token, never the key.
    fn refusal(&self, kind: &ErrorKind) -> ProtoError {
        match kind {
            ErrorKind::ExpiredSignature => ProtoError::new(
                ErrorCode::TokenExpired,
                "the token has expired: get a new one",
            ),
            ErrorKind::ImmatureSignature => invalid("the token is not valid yet (nbf)"),
            ErrorKind::InvalidSignature => invalid("the token's signature does not verify"),
            ErrorKind::InvalidAlgorithm => invalid(format!(
                "the token must be signed with {:?}",
                self.algorithm
            )),
            ErrorKind::MissingRequiredClaim(claim) => {
                invalid(format!("the token has no {claim} claim"))
            }
            ErrorKind::InvalidClaimFormat(claim) => {
                invalid(format!("the token's {claim} claim is malformed"))
            }
            ErrorKind::InvalidIssuer => invalid("the token is from another issuer"),
            ErrorKind::InvalidAudience => invalid("the token is for another audience"),
            _ => invalid("the token is malformed: it is not a signed JWT"),
        }
    }

    /// The identity of a WebSocket handshake: the token comes as `?token=`
    /// (browsers cannot set headers on a WebSocket) or as `Authorization:
    /// Bearer`, not both.
    pub fn authenticate_socket(
        &self,
        req: &HttpRequest,
        query_token: Option<&str>,
    ) -> Result<Identity, ProtoError> {
        let query_token = query_token.filter(|t| !t.is_empty());
        match (query_token, bearer(req)?) {
            (Some(_), Some(_)) => Err(invalid(
                "send the token once: as ?token= or as Authorization: Bearer, not both",
            )),
            (Some(token), None) => self.verify(token),
            (None, Some(token)) => self.verify(&token),
            (None, None) => Err(missing(
                "this server needs a token: connect with ?token=<token> or \
                 Authorization: Bearer <token>",
            )),
        }
    }

    /// The identity of a REST request: `Authorization: Bearer` only (a
    /// token in a URL ends up in logs and browser history).
    pub fn authenticate_rest(&self, req: &HttpRequest) -> Result<Identity, ProtoError> {
        match bearer(req)? {
            Some(token) => self.verify(&token),
            None => Err(missing(
                "this server needs a token: send Authorization: Bearer <token>",
            )),
        }
    }

    /// A token for `user`, valid for `ttl`, signed with `AUTH_SECRET`
    /// (`confab token`). It carries `iss` and `aud` when they are configured,
    /// so the node that signed it accepts it.
    pub fn sign(&self, user: &UserId, ttl: Duration) -> anyhow::Result<String> {
        let Some(key) = &self.signing else {
            anyhow::bail!(
                "confab token signs with AUTH_SECRET (HS256); with AUTH_PUBLIC_KEY the tokens \
                 come from whoever holds the private key"
            );
        };
        let now = since_epoch().as_secs();
        let claims = MintClaims {
            sub: user.as_str(),
            iat: now,
            exp: now.saturating_add(ttl.as_secs()),
            iss: self.issuer.as_deref(),
            aud: self.audience.as_deref(),
        };
        Ok(jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            key,
        )?)
    }
}

/// An RSA (RS256) or Ed25519 (EdDSA) public key from PEM text.
fn public_key(pem: &[u8]) -> Option<(DecodingKey, Algorithm)> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Some((key, Algorithm::RS256));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Some((key, Algorithm::EdDSA));
    }
    None
}

/// The token of an `Authorization: Bearer` header; `None` without the header.
fn bearer(req: &HttpRequest) -> Result<Option<String>, ProtoError> {
    let Some(value) = req.headers().get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| invalid("the Authorization header must be \"Bearer <token>\""))?;
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            let token = token.trim();
            if token.is_empty() {
                Err(missing(
                    "the Authorization header has no token after Bearer",
                ))
            } else {
                Ok(Some(token.to_owned()))
            }
        }
        _ => Err(invalid(
            "the Authorization header must be \"Bearer <token>\"",
        )),
    }
}

/// `ALLOWED_ORIGINS`: the web origins whose pages may open a WebSocket,
/// normalised (lowercase scheme and host, no default port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origins(Vec<String>);

impl Origins {
    /// Parses a comma-separated list such as
    /// `https://chat.example.com, http://localhost:3000`.
    pub fn parse(list: &str) -> Result<Origins, String> {
        let mut origins = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            match normalize_origin(entry.strip_suffix('/').unwrap_or(entry)) {
                Some(o) => origins.push(o),
                None => {
                    return Err(format!(
                        "ALLOWED_ORIGINS: {entry:?} is not an origin like https://chat.example.com \
                         (scheme, host and optional port; no path)"
                    ))
                }
            }
        }
        if origins.is_empty() {
            return Err("ALLOWED_ORIGINS lists no origin".into());
        }
        Ok(Origins(origins))
    }

    /// The origins, normalised.
    pub fn list(&self) -> &[String] {
        &self.0
    }

    fn contains(&self, origin: &str) -> bool {
        self.0.iter().any(|o| o == origin)
    }
}

/// `scheme://host[:port]`, lowercase, without the scheme's default port;
/// `None` for anything else (a path, a query, user info, `null`).
pub fn normalize_origin(s: &str) -> Option<String> {
    let (scheme, rest) = s.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c));
    if !scheme_ok || rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let host_port = rest.to_ascii_lowercase();
    // The port is what follows the last ':' outside an IPv6 literal's brackets.
    let (host, port) = match host_port.rfind(':') {
        Some(i) if !host_port[i..].contains(']') => {
            let (h, p) = (&host_port[..i], &host_port[i + 1..]);
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) || p.len() > 5 {
                return None;
            }
            (h.to_owned(), Some(p.parse::<u16>().ok()?))
        }
        _ => (host_port.clone(), None),
    };
    if host.is_empty() || (host.contains(':') && !host.starts_with('[')) {
        return None;
    }
    let default_port = match scheme.as_str() {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    };
    Some(match port {
        Some(p) if Some(p) != default_port => format!("{scheme}://{host}:{p}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Checks a WebSocket handshake's `Origin` against `ALLOWED_ORIGINS`. Allowed:
/// no `ALLOWED_ORIGINS`; no `Origin` header (programs such as wscat send
/// none); a listed origin; the node's own origin (the scheme and host the
/// request came to, so its web client at `/` works).
pub fn check_origin(allowed: Option<&Origins>, req: &HttpRequest) -> Result<(), ProtoError> {
    let Some(allowed) = allowed else {
        return Ok(());
    };
    let values: Vec<_> = req.headers().get_all(header::ORIGIN).collect();
    if values.is_empty() {
        return Ok(());
    }
    let shown = values
        .first()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("?")
        .chars()
        .take(200)
        .collect::<String>();
    let refused = || {
        ProtoError::new(
            ErrorCode::OriginNotAllowed,
            format!("origin {shown} may not open a WebSocket here (ALLOWED_ORIGINS)"),
        )
    };
    let [value] = values.as_slice() else {
        return Err(refused());
    };
    let Some(origin) = value.to_str().ok().and_then(normalize_origin) else {
        return Err(refused());
    };
    if allowed.contains(&origin) {
        return Ok(());
    }
    let info = req.connection_info();
    let own = normalize_origin(&format!("{}://{}", info.scheme(), info.host()));
    if own.as_deref() == Some(origin.as_str()) {
        return Ok(());
    }
    Err(refused())
}

/// Parses a token lifetime such as `30s`, `15m`, `1h` or `2d` (`confab token --ttl`).
pub fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{s:?} is not a duration like 30s, 15m, 1h or 2d: {e}"))?;
    if ttl < Duration::from_secs(1) {
        return Err("the ttl must be at least 1s".into());
    }
    if ttl > Duration::from_secs(366 * 24 * 3600) {
        return Err("the ttl must be at most 366d".into());
    }
    Ok(ttl)
}

/// Parses a `user_id` for `confab token USER`.
pub fn parse_user(s: &str) -> Result<UserId, String> {
    UserId::parse(s).map_err(|e| e.message)
}

#[cfg(test)]
mod tests {
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
        let o =
            Origins::parse(" https://Chat.Example.com , http://localhost:3000/,https://x.io:443")
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
}
