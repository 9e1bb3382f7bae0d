//! One client of the soak: one user, one connection at a time, for the whole run.
//!
//! A regular client is in its home room (`index % rooms`); a sender also posts there. It
//! obeys the controller's churn: drop the connection and come back after a while with
//! `join` + `since` for every room it is in (a resume), leave the home room and join it
//! again, or visit another room for a few seconds. A slow reader is in every room, reads
//! through a socket with a small receive buffer, and now and then stops reading for the
//! stall time; once evicted (close 4000) it reconnects at once and resumes every room. A
//! stall that ends without a 4000 (the node's kernel took the backlog: its send buffer for a
//! socket grows to about 1 MB over the socket's life) is "outlasted": the reader then
//! closes that socket and resumes on a new one, as a client that gave up would.
//!
//! What it holds and checks in each room (seq continuity across reconnects) is
//! `soak/track.rs`.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{sleep, sleep_until, timeout, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use super::track::{State, Track};
use super::{Rng, Shared, PHASE_DONE, PHASE_RUN};
use crate::ws::{connect_with_recv_buffer, ClientSocket};

/// What the controller asks a regular client to do.
pub(super) enum Churn {
    /// Close the connection (with a close frame or without), wait, reconnect and resume.
    Reconnect { graceful: bool, away: Duration },
    /// Leave the home room, wait, join it again (a new membership).
    LeaveRejoin { away: Duration },
    /// Join another room, stay, leave it.
    Visit { room: usize, stay: Duration },
}

/// How long a slow reader reads after a stall before it counts the stall as outlasted:
/// enough to drain what the node's kernel and write buffer hold and reach a 4000.
const OUTLASTED_AFTER: Duration = Duration::from_secs(5);

/// A 4000 before every join was acked (a slow reader resuming many rooms).
#[derive(Debug)]
struct EvictedWhileJoining;

impl std::fmt::Display for EvictedWhileJoining {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("evicted (4000) while joining")
    }
}

impl std::error::Error for EvictedWhileJoining {}

/// How one connection ended.
enum Ending {
    Done,
    Evicted,
    Churned(Duration),
    Lost(String),
}

pub(super) struct Client {
    index: usize,
    user: String,
    slow: bool,
    sender: bool,
    period: Duration,
    commands: mpsc::UnboundedReceiver<Churn>,
    shared: Arc<Shared>,
    track: Track,
    /// A join (true) or leave (false) of a room to send at a time.
    later: Option<(Instant, usize, bool)>,
    next_ref: u64,
    rng: Rng,
}

impl Client {
    pub(super) fn new(
        index: usize,
        slow: bool,
        sender: bool,
        period: Duration,
        commands: mpsc::UnboundedReceiver<Churn>,
        shared: Arc<Shared>,
    ) -> Client {
        let first: Vec<usize> = if slow {
            (0..shared.rooms).collect()
        } else {
            vec![index % shared.rooms]
        };
        Client {
            index,
            user: format!("s{index}"),
            slow,
            sender,
            period,
            commands,
            rng: Rng::new(index as u64 + 1),
            track: Track::new(index, shared.clone(), &first),
            shared,
            later: None,
            next_ref: 0,
        }
    }

    pub(super) async fn run(mut self, gate: Arc<Semaphore>) {
        let shared = self.shared.clone();
        let tally = &shared.tally;
        let permit = gate.acquire_owned().await.ok();
        let mut ws = self.reconnect().await;
        drop(permit);
        tally.joined.fetch_add(1, Relaxed);
        while let Some(mut socket) = ws {
            tally.open.fetch_add(1, Relaxed);
            let ending = self.live(&mut socket).await;
            tally.open.fetch_sub(1, Relaxed);
            drop(socket);
            match ending {
                Ending::Done => return,
                Ending::Evicted => {
                    tally.evictions.fetch_add(1, Relaxed);
                }
                Ending::Churned(away) => {
                    let mut phase = self.shared.phase.clone();
                    let _ = timeout(away, phase.wait_for(|p| *p == PHASE_DONE)).await;
                }
                Ending::Lost(why) if self.slow && why == "reset" => {
                    tally.cut.fetch_add(1, Relaxed);
                }
                Ending::Lost(why) => tally.error(format!("connection lost: {why}")),
            }
            tally.reconnects.fetch_add(1, Relaxed);
            ws = self.reconnect().await;
        }
    }

    /// Opens a connection and joins every room, backing off while that fails; None once
    /// the soak is done.
    async fn reconnect(&mut self) -> Option<ClientSocket> {
        let mut backoff = Duration::from_millis(50);
        loop {
            if *self.shared.phase.borrow() == PHASE_DONE {
                return None;
            }
            match self.open().await {
                Ok(ws) => return Some(ws),
                Err(e) if e.is::<EvictedWhileJoining>() => {
                    // Its resume's replays and the live events outran it: evicted again.
                    self.shared.tally.evictions.fetch_add(1, Relaxed);
                    self.shared.tally.evicted_joining.fetch_add(1, Relaxed);
                }
                Err(e) => {
                    self.shared.tally.error(format!("open: {e:#}"));
                    sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// Connects, then joins every room: with `since` where it holds a position (a resume),
    /// plainly where it never joined. Returns once every join is acked.
    async fn open(&mut self) -> Result<ClientSocket> {
        let recv_buffer = self.slow.then_some(self.shared.slow_rcvbuf);
        let mut ws = connect_with_recv_buffer(&self.shared.url, recv_buffer).await?;
        for (room, since) in self.track.rejoin() {
            self.send_join(&mut ws, room, since).await?;
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.track.joining() {
            let frame = timeout(
                deadline.saturating_duration_since(Instant::now()),
                ws.next(),
            )
            .await
            .map_err(|_| anyhow!("joins not acked within 30 s"))?;
            match frame {
                Some(Ok(Message::Text(text))) => self.track.on_text(&text),
                Some(Ok(Message::Close(frame))) => match frame.map(|f| u16::from(f.code)) {
                    Some(4000) => return Err(EvictedWhileJoining.into()),
                    code => bail!("closed during the joins ({code:?})"),
                },
                Some(Ok(_)) => {}
                Some(Err(e)) => bail!("{e}"),
                None => bail!("closed during the joins"),
            }
        }
        Ok(ws)
    }

    async fn send_join(
        &mut self,
        ws: &mut ClientSocket,
        room: usize,
        since: Option<u64>,
    ) -> Result<()> {
        let since = since
            .map(|s| format!(r#","since":{s}"#))
            .unwrap_or_default();
        let frame = format!(
            r#"{{"type":"join","room":"{}","user_id":"{}"{since},"ref":"j{room}"}}"#,
            self.shared.room_name(room),
            self.user
        );
        ws.send(Message::text(frame)).await?;
        Ok(())
    }

    async fn send_leave(&mut self, ws: &mut ClientSocket, room: usize) -> Result<()> {
        let frame = format!(
            r#"{{"type":"leave","room":"{}","user_id":"{}","ref":"l{room}"}}"#,
            self.shared.room_name(room),
            self.user
        );
        ws.send(Message::text(frame)).await?;
        Ok(())
    }

    /// Reads (and sends, obeys churn, stalls) until the connection ends or the soak is done.
    async fn live(&mut self, ws: &mut ClientSocket) -> Ending {
        let mut phase = self.shared.phase.clone();
        let home = self.index % self.shared.rooms;
        let first_tick = Instant::now() + self.rng.secs(0.0, self.period.as_secs_f64());
        let mut ticker = tokio::time::interval_at(first_tick, self.period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let opened = Instant::now();
        let mut stall_at = self.slow.then(|| opened + self.rng.secs(3.0, 8.0));
        let mut stall_ended: Option<Instant> = None;
        let mut give_up_at: Option<Instant> = None;
        loop {
            let running = *phase.borrow() == PHASE_RUN;
            let sending = self.sender && running && self.track.state(home) == Some(State::Live);
            let later_at = self.later.map(|(at, _, _)| at);
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => self.track.on_text(&text),
                    Some(Ok(Message::Close(frame))) => {
                        let code = frame.map_or(1005, |f| u16::from(f.code));
                        return if code == 4000 { Ending::Evicted } else { Ending::Lost(format!("close {code}")) };
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        let why = reason(&e);
                        if self.slow {
                            log::info!(
                                "slow reader {} lost its connection ({why}) {:.1} s after it opened, {:.1} s after its stall",
                                self.index,
                                opened.elapsed().as_secs_f64(),
                                stall_ended.map_or(-1.0, |t| t.elapsed().as_secs_f64())
                            );
                        }
                        return Ending::Lost(why);
                    }
                    None => return Ending::Lost("eof".to_owned()),
                },
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == PHASE_DONE {
                        let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                        return Ending::Done;
                    }
                }
                command = self.commands.recv(), if running => {
                    if let Some(command) = command {
                        if let Err(ending) = self.churn(command, ws).await {
                            return ending;
                        }
                    }
                }
                _ = sleep_until(later_at.unwrap_or_else(Instant::now)), if later_at.is_some() => {
                    if let Err(e) = self.do_later(ws).await {
                        return Ending::Lost(format!("send: {e}"));
                    }
                }
                _ = ticker.tick(), if sending => {
                    self.next_ref += 1;
                    let head = format!("{}:{}:", self.index, self.next_ref);
                    let text = format!("{head}{}", "x".repeat(self.shared.size.saturating_sub(head.len())));
                    let frame = format!(
                        r#"{{"type":"message","room":"{}","user_id":"{}","message":"{text}","ref":{}}}"#,
                        self.shared.room_name(home), self.user, self.next_ref
                    );
                    if let Err(e) = ws.send(Message::text(frame)).await {
                        return Ending::Lost(format!("send: {e}"));
                    }
                    self.shared.tally.sent.fetch_add(1, Relaxed);
                }
                _ = sleep_until(stall_at.unwrap_or_else(Instant::now)), if stall_at.is_some() && running => {
                    // Read nothing for the stall time (or until the run ends).
                    self.shared.tally.stalls.fetch_add(1, Relaxed);
                    let _ = timeout(self.shared.stall, phase.wait_for(|p| *p != PHASE_RUN)).await;
                    stall_at = None;
                    stall_ended = Some(Instant::now());
                    if *phase.borrow() == PHASE_RUN {
                        give_up_at = Some(Instant::now() + OUTLASTED_AFTER);
                    }
                }
                _ = sleep_until(give_up_at.unwrap_or_else(Instant::now)), if give_up_at.is_some() => {
                    // Caught up without a 4000: start afresh on a new socket.
                    self.shared.tally.outlasted.fetch_add(1, Relaxed);
                    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                    return Ending::Churned(Duration::ZERO);
                }
            }
        }
    }

    /// Starts one churn, unless a join or leave is under way. `Err` ends the connection.
    async fn churn(&mut self, command: Churn, ws: &mut ClientSocket) -> Result<(), Ending> {
        if self.later.is_some() || !self.track.settled() {
            return Ok(());
        }
        self.shared.tally.churned.fetch_add(1, Relaxed);
        let home = self.index % self.shared.rooms;
        let sent = match command {
            Churn::Reconnect { graceful, away } => {
                if graceful {
                    let _ = timeout(Duration::from_secs(2), ws.close(None)).await;
                }
                return Err(Ending::Churned(away));
            }
            Churn::LeaveRejoin { away } => {
                self.later = Some((Instant::now() + away, home, true));
                self.track.start_leave(home);
                self.send_leave(ws, home).await
            }
            Churn::Visit { room, stay } => {
                if self.track.state(room).is_some() {
                    return Ok(());
                }
                self.later = Some((Instant::now() + stay, room, false));
                self.track.start_join(room);
                self.send_join(ws, room, None).await
            }
        };
        sent.map_err(|e| Ending::Lost(format!("send: {e}")))
    }

    /// The join or leave that a churn left for later; postponed while one is in flight.
    async fn do_later(&mut self, ws: &mut ClientSocket) -> Result<()> {
        let Some((_, room, join)) = self.later.take() else {
            return Ok(());
        };
        match (join, self.track.state(room)) {
            (true, None) => {
                self.track.start_join(room);
                self.send_join(ws, room, None).await?;
            }
            (false, Some(State::Live)) => {
                self.track.start_leave(room);
                self.send_leave(ws, room).await?;
            }
            (true, Some(State::Live)) | (false, None) => {}
            _ => self.later = Some((Instant::now() + Duration::from_secs(1), room, join)),
        }
        Ok(())
    }
}

fn reason(error: &WsError) -> String {
    match error {
        WsError::Io(io) if io.kind() == std::io::ErrorKind::ConnectionReset => "reset".to_owned(),
        WsError::Protocol(p) if p.to_string().contains("reset") => "reset".to_owned(),
        other => other.to_string().chars().take(80).collect(),
    }
}
