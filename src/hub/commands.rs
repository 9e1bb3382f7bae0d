//! Commands from sessions and REST: what the ChatServer answers from memory
//! (`rooms`, `members`, `ping`), what it hands the writer (`create`, `join`,
//! `leave`, `message`) and what it reads from the store (`history`).

use actix::prelude::*;

use crate::history;
use crate::hub::ChatServer;
use crate::messages::{ConnId, Origin, Request};
use crate::protocol::{
    reply_frame, Command, ErrorCode, MemberInfo, ProtoError, Reply, RoomInfo, RoomName,
};
use crate::store::{AppendOp, AppendRequest};
use crate::writer::AppendJob;

impl ChatServer {
    pub(super) fn handle_request(&mut self, req: Request, ctx: &mut Context<Self>) {
        let Request {
            conn,
            reference,
            user,
            command,
            received,
        } = req;
        if self.shutting_down {
            return self.send_error(conn, reference.as_ref(), &ProtoError::unavailable(), None);
        }
        let (room, op, since) = match command {
            Command::Create(c) => (c.room, AppendOp::Create, None),
            Command::Join(j) => (j.room, AppendOp::Join, j.since),
            Command::Leave(l) => (l.room, AppendOp::Leave, None),
            Command::Message(m) => (
                m.room,
                AppendOp::Message {
                    text: m.text,
                    client_msg_id: m.client_msg_id,
                },
                None,
            ),
            Command::History(h) => {
                let store = self.store.clone();
                let metrics = self.metrics.clone();
                let max_bytes = self.config.history_max_bytes();
                let fut = async move {
                    let page = history::read(
                        &*store,
                        &metrics,
                        &h.room,
                        user.as_ref(),
                        h.range,
                        max_bytes,
                    )
                    .await;
                    (h.room, page)
                };
                ctx.spawn(
                    fut.into_actor(self)
                        .map(move |(room, page), act, _| match page {
                            Ok(page) => {
                                let frame = reply_frame(&Reply::History {
                                    reference: reference.as_ref(),
                                    room: &room,
                                    events: &page.events,
                                    more: page.more,
                                });
                                act.send(conn, frame);
                            }
                            Err(err) => act.send_error(conn, reference.as_ref(), &err, Some(&room)),
                        }),
                );
                return;
            }
            Command::Rooms => {
                let rooms = self.room_infos();
                let frame = reply_frame(&Reply::Rooms {
                    reference: reference.as_ref(),
                    rooms: &rooms,
                });
                return self.send(conn, frame);
            }
            Command::Members(m) => {
                let Some(members) = self.members.get(&m.room) else {
                    let err = ProtoError::no_such_room(&m.room);
                    return self.send_error(conn, reference.as_ref(), &err, Some(&m.room));
                };
                let members: Vec<MemberInfo> = members
                    .iter()
                    .map(|u| MemberInfo {
                        user_id: u.clone(),
                        online: self.presence.is_online(u),
                    })
                    .collect();
                let frame = reply_frame(&Reply::Members {
                    reference: reference.as_ref(),
                    room: &m.room,
                    members: &members,
                });
                return self.send(conn, frame);
            }
            Command::Ping => {
                let frame = reply_frame(&Reply::Pong {
                    reference: reference.as_ref(),
                });
                return self.send(conn, frame);
            }
        };
        if matches!(op, AppendOp::Create | AppendOp::Join) && self.at_room_limit(conn, &room) {
            let err = ProtoError::new(
                ErrorCode::TooManyRooms,
                format!(
                    "this connection is in {} rooms, the most it may be in; leave one first",
                    self.config.max_rooms_per_connection
                ),
            );
            return self.send_error(conn, reference.as_ref(), &err, Some(&room));
        }
        // The session checks identity before it forwards a command that needs one.
        let Some(user) = user else {
            let err = ProtoError::invalid_field("user_id is required");
            return self.send_error(conn, reference.as_ref(), &err, Some(&room));
        };
        self.queue_append(
            AppendRequest { room, user, op },
            Origin::Conn {
                conn,
                reference,
                since,
                received,
            },
        );
    }

    /// Whether a new subscription of `conn` to `room` would pass
    /// `MAX_ROOMS_PER_CONNECTION` (checked when the command arrives; joins
    /// already on their way to the store count once they commit).
    fn at_room_limit(&self, conn: ConnId, room: &RoomName) -> bool {
        self.registry.get(conn).is_some_and(|c| {
            c.rooms.len() >= self.config.max_rooms_per_connection && !c.rooms.contains(room)
        })
    }

    /// Hands an append to the writer; `unavailable` when its queue is full.
    pub(super) fn queue_append(&mut self, request: AppendRequest, origin: Origin) {
        let Some(writer) = &self.writer else {
            return self.reply_error(origin, &request.room, ProtoError::unavailable());
        };
        if let Err(job) = writer.try_append(AppendJob { request, origin }) {
            log::warn!("the writer's queue is full: refusing an append");
            self.reply_error(job.origin, &job.request.room, ProtoError::unavailable());
        }
    }

    pub(super) fn reply_error(&mut self, origin: Origin, room: &RoomName, err: ProtoError) {
        match origin {
            Origin::Conn {
                conn, reference, ..
            } => self.send_error(conn, reference.as_ref(), &err, Some(room)),
            Origin::Http(tx) => {
                let _ = tx.send(Err(err));
            }
        }
    }

    /// Every room this node knows, by name, with its member count and last seq.
    pub(super) fn room_infos(&self) -> Vec<RoomInfo> {
        self.sequencer
            .rooms()
            .into_iter()
            .map(|(name, last_seq)| RoomInfo {
                members: self.members.get(&name).map_or(0, |m| m.len()),
                name,
                last_seq,
            })
            .collect()
    }
}
