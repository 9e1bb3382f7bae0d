//! The REST API: every command a bot needs, each turned into the same
//! command type a WebSocket frame becomes, so both paths apply one rule set,
//! one history read and one ChatServer. Routes (docs/protocol.md, REST):
//!
//! - `GET /rooms`, `GET /rooms/{room}/events` (a `history` page),
//!   `GET /rooms/{room}/members`, `GET /rooms/{room}/bans`;
//! - `POST /rooms` (`create`), `POST /rooms/{room}/messages` (`message`),
//!   `POST /rooms/{room}/{join|leave|invite|uninvite|kick|ban|unban|role}`,
//!   `POST /rooms/{room}/{edit|delete|react|unreact|read}`;
//! - `POST /dm/{user}`, `POST /blocks/{user}`, `DELETE /blocks/{user}`.
//!
//! The caller is the token's user in token mode, else `user_id` from the
//! body (or the query string of a `GET`).

use std::collections::HashMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::{web, HttpRequest, HttpResponse};
use serde_json::{Map, Value};
use tokio::sync::oneshot;

use super::{error_response, rest_user};
use crate::history;
use crate::messages::{HttpDone, Post};
use crate::node::NodeContext;
use crate::protocol::{
    Command, CommandLimits, ErrorCode, Fields, History, ProtoError, Reply, RoomName, UserId,
};

/// How long a REST command waits for its commit.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// The commands of `POST /rooms/{room}/{action}`, by action.
const ROOM_ACTIONS: &[(&str, &str)] = &[
    ("messages", "message"),
    ("join", "join"),
    ("leave", "leave"),
    ("invite", "invite"),
    ("uninvite", "uninvite"),
    ("kick", "kick"),
    ("ban", "ban"),
    ("unban", "unban"),
    ("role", "set_role"),
    ("edit", "edit"),
    ("delete", "delete"),
    ("react", "react"),
    ("unreact", "unreact"),
    ("read", "read"),
];

pub(super) async fn rooms(req: HttpRequest, node: web::Data<NodeContext>) -> HttpResponse {
    let user = match rest_user(&req, &node) {
        Ok(user) => user,
        Err(e) => return error_response(&e, None),
    };
    // The `rooms` reply a socket of this user would get; the route answers
    // with its list.
    match post(&node, user, Command::Rooms).await {
        Ok(done) => {
            let reply: Value = serde_json::from_str(&done.body).unwrap_or_default();
            HttpResponse::Ok().json(&reply["rooms"])
        }
        Err(e) => error_response(&e, None),
    }
}

/// Hands a command to the ChatServer and waits for its outcome.
async fn post(
    node: &NodeContext,
    user: Option<UserId>,
    command: Command,
) -> Result<HttpDone, ProtoError> {
    let (tx, rx) = oneshot::channel();
    let post = Post {
        user,
        command,
        reply: tx,
    };
    if node.server.try_send(post).is_err() {
        return Err(ProtoError::unavailable());
    }
    match tokio::time::timeout(POST_TIMEOUT, rx).await {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(_)) | Err(_) => Err(ProtoError::unavailable()),
    }
}

/// `GET /rooms/{room}/events?since=&before=&limit=`: a `history` page; in
/// token mode only for a member (the token's user).
pub(super) async fn events(
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

/// Reads a JSON object body; an empty body is an empty object.
fn body_object(body: &[u8]) -> Result<Map<String, Value>, ProtoError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(obj)) => Ok(obj),
        _ => Err(ProtoError::new(
            ErrorCode::InvalidJson,
            "the body must be one JSON object",
        )),
    }
}

/// `POST /rooms` with `{"room","private"?}`: `create`.
pub(super) async fn create(
    req: HttpRequest,
    node: web::Data<NodeContext>,
    body: web::Bytes,
) -> HttpResponse {
    match body_object(&body) {
        Ok(obj) => submit(&req, &node, "create", obj).await,
        Err(e) => error_response(&e, None),
    }
}

/// `POST /rooms/{room}/{action}` for each action of [`ROOM_ACTIONS`] (each
/// its own route): the command named by the path's last segment.
pub(super) async fn room_action(
    req: HttpRequest,
    node: web::Data<NodeContext>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let action = req.path().rsplit('/').next().unwrap_or_default();
    let Some((_, kind)) = ROOM_ACTIONS.iter().find(|(a, _)| *a == action) else {
        return error_response(&ProtoError::internal(), None);
    };
    let room = match RoomName::parse(&path) {
        Ok(r) => r,
        Err(e) => return error_response(&e, None),
    };
    match body_object(&body) {
        Ok(mut obj) => {
            obj.insert("room".into(), Value::from(room.as_str()));
            submit(&req, &node, kind, obj).await
        }
        Err(e) => error_response(&e, Some(&room)),
    }
}

/// `GET /rooms/{room}/members` and `GET /rooms/{room}/bans`.
pub(super) async fn read_room(
    req: HttpRequest,
    node: web::Data<NodeContext>,
    path: web::Path<String>,
    query: web::Query<HashMap<String, String>>,
) -> HttpResponse {
    let room = match RoomName::parse(&path) {
        Ok(r) => r,
        Err(e) => return error_response(&e, None),
    };
    let kind = if req.path().ends_with("/bans") {
        "bans"
    } else {
        "members"
    };
    let obj = Fields::object_from_query(
        query.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        [("room", Value::from(room.as_str()))],
    );
    submit(&req, &node, kind, obj).await
}

/// `POST /dm/{user}`.
pub(super) async fn dm(
    req: HttpRequest,
    node: web::Data<NodeContext>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    user_action(&req, &node, "dm", &path, &body).await
}

/// `POST /blocks/{user}` (`block`) and `DELETE /blocks/{user}` (`unblock`).
pub(super) async fn block(
    req: HttpRequest,
    node: web::Data<NodeContext>,
    path: web::Path<String>,
    body: web::Bytes,
) -> HttpResponse {
    let kind = if req.method() == actix_web::http::Method::DELETE {
        "unblock"
    } else {
        "block"
    };
    user_action(&req, &node, kind, &path, &body).await
}

async fn user_action(
    req: &HttpRequest,
    node: &NodeContext,
    kind: &str,
    user: &str,
    body: &[u8],
) -> HttpResponse {
    match body_object(body) {
        Ok(mut obj) => {
            obj.insert("user".into(), Value::from(user));
            submit(req, node, kind, obj).await
        }
        Err(e) => error_response(&e, None),
    }
}

/// Parses the command `kind` from `obj` (in token mode, for the token's
/// user: a `user_id` in `obj` must be absent or the same), hands it to the
/// ChatServer and answers with its outcome: a `message`'s event (201, or 200
/// for a repeated `client_msg_id`), a `create`'s ack (201), else the reply
/// a socket would get (200).
async fn submit(
    req: &HttpRequest,
    node: &NodeContext,
    kind: &str,
    mut obj: Map<String, Value>,
) -> HttpResponse {
    let token_user = match rest_user(req, node) {
        Ok(user) => user,
        Err(e) => return error_response(&e, None),
    };
    obj.insert("type".into(), Value::from(kind));
    let fields = Fields::new(&obj);
    let room = fields.room().ok();
    let limits = CommandLimits {
        max_message_chars: node.config.max_message_chars,
    };
    let parsed = fields.user_id().and_then(|user| {
        let user: Option<UserId> = match (user, token_user) {
            (Some(user), Some(token)) if user != token => {
                return Err(ProtoError::new(
                    ErrorCode::UserMismatch,
                    format!("this token speaks for user {token}"),
                ))
            }
            (_, Some(token)) => Some(token),
            (user, None) => user,
        };
        let command = Command::parse(&fields, limits)?;
        if command.needs_user() && user.is_none() {
            return Err(ProtoError::invalid_field("user_id is required"));
        }
        Ok((user, command))
    });
    let (user, command) = match parsed {
        Ok(p) => p,
        Err(e) => return error_response(&e, room.as_ref()),
    };
    match post(node, user, command).await {
        Ok(done) => {
            let (status, body) = match done.event {
                Some(event) if done.duplicate => (StatusCode::OK, event.to_json()),
                Some(event) => (StatusCode::CREATED, event.to_json()),
                None if kind == "create" => (StatusCode::CREATED, done.body),
                None => (StatusCode::OK, done.body),
            };
            HttpResponse::build(status)
                .content_type("application/json")
                .body(body)
        }
        Err(e) => error_response(&e, room.as_ref()),
    }
}
