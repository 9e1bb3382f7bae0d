//! `/openapi.json`: an OpenAPI 3.1 description of every HTTP route,
//! generated from the code. Each route is one [`Route`] in the table of
//! `src/http/mod.rs`, which both registers it and documents it, so the
//! description cannot name a route that does not exist or miss one that
//! does (a unit test below checks the document against the table). The
//! bodies' and replies' schemas come from the types below through utoipa.

use serde_json::{json, Map, Value};
use utoipa::{OpenApi, ToSchema};

/// An HTTP method a route answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub fn route(self) -> actix_web::Route {
        match self {
            Method::Get => actix_web::web::get(),
            Method::Post => actix_web::web::post(),
            Method::Delete => actix_web::web::delete(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Post => "post",
            Method::Delete => "delete",
        }
    }
}

/// One route: how it is registered and how it is documented.
#[derive(Debug, Clone, Copy)]
pub struct Route {
    pub method: Method,
    /// actix's pattern, which is also OpenAPI's (`/rooms/{room}/events`).
    pub path: &'static str,
    pub summary: &'static str,
    pub tag: &'static str,
    /// The request body's schema (a name under `components/schemas`).
    pub body: Option<&'static str>,
    /// Query parameters: name and description.
    pub query: &'static [(&'static str, &'static str)],
    /// The success status, its content type and its schema name.
    pub ok: u16,
    pub content: &'static str,
    pub reply: Option<&'static str>,
    /// Whether token mode asks for `Authorization: Bearer`.
    pub bearer: bool,
}

impl Route {
    /// A route that answers 200 with JSON and, in token mode, wants a token.
    pub const fn new(method: Method, path: &'static str, summary: &'static str) -> Route {
        Route {
            method,
            path,
            summary,
            tag: "rooms",
            body: None,
            query: &[],
            ok: 200,
            content: "application/json",
            reply: None,
            bearer: true,
        }
    }

    pub const fn tag(self, tag: &'static str) -> Route {
        Route { tag, ..self }
    }

    pub const fn body(self, body: &'static str) -> Route {
        Route {
            body: Some(body),
            ..self
        }
    }

    pub const fn query(self, query: &'static [(&'static str, &'static str)]) -> Route {
        Route { query, ..self }
    }

    pub const fn ok(self, ok: u16, reply: &'static str) -> Route {
        Route {
            ok,
            reply: Some(reply),
            ..self
        }
    }

    /// A route that is not JSON (a page, the metrics text, the upgrade).
    pub const fn content(self, content: &'static str) -> Route {
        Route { content, ..self }
    }

    /// A route open in token mode too.
    pub const fn open(self) -> Route {
        Route {
            bearer: false,
            ..self
        }
    }
}

/// The caller, in open mode: the user a command speaks for. In token mode it
/// is the token's subject, and a `user_id` given must be the same.
const CALLER: &str = "open mode: the user this request speaks for (1-64 characters, no control \
                      characters; an integer is read as its decimal string). Token mode: absent, \
                      or the token's user";

/// `POST /rooms`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CreateBody {
    /// 1-64 characters from A-Z, a-z, 0-9 and `-_.:`, not starting with `dm:`.
    room: String,
    /// Only invited users may join (default false).
    private: Option<bool>,
    #[schema(value_type = Option<String>)]
    user_id: Option<String>,
}

/// `POST /rooms/{room}/messages`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct MessageBody {
    /// 1 to MAX_MESSAGE_CHARS characters (default 4096).
    message: String,
    /// 1-64 characters: a repeat appends nothing and answers the original (200).
    client_msg_id: Option<String>,
    /// The seq of a message of this room that this one answers.
    reply_to: Option<i64>,
    /// 1-50 user ids; those who are not members are dropped.
    mentions: Option<Vec<String>>,
    user_id: Option<String>,
}

/// `invite`, `uninvite`, `kick`, `unban`: the user acted on.
#[derive(ToSchema)]
#[allow(dead_code)]
struct UserBody {
    user: String,
    user_id: Option<String>,
}

/// `POST /rooms/{room}/ban`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct BanBody {
    user: String,
    /// At most 256 characters.
    reason: Option<String>,
    user_id: Option<String>,
}

/// `POST /rooms/{room}/role`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct RoleBody {
    user: String,
    /// `owner` (passes the room on), `admin` or `member`.
    role: String,
    user_id: Option<String>,
}

/// `POST /rooms/{room}/edit`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct EditBody {
    /// The message's seq.
    seq: i64,
    message: String,
    client_msg_id: Option<String>,
    user_id: Option<String>,
}

/// `POST /rooms/{room}/delete` (with `client_msg_id`) and `/read`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct SeqBody {
    /// The message's seq (`delete`), or how far the user has read (`read`).
    seq: i64,
    client_msg_id: Option<String>,
    user_id: Option<String>,
}

/// `POST /rooms/{room}/react` and `/unreact`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct ReactBody {
    seq: i64,
    /// 1-32 characters (a sequence joined by U+200D counts as one), no
    /// whitespace or control character.
    emoji: String,
    client_msg_id: Option<String>,
    user_id: Option<String>,
}

/// `join`, `leave`, `dm`, `block`, `unblock`: only the caller.
#[derive(ToSchema)]
#[allow(dead_code)]
struct CallerBody {
    user_id: Option<String>,
}

/// A committed event (docs/protocol.md, "Server → client frames"): the
/// fields that do not apply to its kind are left out.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Event {
    /// `create`, `join`, `leave`, `message`, `invite`, `uninvite`, `role`,
    /// `kick`, `ban`, `unban`, `edit`, `delete`, `react`, `unreact`.
    #[schema(rename = "type")]
    kind: String,
    room: String,
    /// 1, 2, 3, … per room, with no gap.
    seq: i64,
    id: i64,
    user_id: String,
    message: Option<String>,
    client_msg_id: Option<String>,
    /// A user (room changes) or a message's seq (edit, delete, react, unreact).
    #[schema(value_type = Option<Object>)]
    target: Option<String>,
    role: Option<String>,
    reason: Option<String>,
    private: Option<bool>,
    dm: Option<bool>,
    by: Option<String>,
    reply_to: Option<i64>,
    mentions: Option<Vec<String>>,
    emoji: Option<String>,
    edited: Option<u32>,
    deleted: Option<bool>,
    deleted_by: Option<String>,
    /// Per emoji: `{"count": n, "users": [the first 20]}`.
    #[schema(value_type = Option<Object>)]
    reactions: Option<String>,
    /// The seq of the last event folded into the message's state.
    state_seq: Option<i64>,
    node: String,
    /// RFC 3339, microseconds, UTC.
    at: String,
}

/// A command's success (`"type":"ack"`).
#[derive(ToSchema)]
#[allow(dead_code)]
struct Ack {
    #[schema(rename = "type")]
    kind: String,
    command: String,
    room: Option<String>,
    seq: Option<i64>,
    id: Option<i64>,
    duplicate: Option<bool>,
    recovered: Option<bool>,
    unchanged: Option<bool>,
    with: Option<String>,
    dropped_mentions: Option<Vec<String>>,
}

/// Every refusal: the protocol's error object, with the HTTP status of its
/// code (docs/protocol.md, "HTTP API details").
#[derive(ToSchema)]
#[allow(dead_code)]
struct Error {
    /// `error`.
    #[schema(rename = "type")]
    kind: String,
    /// One of the protocol's error codes (docs/protocol.md, Errors).
    code: String,
    /// A sentence for a person.
    message: String,
    room: Option<String>,
}

/// A `history` page.
#[derive(ToSchema)]
#[allow(dead_code)]
struct History {
    #[schema(rename = "type")]
    kind: String,
    room: String,
    events: Vec<Event>,
    more: bool,
}

/// A `rooms` entry.
#[derive(ToSchema)]
#[allow(dead_code)]
struct RoomInfo {
    name: String,
    members: u64,
    last_seq: i64,
    private: bool,
    dm: bool,
    with: Option<String>,
    /// `owner`, `admin`, `member` or `invited`.
    role: Option<String>,
    unread: Option<u64>,
    mentions_unread: Option<u64>,
}

/// A `members` reply.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Members {
    #[schema(rename = "type")]
    kind: String,
    room: String,
    /// `{"user_id","online","role","read_seq"}` each, in join order.
    #[schema(value_type = Vec<Object>)]
    members: Vec<String>,
}

/// A `bans` reply.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Bans {
    #[schema(rename = "type")]
    kind: String,
    room: String,
    /// `{"user_id","by","reason"?,"seq"}` each, by seq.
    #[schema(value_type = Vec<Object>)]
    bans: Vec<String>,
}

/// `GET /health`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Health {
    /// `healthy` or `unhealthy`.
    status: String,
    node: String,
    /// Each service (`sqlite` or `postgres`, `redis`): `up` or `down`.
    #[schema(value_type = Object)]
    services: String,
}

/// `GET /stats`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct Stats {
    rooms: u64,
    events: u64,
    connections: u64,
    /// `{"node","connections"}` for each node alive.
    #[schema(value_type = Vec<Object>)]
    nodes: Vec<String>,
}

/// `GET /whoami`.
#[derive(ToSchema)]
#[allow(dead_code)]
struct WhoAmI {
    /// `open` or `token`.
    mode: String,
    user_id: Option<String>,
}

#[derive(OpenApi)]
#[openapi(components(schemas(
    CreateBody,
    MessageBody,
    UserBody,
    BanBody,
    RoleBody,
    EditBody,
    SeqBody,
    ReactBody,
    CallerBody,
    Event,
    Ack,
    Error,
    History,
    RoomInfo,
    Members,
    Bans,
    Health,
    Stats,
    WhoAmI
)))]
struct Schemas;

/// The OpenAPI 3.1 document of `routes`.
pub fn document(routes: &[Route]) -> Value {
    let schemas = serde_json::to_value(Schemas::openapi())
        .ok()
        .and_then(|v| v.pointer("/components/schemas").cloned())
        .unwrap_or_else(|| json!({}));
    let mut paths = Map::new();
    for r in routes {
        let entry = paths.entry(r.path.to_owned()).or_insert_with(|| json!({}));
        entry[r.method.as_str()] = operation(r);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Confab",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The HTTP side of a Confab node: health, metrics, stats, the web \
                client, and the REST API for bots, which turns each request into the same \
                command a WebSocket frame becomes (docs/protocol.md). The WebSocket protocol \
                itself is described by /asyncapi.json.",
        },
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": "Token mode only (AUTH_SECRET or AUTH_PUBLIC_KEY set): a JWT \
                        whose sub is the user. In open mode no credential is asked.",
                }
            },
        },
    })
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

fn operation(r: &Route) -> Value {
    let mut parameters: Vec<Value> = r
        .path
        .split('/')
        .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true,
                   "schema": {"type": "string"}})
        })
        .collect();
    for (name, description) in r.query {
        parameters.push(json!({"name": name, "in": "query", "required": false,
                               "description": description, "schema": {"type": "string"}}));
    }
    let ok_content = match (r.reply, r.content) {
        (Some(reply), c) => json!({c: {"schema": schema_ref(reply)}}),
        (None, c) => json!({c: {}}),
    };
    let mut op = json!({
        "summary": r.summary,
        "operationId": format!("{}{}", r.method.as_str(), r.path.replace(['/', '{', '}', '.'], "_")),
        "tags": [r.tag],
        "parameters": parameters,
        "responses": {
            r.ok.to_string(): {"description": "success", "content": ok_content},
            "default": {
                "description": "an error in the protocol's shape, with the status of its code",
                "content": {"application/json": {"schema": schema_ref("Error")}},
            },
        },
    });
    if let Some(body) = r.body {
        op["requestBody"] = json!({
            "required": false,
            "description": format!("a JSON object; `user_id`: {CALLER}"),
            "content": {"application/json": {"schema": schema_ref(body)}},
        });
    }
    if r.bearer {
        op["security"] = json!([{"bearer": []}, {}]);
    }
    op
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::ROUTES;

    #[test]
    fn the_document_names_every_route_and_only_those() {
        let doc = document(ROUTES);
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        let mut registered: Vec<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.as_str().to_owned(), r.path.to_owned()))
            .collect();
        documented.sort();
        registered.sort();
        assert_eq!(documented, registered);
        assert_eq!(doc["openapi"], "3.1.0");
    }

    #[test]
    fn every_schema_a_route_names_exists() {
        let doc = document(ROUTES);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for r in ROUTES {
            for name in r.body.iter().chain(r.reply.iter()) {
                assert!(
                    schemas.contains_key(*name),
                    "{} {}: {name}",
                    r.method.as_str(),
                    r.path
                );
            }
        }
        assert!(schemas.contains_key("Error"));
    }
}
