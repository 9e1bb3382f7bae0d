//! Who is online: this node's identified connections per user, and the users
//! other nodes report through the bus. Plain data: no actor, no Redis.

use std::collections::{HashMap, HashSet};

use crate::protocol::UserId;

#[derive(Default)]
pub struct Presence {
    /// Identified local connections per user.
    local: HashMap<UserId, usize>,
    /// Users connected to other nodes (from the bus's presence task).
    remote: HashSet<UserId>,
}

impl Presence {
    /// A local connection of `user` opened (or took its identity).
    pub fn connected(&mut self, user: &UserId) {
        *self.local.entry(user.clone()).or_default() += 1;
    }

    /// A local connection of `user` closed.
    pub fn disconnected(&mut self, user: &UserId) {
        if let Some(n) = self.local.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                self.local.remove(user);
            }
        }
    }

    /// Replaces what the other nodes report.
    pub fn set_remote(&mut self, users: HashSet<UserId>) {
        self.remote = users;
    }

    pub fn is_online(&self, user: &UserId) -> bool {
        self.local.contains_key(user) || self.remote.contains(user)
    }

    /// The users connected to this node, sorted.
    pub fn local_users(&self) -> Vec<UserId> {
        let mut users: Vec<UserId> = self.local.keys().cloned().collect();
        users.sort();
        users
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(s: &str) -> UserId {
        UserId::parse(s).unwrap()
    }

    #[test]
    fn a_user_is_online_until_the_last_connection_closes() {
        let mut p = Presence::default();
        p.connected(&user("a"));
        p.connected(&user("a"));
        p.disconnected(&user("a"));
        assert!(p.is_online(&user("a")));
        p.disconnected(&user("a"));
        assert!(!p.is_online(&user("a")));
        assert!(p.local_users().is_empty());
        p.disconnected(&user("a")); // a stray close does not go negative
        p.connected(&user("a"));
        assert_eq!(p.local_users(), vec![user("a")]);
    }

    #[test]
    fn remote_users_are_replaced_as_a_whole() {
        let mut p = Presence::default();
        p.set_remote([user("b"), user("c")].into());
        assert!(p.is_online(&user("b")));
        p.set_remote([user("c")].into());
        assert!(!p.is_online(&user("b")));
        assert!(p.is_online(&user("c")));
        assert!(p.local_users().is_empty(), "remote users are not local");
    }
}
