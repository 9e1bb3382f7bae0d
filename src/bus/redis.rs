//! The Redis bus: the publisher (envelopes, pipelined per batch, in commit
//! order, signed when `BUS_SECRET` is set), the subscriber (checks each
//! envelope's signature when `BUS_SECRET` is set, validates its header and
//! event, and forwards the event's bytes untouched; reconnects and asks for a
//! resync) and the presence task. See the parent module for what the bus
//! promises.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Recipient;
use anyhow::Context as _;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::{BusHandle, BusHealth, HubLink, PublishQueue, PUBLISH_MAX_EVENTS};
use crate::config::{redact_url, Config};
use crate::messages::{LiveEvent, PeerEvents, Resync};
use crate::metrics::Metrics;
use crate::protocol::{BusKey, Envelope, Header};
/// How often a node compares every room's last seq with the store, to catch
/// events whose publish was lost while nobody noticed.
const RESYNC_INTERVAL: Duration = Duration::from_secs(10);
/// Most peer events forwarded to the ChatServer in one message.
const FORWARD_BATCH: usize = 512;

/// A connected Redis bus whose tasks have not started yet.
pub struct RedisBus {
    client: redis::Client,
    first: redis::aio::PubSub,
    pool: deadpool_redis::Pool,
    channel: String,
    node: String,
    /// `BUS_SECRET`: signs what is published, checks what is received.
    key: Option<BusKey>,
    publish: PublishQueue,
    queue: mpsc::UnboundedReceiver<Vec<LiveEvent>>,
    metrics: Arc<Metrics>,
    up: Arc<AtomicBool>,
    /// The nodes alive and their connection counts, as presence last read them.
    nodes: super::NodeCounts,
}

impl RedisBus {
    /// Subscribes to the channel (so nothing published from now on is
    /// missed) and builds the publishing pool.
    pub async fn connect(
        url: &str,
        config: &Config,
        metrics: Arc<Metrics>,
    ) -> anyhow::Result<RedisBus> {
        let shown = redact_url(url);
        let client = redis::Client::open(url)
            .with_context(|| format!("REDIS_URL={shown} is not a valid Redis URL"))?;
        let channel = config.redis_channel.clone();
        let first = subscribe(&client, &channel)
            .await
            .with_context(|| format!("cannot subscribe to {channel} at REDIS_URL={shown}"))?;
        let pool = deadpool_redis::Config::from_url(url)
            .builder()
            .context("redis pool config")?
            .max_size(4)
            .wait_timeout(Some(Duration::from_secs(2)))
            .create_timeout(Some(Duration::from_secs(2)))
            .recycle_timeout(Some(Duration::from_secs(1)))
            .runtime(deadpool_redis::Runtime::Tokio1)
            .build()
            .context("redis pool")?;
        let (publish, queue) = PublishQueue::new();
        Ok(RedisBus {
            client,
            first,
            pool,
            channel,
            node: config.node_id.clone(),
            key: config.bus_key.clone(),
            publish,
            queue,
            metrics,
            up: Arc::new(AtomicBool::new(true)),
            nodes: super::NodeCounts::default(),
        })
    }

    pub fn handle(&self) -> BusHandle {
        BusHandle::Redis {
            queue: self.publish.clone(),
            metrics: self.metrics.clone(),
        }
    }

    pub fn health(&self) -> BusHealth {
        BusHealth {
            up: self.up.clone(),
            nodes: self.nodes.clone(),
        }
    }

    pub fn start(self, hub: HubLink) {
        let RedisBus {
            client,
            first,
            pool,
            channel,
            node,
            key,
            publish,
            queue,
            metrics,
            up,
            nodes,
        } = self;
        let metrics_for_presence = metrics.clone();
        actix::spawn(publisher(
            pool.clone(),
            Signer {
                channel: channel.clone(),
                node: node.clone(),
                key: key.clone(),
            },
            (publish, queue),
            metrics.clone(),
        ));
        let subscriber = Subscriber {
            client,
            channel: channel.clone(),
            node: node.clone(),
            key,
            drops: DropLog::new(),
            events: hub.events,
            resync: hub.resync,
            metrics,
            up,
        };
        actix::spawn(subscriber.run(first));
        actix::spawn(super::presence::run(super::presence::Presence {
            pool,
            channel,
            node,
            local_users: hub.local,
            remote: hub.presence,
            metrics: metrics_for_presence,
            nodes,
        }));
    }
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
    signer: Signer,
    (queue, mut rx): (PublishQueue, mpsc::UnboundedReceiver<Vec<LiveEvent>>),
    metrics: Arc<Metrics>,
) {
    let Signer { channel, node, key } = signer;
    while let Some(events) = rx.recv().await {
        let mut pipe = redis::pipe();
        for ev in &events {
            let header = Header {
                node: node.clone(),
                room: ev.room.clone(),
                seq: ev.seq,
                kind: ev.kind,
                user: ev.user.clone(),
                to: ev.facts.addressed_to(ev.kind, &ev.user).cloned(),
            };
            pipe.cmd("PUBLISH")
                .arg(&channel)
                .arg(header.encode_signed(&ev.frame, key.as_ref()))
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
                    if queue.backlog() > PUBLISH_MAX_EVENTS / 2 {
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
        queue.done(&events);
    }
}

/// Where and as whom the publisher publishes.
struct Signer {
    channel: String,
    node: String,
    key: Option<BusKey>,
}

/// Forwards peers' events to the ChatServer; reconnects with backoff and asks
/// for a resync after every reconnect (pub/sub dropped what was published
/// meanwhile) and every [`RESYNC_INTERVAL`].
struct Subscriber {
    client: redis::Client,
    channel: String,
    node: String,
    /// `BUS_SECRET`: with it, only envelopes signed with it are taken.
    key: Option<BusKey>,
    drops: DropLog,
    events: Recipient<PeerEvents>,
    resync: Recipient<Resync>,
    metrics: Arc<Metrics>,
    up: Arc<AtomicBool>,
}

impl Subscriber {
    async fn run(self, first: redis::aio::PubSub) {
        let mut pubsub = Some(first);
        let mut delay = Duration::from_millis(100);
        loop {
            let current = match pubsub.take() {
                Some(p) => p,
                None => match subscribe(&self.client, &self.channel).await {
                    Ok(p) => {
                        log::info!(
                            "bus subscriber reconnected to {}; resyncing rooms",
                            self.channel
                        );
                        delay = Duration::from_millis(100);
                        self.ask_resync();
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
            self.up.store(true, Ordering::Relaxed);
            if !self.forward(current).await {
                return;
            }
            self.up.store(false, Ordering::Relaxed);
            self.metrics.bus_errors.inc();
            log::warn!("bus subscriber lost its connection to Redis; reconnecting");
        }
    }

    /// A resync is idempotent: when the mailbox is full, the next interval asks again.
    fn ask_resync(&self) {
        let _ = self.resync.try_send(Resync);
    }

    /// Forwards until the connection is lost (true) or the ChatServer is gone (false).
    async fn forward(&self, pubsub: redis::aio::PubSub) -> bool {
        let (mut sink, mut stream) = pubsub.split();
        let mut resync = tokio::time::interval(RESYNC_INTERVAL);
        resync.tick().await;
        let mut keepalive = tokio::time::interval(Duration::from_secs(5));
        keepalive.tick().await;
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return true };
                    let mut events = Vec::new();
                    self.push_event(&msg, &mut events);
                    // Take whatever else is already here, in order.
                    while events.len() < FORWARD_BATCH {
                        match futures_util::FutureExt::now_or_never(stream.next()) {
                            Some(Some(msg)) => self.push_event(&msg, &mut events),
                            _ => break,
                        }
                    }
                    // `send` waits for room in the mailbox: the bus's backpressure.
                    if !events.is_empty() && self.events.send(PeerEvents { events }).await.is_err() {
                        return false;
                    }
                }
                _ = resync.tick() => self.ask_resync(),
                _ = keepalive.tick() => {
                    // Notices a half-open connection that would never end the stream.
                    let ping = tokio::time::timeout(Duration::from_secs(3), sink.ping::<redis::Value>()).await;
                    if !matches!(ping, Ok(Ok(_))) {
                        log::warn!("bus subscriber ping failed");
                        return true;
                    }
                }
            }
        }
    }

    /// Reads one message: a peer's event is kept, our own skipped, and
    /// anything else dropped, logged and counted: not a valid envelope, an
    /// event that is not an object or disagrees with its header, and (with
    /// `BUS_SECRET`) an envelope unsigned or badly signed. Nothing of a
    /// dropped message reaches a socket.
    fn push_event(&self, msg: &redis::Msg, events: &mut Vec<LiveEvent>) {
        match Envelope::decode_verified(msg.get_payload_bytes(), self.key.as_ref()) {
            Ok(env) if env.header.node == self.node => {}
            Ok(env) => {
                self.metrics.bus_received.inc();
                let h = env.header;
                events.push(LiveEvent {
                    room: h.room,
                    seq: h.seq,
                    kind: h.kind,
                    user: h.user,
                    facts: env.facts,
                    frame: env.event.into(),
                });
            }
            Err(e) => {
                self.metrics.bus_errors.inc();
                if let Some(suppressed) = self.drops.admit() {
                    let more = if suppressed > 0 {
                        format!(" ({suppressed} more dropped without a log line before it)")
                    } else {
                        String::new()
                    };
                    log::warn!(
                        "dropping a message on {} that is not a valid envelope: {e}{more}",
                        self.channel
                    );
                }
            }
        }
    }
}

/// Most dropped bus messages logged per [`DROP_LOG_WINDOW`]: whoever floods
/// the channel with garbage does not flood the log too (every drop is still
/// counted in `confab_bus_errors_total`).
const DROP_LOG_BURST: u32 = 20;
const DROP_LOG_WINDOW: Duration = Duration::from_secs(10);

/// How many drops were logged in the current window, and how many were not.
struct DropLog {
    state: std::sync::Mutex<(std::time::Instant, u32, u64)>,
}

impl DropLog {
    fn new() -> DropLog {
        DropLog {
            state: std::sync::Mutex::new((std::time::Instant::now(), 0, 0)),
        }
    }

    /// `Some(drops not logged since the last line)` when this drop may be
    /// logged; `None` when the window's lines are used up.
    fn admit(&self) -> Option<u64> {
        let Ok(mut state) = self.state.lock() else {
            return Some(0);
        };
        let (started, logged, suppressed) = &mut *state;
        if started.elapsed() >= DROP_LOG_WINDOW {
            *started = std::time::Instant::now();
            *logged = 0;
        }
        if *logged < DROP_LOG_BURST {
            *logged += 1;
            Some(std::mem::take(suppressed))
        } else {
            *suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_are_logged_a_few_per_window_and_the_rest_counted() {
        let drops = DropLog::new();
        for _ in 0..DROP_LOG_BURST {
            assert_eq!(drops.admit(), Some(0));
        }
        for _ in 0..5 {
            assert_eq!(drops.admit(), None);
        }
        // A new window: the next line says how many went unlogged.
        if let Ok(mut state) = drops.state.lock() {
            state.0 -= DROP_LOG_WINDOW;
        }
        assert_eq!(drops.admit(), Some(5));
        assert_eq!(drops.admit(), Some(0));
    }
}
