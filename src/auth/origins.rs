//! Allowed origins (`ALLOWED_ORIGINS`): which web pages may open a
//! WebSocket on this node. A handshake without `Origin` (wscat, programs)
//! and the node's own origin (its web client) are always allowed.

use actix_web::http::header;
use actix_web::HttpRequest;

use crate::protocol::{ErrorCode, ProtoError};

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
