//! The bus between nodes: every committed event is published on the Redis
//! channel `REDIS_CHANNEL` as an envelope (`confab_protocol::Envelope`: a
//! small header and the event's bytes as clients receive them, one `PUBLISH`
//! per event, pipelined per batch), so that peers deliver it to their own
//! sockets; and presence, so that `members` says who is online on any node.
//!
//! Redis pub/sub is at-most-once: the store stays the source of truth. A node
//! that sees a room's seq jump repairs the gap from the store (the hub does
//! that); after the subscriber reconnects, and every `RESYNC_INTERVAL`, the
//! node re-reads every room's last seq from the store and repairs what it
//! missed. Without `REDIS_URL` a node runs alone and the bus is local: there
//! is nobody to tell.
//!
//! The bus talks to the ChatServer only through the [`HubLink`] recipients.

mod presence;
mod redis;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use actix::prelude::*;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::messages::{LiveEvent, LocalPresence, PeerEvents, RemotePresence, Resync};
use crate::metrics::Metrics;

pub use self::presence::{PRESENCE_TICK, PRESENCE_TTL};

/// What the bus sends the ChatServer, and asks it.
pub struct HubLink {
    pub events: Recipient<PeerEvents>,
    pub resync: Recipient<Resync>,
    pub presence: Recipient<RemotePresence>,
    pub local: Recipient<LocalPresence>,
}

impl HubLink {
    pub fn of<A>(addr: &Addr<A>) -> HubLink
    where
        A: Actor
            + Handler<PeerEvents>
            + Handler<Resync>
            + Handler<RemotePresence>
            + Handler<LocalPresence>,
        A::Context: actix::dev::ToEnvelope<A, PeerEvents>
            + actix::dev::ToEnvelope<A, Resync>
            + actix::dev::ToEnvelope<A, RemotePresence>
            + actix::dev::ToEnvelope<A, LocalPresence>,
    {
        HubLink {
            events: addr.clone().recipient(),
            resync: addr.clone().recipient(),
            presence: addr.clone().recipient(),
            local: addr.clone().recipient(),
        }
    }
}

/// Most events waiting to be published, and most bytes of them; past
/// either, a batch is dropped (peers repair from the store).
pub const PUBLISH_MAX_EVENTS: usize = 50_000;
pub const PUBLISH_MAX_BYTES: usize = 64 << 20;

/// The publisher's queue: batches in commit order, bounded in events and in
/// bytes (not in batches, whose size varies from one event to thousands).
#[derive(Clone)]
pub struct PublishQueue {
    tx: mpsc::UnboundedSender<Vec<LiveEvent>>,
    /// (events, bytes) queued and not yet published or dropped.
    queued: Arc<(AtomicUsize, AtomicUsize)>,
}

impl PublishQueue {
    pub fn new() -> (PublishQueue, mpsc::UnboundedReceiver<Vec<LiveEvent>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = PublishQueue {
            tx,
            queued: Arc::default(),
        };
        (queue, rx)
    }

    fn weight(events: &[LiveEvent]) -> usize {
        events.iter().map(|e| e.frame.len()).sum()
    }

    /// Queues a batch unless that passes a bound; false when it was dropped.
    fn offer(&self, events: Vec<LiveEvent>) -> bool {
        let (n, bytes) = (events.len(), Self::weight(&events));
        let (queued_n, queued_bytes) = &*self.queued;
        if queued_n.load(Ordering::Relaxed) + n > PUBLISH_MAX_EVENTS
            || queued_bytes.load(Ordering::Relaxed) + bytes > PUBLISH_MAX_BYTES
        {
            return false;
        }
        queued_n.fetch_add(n, Ordering::Relaxed);
        queued_bytes.fetch_add(bytes, Ordering::Relaxed);
        if self.tx.send(events).is_err() {
            queued_n.fetch_sub(n, Ordering::Relaxed);
            queued_bytes.fetch_sub(bytes, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// The publisher is done with a batch (published or dropped).
    pub fn done(&self, events: &[LiveEvent]) {
        let (queued_n, queued_bytes) = &*self.queued;
        queued_n.fetch_sub(events.len(), Ordering::Relaxed);
        queued_bytes.fetch_sub(Self::weight(events), Ordering::Relaxed);
    }

    /// Events queued, the batch being published included.
    pub fn backlog(&self) -> usize {
        self.queued.0.load(Ordering::Relaxed)
    }
}

/// The ChatServer's side of the bus.
#[derive(Clone)]
pub enum BusHandle {
    /// One node, no peers.
    Local,
    /// Batches go to the publisher task, in commit order.
    Redis {
        queue: PublishQueue,
        metrics: Arc<Metrics>,
    },
}

impl BusHandle {
    /// Publishes one batch of committed events, in commit order.
    pub fn publish(&self, events: Vec<LiveEvent>) {
        if events.is_empty() {
            return;
        }
        if let BusHandle::Redis { queue, metrics } = self {
            if !queue.offer(events) {
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
    nodes: NodeCounts,
}

impl BusHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    /// The nodes alive (seen within the presence TTL) and their connection
    /// counts, as presence last read them from Redis, by name.
    pub fn nodes(&self) -> Vec<(String, u64)> {
        self.nodes.lock().map(|n| n.clone()).unwrap_or_default()
    }
}

/// The nodes alive and their connection counts, shared between the presence
/// task (which writes it every tick) and `/stats`.
pub type NodeCounts = Arc<std::sync::Mutex<Vec<(String, u64)>>>;

/// The configured bus, connected but not started.
pub enum Bus {
    Local,
    Redis(Box<redis::RedisBus>),
}

impl Bus {
    /// Connects the configured bus. With Redis, the subscription is in place
    /// when this returns, so that a node that reads its state afterwards
    /// misses nothing (invariant 6 in docs/architecture.md).
    pub async fn connect(config: &Config, metrics: Arc<Metrics>) -> anyhow::Result<Bus> {
        Ok(match &config.redis_url {
            None => Bus::Local,
            Some(url) => Bus::Redis(Box::new(
                redis::RedisBus::connect(url.expose(), config, metrics).await?,
            )),
        })
    }

    /// The handle the ChatServer publishes through.
    pub fn handle(&self) -> BusHandle {
        match self {
            Bus::Local => BusHandle::Local,
            Bus::Redis(r) => r.handle(),
        }
    }

    pub fn health(&self) -> Option<BusHealth> {
        match self {
            Bus::Local => None,
            Bus::Redis(r) => Some(r.health()),
        }
    }

    /// Starts the publisher, subscriber and presence tasks.
    pub fn start(self, hub: HubLink) {
        if let Bus::Redis(r) = self {
            r.start(hub);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{EventKind, RoomName, UserId};

    fn batch(n: usize, text_bytes: usize) -> Vec<LiveEvent> {
        (0..n)
            .map(|i| LiveEvent {
                room: RoomName::parse("r").unwrap(),
                seq: i as i64 + 1,
                kind: EventKind::Message,
                user: UserId::parse("u").unwrap(),
                facts: Default::default(),
                frame: "x".repeat(text_bytes).into(),
            })
            .collect()
    }

    #[test]
    fn the_publish_queue_is_bounded_in_events_and_in_bytes() {
        let (queue, mut rx) = PublishQueue::new();
        assert!(queue.offer(batch(PUBLISH_MAX_EVENTS - 1, 10)));
        assert!(!queue.offer(batch(2, 10)), "one event too many");
        assert!(queue.offer(batch(1, 10)));
        let first = rx.try_recv().unwrap();
        queue.done(&first);
        assert_eq!(queue.backlog(), 1);
        // Bytes: a few big events fill it long before the event count does.
        assert!(queue.offer(batch(3, PUBLISH_MAX_BYTES / 4)));
        assert!(!queue.offer(batch(2, PUBLISH_MAX_BYTES / 4)));
    }
}
