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

use std::sync::atomic::{AtomicBool, Ordering};
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

/// The ChatServer's side of the bus.
#[derive(Clone)]
pub enum BusHandle {
    /// One node, no peers.
    Local,
    /// Batches go to the publisher task, in commit order.
    Redis {
        publish: mpsc::Sender<Vec<LiveEvent>>,
        metrics: Arc<Metrics>,
    },
}

impl BusHandle {
    /// Publishes one batch of committed events, in commit order.
    pub fn publish(&self, events: Vec<LiveEvent>) {
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
