//! The open-loop load run, `confab-bench` without a subcommand: its options, and the
//! controller that sets the run up and drives its steps.
//!
//! It opens `--clients` WebSocket connections to the given loopback `--url`s, joins client
//! `i` to room `i % rooms` (the first client of each room creates it), makes clients
//! `0..senders` senders and drives an open-loop message rate at them (`load/client.rs`).
//! A step is `--warmup` s unrecorded, `--duration` s measured, then a drain (until every
//! reply and delivery is in, or `--drain` s). `--find-max` repeats steps at rising rates on
//! the same connections until one is not sustained (`load/check.rs`). With `--pid` the
//! server's RSS and CPU are read from `/proc`.
//!
//! `--dialect actix` loads actix's own in-memory chat example (actix/examples
//! `websockets/chat`) with the same workloads: plain-text frames, rooms joined with
//! `/join NAME`, no acks and no room seq, and the sender gets no copy of its message
//! (see [`Dialect`]).
//!
//! The pieces: `load/setup.rs` connects and joins, `load/client.rs` is one connection,
//! `load/check.rs` counts and judges, `load/report.rs` prints the report.

mod check;
mod client;
mod report;
mod setup;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, ValueEnum};
use log::{info, warn};
use serde::Serialize;
use tokio::time::{sleep, Instant};

use crate::procfs::{cpu_s_between, cpu_ticks, read_rss_kib, server_cpu_ticks, server_rss_kib};
use crate::util::{lock, run_id, write_json};
use crate::ws::check_loopback_url;
use check::{check_failures, sustained, StepStats};
use client::{ClientCommand, ClientLink};
use report::{print_report, MemoryReport, RunReport, StepReport};
use setup::{connect_clients, join_rooms};

const MAX_CLIENTS: usize = 200_000;

const PHASE_IDLE: u64 = 0;
const PHASE_WARMUP: u64 = 1;
const PHASE_MEASURE: u64 = 2;
const PHASE_DRAIN: u64 = 3;

/// The protocol the server speaks.
#[derive(ValueEnum, Serialize, Clone, Copy, PartialEq, Eq, Debug, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Dialect {
    /// Confab's JSON protocol (the floor server speaks its subset): create/join acked with
    /// the room's seq, each message acked, every member (the sender too) gets a copy.
    #[default]
    Confab,
    /// actix's chat example: every connection starts in room "main" (whose members get
    /// "Someone joined" and "Total visitors N" on each connect), `/join NAME` moves it
    /// to room NAME and is answered "joined", any other text goes as is to every other
    /// member of the room. There is no ack and no seq: a message counts as acked once
    /// written, each receiver checks each sender's sender_seq goes up by one, and a
    /// message is expected `members - 1` times.
    Actix,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct LoadArgs {
    /// WebSocket URL of a server, e.g. ws://127.0.0.1:8080/ws (repeatable; clients are spread round-robin).
    #[arg(long = "url", required = true, value_name = "URL")]
    urls: Vec<String>,
    /// The server's protocol: Confab's (and the floor's), or actix's chat example.
    #[arg(long, value_enum, default_value_t = Dialect::Confab)]
    dialect: Dialect,
    /// Number of connections (at most 200000).
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// Number of rooms; client i joins room i % rooms.
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Number of sending clients; sender k is client k (in room k % rooms).
    #[arg(long, default_value_t = 10)]
    senders: usize,
    /// Total messages per second over all senders (open loop); the first step's rate with --find-max.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Measured seconds per step.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Seconds of unrecorded sending before each measured window.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Message text size in bytes (the header is never cut).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Server process to watch for RSS and CPU (repeatable; figures are summed).
    #[arg(long = "pid", value_name = "SERVER_PID")]
    pids: Vec<u32>,
    /// Also write the report as a JSON object to this file.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
    /// Step the rate up (x --step-factor per step) until a step fails; report the highest sustained.
    #[arg(long)]
    find_max: bool,
    /// Rate multiplier between --find-max steps.
    #[arg(long, default_value_t = 1.5)]
    step_factor: f64,
    /// Maximum number of --find-max steps.
    #[arg(long, default_value_t = 15)]
    max_steps: usize,
    /// p99 latency (ms) above which a --find-max step fails.
    #[arg(long, default_value_t = 100.0)]
    p99_limit_ms: f64,
    /// Maximum seconds to wait for outstanding acks and deliveries after each step.
    #[arg(long, default_value_t = 5.0)]
    drain: f64,
    /// Connections (and later create/join commands) in flight at once during setup.
    #[arg(long, default_value_t = 200)]
    connect_concurrency: usize,
    /// Hard overall deadline in seconds (default: 120 + 2 ms per client + per step warmup+duration+drain+60).
    #[arg(long)]
    deadline: Option<f64>,
    /// Exit 1 if anything was lost, duplicated, out of order, refused or failed.
    #[arg(long, conflicts_with = "find_max")]
    check: bool,
    /// Print no progress on stderr (the report is still printed).
    #[arg(long)]
    pub(crate) quiet: bool,
}

fn validate(args: &LoadArgs) -> Result<()> {
    for url in &args.urls {
        check_loopback_url(url)?;
    }
    if !(1..=MAX_CLIENTS).contains(&args.clients) {
        bail!("--clients must be 1..={MAX_CLIENTS}");
    }
    if !(1..=args.clients).contains(&args.rooms) || !(1..=args.clients).contains(&args.senders) {
        bail!("--rooms and --senders must be 1..=--clients");
    }
    let per_sender = args.rate / args.senders as f64;
    if !(args.rate > 0.0 && per_sender <= 1_000_000.0) {
        bail!("--rate must be > 0 and at most 1e6 per sender");
    }
    let secs_ok = |s: f64| (0.0..=3600.0).contains(&s);
    if !(secs_ok(args.duration)
        && args.duration > 0.0
        && secs_ok(args.warmup)
        && secs_ok(args.drain))
    {
        bail!("--duration must be in (0, 3600], --warmup and --drain in [0, 3600]");
    }
    if args.size > 60_000 {
        bail!("--size must be at most 60000 bytes");
    }
    if args.size > 4096 {
        warn!(
            "--size {} is over the server's default message limit of 4096 characters",
            args.size
        );
    }
    if args.find_max && !(args.step_factor > 1.0 && (1..=50).contains(&args.max_steps)) {
        bail!("--step-factor must be > 1 and --max-steps 1..=50");
    }
    if args.deadline.is_some_and(|d| !(d > 0.0 && d <= 1e6)) {
        bail!("--deadline must be in (0, 1e6] seconds");
    }
    if !(1..=10_000).contains(&args.connect_concurrency) {
        bail!("--connect-concurrency must be 1..=10000");
    }
    for pid in &args.pids {
        read_rss_kib(*pid).with_context(|| format!("--pid {pid}"))?;
    }
    Ok(())
}

/// State shared by the controller and all client tasks.
struct Shared {
    /// `(step << 2) | phase`: which step runs and whether senders warm up, measure or stop.
    control: AtomicU64,
    /// Time zero of the run; message send times are nanoseconds since it.
    base: std::time::Instant,
    rooms: usize,
    dialect: Dialect,
    stats: StepStats,
}

impl Shared {
    fn control(&self) -> (u64, u64) {
        let value = self.control.load(Relaxed);
        (value >> 2, value & 3)
    }

    fn set_control(&self, step: u64, phase: u64) {
        self.control.store((step << 2) | phase, Relaxed);
    }

    fn nanos_since_base(&self, at: std::time::Instant) -> u64 {
        at.saturating_duration_since(self.base).as_nanos() as u64
    }
}

/// Runs the load (`confab-bench` without a subcommand); the exit code.
pub(crate) async fn main(args: LoadArgs) -> i32 {
    if let Err(e) = validate(&args) {
        eprintln!("confab-bench: {e:#}");
        return 2;
    }
    let steps = if args.find_max { args.max_steps } else { 1 } as f64;
    let deadline_s = args.deadline.unwrap_or(
        120.0
            + args.clients as f64 * 0.002
            + steps * (args.warmup + args.duration + args.drain + 60.0),
    );
    let report = Mutex::new(RunReport {
        run_id: run_id(),
        dialect: args.dialect,
        urls: args.urls.clone(),
        clients: args.clients,
        rooms: args.rooms,
        senders: args.senders,
        size: args.size,
        warmup_s: args.warmup,
        duration_s: args.duration,
        find_max: args.find_max,
        ..RunReport::default()
    });
    let result = tokio::select! {
        result = run_bench(&args, &report) => result,
        _ = sleep(Duration::from_secs_f64(deadline_s)) => {
            lock(&report).timed_out = true;
            Err(anyhow!("hard deadline of {deadline_s:.0} s reached; reporting what was measured"))
        }
    };
    let mut report = std::mem::take(&mut *lock(&report));
    if let Err(e) = &result {
        report.failure = Some(format!("{e:#}"));
    }
    if args.check {
        report.check_failures = Some(check_failures(&report));
    }
    print_report(&report);
    if let Some(path) = &args.json {
        if let Err(e) = write_json(path, &report) {
            eprintln!("confab-bench: {e:#}");
            return 2;
        }
    }
    match (&report.failure, &report.check_failures) {
        (Some(failure), _) => {
            eprintln!("confab-bench: {failure}");
            2
        }
        (None, Some(failures)) if !failures.is_empty() => 1,
        _ => 0,
    }
}

async fn run_bench(args: &LoadArgs, report: &Mutex<RunReport>) -> Result<()> {
    let run_id = lock(report).run_id.clone();
    let shared = Arc::new(Shared {
        control: AtomicU64::new(PHASE_IDLE),
        base: std::time::Instant::now(),
        rooms: args.rooms,
        dialect: args.dialect,
        stats: StepStats::new()?,
    });
    let rss_before = server_rss_kib(&args.pids)?;

    info!(
        "run {run_id}: connecting {} clients to {:?}",
        args.clients, args.urls
    );
    let (clients, mut connect) = connect_clients(args, &run_id, &shared).await;
    lock(report).connect = connect.clone();
    if clients.iter().all(Option::is_none) {
        bail!("no connection could be made");
    }
    let (joined, members) = join_rooms(args, &clients, &mut connect).await;
    let connections = connect.made;
    lock(report).connect = connect;

    if !args.pids.is_empty() {
        let rss_after = server_rss_kib(&args.pids)?;
        let delta = rss_after as i64 - rss_before as i64;
        lock(report).server_memory = Some(MemoryReport {
            pids: args.pids.clone(),
            rss_before_kib: rss_before,
            rss_after_kib: rss_after,
            rss_delta_kib: delta,
            rss_per_connection_kib: delta as f64 / connections.max(1) as f64,
        });
    }

    let senders: Vec<(usize, &ClientLink)> = (0..args.senders)
        .filter(|&k| joined[k])
        .filter_map(|k| clients[k].as_ref().map(|tx| (k, tx)))
        .collect();
    {
        let mut report = lock(report);
        report.active_senders = senders.len();
        report.bench_rss_kib = read_rss_kib("self").ok();
    }
    if senders.is_empty() {
        bail!("no sender could join its room");
    }

    let steps = if args.find_max { args.max_steps } else { 1 };
    let mut rate = args.rate;
    for step in 0..steps as u64 {
        if rate / senders.len() as f64 > 1_000_000.0 {
            warn!("rate {rate:.0}/s is over 1e6 per sender; stopping");
            break;
        }
        let row = run_step(args, &shared, &senders, &members, step, rate).await?;
        let sustained = row.sustained;
        info!(
            "step {step}: rate {rate:.0}/s, sent {}, acked {}, lost {}, gaps {}, p99 {:.2} ms, {:.0} deliveries/s{}",
            row.sent, row.acked, row.lost, row.seq_gaps, row.latency.p99_ms, row.deliveries_per_s,
            if sustained { "" } else { " - not sustained" }
        );
        let mut report = lock(report);
        if sustained {
            report.max_sustained_rate = Some(rate);
            report.max_sustained_deliveries_per_s = Some(row.deliveries_per_s);
        }
        report.steps.push(row);
        if !sustained {
            break;
        }
        rate *= args.step_factor;
    }
    Ok(())
}

async fn run_step(
    args: &LoadArgs,
    shared: &Shared,
    senders: &[(usize, &ClientLink)],
    members: &[u64],
    step: u64,
    rate: f64,
) -> Result<StepReport> {
    let stats = &shared.stats;
    if step > 0 {
        stats.reset(); // step 0 also carries anything noticed during setup
    }
    shared.set_control(step, PHASE_WARMUP);
    let period = Duration::from_secs_f64(senders.len() as f64 / rate).max(Duration::from_micros(1));
    let start = Instant::now() + Duration::from_millis(20);
    for (n, (k, tx)) in senders.iter().enumerate() {
        // Stagger senders over one period so their schedules do not coincide.
        let first_tick = start + period.mul_f64(n as f64 / senders.len() as f64);
        let members = match args.dialect {
            Dialect::Confab => members[k % args.rooms],
            // actix's chat example does not send a message back to its sender.
            Dialect::Actix => members[k % args.rooms].saturating_sub(1),
        };
        let _ = tx.send(ClientCommand::StartSending {
            step,
            period,
            first_tick,
            members,
        });
    }
    info!(
        "step {step}: {rate:.0} msg/s from {} senders, warming up {} s",
        senders.len(),
        args.warmup
    );
    sleep(Duration::from_secs_f64(args.warmup)).await;

    let server_cpu_before = server_cpu_ticks(&args.pids)?;
    let bench_cpu_before = cpu_ticks("self").ok();
    shared.set_control(step, PHASE_MEASURE);
    let measure_started = Instant::now();
    sleep(Duration::from_secs_f64(args.duration)).await;
    shared.set_control(step, PHASE_DRAIN);
    let measured_s = measure_started.elapsed().as_secs_f64();
    let server_cpu_after = server_cpu_ticks(&args.pids)?;
    let bench_cpu_after = cpu_ticks("self").ok();

    let drain_until = Instant::now() + Duration::from_secs_f64(args.drain);
    while Instant::now() < drain_until {
        if stats.drained() {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }

    let server_cpu_s = cpu_s_between(server_cpu_before, server_cpu_after);
    let bench_cpu_s = cpu_s_between(bench_cpu_before, bench_cpu_after);
    let mut row = stats.figures(step, rate, measured_s, server_cpu_s, bench_cpu_s);
    row.sustained = sustained(&row, args.p99_limit_ms);
    Ok(row)
}
