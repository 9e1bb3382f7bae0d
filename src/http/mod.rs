//! HTTP on the WebSocket's port: `/ws` (the upgrade), `/health`, `/metrics`,
//! the web client at `/`, and the REST API ([`rest`]). Handlers ask the
//! ChatServer or the store; they hold no state.

pub mod limit;
mod rest;

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use crate::node::NodeContext;
use crate::protocol::{error_json, ErrorCode, ProtoError, RoomName, UserId};
use crate::session;

/// How long `/health` waits for each service.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/ws", web::get().to(session::upgrade))
        .route("/health", web::get().to(health))
        .route("/metrics", web::get().to(metrics))
        .route("/whoami", web::get().to(whoami))
        .route("/stats", web::get().to(stats))
        .configure(rest::routes);
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("../../static/index.html"))
}

/// `GET /whoami`: who a request's credentials speak for, so that a browser,
/// which never sees why a WebSocket handshake failed, can ask before it
/// retries. Token mode: 200 `{"mode":"token","user_id":…}`, or the 401
/// error of the token (`token_missing`, `token_expired`, `token_invalid`).
/// Open mode: 200 `{"mode":"open","user_id":null}`.
async fn whoami(req: HttpRequest, node: web::Data<NodeContext>) -> HttpResponse {
    let mode = if node.config.auth.is_some() {
        "token"
    } else {
        "open"
    };
    match rest_user(&req, &node) {
        Ok(user) => HttpResponse::Ok().json(json!({"mode": mode, "user_id": user})),
        Err(e) => error_response(&e, None),
    }
}

/// `GET /stats`: rooms, events, connections and the nodes alive with their
/// connection counts; the same on every node. Rooms and events come from
/// the `rooms` table (a count and a sum of last seqs, never a scan of
/// `events`); nodes and connections from the presence keys in Redis, or
/// this node alone without Redis.
async fn stats(node: web::Data<NodeContext>) -> HttpResponse {
    let (rooms, events) = match tokio::time::timeout(HEALTH_TIMEOUT, node.store.stats()).await {
        Ok(Ok(counts)) => counts,
        Ok(Err(e)) => {
            log::error!("stats read failed: {e}");
            node.metrics.store_errors.inc();
            return error_response(&ProtoError::unavailable(), None);
        }
        Err(_) => return error_response(&ProtoError::unavailable(), None),
    };
    let own = u64::try_from(node.metrics.connections.get()).unwrap_or(0);
    let nodes = match node.bus_health.as_ref().map(|b| b.nodes()) {
        Some(nodes) if !nodes.is_empty() => nodes,
        _ => vec![(node.config.node_id.clone(), own)],
    };
    let connections: u64 = nodes.iter().map(|(_, c)| c).sum();
    HttpResponse::Ok().json(json!({
        "rooms": rooms,
        "events": events,
        "connections": connections,
        "nodes": nodes
            .iter()
            .map(|(name, c)| json!({"node": name, "connections": c}))
            .collect::<Vec<_>>(),
    }))
}

/// 200 when every configured service answers, else 503 naming the one down.
async fn health(node: web::Data<NodeContext>) -> HttpResponse {
    let mut services = serde_json::Map::new();
    let store_up = matches!(
        tokio::time::timeout(HEALTH_TIMEOUT, node.store.ping()).await,
        Ok(Ok(()))
    );
    services.insert(node.store.name().into(), updown(store_up));
    let mut healthy = store_up;
    if let Some(bus) = node.bus_health.as_ref() {
        let up = bus.is_up();
        services.insert("redis".into(), updown(up));
        healthy &= up;
    }
    let body = json!({
        "status": if healthy { "healthy" } else { "unhealthy" },
        "node": node.config.node_id,
        "services": services,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(body)
}

fn updown(up: bool) -> Value {
    Value::from(if up { "up" } else { "down" })
}

async fn metrics(node: web::Data<NodeContext>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(METRICS_CONTENT_TYPE)
        .body(node.metrics.render())
}

/// An error in the protocol's shape, with the HTTP status of its code. A
/// 401 carries `WWW-Authenticate: Bearer` (RFC 6750).
pub(crate) fn error_response(err: &ProtoError, room: Option<&RoomName>) -> HttpResponse {
    let status =
        StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = HttpResponse::build(status);
    match err.code {
        ErrorCode::TokenMissing => {
            response.insert_header((header::WWW_AUTHENTICATE, r#"Bearer realm="confab""#));
        }
        ErrorCode::TokenExpired | ErrorCode::TokenInvalid => {
            response.insert_header((
                header::WWW_AUTHENTICATE,
                r#"Bearer realm="confab", error="invalid_token""#,
            ));
        }
        _ => {}
    }
    response
        .content_type("application/json")
        .body(error_json(None, err, room))
}

/// The user a REST request speaks for: in token mode the subject of its
/// `Authorization: Bearer` token (else the refusal to answer with, a 401),
/// in open mode `None`. The token is never logged.
pub(crate) fn rest_user(
    req: &HttpRequest,
    node: &NodeContext,
) -> Result<Option<UserId>, ProtoError> {
    if let Some(peer) = req.peer_addr() {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        let client = node.config.trusted_proxies.client(peer.ip(), forwarded);
        if !node.rest_limit.allow(client) {
            node.metrics.rate_limited.inc();
            return Err(ProtoError::new(
                ErrorCode::RateLimited,
                "too many requests from this address; slow down",
            ));
        }
    }
    let Some(auth) = node.config.auth.as_ref() else {
        return Ok(None);
    };
    match auth.authenticate_rest(req) {
        Ok(identity) => Ok(Some(identity.user)),
        Err(e) => {
            log::debug!(
                "refused {} {}: {}",
                req.method(),
                req.path(),
                e.code.as_str()
            );
            Err(e)
        }
    }
}
