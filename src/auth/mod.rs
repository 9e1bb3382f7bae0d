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

mod origins;

pub use origins::{check_origin, normalize_origin, Origins};

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
mod tests;
