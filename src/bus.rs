//! The bus between nodes: every committed event is published on the Redis
//! channel `REDIS_CHANNEL` (one `PUBLISH` per event, pipelined per batch, in
//! the wire format), so that peers deliver it to their own sockets; and
//! presence, so that `members` says who is online on any node.
//!
//! Redis pub/sub is at-most-once: the store stays the source of truth. A node
//! that sees a room's seq jump repairs the gap from the store (the ChatServer
//! does that); after the subscriber reconnects, and every `RESYNC_INTERVAL`,
//! the node re-reads every room's last seq from the store and repairs what it
//! missed. Without `REDIS_URL` a node runs alone and the bus is local: there is
//! nobody to tell.
//!
//! Presence: each node keeps the set of users connected to it in the Redis
//! key `<channel>:presence:<node>` with a TTL of [`PRESENCE_TTL`], rewritten
//! every [`PRESENCE_TICK`], and its name in the sorted set
//! `<channel>:presence:nodes` scored by the time of its last write. Every tick
//! a node reads the sets of the nodes seen within the TTL. So a user is online
//! everywhere within one tick of connecting, and offline within one tick of
//! its last connection closing, or within the TTL when its node dies.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use anyhow::Context as _;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::config::{redact_url, Config};
use crate::metrics::Metrics;
use crate::protocol::{Event, UserId};
use crate::server::{ChatServer, LocalPresence};

/// How often presence is written and read.
pub const PRESENCE_TICK: Duration = Duration::from_millis(500);
/// How long a node's presence outlives its last write (a dead node's users
/// go offline within this).
pub const PRESENCE_TTL: Duration = Duration::from_secs(10);
/// How often a node compares every room's last seq with the store, to catch
/// events whose publish was lost while nobody noticed.
const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Batches waiting to be published; past this, a batch is dropped (peers
/// repair from the store).
const PUBLISH_QUEUE: usize = 4096;
/// Most peer events forwarded to the ChatServer in one message.
const FORWARD_BATCH: usize = 512;

/// Events from peers, in the order the bus gave them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerEvents {
    pub events: Vec<Event>,
}

/// The bus may have lost messages: re-read every room from the store.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

/// Users connected to other nodes (replaces the previous set).
#[derive(Message)]
#[rtype(result = "()")]
pub struct RemotePresence {
    pub users: HashSet<UserId>,
}

/// The ChatServer's side of the bus.
pub enum BusHandle {
    /// One node, no peers.
    Local,
    /// Batches go to the publisher task, in commit order.
    Redis {
        publish: mpsc::Sender<Vec<Event>>,
        metrics: Arc<Metrics>,
    },
}

impl BusHandle {
    /// Publishes one batch of committed events, in commit order.
    pub fn publish(&self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        if let BusHandle::Redis { publish, metrics } = self {
            if publish.try_send(events).is_err() {
                metrics.bus_errors.inc();
                log::warn!("the publish queue is full: peers will repair from the store");
            }
        }
    }
}

/// Whether the bus is up, for `/health`.
#[derive(Clone)]
pub struct BusHealth {
    up: Arc<AtomicBool>,
}

impl BusHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }
}

/// Starts the bus's tasks once the ChatServer exists.
pub type BusStarter = Box<dyn FnOnce(Addr<ChatServer>)>;

/// The bus a node starts with: the ChatServer's handle, a starter for the
/// tasks that need the ChatServer's address, and its health.
pub struct BusSetup {
    pub handle: BusHandle,
    pub start: Option<BusStarter>,
    pub health: Option<BusHealth>,
}

/// Connects the configured bus. With Redis, the subscription is in place when
/// this returns, so that a node that reads its state afterwards misses nothing.
pub async fn connect(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<BusSetup> {
    let Some(url) = config.redis_url.clone() else {
        return Ok(BusSetup {
            handle: BusHandle::Local,
            start: None,
            health: None,
        });
    };
    let shown = redact_url(&url);
    let client = redis::Client::open(url.as_str())
        .with_context(|| format!("REDIS_URL={shown} is not a valid Redis URL"))?;
    let channel = config.redis_channel.clone();
    let first = subscribe(&client, &channel)
        .await
        .with_context(|| format!("cannot subscribe to {channel} at REDIS_URL={shown}"))?;
    let pool = deadpool_redis::Config::from_url(url.as_str())
        .builder()
        .context("redis pool config")?
        .max_size(4)
        .wait_timeout(Some(Duration::from_secs(2)))
        .create_timeout(Some(Duration::from_secs(2)))
        .recycle_timeout(Some(Duration::from_secs(1)))
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .context("redis pool")?;
    let up = Arc::new(AtomicBool::new(true));
    let (tx, rx) = mpsc::channel(PUBLISH_QUEUE);
    let node = config.node_id.clone();
    let start: BusStarter = {
        let (metrics, up) = (metrics.clone(), up.clone());
        Box::new(move |server: Addr<ChatServer>| {
            actix::spawn(publisher(
                pool.clone(),
                channel.clone(),
                rx,
                metrics.clone(),
            ));
            actix::spawn(subscriber(
                client,
                channel.clone(),
                node.clone(),
                first,
                server.clone(),
                metrics,
                up,
            ));
            actix::spawn(presence(pool, channel, node, server));
        })
    };
    Ok(BusSetup {
        handle: BusHandle::Redis {
            publish: tx,
            metrics,
        },
        start: Some(start),
        health: Some(BusHealth { up }),
    })
}

async fn subscribe(
    client: &redis::Client,
    channel: &str,
) -> redis::RedisResult<redis::aio::PubSub> {
    let mut pubsub = tokio::time::timeout(Duration::from_secs(3), client.get_async_pubsub())
        .await
        .map_err(|_| {
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::TimedOut))
        })??;
    pubsub.subscribe(channel).await?;
    Ok(pubsub)
}

/// Publishes batches in order; a failed batch is retried (in order) until it
/// goes through or newer batches pile up behind it.
async fn publisher(
    pool: deadpool_redis::Pool,
    channel: String,
    mut rx: mpsc::Receiver<Vec<Event>>,
    metrics: Arc<Metrics>,
) {
    while let Some(events) = rx.recv().await {
        let mut pipe = redis::pipe();
        for ev in &events {
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(ev.to_frame().as_bytes().as_ref())
                .ignore();
        }
        let mut delay = Duration::from_millis(50);
        loop {
            let sent = async {
                let mut conn = pool.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
                pipe.query_async::<()>(&mut conn).await?;
                anyhow::Ok(())
            }
            .await;
            match sent {
                Ok(()) => {
                    metrics.bus_published.add(events.len() as u64);
                    break;
                }
                Err(e) => {
                    metrics.bus_errors.inc();
                    if rx.len() > PUBLISH_QUEUE / 2 {
                        // Peers repair from the store when they resync.
                        log::warn!("publish failed ({e}); dropping {} events", events.len());
                        break;
                    }
                    log::warn!("publish failed ({e}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// Forwards peers' events to the ChatServer; reconnects with backoff and asks
/// for a resync after every reconnect (pub/sub dropped what was published
/// meanwhile) and every [`RESYNC_INTERVAL`].
async fn subscriber(
    client: redis::Client,
    channel: String,
    node: String,
    first: redis::aio::PubSub,
    server: Addr<ChatServer>,
    metrics: Arc<Metrics>,
    up: Arc<AtomicBool>,
) {
    let mut pubsub = Some(first);
    let mut delay = Duration::from_millis(100);
    loop {
        let current = match pubsub.take() {
            Some(p) => p,
            None => match subscribe(&client, &channel).await {
                Ok(p) => {
                    log::info!("bus subscriber reconnected to {channel}; resyncing rooms");
                    delay = Duration::from_millis(100);
                    server.do_send(Resync);
                    p
                }
                Err(e) => {
                    log::warn!("bus subscriber cannot reconnect ({e}); retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                    continue;
                }
            },
        };
        up.store(true, Ordering::Relaxed);
        let (mut sink, mut stream) = current.split();
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.tick().await;
        let mut keepalive = tokio::time::interval(Duration::from_secs(5));
        keepalive.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let mut events = Vec::new();
                    push_event(&msg, &node, &mut events, &metrics);
                    // Take whatever else is already here, in order.
                    while events.len() < FORWARD_BATCH {
                        match futures_util::FutureExt::now_or_never(stream.next()) {
                            Some(Some(msg)) => push_event(&msg, &node, &mut events, &metrics),
                            _ => break,
                        }
                    }
                    if !events.is_empty() && server.send(PeerEvents { events }).await.is_err() {
                        return;
                    }
                }
                _ = resync.tick() => server.do_send(Resync),
                _ = keepalive.tick() => {
                    // Notices a half-open connection that would never end the stream.
                    let ping = tokio::time::timeout(Duration::from_secs(3), sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        log::warn!("bus subscriber ping failed");
                        break;
                    }
                }
            }
        }
        up.store(false, Ordering::Relaxed);
        metrics.bus_errors.inc();
        log::warn!("bus subscriber lost its connection to Redis; reconnecting");
    }
}

fn push_event(msg: &redis::Msg, node: &str, events: &mut Vec<Event>, metrics: &Metrics) {
    match serde_json::from_slice::<Event>(msg.get_payload_bytes()) {
        Ok(ev) if ev.node == node => {}
        Ok(ev) => {
            metrics.bus_received.inc();
            events.push(ev);
        }
        Err(e) => log::warn!("ignoring a message on the bus that is not an event: {e}"),
    }
}

/// Writes this node's online users and reads the other nodes', every tick.
async fn presence(
    pool: deadpool_redis::Pool,
    channel: String,
    node: String,
    server: Addr<ChatServer>,
) {
    let nodes_key = format!("{channel}:presence:nodes");
    let own_key = format!("{channel}:presence:{node}");
    let ttl_ms = PRESENCE_TTL.as_millis() as i64;
    let mut tick = tokio::time::interval(PRESENCE_TICK);
    // What this node last wrote, and when: the set is written again when it
    // changes, after a failed tick, and every PRESENCE_TTL / 2 (Redis may
    // have lost it: a restart without persistence, or an outage).
    let mut written: Option<(Vec<UserId>, Instant)> = None;
    let mut last_read = Instant::now();
    loop {
        tick.tick().await;
        let local = match server.send(LocalPresence).await {
            Ok(users) => users,
            Err(_) => return,
        };
        let fresh = written
            .as_ref()
            .is_some_and(|(w, at)| *w == local && at.elapsed() < PRESENCE_TTL / 2);
        let result = async {
            let mut conn = pool.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let mut pipe = redis::pipe();
            pipe.atomic();
            if !fresh {
                pipe.del(&own_key).ignore();
                if !local.is_empty() {
                    pipe.sadd(
                        &own_key,
                        local.iter().map(UserId::as_str).collect::<Vec<_>>(),
                    )
                    .ignore();
                }
            }
            pipe.pexpire(&own_key, ttl_ms)
                .ignore()
                .zadd(&nodes_key, &node, now_ms)
                .ignore()
                .zrembyscore(&nodes_key, "-inf", now_ms - ttl_ms)
                .ignore()
                .zrangebyscore(&nodes_key, now_ms - ttl_ms, "+inf");
            let (nodes,): (Vec<String>,) = pipe.query_async(&mut conn).await?;
            let mut read = redis::pipe();
            let others: Vec<&String> = nodes.iter().filter(|n| **n != node).collect();
            for other in &others {
                read.smembers(format!("{channel}:presence:{other}"));
            }
            let sets: Vec<Vec<String>> = if others.is_empty() {
                Vec::new()
            } else {
                read.query_async(&mut conn).await?
            };
            anyhow::Ok(sets)
        }
        .await;
        match result {
            Ok(sets) => {
                if !fresh {
                    written = Some((local, Instant::now()));
                }
                last_read = Instant::now();
                let users = sets.into_iter().flatten().map(UserId::trusted).collect();
                server.do_send(RemotePresence { users });
            }
            Err(e) => {
                log::debug!("presence update failed: {e}");
                written = None;
                // What the other nodes said is as old as a dead node's key
                // would be: nobody elsewhere is known to be online any more.
                if last_read.elapsed() > PRESENCE_TTL {
                    server.do_send(RemotePresence {
                        users: Default::default(),
                    });
                }
            }
        }
    }
}
