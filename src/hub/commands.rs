//! Commands from sessions and REST: what the ChatServer answers from memory
//! (`rooms`, `ping`), what it hands the writer (every command that appends
//! an event) and what it reads from the store (`history`, `members`,
//! `bans`, and `block`, which writes the caller's own state).

use std::collections::HashMap;
use std::future::Future;

use actix::prelude::*;

use crate::history;
use crate::hub::ChatServer;
use crate::messages::{ConnId, HttpDone, Origin, Request};
use crate::protocol::{
    reply_frame, Ack, Act, BanInfo, Command, ErrorCode, MemberInfo, ProtoError, Ref, Reply, Role,
    RoomInfo, RoomName, Seq, UserId,
};
use crate::store::{AppendOp, AppendRequest, Page};
use crate::writer::AppendJob;

/// What a read from the store gives, to be answered on the actor.
enum Answer {
    History(RoomName, Page),
    Members(RoomName, Vec<(UserId, Role, Seq)>),
    Bans(RoomName, Vec<BanInfo>),
    Done(&'static str),
    /// `rooms` for a user: the unread counts of its rooms.
    Rooms(Option<UserId>, HashMap<RoomName, (u64, u64)>),
    /// `read`: the marker after, and whether it moved.
    Read(UserId, RoomName, Seq, bool),
}

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
        let since = match &command {
            Command::Join(j) => j.since,
            _ => None,
        };
        let origin = Origin::Conn {
            conn,
            reference,
            since,
            received,
        };
        self.command(command, user, origin, ctx);
    }

    /// One command, from a socket or from REST, for `user`.
    pub(super) fn command(
        &mut self,
        command: Command,
        user: Option<UserId>,
        origin: Origin,
        ctx: &mut Context<Self>,
    ) {
        let name = command.name();
        let room = command.room().cloned();
        let (room, op) = match command {
            Command::Rooms => {
                let Some(user) = user else {
                    let rooms = self.room_infos(None, &HashMap::new());
                    let frame = reply_frame(&Reply::Rooms {
                        reference: origin.reference(),
                        rooms: &rooms,
                    });
                    return self.answer(origin, frame);
                };
                let (store, metrics) = (self.store.clone(), self.metrics.clone());
                let fut = async move {
                    let unread = history::unread(&*store, &metrics, &user).await?;
                    let unread = unread.into_iter().map(|(r, n, m)| (r, (n, m))).collect();
                    Ok(Answer::Rooms(Some(user), unread))
                };
                return self.answer_later(origin, None, fut, ctx);
            }
            Command::Typing(t) => return self.typing(t, user, origin),
            Command::Read(r) => {
                let Some(user) = user else {
                    let err = ProtoError::invalid_field("user_id is required");
                    return self.reply_error(origin, room.as_ref(), err);
                };
                let (store, metrics) = (self.store.clone(), self.metrics.clone());
                let fut = async move {
                    let (seq, moved) =
                        history::mark_read(&*store, &metrics, &r.room, &user, r.seq).await?;
                    Ok(Answer::Read(user, r.room, seq, moved))
                };
                return self.answer_later(origin, room, fut, ctx);
            }
            Command::Ping => {
                let frame = reply_frame(&Reply::Pong {
                    reference: origin.reference(),
                });
                return self.answer(origin, frame);
            }
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
                    .await?;
                    Ok(Answer::History(h.room, page))
                };
                return self.answer_later(origin, room, fut, ctx);
            }
            Command::Members(m) => {
                let (store, metrics) = (self.store.clone(), self.metrics.clone());
                let fut = async move {
                    let list = history::members(&*store, &metrics, &m.room, user.as_ref()).await?;
                    Ok(Answer::Members(m.room, list))
                };
                return self.answer_later(origin, room, fut, ctx);
            }
            Command::Bans(m) => {
                let (store, metrics) = (self.store.clone(), self.metrics.clone());
                let fut = async move {
                    let list = history::bans(&*store, &metrics, &m.room, user.as_ref()).await?;
                    Ok(Answer::Bans(m.room, list))
                };
                return self.answer_later(origin, room, fut, ctx);
            }
            Command::Block(b) => {
                let Some(user) = user else {
                    return self.reply_error(
                        origin,
                        None,
                        ProtoError::invalid_field("user_id is required"),
                    );
                };
                if b.user == user {
                    let err = ProtoError::invalid_field("you cannot block yourself");
                    return self.reply_error(origin, None, err);
                }
                let (store, metrics) = (self.store.clone(), self.metrics.clone());
                let fut = async move {
                    history::block(&*store, &metrics, &user, &b.user, b.block).await?;
                    Ok(Answer::Done(name))
                };
                return self.answer_later(origin, None, fut, ctx);
            }
            Command::Create(c) => (c.room, AppendOp::Create { private: c.private }),
            Command::Join(j) => (j.room, AppendOp::Join),
            Command::Leave(l) => (l.room, AppendOp::Leave),
            Command::Message(m) => (
                m.room,
                AppendOp::Message {
                    text: m.text,
                    client_msg_id: m.client_msg_id,
                    reply_to: m.reply_to,
                    mentions: m.mentions,
                },
            ),
            Command::Edit(e) => (
                e.room,
                AppendOp::Edit {
                    target: e.seq,
                    text: e.text,
                    client_msg_id: e.client_msg_id,
                },
            ),
            Command::Delete(d) => (
                d.room,
                AppendOp::Delete {
                    target: d.seq,
                    client_msg_id: d.client_msg_id,
                },
            ),
            Command::React(r) => (
                r.room,
                AppendOp::React {
                    target: r.seq,
                    emoji: r.emoji,
                    on: r.on,
                    client_msg_id: r.client_msg_id,
                },
            ),
            Command::Moderate(m) => {
                let target = m.user;
                let op = match m.act {
                    Act::Invite => AppendOp::Invite { target },
                    Act::Uninvite => AppendOp::Uninvite { target },
                    Act::Kick => AppendOp::Kick { target },
                    Act::Unban => AppendOp::Unban { target },
                };
                (m.room, op)
            }
            Command::Ban(b) => (
                b.room,
                AppendOp::Ban {
                    target: b.user,
                    reason: b.reason,
                },
            ),
            Command::SetRole(s) => (
                s.room,
                AppendOp::SetRole {
                    target: s.user,
                    role: s.role,
                },
            ),
            Command::Dm(d) => {
                let Some(user) = &user else {
                    return self.reply_error(
                        origin,
                        None,
                        ProtoError::invalid_field("user_id is required"),
                    );
                };
                if &d.user == user {
                    let err = ProtoError::invalid_field("you cannot dm yourself");
                    return self.reply_error(origin, None, err);
                }
                (RoomName::dm(user, &d.user), AppendOp::Dm { other: d.user })
            }
        };
        if let Origin::Conn { conn, .. } = &origin {
            if op.subscribes() && self.at_room_limit(*conn, &room) {
                let err = ProtoError::new(
                    ErrorCode::TooManyRooms,
                    format!(
                        "this connection is in {} rooms, the most it may be in; leave one first",
                        self.config.max_rooms_per_connection
                    ),
                );
                return self.reply_error(origin, Some(&room), err);
            }
        }
        // The session checks identity before it forwards a command that needs one.
        let Some(user) = user else {
            let err = ProtoError::invalid_field("user_id is required");
            return self.reply_error(origin, Some(&room), err);
        };
        self.queue_append(AppendRequest { room, user, op }, origin);
    }

    /// Runs a read of the store off the actor, then answers `origin` with it.
    fn answer_later(
        &mut self,
        origin: Origin,
        room: Option<RoomName>,
        fut: impl Future<Output = Result<Answer, ProtoError>> + 'static,
        ctx: &mut Context<Self>,
    ) {
        ctx.spawn(fut.into_actor(self).map(move |answer, act, _| {
            let answer = match answer {
                Err(err) => return act.reply_error(origin, room.as_ref(), err),
                Ok(answer) => answer,
            };
            let reference = origin.reference();
            let frame = match answer {
                Answer::History(room, page) => reply_frame(&Reply::History {
                    reference,
                    room: &room,
                    events: &page.events,
                    more: page.more,
                }),
                Answer::Members(room, list) => {
                    let members: Vec<MemberInfo> = list
                        .into_iter()
                        .map(|(user_id, role, read_seq)| MemberInfo {
                            online: act.presence.is_online(&user_id),
                            user_id,
                            role,
                            read_seq,
                        })
                        .collect();
                    reply_frame(&Reply::Members {
                        reference,
                        room: &room,
                        members: &members,
                    })
                }
                Answer::Bans(room, bans) => reply_frame(&Reply::Bans {
                    reference,
                    room: &room,
                    bans: &bans,
                }),
                Answer::Done(command) => reply_frame(&Reply::Ack(Ack {
                    reference,
                    command,
                    ..Ack::default()
                })),
                Answer::Rooms(user, unread) => {
                    let rooms = act.room_infos(user.as_ref(), &unread);
                    reply_frame(&Reply::Rooms {
                        reference,
                        rooms: &rooms,
                    })
                }
                Answer::Read(user, room, seq, moved) => {
                    let frame = reply_frame(&Reply::Ack(Ack {
                        reference,
                        command: "read",
                        room: Some(&room),
                        seq: Some(seq),
                        unchanged: (!moved).then_some(true),
                        ..Ack::default()
                    }));
                    if moved {
                        let except = match &origin {
                            Origin::Conn { conn, .. } => Some(*conn),
                            Origin::Http(_) => None,
                        };
                        act.read_moved(&user, &room, seq, except);
                    }
                    frame
                }
            };
            act.answer(origin, frame);
        }));
    }

    /// Sends a reply that is not an error: to the connection, or as the REST body.
    pub(super) fn answer(&mut self, origin: Origin, frame: bytestring::ByteString) {
        match origin {
            Origin::Conn { conn, .. } => self.send(conn, frame),
            Origin::Http(tx) => {
                let _ = tx.send(Ok(HttpDone {
                    event: None,
                    duplicate: false,
                    body: frame.to_string(),
                }));
            }
        }
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
            return self.reply_error(origin, Some(&request.room), ProtoError::unavailable());
        };
        if let Err(job) = writer.try_append(AppendJob { request, origin }) {
            log::warn!("the writer's queue is full: refusing an append");
            self.reply_error(
                job.origin,
                Some(&job.request.room),
                ProtoError::unavailable(),
            );
        }
    }

    pub(super) fn reply_error(&mut self, origin: Origin, room: Option<&RoomName>, err: ProtoError) {
        match origin {
            Origin::Conn {
                conn, reference, ..
            } => self.send_error(conn, reference.as_ref(), &err, room),
            Origin::Http(tx) => {
                let _ = tx.send(Err(err));
            }
        }
    }

    /// The rooms `user` may see (`None`: the public ones), by name, with
    /// their member counts and last seqs as this node has delivered them,
    /// and the unread counts the store gave.
    pub(super) fn room_infos(
        &self,
        user: Option<&UserId>,
        unread: &HashMap<RoomName, (u64, u64)>,
    ) -> Vec<RoomInfo> {
        self.rooms.infos(self.sequencer.rooms(), user, unread)
    }
}

impl Origin {
    /// The `ref` a reply to this origin echoes.
    pub fn reference(&self) -> Option<&Ref> {
        match self {
            Origin::Conn { reference, .. } => reference.as_ref(),
            Origin::Http(_) => None,
        }
    }
}
