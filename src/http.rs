//! HTTP on the WebSocket's port: `/health`, `/metrics`, the REST API and the
//! web client. Handlers ask the ChatServer or the store; they never hold state.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpResponse};
use serde_json::{json, Value};
use tokio::sync::oneshot;

use crate::protocol::{
    error_frame, ErrorCode, HistoryRange, ProtoError, Reply, RoomName, UserId,
    DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT, MAX_ID_CHARS,
};
use crate::server::{ListRooms, Post};
use crate::session;
use crate::NodeContext;

/// How long `/health` waits for each service.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a REST post waits for its commit.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/ws", web::get().to(session::upgrade))
        .route("/health", web::get().to(health))
        .route("/metrics", web::get().to(metrics))
        .route("/rooms", web::get().to(rooms))
        .route("/rooms/{room}/events", web::get().to(events))
        .route("/rooms/{room}/messages", web::post().to(post_message));
}

async fn index() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(include_str!("../static/index.html"))
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
        .content_type("text/plain; version=0.0.4")
        .body(node.metrics.render(&node.config.node_id))
}

async fn rooms(node: web::Data<NodeContext>) -> HttpResponse {
    match node.server.send(ListRooms).await {
        Ok(rooms) => HttpResponse::Ok().json(rooms),
        Err(e) => {
            log::error!("the chat server did not answer /rooms: {e}");
            error_response(&ProtoError::internal(), None)
        }
    }
}

fn error_response(err: &ProtoError, room: Option<&RoomName>) -> HttpResponse {
    let status =
        StatusCode::from_u16(err.code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(status)
        .content_type("application/json")
        .body(error_frame(None, err, room).to_string())
}

fn seq_param(query: &HashMap<String, String>, name: &str) -> Result<Option<i64>, ProtoError> {
    match query.get(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => match v.parse::<i64>() {
            Ok(n) if n >= 0 => Ok(Some(n)),
            _ => Err(ProtoError::invalid_field(format!(
                "{name} must be an integer >= 0"
            ))),
        },
    }
}

/// `GET /rooms/{room}/events?since=&before=&limit=`: a `history` page.
async fn events(
    node: web::Data<NodeContext>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let room = match RoomName::parse(path.as_str()) {
        Ok(r) => r,
        Err(e) => return error_response(&e, None),
    };
    let range = (|| {
        let limit = seq_param(&query, "limit")?.unwrap_or(DEFAULT_HISTORY_LIMIT);
        if !(1..=MAX_HISTORY_LIMIT).contains(&limit) {
            return Err(ProtoError::invalid_field(
                "limit must be an integer from 1 to 1000",
            ));
        }
        Ok(HistoryRange {
            since: seq_param(&query, "since")?,
            before: seq_param(&query, "before")?,
            limit,
        })
    })();
    let range = match range {
        Ok(r) => r,
        Err(e) => return error_response(&e, Some(&room)),
    };
    let page = async {
        match node.store.check_reader(&room, None).await? {
            Some(refusal) => Ok(Err(refusal.to_error(&room))),
            None => Ok(Ok(node.store.events(&room, range).await?)),
        }
    };
    match page.await {
        Ok(Ok(page)) => HttpResponse::Ok().content_type("application/json").body(
            Reply::History {
                reference: None,
                room: &room,
                events: &page.events,
                more: page.more,
            }
            .to_frame()
            .to_string(),
        ),
        Ok(Err(e)) => error_response(&e, Some(&room)),
        Err(e) => {
            let e: crate::store::StoreError = e;
            log::error!("events read failed: {e}");
            node.metrics.store_errors.inc();
            error_response(&ProtoError::unavailable(), Some(&room))
        }
    }
}

/// `POST /rooms/{room}/messages`: appends like a WebSocket `message`.
async fn post_message(
    node: web::Data<NodeContext>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let room = match RoomName::parse(path.as_str()) {
        Ok(r) => r,
        Err(e) => return error_response(&e, None),
    };
    let post = match parse_post(&body, node.config.max_message_chars) {
        Ok(p) => p,
        Err(e) => return error_response(&e, Some(&room)),
    };
    let (tx, rx) = oneshot::channel();
    let (user, text, client_msg_id) = post;
    let msg = Post {
        room: room.clone(),
        user,
        text,
        client_msg_id,
        reply: tx,
    };
    if node.server.try_send(msg).is_err() {
        return error_response(&ProtoError::unavailable(), Some(&room));
    }
    match tokio::time::timeout(POST_TIMEOUT, rx).await {
        Ok(Ok(Ok((event, duplicate)))) => {
            let status = if duplicate {
                StatusCode::OK
            } else {
                StatusCode::CREATED
            };
            HttpResponse::build(status)
                .content_type("application/json")
                .body(event.to_frame().to_string())
        }
        Ok(Ok(Err(e))) => error_response(&e, Some(&room)),
        Ok(Err(_)) | Err(_) => error_response(&ProtoError::unavailable(), Some(&room)),
    }
}

/// The body `{"user_id","message","client_msg_id"?}`, checked as a WebSocket
/// `message` would be.
fn parse_post(
    body: &[u8],
    max_chars: usize,
) -> Result<(UserId, String, Option<String>), ProtoError> {
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(body) else {
        return Err(ProtoError::new(
            ErrorCode::InvalidJson,
            "the body must be one JSON object",
        ));
    };
    let user = match obj.get("user_id") {
        Some(v) => UserId::from_json(v)?,
        None => return Err(ProtoError::invalid_field("user_id is required")),
    };
    let text = match obj.get("message") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        Some(Value::String(_)) => {
            return Err(ProtoError::invalid_field("message must not be empty"))
        }
        _ => return Err(ProtoError::invalid_field("message must be a string")),
    };
    let chars = text.chars().count();
    if chars > max_chars {
        return Err(ProtoError::new(
            ErrorCode::MessageTooLong,
            format!("message is {chars} characters; the maximum is {max_chars}"),
        ));
    }
    let client_msg_id = match obj.get("client_msg_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= MAX_ID_CHARS => {
            Some(s.clone())
        }
        _ => {
            return Err(ProtoError::invalid_field(
                "client_msg_id must be 1-64 characters",
            ))
        }
    };
    Ok((user, text, client_msg_id))
}
