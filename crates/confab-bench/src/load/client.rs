//! One bench client of the load run: one connection, one task. It creates or joins its
//! room when the controller asks, sends on its own open-loop schedule while a step warms
//! up or measures, and reads every reply and delivery.
//!
//! Each sender has its own fixed schedule (`rate / senders` per second, missed ticks are sent
//! in a burst) and never waits for acks. A message's text is
//! `"<sender>:<sender_seq>:<send_ns>:<tag>:"` padded with `x` to `--size` bytes, where
//! `send_ns` is when it was written (nanoseconds since the run's start) and `tag` is
//! `w<step>` or `m<step>` (warmup / measured). How late each write was against its schedule
//! is reported as "send lag": a large lag means the bench (or the socket's backpressure)
//! could not keep the open-loop schedule.
//!
//! With `--dialect actix` the text is sent as is, as a text frame (no JSON, no ack: it
//! counts as acked once written), and the connection sends `/join <room>` as soon as it is
//! open rather than when the controller asks: until then it sits in actix's room "main",
//! whose members all get two frames per connect, a storm that grows with the square of the
//! connections still there. The controller's join then waits for the reply "joined".

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use futures_util::{SinkExt, StreamExt};
use log::debug;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::check::Continuity;
use super::{Dialect, LoadArgs, Shared, PHASE_MEASURE, PHASE_WARMUP};
use crate::util::lock;
use crate::ws::ClientSocket;

pub(super) type SetupReply = oneshot::Sender<Result<(), String>>;
/// The controller's handle on a client task.
pub(super) type ClientLink = mpsc::UnboundedSender<ClientCommand>;

#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum SetupKind {
    Create,
    Join,
}

impl SetupKind {
    pub(super) fn name(self) -> &'static str {
        match self {
            SetupKind::Create => "create",
            SetupKind::Join => "join",
        }
    }
}

/// What the controller asks a client task to do.
pub(super) enum ClientCommand {
    /// Send `create` or `join` and report the outcome once the reply arrives.
    Setup { kind: SetupKind, reply: SetupReply },
    /// Send messages of `step` every `period` from `first_tick` on, until the phase leaves the step.
    StartSending {
        step: u64,
        period: Duration,
        first_tick: Instant,
        members: u64,
    },
}

/// A server frame, as far as the bench reads it.
#[derive(Deserialize)]
struct ServerFrame<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    seq: Option<u64>,
    #[serde(rename = "ref")]
    reference: Option<Value>,
    #[serde(borrow)]
    message: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
}

/// The header the bench puts in each message's text.
pub(super) struct Payload {
    pub(super) sender: usize,
    pub(super) sender_seq: u64,
    pub(super) send_ns: u64,
    pub(super) measured: bool,
    pub(super) step: u64,
}

impl Payload {
    fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(5, ':');
        let sender = parts.next()?.parse().ok()?;
        let sender_seq = parts.next()?.parse().ok()?;
        let send_ns = parts.next()?.parse().ok()?;
        let tag = parts.next()?;
        let measured = tag.starts_with('m');
        let step = tag.get(1..)?.parse().ok()?;
        Some(Self {
            sender,
            sender_seq,
            send_ns,
            measured,
            step,
        })
    }
}

pub(super) struct BenchClient {
    index: usize,
    room_index: usize,
    room: String,
    user: String,
    size: usize,
    shared: Arc<Shared>,
    /// Where this connection stands in its room's seq and each sender's sender_seq.
    continuity: Continuity,
    pending_setup: Option<(SetupKind, SetupReply)>,
    /// `--dialect actix`: whether the server answered our `/join` with "joined".
    actix_joined: bool,
    ticker: Option<Interval>,
    sending_step: u64,
    room_members: u64,
    next_sender_seq: u64,
    /// First and last sender_seq sent in the measured window of `sending_step`.
    measured_refs: Option<(u64, u64)>,
}

impl BenchClient {
    pub(super) fn new(index: usize, args: &LoadArgs, run_id: &str, shared: Arc<Shared>) -> Self {
        Self {
            index,
            room_index: index % args.rooms,
            room: format!("bench-{run_id}-{}", index % args.rooms),
            user: format!("b{index}"),
            size: args.size,
            shared,
            continuity: Continuity::default(),
            pending_setup: None,
            actix_joined: false,
            ticker: None,
            sending_step: u64::MAX,
            room_members: 0,
            next_sender_seq: 0,
            measured_refs: None,
        }
    }

    pub(super) async fn run(
        mut self,
        mut ws: ClientSocket,
        mut commands: mpsc::UnboundedReceiver<ClientCommand>,
    ) {
        if self.shared.dialect == Dialect::Actix {
            if let Err(e) = ws.send(Message::text(format!("/join {}", self.room))).await {
                debug!("client {}: {e}", self.index);
                self.shared.stats.count_error("send_failed");
                return;
            }
        }
        let ending = loop {
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => self.on_text(&text),
                    Some(Ok(Message::Close(frame))) => {
                        break format!("closed_{}", frame.map_or(1005, |f| u16::from(f.code)));
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        debug!("client {}: {e}", self.index);
                        break "disconnected".to_owned();
                    }
                    None => break "disconnected".to_owned(),
                },
                command = commands.recv() => match command {
                    Some(command) => {
                        if let Err(e) = self.on_command(command, &mut ws).await {
                            debug!("client {}: {e}", self.index);
                            break "send_failed".to_owned();
                        }
                    }
                    None => return, // the controller is done with us
                },
                scheduled = next_tick(&mut self.ticker) => {
                    if let Err(e) = self.on_tick(scheduled, &mut ws).await {
                        debug!("client {}: {e}", self.index);
                        break "send_failed".to_owned();
                    }
                }
            }
        };
        self.shared.stats.count_error(&ending);
    }

    async fn on_command(&mut self, command: ClientCommand, ws: &mut ClientSocket) -> Result<()> {
        match command {
            ClientCommand::Setup { kind, reply } if self.shared.dialect == Dialect::Actix => {
                // The `/join` went out when the connection opened; there is no create.
                if kind == SetupKind::Create || self.actix_joined {
                    let _ = reply.send(Ok(()));
                } else {
                    self.pending_setup = Some((kind, reply));
                }
            }
            ClientCommand::Setup { kind, reply } => {
                let frame = format!(
                    r#"{{"type":"{0}","room":"{1}","user_id":"{2}","ref":"{0}"}}"#,
                    kind.name(),
                    self.room,
                    self.user
                );
                self.pending_setup = Some((kind, reply));
                ws.send(Message::text(frame)).await?;
            }
            ClientCommand::StartSending {
                step,
                period,
                first_tick,
                members,
            } => {
                let mut ticker = tokio::time::interval_at(first_tick, period);
                ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
                self.ticker = Some(ticker);
                self.sending_step = step;
                self.room_members = members;
                self.measured_refs = None;
            }
        }
        Ok(())
    }

    async fn on_tick(&mut self, scheduled: Instant, ws: &mut ClientSocket) -> Result<()> {
        let (step, phase) = self.shared.control();
        if step != self.sending_step || !(phase == PHASE_WARMUP || phase == PHASE_MEASURE) {
            self.ticker = None;
            return Ok(());
        }
        self.next_sender_seq += 1;
        let sender_seq = self.next_sender_seq;
        let measured = phase == PHASE_MEASURE;
        let now = std::time::Instant::now();
        if measured {
            let stats = &self.shared.stats;
            stats.sent.fetch_add(1, Relaxed);
            let lag = now
                .saturating_duration_since(scheduled.into_std())
                .as_micros() as u64;
            lock(&stats.send_lag_us).saturating_record(lag.max(1));
            let first = self.measured_refs.map_or(sender_seq, |(first, _)| first);
            self.measured_refs = Some((first, sender_seq));
        }
        let send_ns = self.shared.nanos_since_base(now);
        let tag = if measured { 'm' } else { 'w' };
        let mut text = format!("{}:{sender_seq}:{send_ns}:{tag}{step}:", self.index);
        text.extend(std::iter::repeat_n(
            'x',
            self.size.saturating_sub(text.len()),
        ));
        if self.shared.dialect == Dialect::Actix {
            ws.send(Message::text(text)).await?;
            // No ack will come: a measured message counts as acked once written.
            if measured {
                let stats = &self.shared.stats;
                stats.acked.fetch_add(1, Relaxed);
                stats.expected.fetch_add(self.room_members, Relaxed);
            }
            return Ok(());
        }
        let frame = format!(
            r#"{{"type":"message","room":"{}","user_id":"{}","message":"{text}","ref":{sender_seq}}}"#,
            self.room, self.user
        );
        ws.send(Message::text(frame)).await?;
        Ok(())
    }

    fn on_text(&mut self, text: &str) {
        if self.shared.dialect == Dialect::Actix {
            return self.on_actix_text(text);
        }
        let Ok(frame) = serde_json::from_str::<ServerFrame>(text) else {
            self.shared.stats.count_error("unparsable_frame");
            return;
        };
        match frame.kind.as_ref() {
            "create" | "join" | "leave" | "message" => self.on_event(&frame),
            "ack" => self.on_reply(&frame, None),
            "error" => self.on_reply(&frame, Some(frame.code.as_deref().unwrap_or("unknown"))),
            _ => {} // hello, pong, ...
        }
    }

    fn on_event(&mut self, frame: &ServerFrame) {
        let stats = &self.shared.stats;
        if !self.continuity.check_seq(frame.seq, stats) || frame.kind != "message" {
            return;
        }
        let Some(payload) = frame.message.as_deref().and_then(Payload::parse) else {
            return; // not a bench message
        };
        let rooms = self.shared.rooms;
        self.continuity
            .check_order(&payload, self.room_index, rooms, stats);
        self.count_delivery(&payload);
    }

    /// A text frame of actix's chat example: "joined" (the reply to our `/join`), a bench
    /// message, or something else ("Someone joined", "Total visitors N", ...), ignored.
    fn on_actix_text(&mut self, text: &str) {
        if text == "joined" {
            self.actix_joined = true;
            if let Some((_, reply)) = self.pending_setup.take() {
                let _ = reply.send(Ok(()));
            }
            return;
        }
        if text.starts_with("!!!") {
            self.shared.stats.count_error("server_complaint"); // e.g. "!!! unknown command"
            return;
        }
        let Some(payload) = Payload::parse(text) else {
            return; // not a bench message
        };
        let (stats, rooms) = (&self.shared.stats, self.shared.rooms);
        if self
            .continuity
            .check_sender_seq(&payload, self.room_index, rooms, stats)
        {
            self.count_delivery(&payload);
        }
    }

    /// Counts a new delivery of a bench message and, if measured in this step, its latency.
    fn count_delivery(&self, payload: &Payload) {
        let stats = &self.shared.stats;
        let (step, phase) = self.shared.control();
        if phase == PHASE_MEASURE {
            stats.in_window.fetch_add(1, Relaxed);
        }
        if payload.measured && payload.step == step {
            stats.received.fetch_add(1, Relaxed);
            let now_ns = self.shared.nanos_since_base(std::time::Instant::now());
            let micros = now_ns.saturating_sub(payload.send_ns) / 1000;
            lock(&stats.latency_us).saturating_record(micros.max(1));
        }
    }

    /// An `ack` (`error_code` None) or `error` reply.
    fn on_reply(&mut self, frame: &ServerFrame, error_code: Option<&str>) {
        let stats = &self.shared.stats;
        match &frame.reference {
            Some(Value::String(name))
                if self
                    .pending_setup
                    .as_ref()
                    .is_some_and(|(k, _)| k.name() == name) =>
            {
                let Some((kind, reply)) = self.pending_setup.take() else {
                    return;
                };
                let outcome = match (error_code, kind, frame.seq) {
                    (None, SetupKind::Join, Some(seq)) => {
                        self.continuity.start(seq);
                        Ok(())
                    }
                    (None, SetupKind::Join, None) => Err("join ack without seq".to_owned()),
                    (None, SetupKind::Create, _) | (Some("room_exists"), SetupKind::Create, _) => {
                        Ok(())
                    }
                    (Some(code), _, _) => Err(code.to_owned()),
                };
                let _ = reply.send(outcome);
            }
            Some(Value::Number(number)) => {
                let measured = number.as_u64().is_some_and(|r| {
                    self.measured_refs
                        .is_some_and(|(first, last)| (first..=last).contains(&r))
                        && self.shared.control().0 == self.sending_step
                });
                match error_code {
                    None if measured => {
                        stats.acked.fetch_add(1, Relaxed);
                        stats.expected.fetch_add(self.room_members, Relaxed);
                    }
                    None => {}
                    Some(code) => {
                        stats.count_error(code);
                        if measured {
                            stats.refused.fetch_add(1, Relaxed);
                        }
                    }
                }
            }
            _ => {
                if let Some(code) = error_code {
                    stats.count_error(code);
                }
            }
        }
    }
}

async fn next_tick(ticker: &mut Option<Interval>) -> Instant {
    match ticker {
        Some(ticker) => ticker.tick().await,
        None => std::future::pending().await,
    }
}
