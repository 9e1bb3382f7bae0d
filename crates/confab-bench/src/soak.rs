//! `confab-bench soak`: a bounded soak of one node, minutes long, that watches whether the
//! node's memory, file descriptors and connections level off under a steady mixed load.
//!
//! It creates `--rooms` rooms, then opens `--clients` connections: client `i` joins room
//! `i % rooms`, and the first `--senders` of them post `--size`-byte messages, `--rate` per
//! second in all. Three things go on at once for `--minutes`:
//!
//! - steady load from the senders;
//! - churn: every second `--churn` random clients either drop their connection (with or
//!   without a close frame) and come back with `join` + `since` (a resume), or leave their
//!   room and join it again, or visit another room for a few seconds;
//! - slow readers: the last `--slow-readers` clients follow every room through a socket
//!   whose kernel receive buffer is `--slow-rcvbuf` bytes, and now and then stop reading for
//!   `--stall` seconds. The node should evict them with close 4000; they then resume.
//!
//! Every client checks that each room's `seq`s come 1 apart across every reconnect (a gap
//! is a lost event, a repeat a duplicate), and at the end that it holds every room's last
//! event. Every `--interval` seconds (and at the start, after 1 minute and at the end) one
//! line gives the node's RSS, open fds and connections (`/metrics`) beside the counters.
//!
//! `soak/client.rs` is one client, `soak/probe.rs` reads the node, `soak/report.rs` prints.
//! Exit codes: 0 clean, 1 gaps, duplicates, events missing at the end or the node died,
//! 2 usage or setup failure.

mod client;
mod probe;
mod report;
mod settle;
mod track;

use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::SinkExt;
use log::info;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use crate::procfs::read_rss_kib;
use crate::util::{lock, run_id, write_json};
use crate::ws::{check_loopback_url, connect};
use client::{Churn, Client};
use probe::Probe;
use report::{print_line, print_summary, SoakReport};
use settle::{reply_of, settle};

#[derive(Args, Debug, Clone)]
pub(crate) struct SoakArgs {
    /// WebSocket URL of the node, e.g. ws://127.0.0.1:8080/ws (its /metrics is read on the same port).
    #[arg(long, value_name = "URL")]
    url: String,
    /// The node's process, for its RSS and open fds (and to notice a crash).
    #[arg(long, value_name = "PID")]
    pid: u32,
    /// Minutes of load.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Connections in all, slow readers included.
    #[arg(long, default_value_t = 200)]
    clients: usize,
    /// Rooms; client i joins room i % rooms.
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    /// Clients 0..senders post messages.
    #[arg(long, default_value_t = 40)]
    senders: usize,
    /// Messages per second over all senders.
    #[arg(long, default_value_t = 200.0)]
    rate: f64,
    /// Message text size in bytes.
    #[arg(long, default_value_t = 200)]
    size: usize,
    /// Clients churned per second (drop and resume, leave and rejoin, or visit a room).
    #[arg(long, default_value_t = 3)]
    churn: usize,
    /// The last N clients are slow readers in every room.
    #[arg(long, default_value_t = 10)]
    slow_readers: usize,
    /// SO_RCVBUF of a slow reader's socket, in bytes.
    #[arg(long, default_value_t = 4096)]
    slow_rcvbuf: u32,
    /// Seconds a slow reader stops reading for (between 3 and 8 s of reading). Keep it under
    /// the node's TCP_USER_TIMEOUT_SECS (30), past which the kernel cuts it instead.
    #[arg(long, default_value_t = 25.0)]
    stall: f64,
    /// Seconds between two report lines.
    #[arg(long, default_value_t = 10.0)]
    interval: f64,
    /// Also write the report (every line and the summary) as JSON to this file.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
}

const PHASE_SETUP: u8 = 0;
const PHASE_RUN: u8 = 1;
const PHASE_QUIET: u8 = 2;
const PHASE_DONE: u8 = 3;

/// A position that is not checked: the client is not (or not yet) in the room.
const UNTRACKED: u64 = u64::MAX;

/// Counters every client task adds to.
#[derive(Default)]
struct Tally {
    joined: AtomicU64,
    open: AtomicI64,
    sent: AtomicU64,
    acked: AtomicU64,
    evictions: AtomicU64,
    /// Of them, 4000s that came before the resume's joins were all acked.
    evicted_joining: AtomicU64,
    /// Slow readers cut by a reset rather than a 4000 (the node's TCP_USER_TIMEOUT).
    cut: AtomicU64,
    resumes: AtomicU64,
    not_recovered: AtomicU64,
    reconnects: AtomicU64,
    churned: AtomicU64,
    stalls: AtomicU64,
    /// Stalls that ended without a 4000 (the reader then starts afresh).
    outlasted: AtomicU64,
    gaps: AtomicU64,
    duplicates: AtomicU64,
    errors: Mutex<std::collections::BTreeMap<String, u64>>,
}

impl Tally {
    fn error(&self, what: impl Into<String>) {
        *lock(&self.errors).entry(what.into()).or_default() += 1;
    }

    fn error_total(&self) -> u64 {
        lock(&self.errors).values().sum()
    }
}

struct Shared {
    phase: watch::Receiver<u8>,
    url: String,
    prefix: String,
    rooms: usize,
    size: usize,
    slow_rcvbuf: u32,
    stall: Duration,
    tally: Tally,
    /// `[client][room]`: the last seq that client holds in that room, or `UNTRACKED`.
    positions: Vec<Vec<AtomicU64>>,
}

impl Shared {
    fn room_name(&self, room: usize) -> String {
        format!("{}{room}", self.prefix)
    }
}

/// A small xorshift generator: the soak only needs its choices spread, not secure.
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub(super) fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }

    /// A duration between `lo` and `hi` seconds, in milliseconds steps.
    pub(super) fn secs(&mut self, lo: f64, hi: f64) -> Duration {
        let span = ((hi - lo) * 1000.0) as usize;
        Duration::from_secs_f64(lo) + Duration::from_millis(self.below(span + 1) as u64)
    }
}

pub(crate) async fn main(args: SoakArgs) -> i32 {
    let mut report = SoakReport::default();
    if let Err(e) = run(&args, &mut report).await {
        report.failure = Some(format!("{e:#}"));
    }
    print_summary(&report);
    if let Some(path) = &args.json {
        if let Err(e) = write_json(path, &report) {
            eprintln!("confab-bench soak: {e:#}");
            return 2;
        }
    }
    if let Some(failure) = &report.failure {
        eprintln!("confab-bench soak: {failure}");
        return if report.node_died { 1 } else { 2 };
    }
    i32::from(!report.clean())
}

fn validate(args: &SoakArgs) -> Result<()> {
    check_loopback_url(&args.url)?;
    let regular = args.clients.saturating_sub(args.slow_readers);
    if args.rooms == 0 || regular < args.rooms || args.senders > regular || args.senders == 0 {
        bail!("need 0 < --rooms <= --clients - --slow-readers, and 0 < --senders <= that too");
    }
    let positive = |x: f64| x > 0.0 && x.is_finite();
    if !(positive(args.minutes) && args.minutes <= 24.0 * 60.0 && positive(args.rate)) {
        bail!("--minutes must be in (0, 1440] and --rate > 0");
    }
    if !(args.interval >= 1.0 && args.stall >= 1.0 && (12..=4000).contains(&args.size)) {
        bail!("--interval and --stall must be >= 1 s, --size 12..=4000");
    }
    read_rss_kib(args.pid).with_context(|| format!("--pid {}", args.pid))?;
    Ok(())
}

async fn run(args: &SoakArgs, report: &mut SoakReport) -> Result<()> {
    validate(args)?;
    let run_id = run_id();
    let probe = Probe::new(&args.url, args.pid)?;
    report.init(args, &run_id, probe.sample_rss()?);
    let (phase_tx, phase) = watch::channel(PHASE_SETUP);
    let shared = Arc::new(Shared {
        phase,
        url: args.url.clone(),
        prefix: format!("soak-{run_id}-"),
        rooms: args.rooms,
        size: args.size,
        slow_rcvbuf: args.slow_rcvbuf,
        stall: Duration::from_secs_f64(args.stall),
        tally: Tally::default(),
        positions: (0..args.clients)
            .map(|_| (0..args.rooms).map(|_| AtomicU64::new(UNTRACKED)).collect())
            .collect(),
    });

    // Setup: the rooms, then every client under a concurrency gate.
    let mut admin = connect(&args.url).await.context("first connection")?;
    for room in 0..args.rooms {
        let create = format!(
            r#"{{"type":"create","room":"{}","user_id":"soak-admin","ref":"c"}}"#,
            shared.room_name(room)
        );
        admin.send(Message::text(create)).await?;
        let reply = reply_of(&mut admin, "c").await?;
        if reply["type"] != "ack" {
            bail!("create {}: {reply}", shared.room_name(room));
        }
    }
    let _ = admin.close(None).await;
    let started = Instant::now();
    let gate = Arc::new(Semaphore::new(50));
    let period = Duration::from_secs_f64(args.senders as f64 / args.rate);
    let regular = args.clients - args.slow_readers;
    let mut links = Vec::with_capacity(regular);
    let mut tasks = Vec::with_capacity(args.clients);
    for i in 0..args.clients {
        let (tx, rx) = mpsc::unbounded_channel();
        let slow = i >= regular;
        let client = Client::new(i, slow, i < args.senders, period, rx, shared.clone());
        tasks.push(tokio::spawn(client.run(gate.clone())));
        if !slow {
            links.push(tx);
        }
    }
    let setup_deadline = started + Duration::from_secs(120);
    while shared.tally.joined.load(Relaxed) < args.clients as u64 {
        if Instant::now() > setup_deadline {
            bail!(
                "setup: {} of {} clients joined in 120 s",
                shared.tally.joined.load(Relaxed),
                args.clients
            );
        }
        sleep(Duration::from_millis(50)).await;
    }
    report.setup_s = started.elapsed().as_secs_f64();
    info!(
        "{} clients joined {} rooms in {:.1} s",
        args.clients, args.rooms, report.setup_s
    );

    // The run: churn every second, a line every interval (and at 1 minute).
    let _ = phase_tx.send(PHASE_RUN);
    let t0 = Instant::now();
    let total = Duration::from_secs_f64(args.minutes * 60.0);
    let interval = Duration::from_secs_f64(args.interval);
    let clock = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH);
    let mut rng =
        Rng::new(u64::from(std::process::id()) ^ clock.map_or(0x50a4, |d| d.as_nanos() as u64));
    let mut next_line = Duration::ZERO;
    let mut minute_done = false;
    let mut second = 0u64;
    let mut quiet_reason = None;
    loop {
        let elapsed = t0.elapsed();
        if !probe.node_alive() {
            report.node_died = true;
            quiet_reason = Some(format!(
                "node {} died after {:.0} s",
                args.pid,
                elapsed.as_secs_f64()
            ));
            break;
        }
        report.note_rss(probe.sample_rss().ok());
        let at_minute = !minute_done && elapsed >= Duration::from_secs(60);
        if elapsed >= next_line || at_minute || elapsed >= total {
            let sample = probe.sample(elapsed, &shared.tally).await;
            print_line(&sample, report.samples.is_empty());
            report.samples.push(sample);
            while next_line <= elapsed {
                next_line += interval;
            }
            minute_done |= at_minute || elapsed >= Duration::from_secs(60);
        }
        if elapsed >= total {
            break;
        }
        for _ in 0..args.churn {
            let churn = match rng.below(10) {
                0..=5 => Churn::Reconnect {
                    graceful: rng.below(2) == 0,
                    away: rng.secs(0.0, 2.0),
                },
                6 | 7 => Churn::LeaveRejoin {
                    away: rng.secs(1.0, 3.0),
                },
                _ => Churn::Visit {
                    room: rng.below(args.rooms),
                    stay: rng.secs(2.0, 5.0),
                },
            };
            let _ = links[rng.below(links.len())].send(churn);
        }
        second += 1;
        tokio::time::sleep_until(t0 + Duration::from_secs(second)).await;
    }

    // Quiet: no more sending, churn or stalls; every client must catch up with its rooms.
    let _ = phase_tx.send(PHASE_QUIET);
    if let Some(reason) = quiet_reason {
        let _ = phase_tx.send(PHASE_DONE);
        report.finish(&shared.tally);
        bail!(reason);
    }
    let (behind, missing) = settle(&shared, args.clients, Duration::from_secs(60)).await?;
    report.behind_at_end = behind;
    report.missing_at_end = missing;
    let _ = phase_tx.send(PHASE_DONE);
    for task in tasks {
        let _ = timeout(Duration::from_secs(5), task).await;
    }
    report.node_died = !probe.node_alive();
    report.finish(&shared.tally);
    Ok(())
}
