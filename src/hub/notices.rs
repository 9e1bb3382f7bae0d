//! Frames addressed to a user, derived from a room event as a node delivers
//! it: `invite`, `dm`, `kick`, `ban` and `mention` notices. Every node
//! delivers every event, so every node tells its own connections of that
//! user, subscribed to the room or not.

use bytestring::ByteString;

use crate::hub::ChatServer;
use crate::messages::{ConnId, LiveEvent};
use crate::protocol::{reply_frame, NoticeKind, Reply};

impl ChatServer {
    /// The notice an event causes (an invite, a DM, a kick, a ban), to every
    /// connection of its user on this node, subscribed to the room or not.
    /// Every node does this for the events it delivers, so the notice
    /// reaches the user's connections cluster-wide.
    pub(super) fn notify_user(&mut self, event: &LiveEvent) {
        if !event.facts.mentions.is_empty() {
            self.notify_mentions(event);
        }
        let Some((kind, to, by)) = event.facts.notice(event.kind, &event.user) else {
            return;
        };
        let conns = self.registry.conns_of_user(to);
        if conns.is_empty() {
            return;
        }
        let frame: ByteString = reply_frame(&Reply::Notice {
            kind,
            room: &event.room,
            seq: event.seq,
            by,
            reason: event.facts.reason.as_deref(),
        });
        for conn in conns {
            self.send(conn, frame.clone());
        }
    }

    /// A `mention` notice to each connection of a mentioned member that is
    /// not subscribed to the room (a subscribed one has the message itself).
    fn notify_mentions(&mut self, event: &LiveEvent) {
        let frame: ByteString = reply_frame(&Reply::Notice {
            kind: NoticeKind::Mention,
            room: &event.room,
            seq: event.seq,
            by: &event.user,
            reason: None,
        });
        for user in &event.facts.mentions {
            let conns: Vec<ConnId> = self
                .registry
                .conns_of_user(user)
                .into_iter()
                .filter(|id| {
                    self.registry
                        .get(*id)
                        .is_some_and(|c| !c.rooms.contains(&event.room))
                })
                .collect();
            for conn in conns {
                self.send(conn, frame.clone());
            }
        }
    }
}
