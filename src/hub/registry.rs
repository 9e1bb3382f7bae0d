//! The connection registry: every local connection (its mailbox, identity
//! and outbound state), which rooms each is subscribed to and which
//! connections each room has, and which connections each user has. Every
//! direction is kept, so neither a fan-out, a disconnect nor a notice to a
//! user scans what it does not need. Plain data: no actor logic.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use actix::Recipient;

use crate::messages::{ConnId, Deliver, Outbound};
use crate::protocol::{RoomName, UserId};

pub struct Conn {
    pub addr: Recipient<Deliver>,
    pub user: Option<UserId>,
    pub rooms: HashSet<RoomName>,
    pub outbound: Arc<Outbound>,
}

impl Conn {
    pub fn evicted(&self) -> bool {
        self.outbound.evicted.load(Ordering::Relaxed)
    }
}

#[derive(Default)]
pub struct Registry {
    conns: HashMap<ConnId, Conn>,
    subscribers: HashMap<RoomName, HashSet<ConnId>>,
    /// Each user's connections (those with an identity).
    by_user: HashMap<UserId, HashSet<ConnId>>,
    next: u64,
}

impl Registry {
    /// Registers a connection under a new id.
    pub fn connect(
        &mut self,
        addr: Recipient<Deliver>,
        user: Option<UserId>,
        outbound: Arc<Outbound>,
    ) -> ConnId {
        self.next += 1;
        let id = ConnId(self.next);
        if let Some(u) = &user {
            self.by_user.entry(u.clone()).or_default().insert(id);
        }
        self.conns.insert(
            id,
            Conn {
                addr,
                user,
                rooms: HashSet::new(),
                outbound,
            },
        );
        id
    }

    /// Gives an anonymous connection its identity; false when it had one.
    pub fn identify(&mut self, conn: ConnId, user: &UserId) -> bool {
        match self.conns.get_mut(&conn) {
            Some(c) if c.user.is_none() => {
                c.user = Some(user.clone());
                self.by_user.entry(user.clone()).or_default().insert(conn);
                true
            }
            _ => false,
        }
    }

    /// Forgets a connection and its subscriptions.
    pub fn disconnect(&mut self, conn: ConnId) -> Option<Conn> {
        self.unsubscribe_all(conn);
        let gone = self.conns.remove(&conn)?;
        if let Some(u) = &gone.user {
            if let Some(set) = self.by_user.get_mut(u) {
                set.remove(&conn);
                if set.is_empty() {
                    self.by_user.remove(u);
                }
            }
        }
        Some(gone)
    }

    pub fn get(&self, conn: ConnId) -> Option<&Conn> {
        self.conns.get(&conn)
    }

    pub fn conns(&self) -> impl Iterator<Item = (&ConnId, &Conn)> {
        self.conns.iter()
    }

    /// Subscribes a connection to a room; false when it is gone or evicted.
    pub fn subscribe(&mut self, conn: ConnId, room: &RoomName) -> bool {
        let Some(c) = self.conns.get_mut(&conn) else {
            return false;
        };
        if c.evicted() {
            return false;
        }
        c.rooms.insert(room.clone());
        self.subscribers
            .entry(room.clone())
            .or_default()
            .insert(conn);
        true
    }

    pub fn unsubscribe(&mut self, conn: ConnId, room: &RoomName) {
        if let Some(c) = self.conns.get_mut(&conn) {
            c.rooms.remove(room);
        }
        if let Some(subs) = self.subscribers.get_mut(room) {
            subs.remove(&conn);
            if subs.is_empty() {
                self.subscribers.remove(room);
            }
        }
    }

    /// Unsubscribes a connection from every room; returns those rooms.
    pub fn unsubscribe_all(&mut self, conn: ConnId) -> Vec<RoomName> {
        let rooms: Vec<RoomName> = self
            .conns
            .get_mut(&conn)
            .map(|c| c.rooms.drain().collect())
            .unwrap_or_default();
        for room in &rooms {
            if let Some(subs) = self.subscribers.get_mut(room) {
                subs.remove(&conn);
                if subs.is_empty() {
                    self.subscribers.remove(room);
                }
            }
        }
        rooms
    }

    /// The connections subscribed to `room`.
    pub fn subscribers(&self, room: &RoomName) -> impl Iterator<Item = ConnId> + '_ {
        self.subscribers.get(room).into_iter().flatten().copied()
    }

    pub fn has_subscribers(&self, room: &RoomName) -> bool {
        self.subscribers.contains_key(room)
    }

    /// Every connection of `user` on this node.
    pub fn conns_of_user(&self, user: &UserId) -> Vec<ConnId> {
        self.by_user
            .get(user)
            .map(|set| set.iter().copied().collect())
            .unwrap_or_default()
    }

    /// The connections of `user` subscribed to `room`.
    pub fn subscribers_of_user(&self, room: &RoomName, user: &UserId) -> Vec<ConnId> {
        self.subscribers(room)
            .filter(|id| self.conns.get(id).and_then(|c| c.user.as_ref()) == Some(user))
            .collect()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use actix::prelude::*;

    /// A mailbox that takes what it is sent and does nothing with it.
    pub struct Sink;
    impl Actor for Sink {
        type Context = Context<Self>;
    }
    impl Handler<Deliver> for Sink {
        type Result = ();
        fn handle(&mut self, _: Deliver, _: &mut Context<Self>) {}
    }

    pub fn mailbox() -> Recipient<Deliver> {
        Sink.start().recipient()
    }

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).unwrap()
    }

    #[actix::test]
    async fn subscriptions_are_kept_both_ways() {
        let mut r = Registry::default();
        let alice = UserId::parse("alice").unwrap();
        let a = r.connect(mailbox(), Some(alice.clone()), Arc::default());
        let b = r.connect(mailbox(), None, Arc::default());
        assert_ne!(a, b);
        assert!(r.subscribe(a, &room("g")));
        assert!(r.subscribe(a, &room("h")));
        assert!(r.subscribe(b, &room("g")));
        let mut subs: Vec<ConnId> = r.subscribers(&room("g")).collect();
        subs.sort();
        assert_eq!(subs, vec![a, b]);
        assert_eq!(r.subscribers_of_user(&room("g"), &alice), vec![a]);
        let mut left = r.unsubscribe_all(a);
        left.sort();
        assert_eq!(left, vec![room("g"), room("h")]);
        assert!(!r.has_subscribers(&room("h")));
        assert_eq!(r.subscribers(&room("g")).collect::<Vec<_>>(), vec![b]);
        assert!(r.disconnect(b).is_some());
        assert!(!r.has_subscribers(&room("g")));
        assert!(
            !r.subscribe(b, &room("g")),
            "a closed connection cannot subscribe"
        );
    }

    #[actix::test]
    async fn an_evicted_connection_cannot_subscribe_and_identity_is_set_once() {
        let mut r = Registry::default();
        let out: Arc<Outbound> = Arc::default();
        let c = r.connect(mailbox(), None, out.clone());
        assert!(r.identify(c, &UserId::parse("u").unwrap()));
        assert!(!r.identify(c, &UserId::parse("v").unwrap()));
        assert_eq!(
            r.get(c).and_then(|c| c.user.clone()),
            UserId::parse("u").ok()
        );
        out.evicted.store(true, Ordering::Relaxed);
        assert!(!r.subscribe(c, &room("g")));
    }

    #[actix::test]
    async fn a_users_connections_are_found_without_a_scan_and_forgotten() {
        let mut r = Registry::default();
        let u = UserId::parse("u").unwrap();
        let a = r.connect(mailbox(), Some(u.clone()), Arc::default());
        let b = r.connect(mailbox(), None, Arc::default());
        assert_eq!(r.conns_of_user(&u), vec![a]);
        assert!(r.identify(b, &u));
        let mut both = r.conns_of_user(&u);
        both.sort();
        assert_eq!(both, vec![a, b]);
        r.disconnect(a);
        assert_eq!(r.conns_of_user(&u), vec![b]);
        r.disconnect(b);
        assert!(r.conns_of_user(&u).is_empty());
        assert!(r.by_user.is_empty(), "no entry is left for a user gone");
    }
}
