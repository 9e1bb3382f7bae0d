//! One client of the resume storm: connects and creates or joins its room, reads (and, as
//! its room's sender, sends) until its connection drops, then reconnects at once through
//! the same URL and joins with `since` = the last `seq` it was given, as a careful client
//! would. It checks that the `seq`s it is given are 1 apart across the reconnect (a gap is
//! a lost event, a repeat a duplicate).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt, StreamExt};
use log::debug;
use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout, MissedTickBehavior};
use tokio_tungstenite::tungstenite::Message;

use super::{ResumeArgs, Shared, PHASE_DONE, PHASE_SEND};
use crate::util::lock;
use crate::ws::{connect, ClientSocket};

pub(super) struct Client {
    index: usize,
    room_index: usize,
    room: String,
    user: String,
    sender: bool,
    period: Duration,
    url: String,
    shared: Arc<Shared>,
    /// Last seq this client was given, across reconnects.
    last_seq: Option<u64>,
    next_ref: u64,
}

/// How one connection of a client ended.
enum Ending {
    /// The bench is done.
    Done,
    /// The socket dropped: reconnect.
    Dropped,
}

impl Client {
    pub(super) fn new(
        index: usize,
        args: &ResumeArgs,
        run_id: &str,
        period: Duration,
        shared: Arc<Shared>,
    ) -> Client {
        Client {
            index,
            room_index: index % args.rooms,
            room: format!("resume-{run_id}-{}", index % args.rooms),
            user: format!("r{index}"),
            sender: index < args.rooms,
            period,
            url: args.url.clone(),
            shared,
            last_seq: None,
            next_ref: 0,
        }
    }

    pub(super) async fn run(mut self, gate: Arc<Semaphore>) {
        // Setup: connect and join under the concurrency gate.
        let ws = {
            let _permit = gate.acquire().await;
            match self.open(false).await {
                Ok(ws) => Some(ws),
                Err(e) => {
                    debug!("client {}: setup failed: {e:#}", self.index);
                    None
                }
            }
        };
        let Some(mut ws) = ws else {
            self.shared.tally.setup_failed.fetch_add(1, Relaxed);
            return;
        };
        self.shared.tally.joined.fetch_add(1, Relaxed);
        loop {
            match self.live(&mut ws).await {
                Ending::Done => {
                    let _ = ws.close(None).await;
                    return;
                }
                Ending::Dropped => {}
            }
            let killed = *lock(&self.shared.killed_at);
            if killed.is_some() {
                self.shared.tally.dropped.fetch_add(1, Relaxed);
            }
            // Reconnect at once, then back off while nothing answers.
            let mut backoff = Duration::from_millis(10);
            ws = loop {
                if *self.shared.phase.borrow() == PHASE_DONE {
                    return;
                }
                self.shared.tally.reconnect_attempts.fetch_add(1, Relaxed);
                match self.open(true).await {
                    Ok(ws) => break ws,
                    Err(e) => {
                        debug!("client {}: reconnect failed: {e:#}", self.index);
                        sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_millis(500));
                    }
                }
            };
            if let Some(killed) = killed {
                let us = killed.elapsed().as_micros() as u64;
                lock(&self.shared.recovery_us).saturating_record(us.max(1));
            }
        }
    }

    fn set_last_seq(&mut self, seq: u64) {
        self.last_seq = Some(seq);
        self.shared.positions[self.index].store(seq, Relaxed);
    }

    /// Connects, reads the hello, and creates or joins the room (with `since` when resuming);
    /// returns once the join is acked, with the replayed events counted.
    async fn open(&mut self, resume: bool) -> Result<ClientSocket> {
        let mut ws = connect(&self.url).await?;
        let command = match (resume, self.last_seq) {
            (true, Some(since)) => {
                json!({"type":"join","room":self.room,"user_id":self.user,"since":since,"ref":"join"})
            }
            _ if self.sender && !resume => {
                json!({"type":"create","room":self.room,"user_id":self.user,"ref":"join"})
            }
            _ => json!({"type":"join","room":self.room,"user_id":self.user,"ref":"join"}),
        };
        ws.send(Message::text(command.to_string())).await?;
        loop {
            let frame = timeout(Duration::from_secs(30), ws.next())
                .await
                .map_err(|_| anyhow!("no join reply within 30 s"))?;
            let text = match frame {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                Some(Err(e)) => bail!("{e}"),
                None => bail!("closed during join"),
            };
            let v: Value = serde_json::from_str(&text)?;
            match (v["type"].as_str(), v["ref"].as_str()) {
                (Some("ack"), Some("join")) => {
                    let seq = v["seq"]
                        .as_u64()
                        .ok_or_else(|| anyhow!("join ack without seq"))?;
                    if resume {
                        if v["recovered"] == json!(true) {
                            self.shared.tally.resumed.fetch_add(1, Relaxed);
                        } else {
                            self.shared.tally.not_recovered.fetch_add(1, Relaxed);
                        }
                    }
                    match self.last_seq {
                        Some(last) if seq > last => {
                            // Skipped (recovered: false): those events are lost to this client.
                            self.shared.tally.gaps.fetch_add(seq - last, Relaxed);
                            self.set_last_seq(seq);
                        }
                        Some(_) => {}
                        None => self.set_last_seq(seq),
                    }
                    return Ok(ws);
                }
                (Some("error"), Some("join")) => {
                    bail!("join refused: {}", v["code"]);
                }
                (Some("create" | "join" | "leave" | "message"), _) if self.last_seq.is_some() => {
                    self.shared.tally.replayed.fetch_add(1, Relaxed);
                    self.on_event(&v);
                }
                _ => {}
            }
        }
    }

    /// Reads events (and sends, for a sender) until the socket drops or the bench ends.
    async fn live(&mut self, ws: &mut ClientSocket) -> Ending {
        let mut phase = self.shared.phase.clone();
        let mut ticker = tokio::time::interval(self.period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let sending = self.sender && *phase.borrow() == PHASE_SEND;
            tokio::select! {
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let Ok(v) = serde_json::from_str::<Value>(&text) else { continue };
                        self.on_frame(&v);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return Ending::Dropped,
                },
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow() == PHASE_DONE {
                        return Ending::Done;
                    }
                }
                _ = ticker.tick(), if sending => {
                    self.next_ref += 1;
                    let frame = json!({
                        "type":"message","room":self.room,"user_id":self.user,
                        "message":format!("{}:{}", self.index, self.next_ref),"ref":self.next_ref,
                    });
                    if ws.send(Message::text(frame.to_string())).await.is_err() {
                        return Ending::Dropped;
                    }
                    self.shared.tally.sent.fetch_add(1, Relaxed);
                }
            }
        }
    }

    fn on_frame(&mut self, v: &Value) {
        match v["type"].as_str() {
            Some("create" | "join" | "leave" | "message") => {
                self.shared.tally.deliveries.fetch_add(1, Relaxed);
                self.on_event(v);
            }
            Some("ack") if v["command"] == "message" => {
                self.shared.tally.acked.fetch_add(1, Relaxed);
                if let Some(seq) = v["seq"].as_u64() {
                    let mut acked = lock(&self.shared.acked_seq);
                    let top = acked.entry(self.room_index).or_default();
                    *top = (*top).max(seq);
                }
            }
            Some("error") => {
                self.shared.tally.refused.fetch_add(1, Relaxed);
            }
            _ => {}
        }
    }

    fn on_event(&mut self, v: &Value) {
        let (Some(seq), Some(last)) = (v["seq"].as_u64(), self.last_seq) else {
            return;
        };
        let tally = &self.shared.tally;
        if seq <= last {
            tally.duplicated.fetch_add(1, Relaxed);
            return;
        }
        if seq > last + 1 {
            tally.gaps.fetch_add(seq - last - 1, Relaxed);
        }
        self.set_last_seq(seq);
    }
}
