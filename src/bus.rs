//! The bus between nodes: every committed event is published so that peers
//! deliver it to their own sockets. Without `REDIS_URL` a node runs alone and
//! the in-process bus has nobody to tell.

use actix::prelude::*;

use crate::protocol::{Event, UserId};

/// Events from peers, in the order the bus gave them.
#[derive(Message)]
#[rtype(result = "()")]
pub struct PeerEvents {
    pub events: Vec<Event>,
}

/// The bus lost messages (its subscriber reconnected): re-read every room.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync;

/// The ChatServer's side of the bus.
pub enum BusHandle {
    /// One node, no peers.
    Local,
}

impl BusHandle {
    /// Publishes one batch of committed events, in commit order.
    pub fn publish(&self, events: Vec<Event>) {
        match self {
            BusHandle::Local => drop(events),
        }
    }

    /// A user's first local connection opened.
    pub fn online(&self, _user: &UserId) {}

    /// A user's last local connection closed.
    pub fn offline(&self, _user: &UserId) {}

    /// Whether a user is connected to another node.
    pub fn is_online(&self, _user: &UserId) -> bool {
        false
    }
}

/// Whether the bus is up, for `/health`.
#[derive(Clone)]
pub struct BusHealth {
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl BusHealth {
    pub fn is_up(&self) -> bool {
        self.up.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The bus a node starts with: the ChatServer's handle, a starter that
/// subscribes (given the ChatServer's address), and its health.
pub struct BusSetup {
    pub handle: BusHandle,
    pub start: Option<Box<dyn FnOnce(Addr<crate::server::ChatServer>)>>,
    pub health: Option<BusHealth>,
}

/// Connects the configured bus.
pub async fn connect(
    _config: &crate::config::Config,
    _metrics: std::sync::Arc<crate::metrics::Metrics>,
) -> anyhow::Result<BusSetup> {
    Ok(BusSetup {
        handle: BusHandle::Local,
        start: None,
        health: None,
    })
}
