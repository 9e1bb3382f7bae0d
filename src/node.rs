//! A node: the store, the bus, the ChatServer and the HTTP server, built in
//! one step ([`Node::build`], which binds the listener) and run until a
//! shutdown future resolves in another ([`Node::run`]). So the binary runs
//! it until SIGTERM, and a test runs one inside its own process.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;

use crate::bus::{Bus, BusHealth, HubLink};
use crate::config::Config;
use crate::http::limit::RateLimiter;
use crate::hub::{ChatServer, Parts};
use crate::messages::Shutdown;
use crate::metrics::Metrics;
use crate::protocol::{HelloLimits, MAX_HISTORY_LIMIT};
use crate::store::EventStore;

/// What every request handler and session of a node shares.
pub struct NodeContext {
    pub config: Arc<Config>,
    pub store: Arc<dyn EventStore>,
    pub metrics: Arc<Metrics>,
    pub server: Addr<ChatServer>,
    pub limits: HelloLimits,
    pub bus_health: Option<BusHealth>,
    /// The REST routes' rate limit per client address.
    pub rest_limit: RateLimiter,
    /// WebSocket connections open (or being opened), against `MAX_CONNECTIONS`.
    pub open_connections: Arc<AtomicUsize>,
}

/// A node that is built, listening, and not yet run.
pub struct Node {
    config: Arc<Config>,
    server: Addr<ChatServer>,
    http: actix_web::dev::Server,
    addr: SocketAddr,
}

impl Node {
    /// Opens (and migrates) the store, subscribes to the bus, loads the
    /// state, starts the ChatServer and its writer, and binds the listener.
    /// Must be called inside an actix system.
    pub async fn build(config: Config) -> anyhow::Result<Node> {
        let config = Arc::new(config);
        let metrics = Arc::new(Metrics::new(&config.node_id));
        log::info!(
            "node {} starting with store {:?}",
            config.node_id,
            config.store
        );
        let store = crate::store::open(&config.store).await?;
        let bus = Bus::connect(&config, metrics.clone()).await?;
        // Subscribed first, then the state is read, so that nothing falls between the two.
        let snapshot = store
            .snapshot()
            .await
            .context("cannot load rooms and members")?;
        let bus_health = bus.health();
        let server = ChatServer::start(Parts {
            config: config.clone(),
            store: store.clone(),
            metrics: metrics.clone(),
            bus: bus.handle(),
            snapshot,
        });
        bus.start(HubLink::of(&server));
        let node = web::Data::new(NodeContext {
            config: config.clone(),
            store,
            metrics,
            server: server.clone(),
            limits: HelloLimits {
                max_frame_bytes: config.max_frame_bytes,
                max_message_chars: config.max_message_chars,
                replay_limit: config.replay_limit,
                history_limit: MAX_HISTORY_LIMIT,
                rate_per_sec: config.rate_per_sec,
                rate_burst: config.rate_burst,
                max_rooms_per_connection: config.max_rooms_per_connection,
            },
            bus_health,
            rest_limit: RateLimiter::new(config.rest_rate_per_sec, config.rest_rate_burst),
            open_connections: Arc::default(),
        });

        let listener = listen(&config.host, config.port).with_context(|| {
            format!("cannot listen on HOST={} PORT={}", config.host, config.port)
        })?;
        let addr = listener.local_addr()?;
        let user_timeout = config.tcp_user_timeout;
        let http = HttpServer::new(move || {
            App::new()
                .app_data(node.clone())
                .configure(crate::http::routes)
        })
        .workers(config.workers)
        .h1_write_buffer_size(config.write_buffer_bytes)
        .max_connection_rate(2048)
        .max_connections(200_000)
        .on_connect(move |conn, _| {
            // A session frozen behind a client that never reads cannot
            // heartbeat; the kernel drops such a peer after this timeout.
            if let Some(tcp) = conn.downcast_ref::<actix_web::rt::net::TcpStream>() {
                let _ = socket2::SockRef::from(tcp).set_tcp_user_timeout(Some(user_timeout));
            }
        })
        .disable_signals()
        .shutdown_timeout(config.shutdown_timeout.as_secs())
        .listen(listener)?
        .run();
        log::info!("confab listening on http://{addr}");
        exposure(&config, addr);
        Ok(Node {
            config,
            server,
            http,
            addr,
        })
    }

    /// Where the node listens (useful with `PORT=0`).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves until `shutdown` resolves, then stops gracefully: sockets are
    /// closed with 1001, the listener stops, and what the writer has queued
    /// is committed (within `SHUTDOWN_TIMEOUT_SECS`).
    pub async fn run(self, shutdown: impl Future<Output = ()> + 'static) -> anyhow::Result<()> {
        let Node {
            config,
            server,
            http,
            ..
        } = self;
        let handle = http.handle();
        let stopper = actix_web::rt::spawn(async move {
            shutdown.await;
            log::info!("shutting down: closing sockets with 1001 and committing what is queued");
            let writer = server.send(Shutdown).await.ok().flatten();
            handle.stop(true).await;
            writer
        });
        http.await?;
        if let Ok(Some(writer)) = stopper.await {
            if tokio::time::timeout(config.shutdown_timeout, writer)
                .await
                .is_err()
            {
                log::warn!("the writer did not finish within SHUTDOWN_TIMEOUT_SECS");
            }
        }
        log::info!("stopped");
        Ok(())
    }
}

/// Says at start-up who may speak as whom: token mode, the allowed origins,
/// and a warning when open mode listens beyond the loopback interface
/// (docs/security.md, "Identity and origins").
fn exposure(config: &Config, addr: SocketAddr) {
    match &config.auth {
        Some(auth) => log::info!("{}", auth.describe()),
        None if addr.ip().is_loopback() => log::info!(
            "open mode: clients choose their user_id; listening on loopback only \
             (set AUTH_SECRET or AUTH_PUBLIC_KEY for token mode)"
        ),
        None => log::warn!(
            "open mode on {addr}: anyone who can reach this port can speak as any user. \
             Set AUTH_SECRET or AUTH_PUBLIC_KEY for token mode, or HOST=127.0.0.1 \
             (docs/security.md)"
        ),
    }
    match &config.allowed_origins {
        Some(origins) => log::info!(
            "WebSocket handshakes from web pages: only {} and this node's own origin",
            origins.list().join(", ")
        ),
        None => log::info!(
            "WebSocket handshakes from web pages: every origin (ALLOWED_ORIGINS is unset)"
        ),
    }
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                log::warn!("cannot watch SIGTERM ({e}); Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Connections the kernel queues for accept: a resume storm reconnects a
/// dead node's clients all at once. (`std`'s `TcpListener::bind` queues
/// 128; past that the kernel drops the SYN, the client or nginx retries
/// it only after a second, and nginx's `proxy_connect_timeout` then marks a
/// live node down.) The kernel caps it at `net.core.somaxconn`.
const LISTEN_BACKLOG: i32 = 4096;

/// Listens on the first address `host:port` resolves to that can be bound.
fn listen(host: &str, port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    use std::net::ToSocketAddrs;
    let mut last = None;
    for addr in (host, port).to_socket_addrs()? {
        let bound = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .and_then(|socket| {
                socket.set_reuse_address(true)?;
                socket.bind(&addr.into())?;
                socket.listen(LISTEN_BACKLOG)?;
                Ok(socket)
            });
        match bound {
            Ok(socket) => return Ok(socket.into()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address to listen on")
    }))
}
