//! Answering an append's origin once its events are delivered: the `ack`
//! (to a connection, or as the REST body), and the joins that appended
//! nothing (a member's `join`, a `dm` between members).

use actix::prelude::*;

use crate::hub::delivery::Appended;
use crate::hub::replay::{Resumer, Waiting};
use crate::hub::ChatServer;
use crate::messages::{HttpDone, Origin};
use crate::protocol::{reply_frame, Ack, EventKind, Reply, RoomName, Seq, UserId};

impl ChatServer {
    /// Answers an append's origin once its events have been delivered.
    pub(super) fn finish(&mut self, waiter: Appended, duplicate: bool) {
        let Appended {
            origin,
            event,
            command,
            with,
            subscribes,
            dropped,
            ..
        } = waiter;
        let ack = Ack {
            reference: origin.reference(),
            command,
            room: Some(&event.room),
            seq: Some(event.seq),
            id: Some(event.id),
            duplicate: duplicate.then_some(true),
            with: with.as_ref(),
            dropped_mentions: &dropped,
            ..Ack::default()
        };
        let frame = reply_frame(&Reply::Ack(ack));
        match origin {
            Origin::Conn { conn, received, .. } => {
                self.metrics
                    .ack_latency
                    .observe(received.elapsed().as_secs_f64());
                // After a join or create, later events must not overtake the
                // ack (its seq is where the connection's stream starts).
                if subscribes {
                    self.send(conn, frame)
                } else {
                    self.reply(conn, frame)
                }
            }
            Origin::Http(tx) => {
                let _ = tx.send(Ok(HttpDone {
                    event: (event.kind == EventKind::Message).then_some(event),
                    duplicate,
                    body: frame.to_string(),
                }));
            }
        }
    }

    /// Our own event was delivered by a gap repair before its commit reached
    /// us: the origin's connection still gets it (if it subscribes now), then its ack.
    pub(super) fn finish_late(&mut self, waiter: Appended, ctx: &mut Context<Self>) {
        if let Appended {
            origin:
                Origin::Conn {
                    conn,
                    since,
                    reference,
                    received,
                },
            event,
            subscribes: true,
            ..
        } = &waiter
        {
            if self.subscribe(*conn, &event.room) {
                if let Some(since) = since {
                    let upto = self.sequencer.last(&event.room).unwrap_or(event.seq);
                    let who = Resumer {
                        conn: *conn,
                        reference: reference.clone(),
                        received: *received,
                        with: None,
                    };
                    return self.start_replay(who, &event.room, *since, upto, ctx);
                }
                self.send(*conn, event.to_json().into());
            }
        }
        if waiter.ack {
            self.finish(waiter, false);
        }
    }

    /// A join that added no event (the user was a member): subscribe, replay, ack.
    /// `stored_last` is the room's last seq in the store, which this node may lag.
    /// A `dm` between two members takes the same path, with its own ack.
    pub(super) fn join_member(
        &mut self,
        origin: Origin,
        room: &RoomName,
        stored_last: Seq,
        command: &'static str,
        with: Option<&UserId>,
        ctx: &mut Context<Self>,
    ) {
        let (conn, reference, since, received) = match origin {
            Origin::Conn {
                conn,
                reference,
                since,
                received,
            } => (conn, reference, since, received),
            http @ Origin::Http(_) => {
                let frame = reply_frame(&Reply::Ack(Ack {
                    command,
                    room: Some(room),
                    seq: Some(stored_last),
                    with,
                    ..Ack::default()
                }));
                return self.answer(http, frame);
            }
        };
        let local = self.sequencer.last(room).unwrap_or(0);
        if !self.subscribe(conn, room) {
            return;
        }
        // A join without `since` on a node that lags the store starts where
        // the store was, like a resume from there.
        let resumed = since.is_some();
        let resume = since.or((local < stored_last).then_some(stored_last));
        match resume {
            Some(since) if since > local && since <= stored_last => {
                // This node has not delivered `since` yet: skip up to it, then ack.
                self.replays.start(conn, room, since, true);
                self.replays.add_waiting(
                    room,
                    Waiting {
                        conn,
                        reference,
                        resumed,
                        received,
                        with: with.cloned(),
                    },
                );
            }
            Some(since) if resumed => {
                let who = Resumer {
                    conn,
                    reference,
                    received,
                    with: None,
                };
                self.start_replay(who, room, since, local, ctx)
            }
            _ => {
                self.metrics
                    .ack_latency
                    .observe(received.elapsed().as_secs_f64());
                self.send_ack(
                    conn,
                    Ack {
                        reference: reference.as_ref(),
                        command,
                        room: Some(room),
                        seq: Some(local),
                        with,
                        ..Ack::default()
                    },
                )
            }
        }
    }
}
