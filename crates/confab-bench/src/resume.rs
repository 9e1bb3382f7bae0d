//! `confab-bench resume`: the resume storm (W4 of docs/benchmarks.md).
//!
//! Opens `--clients` connections through one URL (nginx in front of several nodes), joins
//! client `i` to room `i % rooms`, and makes the first client of each room its sender
//! (`--rate` messages/s over all rooms). After `--before` seconds it SIGKILLs the node
//! `--kill-pid`. Every client whose connection drops reconnects at once through the same
//! URL and sends `join` with `since` = the last `seq` it was given, as a careful client
//! would. Traffic goes on for `--after` seconds, then stops.
//!
//! Every client checks that the `seq`s it is given are 1 apart across the reconnect (a gap
//! is a lost event, a repeat a duplicate), and at the end that it holds every event up to
//! its room's last `seq` as the server reports it (`rooms`). The figure of the workload is
//! the recovery time: from the kill until the last dropped client's resuming `join` is
//! acked, which is when it holds every event up to then and is live again.
//!
//! This file owns the options and the storm's course (setup, kill, settle, the tally);
//! `resume/client.rs` is one client and `resume/report.rs` the report.

mod client;
mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use log::info;
use serde_json::Value;
use tokio::sync::{watch, Semaphore};
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::util::{lock, run_id, write_json};
use crate::ws::{check_loopback_url, connect};
use client::Client;
use report::{print, ResumeReport};

#[derive(Args, Debug, Clone)]
pub(crate) struct ResumeArgs {
    /// WebSocket URL every client connects and reconnects through (nginx), e.g. ws://127.0.0.1:8000/ws.
    #[arg(long, value_name = "URL")]
    url: String,
    /// Number of connections.
    #[arg(long, default_value_t = 1000)]
    clients: usize,
    /// Number of rooms; client i joins room i % rooms, and client r < rooms sends in room r.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Total messages per second over all rooms.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seconds of traffic before the kill.
    #[arg(long, default_value_t = 3.0)]
    before: f64,
    /// Seconds of traffic after the kill.
    #[arg(long, default_value_t = 3.0)]
    after: f64,
    /// The node process to SIGKILL.
    #[arg(long, value_name = "PID")]
    kill_pid: u32,
    /// Connections being opened (and joined) at once during setup.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Seconds the clients have, after the traffic stops, to hold every event.
    #[arg(long, default_value_t = 30.0)]
    settle: f64,
    /// Also write the report as a JSON object to this file.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    /// Exit 1 if anything was lost or duplicated, or a client did not recover.
    #[arg(long)]
    check: bool,
}

const PHASE_SETUP: u8 = 0;
const PHASE_SEND: u8 = 1;
const PHASE_QUIET: u8 = 2;
const PHASE_DONE: u8 = 3;

/// Counters every client task adds to.
#[derive(Default)]
struct Tally {
    joined: AtomicUsize,
    setup_failed: AtomicUsize,
    dropped: AtomicUsize,
    resumed: AtomicUsize,
    not_recovered: AtomicUsize,
    reconnect_attempts: AtomicU64,
    replayed: AtomicU64,
    gaps: AtomicU64,
    duplicated: AtomicU64,
    sent: AtomicU64,
    acked: AtomicU64,
    refused: AtomicU64,
    deliveries: AtomicU64,
}

struct Shared {
    phase: watch::Receiver<u8>,
    /// When the node was killed; recovery times are measured from it.
    killed_at: Mutex<Option<Instant>>,
    tally: Tally,
    /// Recovery time of each dropped client, in microseconds.
    recovery_us: Mutex<Histogram<u64>>,
    /// Highest seq acked to each room's sender.
    acked_seq: Mutex<HashMap<usize, u64>>,
    /// Each client's last seq (0 before its first join ack).
    positions: Vec<AtomicU64>,
}

pub(crate) async fn main(args: ResumeArgs) -> i32 {
    let report = match run(&args).await {
        Ok(report) => report,
        Err(e) => ResumeReport {
            failure: Some(format!("{e:#}")),
            ..ResumeReport::default()
        },
    };
    print(&report);
    if let Some(path) = &args.json {
        if let Err(e) = write_json(path, &report) {
            eprintln!("confab-bench resume: {e:#}");
            return 2;
        }
    }
    if let Some(failure) = &report.failure {
        eprintln!("confab-bench resume: {failure}");
        return 2;
    }
    if args.check && !report.clean() {
        return 1;
    }
    0
}

async fn run(args: &ResumeArgs) -> Result<ResumeReport> {
    check_loopback_url(&args.url)?;
    if args.clients == 0 || args.rooms == 0 || args.rooms > args.clients {
        bail!("need 0 < --rooms <= --clients");
    }
    let run_id = run_id();
    let (phase_tx, phase) = watch::channel(PHASE_SETUP);
    let shared = Arc::new(Shared {
        phase,
        killed_at: Mutex::new(None),
        tally: Tally::default(),
        recovery_us: Mutex::new(Histogram::new_with_bounds(1, 3_600_000_000, 3)?),
        acked_seq: Mutex::new(HashMap::new()),
        positions: (0..args.clients).map(|_| AtomicU64::new(0)).collect(),
    });
    let mut report = ResumeReport {
        run_id: run_id.clone(),
        url: args.url.clone(),
        clients: args.clients,
        rooms: args.rooms,
        rate: args.rate,
        killed_pid: args.kill_pid,
        ..ResumeReport::default()
    };

    // Setup: the rooms' creators first (they are the senders), then everyone else.
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let period = Duration::from_secs_f64(args.rooms as f64 / args.rate.max(1e-3));
    let mut tasks = Vec::with_capacity(args.clients);
    let spawn = |i: usize, tasks: &mut Vec<_>| {
        let client = Client::new(i, args, &run_id, period, shared.clone());
        tasks.push(tokio::spawn(client.run(gate.clone())));
    };
    for i in 0..args.rooms {
        spawn(i, &mut tasks);
    }
    let setup_deadline = Instant::now() + Duration::from_secs(60 + args.clients as u64 / 100);
    while shared.tally.joined.load(Relaxed) + shared.tally.setup_failed.load(Relaxed) < args.rooms {
        if Instant::now() > setup_deadline {
            bail!("the rooms' creators did not join in time");
        }
        sleep(Duration::from_millis(20)).await;
    }
    for i in args.rooms..args.clients {
        spawn(i, &mut tasks);
    }
    while shared.tally.joined.load(Relaxed) + shared.tally.setup_failed.load(Relaxed) < args.clients
    {
        if Instant::now() > setup_deadline {
            bail!(
                "setup timed out: {} of {} joined",
                shared.tally.joined.load(Relaxed),
                args.clients
            );
        }
        sleep(Duration::from_millis(20)).await;
    }
    report.setup_s = started.elapsed().as_secs_f64();
    report.joined = shared.tally.joined.load(Relaxed);
    report.connected = report.joined;
    report.setup_failed = shared.tally.setup_failed.load(Relaxed);
    info!(
        "{} clients joined {} rooms in {:.1} s",
        report.joined, args.rooms, report.setup_s
    );

    let _ = phase_tx.send(PHASE_SEND);
    sleep(Duration::from_secs_f64(args.before)).await;
    info!("killing node {} (SIGKILL)", args.kill_pid);
    *lock(&shared.killed_at) = Some(Instant::now());
    let status = std::process::Command::new("kill")
        .args(["-KILL", &args.kill_pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -KILL {} failed: is it running?", args.kill_pid);
    }
    sleep(Duration::from_secs_f64(args.after)).await;
    let _ = phase_tx.send(PHASE_QUIET);
    let quiet_at = Instant::now();

    // Settle: every dropped client has resumed, and every client holds its room's last event.
    let settle_deadline = quiet_at + Duration::from_secs_f64(args.settle);
    let last = loop {
        sleep(Duration::from_millis(500)).await;
        let t = &shared.tally;
        let resumed_all =
            t.resumed.load(Relaxed) + t.not_recovered.load(Relaxed) >= t.dropped.load(Relaxed);
        // Through nginx during the storm this may fail (a 502 while every
        // node is marked down): ask again, as a client would.
        let last = match rooms_last_seq(&args.url, &run_id).await {
            Ok(last) => last,
            Err(e) if Instant::now() < settle_deadline => {
                info!("rooms query failed ({e:#}); asking again");
                continue;
            }
            Err(e) => return Err(e.context("no rooms reply before the settle deadline")),
        };
        if resumed_all && behind(&shared, args.rooms, &last).0 == 0 {
            break last;
        }
        if Instant::now() > settle_deadline {
            break last;
        }
    };
    let _ = phase_tx.send(PHASE_DONE);
    for task in tasks {
        let _ = timeout(Duration::from_secs(5), task).await;
    }

    let t = &shared.tally;
    report.dropped_by_kill = t.dropped.load(Relaxed);
    report.resumed = t.resumed.load(Relaxed);
    report.not_recovered = t.not_recovered.load(Relaxed);
    report.reconnect_attempts = t.reconnect_attempts.load(Relaxed);
    report.replayed_events = t.replayed.load(Relaxed);
    report.sent = t.sent.load(Relaxed);
    report.acked = t.acked.load(Relaxed);
    report.refused = t.refused.load(Relaxed);
    report.deliveries = t.deliveries.load(Relaxed);
    report.duplicated = t.duplicated.load(Relaxed);
    let (clients_behind, missing) = behind(&shared, args.rooms, &last);
    report.clients_behind_at_end = clients_behind;
    report.lost = t.gaps.load(Relaxed) + missing;
    report.acked_not_stored = lock(&shared.acked_seq)
        .iter()
        .filter(|(room, seq)| **seq > last.get(room).copied().unwrap_or(0))
        .count() as u64;
    let recovery = lock(&shared.recovery_us);
    if !recovery.is_empty() {
        report.recovery_p50_ms = recovery.value_at_quantile(0.5) as f64 / 1000.0;
        report.recovery_p99_ms = recovery.value_at_quantile(0.99) as f64 / 1000.0;
        report.all_recovered_s = Some(recovery.max() as f64 / 1e6);
    }
    Ok(report)
}

/// Clients that do not yet hold their room's last event, and how many events they lack.
fn behind(shared: &Shared, rooms: usize, last: &HashMap<usize, u64>) -> (usize, u64) {
    let mut clients = 0;
    let mut missing = 0;
    for (i, position) in shared.positions.iter().enumerate() {
        let room_last = last.get(&(i % rooms)).copied().unwrap_or(0);
        let mine = position.load(Relaxed);
        if mine < room_last {
            clients += 1;
            missing += room_last - mine;
        }
    }
    (clients, missing)
}

/// Each bench room's last seq, as the server reports it (`rooms`), by room index.
async fn rooms_last_seq(url: &str, run_id: &str) -> Result<HashMap<usize, u64>> {
    let mut ws = connect(url).await?;
    ws.send(Message::text(r#"{"type":"rooms","ref":"rooms"}"#))
        .await?;
    let prefix = format!("resume-{run_id}-");
    loop {
        let frame = timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| anyhow!("no rooms reply within 10 s"))?;
        let Some(Ok(Message::Text(text))) = frame else {
            match frame {
                Some(Ok(_)) => continue,
                _ => bail!("connection closed before the rooms reply"),
            }
        };
        let v: Value = serde_json::from_str(&text)?;
        if v["type"] != "rooms" {
            continue;
        }
        let mut last = HashMap::new();
        for room in v["rooms"].as_array().into_iter().flatten() {
            let (Some(name), Some(seq)) = (room["name"].as_str(), room["last_seq"].as_u64()) else {
                continue;
            };
            if let Some(index) = name.strip_prefix(&prefix).and_then(|i| i.parse().ok()) {
                last.insert(index, seq);
            }
        }
        let _ = ws.close(None).await;
        return Ok(last);
    }
}
