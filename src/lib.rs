//! Confab: a real-time chat server on the actor model.
//!
//! A node is one [`server::ChatServer`] actor, one [`session::WsSession`]
//! actor per socket, an event [`writer`] committing to a [`store`], and a
//! [`bus`] to its peers. [`run`] starts all of them; `src/main.rs` only reads
//! the configuration and calls it.

pub mod bus;
pub mod config;
pub mod http;
pub mod metrics;
pub mod protocol;
pub mod server;
pub mod session;
pub mod store;
pub mod writer;

use std::net::TcpListener;
use std::sync::Arc;

use actix::prelude::*;
use actix_web::{web, App, HttpServer};
use anyhow::Context as _;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::HelloLimits;
use crate::server::{ChatServer, Shutdown};
use crate::store::EventStore;

/// What every request handler and session of a node shares.
pub struct NodeContext {
    pub config: Arc<Config>,
    pub store: Arc<dyn EventStore>,
    pub metrics: Arc<Metrics>,
    pub server: Addr<ChatServer>,
    pub limits: HelloLimits,
    pub bus_health: Option<bus::BusHealth>,
}

/// Runs a node until SIGTERM or Ctrl-C, then shuts it down gracefully: stop
/// accepting, close sockets with 1001, commit what is queued, exit.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let config = Arc::new(config);
    let metrics = Arc::new(Metrics::default());
    log::info!(
        "node {} starting with store {:?}",
        config.node_id,
        config.store
    );
    let store = store::open(&config.store).await?;
    let bus = bus::connect(&config, metrics.clone()).await?;
    // Subscribe first, then read state, so that nothing falls between the two.
    let snapshot = store
        .snapshot()
        .await
        .context("cannot load rooms and members")?;
    let mut writer_task = None;
    let server = {
        let (config, store, metrics) = (config.clone(), store.clone(), metrics.clone());
        let writer_task = &mut writer_task;
        let bus_handle = bus.handle;
        ChatServer::create(move |ctx| {
            let mut server =
                ChatServer::new(config.clone(), store.clone(), metrics.clone(), snapshot);
            let (writer, task) = writer::spawn(
                store,
                config.node_id.clone(),
                config.writer_queue,
                config.writer_batch_max,
                ctx.address().recipient(),
                metrics,
            );
            *writer_task = Some(task);
            server.set_writer(writer);
            server.set_bus(bus_handle);
            server
        })
    };
    if let Some(start) = bus.start {
        start(server.clone());
    }
    let node = web::Data::new(NodeContext {
        config: config.clone(),
        store,
        metrics,
        server: server.clone(),
        limits: HelloLimits {
            max_frame_bytes: config.max_frame_bytes,
            max_message_chars: config.max_message_chars,
            replay_limit: config.replay_limit,
            history_limit: protocol::MAX_HISTORY_LIMIT,
            rate_per_sec: config.rate_per_sec,
            rate_burst: config.rate_burst,
        },
        bus_health: bus.health,
    });

    let listener = TcpListener::bind((config.host.as_str(), config.port))
        .with_context(|| format!("cannot listen on HOST={} PORT={}", config.host, config.port))?;
    let addr = listener.local_addr()?;
    let user_timeout = config.tcp_user_timeout;
    let http = HttpServer::new(move || App::new().app_data(node.clone()).configure(http::routes))
        .workers(config.workers)
        .h1_write_buffer_size(config.write_buffer_bytes)
        .backlog(4096)
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
    let handle = http.handle();
    actix_web::rt::spawn(async move {
        wait_for_signal().await;
        log::info!("shutting down: closing sockets with 1001 and committing what is queued");
        let _ = server.send(Shutdown).await;
        handle.stop(true).await;
    });
    http.await?;
    if let Some(task) = writer_task {
        if tokio::time::timeout(config.shutdown_timeout, task)
            .await
            .is_err()
        {
            log::warn!("the writer did not finish within SHUTDOWN_TIMEOUT_SECS");
        }
    }
    log::info!("stopped");
    Ok(())
}

async fn wait_for_signal() {
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
