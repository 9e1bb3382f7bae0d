//! The REST API: `GET /rooms`, `GET /rooms/{room}/events` (a `history`
//! page) and `POST /rooms/{room}/messages` (a `message`). Each request is
//! turned into the same command type a WebSocket frame becomes, so both
//! paths apply one rule set and one history read.

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::Value;
use tokio::sync::oneshot;

use super::{error_response, rest_user};
use crate::history;
use crate::messages::{ListRooms, Post};
use crate::node::NodeContext;
use crate::protocol::{
    CommandLimits, ErrorCode, Fields, History, ProtoError, Reply, RoomName, SendMessage,
};

/// How long a REST post waits for its commit.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.route("/rooms", web::get().to(rooms))
        .route("/rooms/{room}/events", web::get().to(events))
        .route("/rooms/{room}/messages", web::post().to(post_message));
}

async fn rooms(req: HttpRequest, node: web::Data<NodeContext>) -> HttpResponse {
    if let Err(e) = rest_user(&req, &node) {
        return error_response(&e, None);
    }
    match node.server.send(ListRooms).await {
        Ok(rooms) => HttpResponse::Ok().json(rooms),
        Err(e) => {
            log::error!("the chat server did not answer /rooms: {e}");
            error_response(&ProtoError::internal(), None)
        }
    }
}

/// `GET /rooms/{room}/events?since=&before=&limit=`: a `history` page; in
/// token mode only for a member (the token's user).
async fn events(
    req: HttpRequest,
    node: web::Data<NodeContext>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let reader = match rest_user(&req, &node) {
        Ok(user) => user,
        Err(e) => return error_response(&e, None),
    };
    let room = match RoomName::parse(&path) {
        Ok(r) => r,
        Err(e) => return error_response(&e, None),
    };
    let obj = Fields::object_from_query(
        query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        [("room", Value::from(room.as_str()))],
    );
    let command = match History::parse(&Fields::new(&obj)) {
        Ok(c) => c,
        Err(e) => return error_response(&e, Some(&room)),
    };
    match history::read(
        &*node.store,
        &node.metrics,
        &room,
        reader.as_ref(),
        command.range,
        node.config.history_max_bytes(),
    )
    .await
    {
        Ok(page) => HttpResponse::Ok().content_type("application/json").body(
            Reply::History {
                reference: None,
                room: &room,
                events: &page.events,
                more: page.more,
            }
            .to_json(),
        ),
        Err(e) => error_response(&e, Some(&room)),
    }
}

/// `POST /rooms/{room}/messages` with `{"user_id","message","client_msg_id"?}`:
/// appends like a WebSocket `message`. In token mode the user is the
/// token's; a `user_id` in the body must be absent or the same.
async fn post_message(
    req: HttpRequest,
    node: web::Data<NodeContext>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let token_user = match rest_user(&req, &node) {
        Ok(user) => user,
        Err(e) => return error_response(&e, None),
    };
    let room = match RoomName::parse(&path) {
        Ok(r) => r,
        Err(e) => return error_response(&e, None),
    };
    let Ok(Value::Object(mut obj)) = serde_json::from_slice::<Value>(&body) else {
        let err = ProtoError::new(ErrorCode::InvalidJson, "the body must be one JSON object");
        return error_response(&err, Some(&room));
    };
    obj.insert("room".into(), Value::from(room.as_str()));
    let fields = Fields::new(&obj);
    let limits = CommandLimits {
        max_message_chars: node.config.max_message_chars,
    };
    let parsed = fields.user_id().and_then(|user| {
        let user = match (user, token_user) {
            (Some(user), Some(token)) if user != token => {
                return Err(ProtoError::new(
                    ErrorCode::UserMismatch,
                    format!("this token speaks for user {token}"),
                ))
            }
            (_, Some(token)) => token,
            (Some(user), None) => user,
            (None, None) => return Err(ProtoError::invalid_field("user_id is required")),
        };
        Ok((user, SendMessage::parse(&fields, limits)?))
    });
    let (user, message) = match parsed {
        Ok(p) => p,
        Err(e) => return error_response(&e, Some(&room)),
    };
    let (tx, rx) = oneshot::channel();
    let post = Post {
        user,
        message,
        reply: tx,
    };
    if node.server.try_send(post).is_err() {
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
                .body(event.to_json())
        }
        Ok(Ok(Err(e))) => error_response(&e, Some(&room)),
        Ok(Err(_)) | Err(_) => error_response(&ProtoError::unavailable(), Some(&room)),
    }
}
