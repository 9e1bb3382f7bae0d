//! The session actor, one per WebSocket: heartbeat and idle timeout, frame
//! limits, parsing into a [`Command`], the connection's identity, the rate
//! limit, and writing what the ChatServer sends.
//!
//! This is the only module that knows actix-web-actors (deprecated upstream;
//! a move to actix-ws changes this file alone). It never touches the store.
//! Its mailbox is bounded: the ChatServer `try_send`s into it and evicts the
//! session when it is full, because the actor freezes while its client does
//! not read (actix-web#2441); it then closes with 4000 when it runs again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use actix::prelude::*;
use actix_web::{web, HttpRequest, HttpResponse};
use actix_web_actors::ws::{self, CloseCode, CloseReason, ProtocolError};

use crate::hub::ChatServer;
use crate::messages::{ConnId, Connect, Deliver, Disconnect, Identify, Outbound, Request};
use crate::node::NodeContext;
use crate::protocol::{
    error_frame, parse_command, reply_frame, Command, CommandLimits, ErrorCode, ProtoError, Reply,
    UserId,
};

/// Close code for a slow consumer (docs/protocol.md, Closing).
const CLOSE_SLOW_CONSUMER: u16 = 4000;

/// `GET /ws`: upgrades to a WebSocket served by a [`WsSession`]. Before
/// that, in this order: the `Origin` (`ALLOWED_ORIGINS`, 403), in token mode
/// the token (401), then `?user_id=` (400 when invalid; in token mode 401
/// when it is not the token's subject). Neither the token nor the query
/// string is ever logged.
pub async fn upgrade(
    req: HttpRequest,
    stream: web::Payload,
    node: web::Data<NodeContext>,
    query: web::Query<std::collections::HashMap<String, String>>,
) -> actix_web::Result<HttpResponse> {
    let refuse = |err: &ProtoError| {
        let peer = req.peer_addr().map_or_else(String::new, |a| a.to_string());
        let code = err.code.as_str();
        log::debug!("refused a WebSocket handshake from {peer}: {code}");
        Ok(crate::http::error_response(err, None))
    };
    let Some(slot) = Slot::take(&node.open_connections, node.config.max_connections) else {
        let err = ProtoError::new(
            ErrorCode::Unavailable,
            "this node serves as many connections as it may (MAX_CONNECTIONS); try again later",
        );
        return refuse(&err);
    };
    if let Err(e) = crate::auth::check_origin(node.config.allowed_origins.as_ref(), &req) {
        return refuse(&e);
    }
    let token = query.get("token").map(String::as_str);
    let identity = match node.config.auth.as_ref() {
        Some(auth) => match auth.authenticate_socket(&req, token) {
            Ok(identity) => Some(identity),
            Err(e) => return refuse(&e),
        },
        None => None,
    };
    let asked = match query.get("user_id") {
        Some(u) => Some(UserId::parse(u).map_err(|e| {
            actix_web::error::ErrorBadRequest(format!("invalid_field: {}", e.message))
        })?),
        None => None,
    };
    let (user, token_deadline) = match identity {
        Some(identity) => {
            if asked.as_ref().is_some_and(|u| *u != identity.user) {
                let sub = &identity.user;
                let err = ProtoError::new(
                    ErrorCode::TokenInvalid,
                    format!("this token is for user {sub}, not the ?user_id= given"),
                );
                return refuse(&err);
            }
            // None only when exp is centuries away.
            let deadline = Instant::now().checked_add(identity.remaining());
            (Some(identity.user), deadline)
        }
        None => (asked, None),
    };
    let client = req.peer_addr().map_or_else(String::new, |peer| {
        let forwarded = req
            .headers()
            .get("x-forwarded-for")
            .and_then(|v| v.to_str().ok());
        node.config
            .trusted_proxies
            .client(peer.ip(), forwarded)
            .to_string()
    });
    let mut session = WsSession::new(node.into_inner(), user, slot);
    session.token_deadline = token_deadline;
    session.client = client;
    let max = session.node.config.max_frame_bytes;
    ws::WsResponseBuilder::new(session, &req, stream)
        .frame_size(max)
        .start()
}

/// A place among `MAX_CONNECTIONS`, held by a session from its handshake
/// until it is dropped (also when the handshake fails).
struct Slot(Arc<AtomicUsize>);

impl Slot {
    fn take(open: &Arc<AtomicUsize>, max: usize) -> Option<Slot> {
        if open.fetch_add(1, Ordering::Relaxed) >= max {
            open.fetch_sub(1, Ordering::Relaxed);
            return None;
        }
        Some(Slot(open.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Token bucket for the per-connection command rate.
struct RateLimit {
    tokens: f64,
    refilled: Instant,
    /// Commands refused in a row.
    strikes: u32,
}

pub struct WsSession {
    node: Arc<NodeContext>,
    conn: Option<ConnId>,
    user: Option<UserId>,
    last_heard: Instant,
    rate: RateLimit,
    outbound: Arc<Outbound>,
    /// Token mode: when the token (with the leeway) expires; the
    /// connection closes with 4001 then.
    token_deadline: Option<Instant>,
    /// The client's address (`X-Forwarded-For` when the peer is a trusted
    /// proxy), for the connection's log lines.
    client: String,
    opened: Instant,
    _slot: Slot,
}

impl WsSession {
    fn new(node: Arc<NodeContext>, user: Option<UserId>, slot: Slot) -> WsSession {
        let burst = f64::from(node.config.rate_burst);
        WsSession {
            node,
            conn: None,
            user,
            last_heard: Instant::now(),
            rate: RateLimit {
                tokens: burst,
                refilled: Instant::now(),
                strikes: 0,
            },
            outbound: Arc::default(),
            token_deadline: None,
            client: String::new(),
            opened: Instant::now(),
            _slot: slot,
        }
    }

    fn server(&self) -> &Addr<ChatServer> {
        &self.node.server
    }

    /// Takes a token; false when the connection is over its rate.
    fn take_token(&mut self) -> bool {
        let now = Instant::now();
        let cfg = &self.node.config;
        let elapsed = now.duration_since(self.rate.refilled).as_secs_f64();
        self.rate.refilled = now;
        self.rate.tokens = (self.rate.tokens + elapsed * f64::from(cfg.rate_per_sec))
            .min(f64::from(cfg.rate_burst));
        if self.rate.tokens >= 1.0 {
            self.rate.tokens -= 1.0;
            self.rate.strikes = 0;
            true
        } else {
            self.rate.strikes += 1;
            false
        }
    }

    fn hello(&self, ctx: &mut ws::WebsocketContext<Self>) {
        let frame = reply_frame(&Reply::Hello {
            node: &self.node.config.node_id,
            protocol: crate::protocol::PROTOCOL_VERSION,
            epoch: self.node.store.epoch(),
            user_id: self.user.as_ref(),
            limits: &self.node.limits,
        });
        ctx.text(frame);
    }

    fn heartbeat(&self, ctx: &mut ws::WebsocketContext<Self>) {
        let timeout = self.node.config.client_timeout;
        ctx.run_interval(self.node.config.heartbeat_interval, move |act, ctx| {
            if act.last_heard.elapsed() > timeout {
                log::debug!("closing idle connection {:?}", act.conn);
                // No close frame: the peer sees 1006, as docs/protocol.md says.
                ctx.stop();
                return;
            }
            ctx.ping(b"");
        });
    }

    fn on_text(&mut self, text: &str, ctx: &mut ws::WebsocketContext<Self>) {
        let received = Instant::now();
        let parsed = parse_command(
            text,
            CommandLimits {
                max_message_chars: self.node.config.max_message_chars,
            },
        );
        let name = parsed.command.as_ref().map_or("invalid", |c| c.name());
        self.node.metrics.command(name);
        let reference = parsed.reference;
        let fail = |ctx: &mut ws::WebsocketContext<Self>,
                    err: ProtoError,
                    metrics: &crate::metrics::Metrics| {
            metrics.command_error(err.code);
            ctx.text(error_frame(reference.as_ref(), &err, None));
        };
        // The first valid user_id is the connection's, whatever becomes of
        // the frame that carries it (docs/protocol.md, Identity).
        if let (None, Some(user)) = (&self.user, &parsed.user_id) {
            self.user = Some(user.clone());
            if let Some(conn) = self.conn {
                // Once per connection, so this waits for room in the
                // ChatServer's mailbox rather than queueing without bound.
                let identify = self.server().send(Identify {
                    conn,
                    user: user.clone(),
                });
                actix::spawn(async move {
                    let _ = identify.await;
                });
            }
        }
        if !self.take_token() {
            self.node.metrics.rate_limited.inc();
            if self.rate.strikes > self.node.config.rate_close_after {
                ctx.close(Some(CloseReason {
                    code: CloseCode::Policy,
                    description: Some("rate limit exceeded".into()),
                }));
                ctx.stop();
                return;
            }
            let err = ProtoError::new(
                ErrorCode::RateLimited,
                "too many commands; slow down or the connection will be closed",
            );
            return fail(ctx, err, &self.node.metrics);
        }
        if let (Some(user), Some(current)) = (&parsed.user_id, &self.user) {
            if user != current {
                let err = ProtoError::new(
                    ErrorCode::UserMismatch,
                    format!("this connection speaks for user {current}"),
                );
                return fail(ctx, err, &self.node.metrics);
            }
        }
        let command: Command = match parsed.command {
            Ok(c) => c,
            Err(err) => return fail(ctx, err, &self.node.metrics),
        };
        if command.needs_user() && self.user.is_none() {
            let err = ProtoError::invalid_field(
                "user_id is required (in the command, or as ?user_id= when connecting)",
            );
            return fail(ctx, err, &self.node.metrics);
        }
        let Some(conn) = self.conn else {
            // Unreachable: registration blocks the context until it is done.
            return fail(ctx, ProtoError::internal(), &self.node.metrics);
        };
        let request = Request {
            conn,
            reference: reference.clone(),
            user: self.user.clone(),
            command,
            received,
        };
        match self.server().try_send(request) {
            Ok(()) => {}
            Err(SendError::Full(_)) => fail(ctx, ProtoError::unavailable(), &self.node.metrics),
            Err(SendError::Closed(_)) => ctx.stop(),
        }
    }
}

impl Actor for WsSession {
    type Context = ws::WebsocketContext<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.node.config.session_mailbox);
        self.node.metrics.connections.inc();
        self.node.metrics.connections_total.inc();
        self.hello(ctx);
        self.heartbeat(ctx);
        if let Some(deadline) = self.token_deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            ctx.run_later(left, |act, ctx| {
                log::debug!("closing {:?}: its token expired", act.conn);
                ctx.close(Some(CloseReason {
                    code: CloseCode::Other(crate::auth::CLOSE_TOKEN_EXPIRED),
                    description: Some(crate::auth::TOKEN_EXPIRED_REASON.into()),
                }));
                ctx.stop();
            });
        }
        let connect = Connect {
            addr: ctx.address().recipient(),
            user: self.user.clone(),
            outbound: self.outbound.clone(),
        };
        self.server()
            .send(connect)
            .into_actor(self)
            .then(|res, act, ctx| {
                match res {
                    Ok(id) => {
                        act.conn = Some(id);
                        log::info!(
                            "connection {} opened: node={} user={} client={}",
                            id.0,
                            act.node.config.node_id,
                            act.user.as_ref().map_or("-", UserId::as_str),
                            act.client
                        );
                    }
                    Err(_) => ctx.stop(),
                }
                fut::ready(())
            })
            .wait(ctx);
    }

    fn stopped(&mut self, _: &mut Self::Context) {
        self.node.metrics.connections.dec();
        if let Some(conn) = self.conn {
            log::info!(
                "connection {} closed after {:.1}s: node={} user={} client={}",
                conn.0,
                self.opened.elapsed().as_secs_f64(),
                self.node.config.node_id,
                self.user.as_ref().map_or("-", UserId::as_str),
                self.client
            );
            // Once per connection: waits for room in the mailbox, never dropped.
            let disconnect = self.server().send(Disconnect { conn });
            actix::spawn(async move {
                let _ = disconnect.await;
            });
        }
    }
}

impl Handler<Deliver> for WsSession {
    type Result = ();

    fn handle(&mut self, msg: Deliver, ctx: &mut Self::Context) {
        self.outbound
            .queued
            .fetch_sub(msg.bytes(), Ordering::Relaxed);
        if self.outbound.evicted.load(Ordering::Relaxed) {
            ctx.close(Some(CloseReason {
                code: CloseCode::Other(CLOSE_SLOW_CONSUMER),
                description: Some("slow consumer: resume with since".into()),
            }));
            ctx.stop();
            return;
        }
        if self.outbound.shutdown.load(Ordering::Relaxed) {
            return self.close_away(ctx);
        }
        match msg {
            Deliver::Frame(frame) => ctx.text(frame),
            Deliver::Frames(frames) => {
                for frame in frames.frames.iter() {
                    ctx.text(frame.clone());
                }
            }
            Deliver::Shutdown => self.close_away(ctx),
        }
    }
}

impl WsSession {
    /// The node is shutting down: 1001, so the client reconnects elsewhere and resumes.
    fn close_away(&mut self, ctx: &mut ws::WebsocketContext<Self>) {
        ctx.close(Some(CloseReason {
            code: CloseCode::Away,
            description: Some("node shutting down: reconnect and resume with since".into()),
        }));
        ctx.stop();
    }
}

impl StreamHandler<Result<ws::Message, ProtocolError>> for WsSession {
    fn handle(&mut self, msg: Result<ws::Message, ProtocolError>, ctx: &mut Self::Context) {
        self.last_heard = Instant::now();
        match msg {
            Ok(ws::Message::Text(text)) => self.on_text(&text, ctx),
            Ok(ws::Message::Binary(_)) | Ok(ws::Message::Continuation(_)) => {
                let err = ProtoError::new(
                    ErrorCode::UnsupportedFrame,
                    "only text frames (one JSON object each, unfragmented) are accepted",
                );
                ctx.text(error_frame(None, &err, None));
            }
            Ok(ws::Message::Ping(data)) => ctx.pong(&data),
            Ok(ws::Message::Pong(_)) | Ok(ws::Message::Nop) => {}
            Ok(ws::Message::Close(reason)) => {
                ctx.close(reason);
                ctx.stop();
            }
            Err(ProtocolError::Overflow) => {
                ctx.close(Some(CloseReason {
                    code: CloseCode::Size,
                    description: Some(format!(
                        "frame over {} bytes",
                        self.node.config.max_frame_bytes
                    )),
                }));
                ctx.stop();
            }
            Err(e) => {
                log::debug!("websocket protocol error on {:?}: {e}", self.conn);
                ctx.stop();
            }
        }
    }
}
