//! HTTP on the WebSocket's port: `/ws` (the upgrade), `/health`, `/metrics`,
//! the web client at `/`, and the REST API ([`rest`]). Handlers ask the
//! ChatServer or the store; they hold no state.

pub mod limit;
pub mod openapi;
mod rest;

use std::time::Duration;

use actix_web::http::{header, StatusCode};
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{json, Value};

use crate::metrics::CONTENT_TYPE as METRICS_CONTENT_TYPE;
use crate::node::NodeContext;
use crate::protocol::{error_json, ErrorCode, ProtoError, RoomName, UserId};
use crate::session;
use openapi::{Method, Route};

/// How long `/health` waits for each service.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);

/// The routes: each entry registers a handler and documents it in
/// `/openapi.json` ([`openapi::document`]), from one table.
macro_rules! routes {
    ($( $handler:path => $route:expr ),* $(,)?) => {
        /// Every route this node serves, as registered and as documented.
        pub const ROUTES: &[Route] = &[ $( $route ),* ];

        pub fn routes(cfg: &mut web::ServiceConfig) {
            $({
                const R: Route = $route;
                cfg.route(R.path, R.method.route().to($handler));
            })*
        }
    };
}

const ROOM_READER: &[(&str, &str)] = &[(
    "user_id",
    "open mode: the reader (a private room needs a member)",
)];
const HISTORY_QUERY: &[(&str, &str)] = &[
    ("since", "events with a seq above this"),
    ("before", "events with a seq below this"),
    ("limit", "1-1000, default 100"),
    ("user_id", "open mode: ignored (a private room answers 404)"),
];

routes! {
    index => Route::new(Method::Get, "/", "the web chat").tag("web").content("text/html").open(),
    app_js => Route::new(Method::Get, "/app.js", "the web chat's code").tag("web").content("text/javascript").open(),
    confab_js => Route::new(Method::Get, "/confab.js", "the client module (docs/client.md)").tag("web").content("text/javascript").open(),
    app_css => Route::new(Method::Get, "/app.css", "the web chat's style").tag("web").content("text/css").open(),
    session::upgrade => Route::new(Method::Get, "/ws", "upgrade to the WebSocket protocol (/asyncapi.json)")
        .tag("web").query(&[("user_id", "the connection's user (open mode)"), ("token", "the JWT (token mode)")]).ok(101, "Error").open(),
    health => Route::new(Method::Get, "/health", "whether the store and Redis answer").tag("operations").ok(200, "Health").open(),
    metrics => Route::new(Method::Get, "/metrics", "the metrics, OpenMetrics text").tag("operations")
        .content("application/openmetrics-text").open(),
    stats => Route::new(Method::Get, "/stats", "rooms, events, connections and the nodes alive").tag("operations").ok(200, "Stats").open(),
    whoami => Route::new(Method::Get, "/whoami", "who the request's credentials speak for").tag("operations").ok(200, "WhoAmI"),
    openapi_json => Route::new(Method::Get, "/openapi.json", "this document").tag("operations").open(),
    asyncapi_json => Route::new(Method::Get, "/asyncapi.json", "the WebSocket protocol, AsyncAPI 3").tag("operations").open(),
    rest::rooms => Route::new(Method::Get, "/rooms", "the rooms the caller may see (a list of RoomInfo)").ok(200, "RoomInfo"),
    rest::create => Route::new(Method::Post, "/rooms", "create a room").body("CreateBody").ok(201, "Ack"),
    rest::events => Route::new(Method::Get, "/rooms/{room}/events", "a page of the room's events").query(HISTORY_QUERY).ok(200, "History"),
    rest::read_room => Route::new(Method::Get, "/rooms/{room}/members", "the room's members").query(ROOM_READER).ok(200, "Members"),
    rest::read_room => Route::new(Method::Get, "/rooms/{room}/bans", "the room's bans (owner and admins)").query(ROOM_READER).ok(200, "Bans"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/messages", "post a message (201; 200 for a repeated client_msg_id)").body("MessageBody").ok(201, "Event"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/join", "join").body("CallerBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/leave", "leave").body("CallerBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/invite", "invite a user").body("UserBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/uninvite", "take an invitation back").body("UserBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/kick", "kick a member").body("UserBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/ban", "ban a member").body("BanBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/unban", "lift a ban").body("UserBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/role", "set a member's role (set_role)").body("RoleBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/edit", "edit one's message").body("EditBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/delete", "delete a message").body("SeqBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/react", "react to a message").body("ReactBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/unreact", "take a reaction back").body("ReactBody").ok(200, "Ack"),
    rest::room_action => Route::new(Method::Post, "/rooms/{room}/read", "move the read marker").body("SeqBody").ok(200, "Ack"),
    rest::dm => Route::new(Method::Post, "/dm/{user}", "open (or find) the DM with a user").tag("users").body("CallerBody").ok(200, "Ack"),
    rest::block => Route::new(Method::Post, "/blocks/{user}", "block a user").tag("users").body("CallerBody").ok(200, "Ack"),
    rest::block => Route::new(Method::Delete, "/blocks/{user}", "unblock a user").tag("users").body("CallerBody").ok(200, "Ack"),
}

/// `GET /openapi.json`: [`openapi::document`] of [`ROUTES`].
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(openapi::document(ROUTES))
}

/// `GET /asyncapi.json`: the WebSocket protocol, described in the protocol crate.
async fn asyncapi_json() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(include_str!("../../crates/confab-protocol/asyncapi.json"))
}

/// A file of `static/`, embedded in the binary: the web chat needs no
/// build step and no files beside the binary.
fn embedded(content_type: &'static str, body: &'static str) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(content_type)
        .insert_header((header::CACHE_CONTROL, "no-cache"))
        .body(body)
}

async fn index() -> HttpResponse {
    embedded(
        "text/html; charset=utf-8",
        include_str!("../../static/index.html"),
    )
}

async fn app_js() -> HttpResponse {
    embedded(
        "text/javascript; charset=utf-8",
        include_str!("../../static/app.js"),
    )
}

async fn confab_js() -> HttpResponse {
    embedded(
        "text/javascript; charset=utf-8",
        include_str!("../../static/confab.js"),
    )
}

async fn app_css() -> HttpResponse {
    embedded(
        "text/css; charset=utf-8",
        include_str!("../../static/app.css"),
    )
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
