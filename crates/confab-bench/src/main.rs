//! `confab-bench`: the load generator for Confab, plus the "floor" server it is compared with.
//!
//! Without a subcommand it opens `--clients` WebSocket connections to the given loopback
//! `--url`s, joins client `i` to room `i % rooms` (the first client of each room creates it),
//! makes clients `0..senders` senders and drives an open-loop message rate at them: each
//! sender has its own fixed schedule (`rate / senders` per second, missed ticks are sent in a
//! burst) and never waits for acks. A message's text is `"<sender>:<sender_seq>:<send_ns>:<tag>:"`
//! padded with `x` to `--size` bytes, where `send_ns` is when it was written (nanoseconds since
//! the run's start) and `tag` is `w<step>` or `m<step>` (warmup / measured). How late each
//! write was against its schedule is reported as "send lag": a large lag means the bench (or
//! the socket's backpressure) could not keep the open-loop schedule.
//!
//! Every receiver checks the room's `seq` continuity (gaps = lost events, `seq <= last` =
//! duplicates) and per-sender order, and records the end-to-end latency of measured messages.
//! A step is `--warmup` s unrecorded, `--duration` s measured, then a drain (until every reply
//! and delivery is in, or `--drain` s). Expected deliveries are, per acked measured message,
//! its room's member count. `--find-max` repeats steps at rising rates on the same connections
//! until one is not sustained (any loss, gap, duplicate or reordering; p99 over the limit; acks
//! below 95 % of sends; or the bench sending under 90 % of the target rate). With `--pid` the
//! server's RSS and CPU are read from `/proc`.
//!
//! `confab-bench floor --port P` runs the simplest broadcast server that speaks the protocol
//! subset the bench uses (hello, create/join, message, ping): one reader and one writer task per
//! connection, each event serialised once and pushed to every member's bounded queue. It is
//! the machine's practical floor, against which Confab's figures can be compared.
//!
//! `confab-bench resume` is the resume storm (W4): see `resume.rs`.
//!
//! Exit codes: 0 done; 1 `--check` failed; 2 usage error, setup failure or hard deadline.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context, Result};
use chrono::{SecondsFormat, Utc};

mod resume;
use clap::{Args, Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use log::{debug, info, warn};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout, Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const MAX_CLIENTS: usize = 200_000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
const SETUP_RETRIES: u32 = 3;
/// `/proc/PID/stat` times are in clock ticks; `getconf CLK_TCK` is 100 on Linux.
const CLOCK_TICKS_PER_S: f64 = 100.0;
const FLOOR_OUTBOX: usize = 4096;

const PHASE_IDLE: u64 = 0;
const PHASE_WARMUP: u64 = 1;
const PHASE_MEASURE: u64 = 2;
const PHASE_DRAIN: u64 = 3;

// ----------------------------------------------------------------------------------------
// Command line
// ----------------------------------------------------------------------------------------

#[derive(Parser, Debug)]
#[command(
    name = "confab-bench",
    version,
    about = "Load generator for the Confab chat server (and `floor`, a minimal reference server)",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    after_help = "Targets must be loopback (127.0.0.0/8, ::1, localhost). Each connection is a file \
descriptor: raise `ulimit -n` for large --clients, and spread over several --url \
ws://127.0.0.N:PORT/ws when local ports run out.\nExit codes: 0 done, 1 --check failed, \
2 usage error, setup failure or hard deadline."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    load: LoadArgs,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the floor server: the simplest room broadcast server speaking the bench's protocol subset.
    Floor(FloorArgs),
    /// The resume storm: kill a node under load, every dropped client resumes with `since`.
    Resume(resume::ResumeArgs),
}

#[derive(Args, Debug)]
struct FloorArgs {
    /// TCP port to listen on.
    #[arg(long)]
    port: u16,
    /// Loopback address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: IpAddr,
}

#[derive(Args, Debug, Clone)]
struct LoadArgs {
    /// WebSocket URL of a server, e.g. ws://127.0.0.1:8080/ws (repeatable; clients are spread round-robin).
    #[arg(long = "url", required = true, value_name = "URL")]
    urls: Vec<String>,
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
    quiet: bool,
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

/// Accepts only `ws://` URLs whose host is 127.0.0.0/8, ::1 or localhost (parsed the way
/// the WebSocket client will parse it).
fn check_loopback_url(url: &str) -> Result<()> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    if uri.scheme_str() != Some("ws") {
        bail!("{url:?}: only ws:// URLs are supported");
    }
    let host = uri.host().unwrap_or_default();
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    if !loopback {
        bail!("refusing target {url:?}: only loopback hosts (127.0.0.0/8, ::1, localhost) may be loaded");
    }
    Ok(())
}

// ----------------------------------------------------------------------------------------
// Shared run state
// ----------------------------------------------------------------------------------------

/// Counters of the current step, updated by every client task.
struct StepStats {
    /// Messages sent in the measured window.
    sent: AtomicU64,
    /// Acks of measured messages.
    acked: AtomicU64,
    /// Error replies to measured messages.
    refused: AtomicU64,
    /// Sum over acked measured messages of their room's member count.
    expected: AtomicU64,
    /// Deliveries of measured messages of this step.
    received: AtomicU64,
    /// Deliveries of any bench message that arrived during the measured window.
    in_window: AtomicU64,
    seq_gaps: AtomicU64,
    duplicated: AtomicU64,
    out_of_order: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// End-to-end latency of measured messages, from the moment they were written.
    latency_us: Mutex<Histogram<u64>>,
    /// How late senders wrote measured messages against their schedule.
    send_lag_us: Mutex<Histogram<u64>>,
}

impl StepStats {
    fn new() -> Result<Self> {
        let zero = || AtomicU64::new(0);
        let histogram = || Histogram::new_with_bounds(1, 3_600_000_000, 3).map(Mutex::new);
        Ok(Self {
            sent: zero(),
            acked: zero(),
            refused: zero(),
            expected: zero(),
            received: zero(),
            in_window: zero(),
            seq_gaps: zero(),
            duplicated: zero(),
            out_of_order: zero(),
            errors: Mutex::default(),
            latency_us: histogram()?,
            send_lag_us: histogram()?,
        })
    }

    fn reset(&self) {
        for counter in [
            &self.sent,
            &self.acked,
            &self.refused,
            &self.expected,
            &self.received,
            &self.in_window,
            &self.seq_gaps,
            &self.duplicated,
            &self.out_of_order,
        ] {
            counter.store(0, Relaxed);
        }
        lock(&self.errors).clear();
        lock(&self.latency_us).reset();
        lock(&self.send_lag_us).reset();
    }

    fn count_error(&self, code: &str) {
        *lock(&self.errors).entry(code.to_owned()).or_default() += 1;
    }
}

/// State shared by the controller and all client tasks.
struct Shared {
    /// `(step << 2) | phase`: which step runs and whether senders warm up, measure or stop.
    control: AtomicU64,
    /// Time zero of the run; message send times are nanoseconds since it.
    base: std::time::Instant,
    rooms: usize,
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

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ----------------------------------------------------------------------------------------
// One bench client (one connection, one task)
// ----------------------------------------------------------------------------------------

type ClientSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;
type SetupReply = oneshot::Sender<Result<(), String>>;
/// The controller's handle on a client task.
type ClientLink = mpsc::UnboundedSender<ClientCommand>;

#[derive(Clone, Copy, PartialEq, Debug)]
enum SetupKind {
    Create,
    Join,
}

impl SetupKind {
    fn name(self) -> &'static str {
        match self {
            SetupKind::Create => "create",
            SetupKind::Join => "join",
        }
    }
}

/// What the controller asks a client task to do.
enum ClientCommand {
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
struct Payload {
    sender: usize,
    sender_seq: u64,
    send_ns: u64,
    measured: bool,
    step: u64,
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

struct BenchClient {
    index: usize,
    room_index: usize,
    room: String,
    user: String,
    size: usize,
    shared: Arc<Shared>,
    /// Last room seq given to this connection; `None` until the join ack.
    last_seq: Option<u64>,
    /// Last sender_seq seen per sender of this room (sender k sits at k / rooms).
    last_by_sender: Vec<u64>,
    pending_setup: Option<(SetupKind, SetupReply)>,
    ticker: Option<Interval>,
    sending_step: u64,
    room_members: u64,
    next_sender_seq: u64,
    /// First and last sender_seq sent in the measured window of `sending_step`.
    measured_refs: Option<(u64, u64)>,
}

impl BenchClient {
    fn new(index: usize, args: &LoadArgs, run_id: &str, shared: Arc<Shared>) -> Self {
        Self {
            index,
            room_index: index % args.rooms,
            room: format!("bench-{run_id}-{}", index % args.rooms),
            user: format!("b{index}"),
            size: args.size,
            shared,
            last_seq: None,
            last_by_sender: Vec::new(),
            pending_setup: None,
            ticker: None,
            sending_step: u64::MAX,
            room_members: 0,
            next_sender_seq: 0,
            measured_refs: None,
        }
    }

    async fn run(
        mut self,
        mut ws: ClientSocket,
        mut commands: mpsc::UnboundedReceiver<ClientCommand>,
    ) {
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
        let frame = format!(
            r#"{{"type":"message","room":"{}","user_id":"{}","message":"{text}","ref":{sender_seq}}}"#,
            self.room, self.user
        );
        ws.send(Message::text(frame)).await?;
        Ok(())
    }

    fn on_text(&mut self, text: &str) {
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
        let (Some(seq), Some(last)) = (frame.seq, self.last_seq) else {
            return; // before our join ack: the join ack's seq is where checking starts
        };
        if seq <= last {
            stats.duplicated.fetch_add(1, Relaxed);
            return;
        }
        if seq > last + 1 {
            stats.seq_gaps.fetch_add(seq - last - 1, Relaxed);
        }
        self.last_seq = Some(seq);
        if frame.kind != "message" {
            return;
        }
        let Some(payload) = frame.message.as_deref().and_then(Payload::parse) else {
            return; // not a bench message
        };
        let rooms = self.shared.rooms;
        if payload.sender % rooms == self.room_index && payload.sender / rooms < MAX_CLIENTS {
            let slot = payload.sender / rooms;
            if self.last_by_sender.len() <= slot {
                self.last_by_sender.resize(slot + 1, 0);
            }
            if payload.sender_seq < self.last_by_sender[slot] {
                stats.out_of_order.fetch_add(1, Relaxed);
            } else {
                self.last_by_sender[slot] = payload.sender_seq;
            }
        }
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
                        self.last_seq = Some(seq);
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

// ----------------------------------------------------------------------------------------
// Reports
// ----------------------------------------------------------------------------------------

#[derive(Serialize, Default, Clone)]
struct ConnectReport {
    attempted: usize,
    made: usize,
    failed: usize,
    elapsed_s: f64,
    connects_per_s: f64,
    failures: BTreeMap<String, u64>,
    joined: usize,
    join_failed: usize,
    join_failures: BTreeMap<String, u64>,
    setup_s: f64,
}

#[derive(Serialize)]
struct MemoryReport {
    pids: Vec<u32>,
    rss_before_kib: u64,
    rss_after_kib: u64,
    rss_delta_kib: i64,
    rss_per_connection_kib: f64,
}

#[derive(Serialize, Default)]
struct LatencyReport {
    samples: u64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
}

#[derive(Serialize)]
struct StepReport {
    step: u64,
    target_rate: f64,
    measured_s: f64,
    sent: u64,
    send_rate: f64,
    acked: u64,
    errors: BTreeMap<String, u64>,
    error_total: u64,
    expected_deliveries: u64,
    received_deliveries: u64,
    /// expected - received, not below 0.
    lost: u64,
    /// Events missing from some connection's seq sequence (any event, any time in the step).
    seq_gaps: u64,
    duplicated: u64,
    out_of_order: u64,
    deliveries_per_s: f64,
    latency: LatencyReport,
    /// How late senders were against their open-loop schedule (bench or socket backpressure).
    send_lag_p99_ms: f64,
    send_lag_max_ms: f64,
    server_cpu_s: Option<f64>,
    server_cpu_us_per_delivery: Option<f64>,
    bench_cpu_s: Option<f64>,
    sustained: bool,
}

#[derive(Serialize, Default)]
struct RunReport {
    run_id: String,
    urls: Vec<String>,
    clients: usize,
    rooms: usize,
    senders: usize,
    active_senders: usize,
    size: usize,
    warmup_s: f64,
    duration_s: f64,
    connect: ConnectReport,
    server_memory: Option<MemoryReport>,
    /// The bench's own RSS once every client has joined.
    bench_rss_kib: Option<u64>,
    steps: Vec<StepReport>,
    find_max: bool,
    max_sustained_rate: Option<f64>,
    max_sustained_deliveries_per_s: Option<f64>,
    timed_out: bool,
    failure: Option<String>,
    check_failures: Option<Vec<String>>,
}

// ----------------------------------------------------------------------------------------
// The load run
// ----------------------------------------------------------------------------------------

async fn bench_main(args: LoadArgs) -> i32 {
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

/// Opens `--clients` connections, `--connect-concurrency` at a time, each with its task.
async fn connect_clients(
    args: &LoadArgs,
    run_id: &str,
    shared: &Arc<Shared>,
) -> (Vec<Option<ClientLink>>, ConnectReport) {
    let started = Instant::now();
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let mut clients: Vec<Option<ClientLink>> = vec![None; args.clients];
    let mut connect = ConnectReport {
        attempted: args.clients,
        ..ConnectReport::default()
    };
    let mut attempts = futures_util::stream::iter(0..args.clients)
        .map(|i| {
            let url = &args.urls[i % args.urls.len()];
            let attempt = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
            async move { (i, timeout(CONNECT_TIMEOUT, attempt).await) }
        })
        .buffer_unordered(args.connect_concurrency);
    while let Some((i, attempt)) = attempts.next().await {
        let failure = match attempt {
            Ok(Ok((ws, _response))) => {
                let (link, commands) = mpsc::unbounded_channel();
                tokio::spawn(BenchClient::new(i, args, run_id, shared.clone()).run(ws, commands));
                clients[i] = Some(link);
                connect.made += 1;
                None
            }
            Ok(Err(e)) => Some(connect_failure_reason(&e)),
            Err(_) => Some("timeout".to_owned()),
        };
        if let Some(reason) = failure {
            connect.failed += 1;
            *connect.failures.entry(reason).or_default() += 1;
        }
        let done = connect.made + connect.failed;
        if done.is_multiple_of(10_000) && done < args.clients {
            info!("  {done}/{} connections attempted", args.clients);
        }
    }
    connect.elapsed_s = started.elapsed().as_secs_f64();
    connect.connects_per_s = connect.made as f64 / connect.elapsed_s.max(1e-9);
    info!(
        "connected {} of {} in {:.2} s ({} failed)",
        connect.made, args.clients, connect.elapsed_s, connect.failed
    );
    (clients, connect)
}

/// Creates each room from its first connected client, then joins every connected client.
/// Returns which clients joined and each room's member count.
async fn join_rooms(
    args: &LoadArgs,
    clients: &[Option<ClientLink>],
    connect: &mut ConnectReport,
) -> (Vec<bool>, Vec<u64>) {
    let started = Instant::now();
    let connected = |i: &usize| clients[*i].is_some();
    let creators: Vec<usize> = (0..args.rooms)
        .filter_map(|r| (r..args.clients).step_by(args.rooms).find(connected))
        .collect();
    let everyone: Vec<usize> = (0..args.clients).filter(connected).collect();
    let concurrency = args.connect_concurrency;
    let mut outcomes = run_setup(clients, &creators, SetupKind::Create, concurrency).await;
    let creates = outcomes.len();
    outcomes.extend(run_setup(clients, &everyone, SetupKind::Join, concurrency).await);
    let (mut joined, mut members) = (vec![false; args.clients], vec![0u64; args.rooms]);
    for (n, (i, outcome)) in outcomes.into_iter().enumerate() {
        let is_join = n >= creates;
        match outcome {
            Ok(()) if is_join => {
                joined[i] = true;
                members[i % args.rooms] += 1;
                connect.joined += 1;
            }
            Ok(()) => {}
            Err(reason) => {
                connect.join_failed += usize::from(is_join);
                *connect.join_failures.entry(reason).or_default() += 1;
            }
        }
    }
    connect.setup_s = started.elapsed().as_secs_f64();
    info!(
        "joined {} clients in {:.2} s",
        connect.joined, connect.setup_s
    );
    (joined, members)
}

/// Sends `kind` to the given clients, `concurrency` at a time; retries `unavailable` and
/// `rate_limited` a few times. Returns each client's outcome.
async fn run_setup(
    clients: &[Option<ClientLink>],
    which: &[usize],
    kind: SetupKind,
    concurrency: usize,
) -> Vec<(usize, Result<(), String>)> {
    futures_util::stream::iter(which.iter().copied())
        .map(|i| async move {
            let Some(tx) = clients[i].as_ref() else {
                return (i, Err("not connected".to_owned()));
            };
            for attempt in 0..=SETUP_RETRIES {
                let (reply, outcome) = oneshot::channel();
                if tx.send(ClientCommand::Setup { kind, reply }).is_err() {
                    return (i, Err("connection closed".to_owned()));
                }
                match timeout(SETUP_TIMEOUT, outcome).await {
                    Ok(Ok(Err(code)))
                        if attempt < SETUP_RETRIES
                            && (code == "unavailable" || code == "rate_limited") =>
                    {
                        sleep(Duration::from_millis(200 * u64::from(attempt + 1))).await;
                    }
                    Ok(Ok(outcome)) => {
                        return (
                            i,
                            outcome.map_err(|code| format!("{} refused: {code}", kind.name())),
                        )
                    }
                    Ok(Err(_)) => return (i, Err("connection closed".to_owned())),
                    Err(_) => return (i, Err(format!("{} timed out", kind.name()))),
                }
            }
            (i, Err("retries exhausted".to_owned()))
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
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
        let members = members[k % args.rooms];
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
        let replies = stats.acked.load(Relaxed) + stats.refused.load(Relaxed);
        if replies >= stats.sent.load(Relaxed)
            && stats.received.load(Relaxed) >= stats.expected.load(Relaxed)
        {
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }

    let errors = lock(&stats.errors).clone();
    let latency = {
        let histogram = lock(&stats.latency_us);
        let ms = |quantile: f64| histogram.value_at_quantile(quantile) as f64 / 1000.0;
        LatencyReport {
            samples: histogram.len(),
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            p999_ms: ms(0.999),
            max_ms: histogram.max() as f64 / 1000.0,
        }
    };
    let (send_lag_p99_ms, send_lag_max_ms) = {
        let histogram = lock(&stats.send_lag_us);
        (
            histogram.value_at_quantile(0.99) as f64 / 1000.0,
            histogram.max() as f64 / 1000.0,
        )
    };
    let (sent, acked) = (stats.sent.load(Relaxed), stats.acked.load(Relaxed));
    let (expected, received) = (stats.expected.load(Relaxed), stats.received.load(Relaxed));
    let in_window = stats.in_window.load(Relaxed);
    let server_cpu_s = match (server_cpu_before, server_cpu_after) {
        (Some(before), Some(after)) => {
            Some(after.saturating_sub(before) as f64 / CLOCK_TICKS_PER_S)
        }
        _ => None,
    };
    let mut row = StepReport {
        step,
        target_rate: rate,
        measured_s,
        sent,
        send_rate: sent as f64 / measured_s,
        acked,
        error_total: errors.values().sum(),
        errors,
        expected_deliveries: expected,
        received_deliveries: received,
        lost: expected.saturating_sub(received),
        seq_gaps: stats.seq_gaps.load(Relaxed),
        duplicated: stats.duplicated.load(Relaxed),
        out_of_order: stats.out_of_order.load(Relaxed),
        deliveries_per_s: in_window as f64 / measured_s,
        latency,
        send_lag_p99_ms,
        send_lag_max_ms,
        server_cpu_s,
        server_cpu_us_per_delivery: server_cpu_s
            .filter(|_| in_window > 0)
            .map(|s| s * 1e6 / in_window as f64),
        bench_cpu_s: bench_cpu_before
            .zip(bench_cpu_after)
            .map(|(before, after)| after.saturating_sub(before) as f64 / CLOCK_TICKS_PER_S),
        sustained: false,
    };
    row.sustained = row.send_rate >= 0.9 * rate
        && row.lost + row.seq_gaps + row.duplicated + row.out_of_order == 0
        && row.latency.p99_ms <= args.p99_limit_ms
        && acked as f64 >= 0.95 * sent as f64;
    Ok(row)
}

fn check_failures(report: &RunReport) -> Vec<String> {
    let mut failures = Vec::new();
    let connect = &report.connect;
    if connect.failed > 0 || connect.join_failed > 0 {
        failures.push(format!(
            "{} connections and {} joins failed",
            connect.failed, connect.join_failed
        ));
    }
    for row in &report.steps {
        for (what, n) in [
            ("lost", row.lost),
            ("seq gaps", row.seq_gaps),
            ("duplicated", row.duplicated),
            ("out of order", row.out_of_order),
            ("errors", row.error_total),
        ] {
            if n > 0 {
                failures.push(format!("step {}: {n} {what}", row.step));
            }
        }
        if row.received_deliveries == 0 {
            failures.push(format!("step {}: nothing was delivered", row.step));
        }
    }
    if report.steps.is_empty() {
        failures.push("no step completed".to_owned());
    }
    failures
}

fn print_report(report: &RunReport) {
    let c = &report.connect;
    println!(
        "confab-bench run {} -> {}",
        report.run_id,
        report.urls.join(", ")
    );
    println!(
        "  {} clients, {} rooms, {} senders ({} active), {} B messages, warmup {} s, measured {} s per step",
        report.clients, report.rooms, report.senders, report.active_senders, report.size, report.warmup_s, report.duration_s
    );
    println!(
        "connections: {} made, {} failed in {:.2} s ({:.0}/s); joined {}, join failures {}; setup {:.2} s",
        c.made, c.failed, c.elapsed_s, c.connects_per_s, c.joined, c.join_failed, c.setup_s
    );
    for (reason, n) in c.failures.iter().chain(&c.join_failures) {
        println!("  failure: {reason} x{n}");
    }
    if let Some(kib) = report.bench_rss_kib {
        println!("bench RSS after setup: {kib} KiB");
    }
    if let Some(m) = &report.server_memory {
        println!(
            "server RSS {:?}: {} KiB before, {} KiB after setup, delta {} KiB = {:.2} KiB per connection",
            m.pids, m.rss_before_kib, m.rss_after_kib, m.rss_delta_kib, m.rss_per_connection_kib
        );
    }
    const COLUMNS: [(&str, usize); 17] = [
        ("step", 4),
        ("rate/s", 9),
        ("sent", 9),
        ("acked", 9),
        ("errors", 6),
        ("expected", 10),
        ("received", 10),
        ("lost", 6),
        ("gaps", 6),
        ("dup", 4),
        ("ooo", 4),
        ("deliv/s", 9),
        ("p50ms", 8),
        ("p99ms", 8),
        ("p99.9ms", 8),
        ("maxms", 8),
        ("us/deliv", 8),
    ];
    let print_row = |cells: [String; 17]| {
        let row: Vec<String> = COLUMNS
            .iter()
            .zip(cells)
            .map(|((_, w), c)| format!("{c:>w$}"))
            .collect();
        println!("{}", row.join(" "));
    };
    if !report.steps.is_empty() {
        print_row(COLUMNS.map(|(name, _)| name.to_owned()));
    }
    let opt = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.2}"));
    let secs = |value: Option<f64>| value.map_or("-".to_owned(), |v| format!("{v:.2} s"));
    for r in &report.steps {
        let l = &r.latency;
        print_row([
            r.step.to_string(),
            format!("{:.0}", r.target_rate),
            r.sent.to_string(),
            r.acked.to_string(),
            r.error_total.to_string(),
            r.expected_deliveries.to_string(),
            r.received_deliveries.to_string(),
            r.lost.to_string(),
            r.seq_gaps.to_string(),
            r.duplicated.to_string(),
            r.out_of_order.to_string(),
            format!("{:.0}", r.deliveries_per_s),
            format!("{:.2}", l.p50_ms),
            format!("{:.2}", l.p99_ms),
            format!("{:.2}", l.p999_ms),
            format!("{:.2}", l.max_ms),
            opt(r.server_cpu_us_per_delivery),
        ]);
        println!(
            "     {}p90 {:.2} ms over {} samples; sent {:.0}/s, send lag p99 {:.2} ms (max {:.2}); \
             CPU over {:.2} s: server {}, bench {}",
            if report.find_max && !r.sustained { "NOT SUSTAINED; " } else { "" },
            l.p90_ms, l.samples, r.send_rate, r.send_lag_p99_ms, r.send_lag_max_ms, r.measured_s,
            secs(r.server_cpu_s), secs(r.bench_cpu_s)
        );
        if !r.errors.is_empty() {
            println!("     errors: {:?}", r.errors);
        }
    }
    if report.find_max {
        match report.max_sustained_rate {
            Some(rate) => println!(
                "max sustained: {rate:.0} msg/s ({:.0} deliveries/s)",
                report.max_sustained_deliveries_per_s.unwrap_or_default()
            ),
            None => println!("max sustained: none (the first step already failed)"),
        }
    }
    if report.timed_out {
        println!("TIMED OUT: the hard deadline was reached");
    }
    if let Some(failures) = &report.check_failures {
        if failures.is_empty() {
            println!("CHECK PASSED");
        } else {
            println!("CHECK FAILED: {}", failures.join("; "));
        }
    }
}

fn connect_failure_reason(error: &WsError) -> String {
    match error {
        WsError::Io(io) => match io.raw_os_error() {
            Some(24) => "EMFILE: too many open files (raise `ulimit -n`)".to_owned(),
            Some(99) => {
                "EADDRNOTAVAIL: out of local ports (add --url ws://127.0.0.N:PORT/ws targets)"
                    .to_owned()
            }
            _ => format!("io: {io}"),
        },
        WsError::Http(response) => format!("http status {}", response.status()),
        other => other.to_string().chars().take(100).collect(),
    }
}

/// Writes a report as pretty JSON (`--json`).
fn write_json(path: &std::path::Path, report: &impl Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// A short, per-run room name prefix so that runs do not share rooms.
fn run_id() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut x = nanos ^ (u64::from(std::process::id()) << 32);
    let mut id = String::new();
    for _ in 0..8 {
        id.push(char::from(
            b"0123456789abcdefghijklmnopqrstuvwxyz"[(x % 36) as usize],
        ));
        x /= 36;
    }
    id
}

// ----------------------------------------------------------------------------------------
// /proc readings
// ----------------------------------------------------------------------------------------

/// VmRSS of a process ("self" or a pid), in KiB.
fn read_rss_kib(pid: impl std::fmt::Display) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))
}

fn server_rss_kib(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&pid| read_rss_kib(pid)).sum()
}

/// utime + stime of a process ("self" or a pid), in clock ticks.
fn cpu_ticks(pid: &str) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    // After the command name: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<u64>().ok());
    field(14)
        .zip(field(15))
        .map(|(u, s)| u + s)
        .ok_or_else(|| anyhow!("bad /proc/{pid}/stat"))
}

fn server_cpu_ticks(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    pids.iter()
        .map(|pid| cpu_ticks(&pid.to_string()))
        .sum::<Result<u64>>()
        .map(Some)
}

// ----------------------------------------------------------------------------------------
// The floor server
// ----------------------------------------------------------------------------------------

/// A connection as the rooms see it: its bounded outgoing queue.
struct FloorPeer {
    id: u64,
    outbox: mpsc::Sender<Message>,
    /// Set when its queue overflowed; the writer then closes with 4000.
    slow: Arc<AtomicBool>,
}

impl FloorPeer {
    /// Queues a frame; false (and marked slow) if the queue is full or the writer is gone.
    fn push(&self, frame: Message) -> bool {
        match self.outbox.try_send(frame) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                self.slow.store(true, Relaxed);
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

#[derive(Default)]
struct FloorRoom {
    seq: u64,
    members: Vec<Arc<FloorPeer>>,
}

impl FloorRoom {
    /// Takes the next seq, serialises the event once and queues it to every member.
    fn append(
        &mut self,
        kind: &str,
        room: &str,
        user_id: &str,
        message: Option<&str>,
        id: u64,
    ) -> u64 {
        self.seq += 1;
        let event = FloorEvent {
            kind,
            room,
            seq: self.seq,
            id,
            user_id,
            message,
            node: "floor",
            at: rfc3339_now(),
        };
        let text = Utf8Bytes::from(serde_json::to_string(&event).unwrap_or_default());
        self.members
            .retain(|member| member.push(Message::Text(text.clone())));
        self.seq
    }
}

#[derive(Default)]
struct FloorHub {
    rooms: Mutex<HashMap<String, Arc<Mutex<FloorRoom>>>>,
    next_event_id: AtomicU64,
    next_peer_id: AtomicU64,
}

#[derive(Serialize)]
struct FloorEvent<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    room: &'a str,
    seq: u64,
    id: u64,
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    node: &'static str,
    at: String,
}

#[derive(Serialize, Default)]
struct FloorReply<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    room: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    seq: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
}

#[derive(Deserialize)]
struct FloorCommand {
    #[serde(rename = "type")]
    kind: Option<String>,
    room: Option<String>,
    user_id: Option<Value>,
    message: Option<String>,
    #[serde(rename = "ref")]
    reference: Option<Value>,
}

/// One connection's reader side: its identity and the rooms it is subscribed to.
struct FloorSession {
    hub: Arc<FloorHub>,
    peer: Arc<FloorPeer>,
    user: Option<String>,
    rooms: HashMap<String, Arc<Mutex<FloorRoom>>>,
}

impl FloorSession {
    fn reply(&self, reply: FloorReply) {
        let text = serde_json::to_string(&reply).unwrap_or_default();
        self.peer.push(Message::text(text));
    }

    fn error(&self, reference: Option<&Value>, code: &str, message: &str) {
        let (code, message) = (Some(code), Some(message));
        self.reply(FloorReply {
            kind: "error",
            reference,
            code,
            message,
            ..Default::default()
        });
    }

    fn ack(&self, reference: Option<&Value>, command: &str, room: &str, seq: u64, id: Option<u64>) {
        let (command, room, seq) = (Some(command), Some(room), Some(seq));
        self.reply(FloorReply {
            kind: "ack",
            reference,
            command,
            room,
            seq,
            id,
            ..Default::default()
        });
    }

    fn next_event_id(&self) -> u64 {
        self.hub.next_event_id.fetch_add(1, Relaxed) + 1
    }

    fn handle(&mut self, text: &str) {
        let Ok(command) = serde_json::from_str::<FloorCommand>(text) else {
            return self.error(None, "invalid_json", "the frame is not a command object");
        };
        let reference = command.reference.as_ref();
        let user_id = command.user_id.as_ref();
        if let Some(user) = user_id.and_then(|u| {
            u.as_str()
                .map(str::to_owned)
                .or(u.as_u64().map(|n| n.to_string()))
        }) {
            self.user.get_or_insert(user);
        }
        let kind = command.kind.as_deref().unwrap_or_default();
        if kind == "ping" {
            return self.reply(FloorReply {
                kind: "pong",
                reference,
                ..Default::default()
            });
        }
        if !matches!(kind, "create" | "join" | "message") {
            return self.error(
                reference,
                "unknown_type",
                "type must be create, join, message or ping",
            );
        }
        let valid_room = |r: &&str| {
            (1..=64).contains(&r.len())
                && r.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
        };
        let Some(room) = command.room.as_deref().filter(valid_room) else {
            return self.error(
                reference,
                "invalid_room",
                "room must be 1-64 of A-Z a-z 0-9 - _ . :",
            );
        };
        match command.message.as_deref() {
            _ if kind != "message" => self.join(reference, kind, room),
            Some(text) if !text.is_empty() => self.post(reference, room, text),
            _ => self.error(
                reference,
                "invalid_field",
                "message must be a non-empty string",
            ),
        }
    }

    fn user(&self) -> &str {
        self.user.as_deref().unwrap_or("anonymous")
    }

    /// `message`: one seq, one serialisation, one queue push per member, then the ack.
    fn post(&self, reference: Option<&Value>, room_name: &str, text: &str) {
        let Some(room) = self.rooms.get(room_name) else {
            return self.error(reference, "not_a_member", "join the room first");
        };
        let id = self.next_event_id();
        let mut room = lock(room);
        let seq = room.append("message", room_name, self.user(), Some(text), id);
        // Queued under the room lock: after the event, before any later one.
        self.ack(reference, "message", room_name, seq, Some(id));
    }

    /// `create` (makes the room if needed) or `join`: subscribe, emit the event, ack its seq.
    fn join(&mut self, reference: Option<&Value>, kind: &str, room_name: &str) {
        let (room, created) = {
            let mut rooms = lock(&self.hub.rooms);
            match rooms.get(room_name) {
                Some(room) => (room.clone(), false),
                None if kind == "join" => {
                    return self.error(reference, "no_such_room", "no such room")
                }
                None => {
                    let room = Arc::new(Mutex::new(FloorRoom::default()));
                    rooms.insert(room_name.to_owned(), room.clone());
                    (room, true)
                }
            }
        };
        let mut guard = lock(&room);
        let mut id = None;
        if !self.rooms.contains_key(room_name) {
            guard.members.push(self.peer.clone());
            let event_id = self.next_event_id();
            let event_kind = if created { "create" } else { "join" };
            guard.append(event_kind, room_name, self.user(), None, event_id);
            id = Some(event_id);
        }
        self.ack(reference, kind, room_name, guard.seq, id);
        drop(guard);
        self.rooms.insert(room_name.to_owned(), room);
    }
}

impl Drop for FloorSession {
    fn drop(&mut self) {
        for room in self.rooms.values() {
            lock(room)
                .members
                .retain(|member| member.id != self.peer.id);
        }
    }
}

async fn run_floor(args: FloorArgs) -> Result<()> {
    if !args.host.is_loopback() {
        bail!("the floor server only listens on loopback addresses");
    }
    let listener = TcpListener::bind((args.host, args.port))
        .await
        .with_context(|| format!("binding {}:{}", args.host, args.port))?;
    info!(
        "floor server listening on ws://{}:{}/ws (Ctrl-C to stop)",
        args.host, args.port
    );
    let hub = Arc::new(FloorHub::default());
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let hub = hub.clone();
                    tokio::spawn(async move {
                        if let Err(e) = serve_floor_connection(hub, stream).await {
                            debug!("floor connection: {e:#}");
                        }
                    });
                }
                Err(e) => {
                    warn!("accept failed: {e}");
                    sleep(Duration::from_millis(50)).await;
                }
            },
            _ = tokio::signal::ctrl_c() => {
                info!("floor server stopping");
                return Ok(());
            }
        }
    }
}

async fn serve_floor_connection(hub: Arc<FloorHub>, stream: TcpStream) -> Result<()> {
    stream.set_nodelay(true)?;
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let (mut sink, mut source) = ws.split();
    let (outbox, mut queue) = mpsc::channel::<Message>(FLOOR_OUTBOX);
    let slow = Arc::new(AtomicBool::new(false));
    let writer_slow = slow.clone();
    tokio::spawn(async move {
        while let Some(frame) = queue.recv().await {
            if writer_slow.load(Relaxed) {
                let close = CloseFrame {
                    code: CloseCode::from(4000),
                    reason: "slow consumer".into(),
                };
                let _ = sink.send(Message::Close(Some(close))).await;
                break;
            }
            sink.feed(frame).await?;
            while let Ok(frame) = queue.try_recv() {
                sink.feed(frame).await?;
            }
            sink.flush().await?;
        }
        Ok::<(), WsError>(())
    });
    let peer = Arc::new(FloorPeer {
        id: hub.next_peer_id.fetch_add(1, Relaxed),
        outbox,
        slow,
    });
    peer.push(Message::text(r#"{"type":"hello","node":"floor","protocol":1,"epoch":"floor","user_id":null,"limits":{}}"#));
    let mut session = FloorSession {
        hub,
        peer,
        user: None,
        rooms: HashMap::new(),
    };
    while let Some(frame) = source.next().await {
        match frame? {
            Message::Text(text) => session.handle(&text),
            Message::Binary(_) => {
                session.error(None, "unsupported_frame", "binary frames are not supported")
            }
            Message::Close(_) => break,
            _ => {}
        }
        if session.peer.slow.load(Relaxed) {
            break;
        }
    }
    Ok(())
}

/// The current UTC time as RFC 3339 with microseconds and a `Z` offset,
/// e.g. `2026-12-03T05:31:13.123456Z`.
fn rfc3339_now() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

// ----------------------------------------------------------------------------------------

fn main() {
    let cli = Cli::parse();
    let quiet = cli.command.is_none() && cli.load.quiet;
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(if quiet {
        "warn"
    } else {
        "info"
    }))
    .format_timestamp_millis()
    .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("confab-bench: cannot start the runtime: {e}");
            std::process::exit(2);
        }
    };
    let code = runtime.block_on(async move {
        match cli.command {
            Some(Command::Floor(args)) => match run_floor(args).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("confab-bench floor: {e:#}");
                    2
                }
            },
            Some(Command::Resume(args)) => resume::main(args).await,
            None => bench_main(cli.load).await,
        }
    });
    // Exit at once rather than tearing down every connection task one by one.
    std::process::exit(code);
}

#[cfg(test)]
mod tests {
    #[test]
    fn rfc3339_now_is_utc_with_microseconds() {
        let at = super::rfc3339_now();
        let shape: String = at
            .chars()
            .map(|c| if c.is_ascii_digit() { '9' } else { c })
            .collect();
        assert_eq!(shape, "9999-99-99T99:99:99.999999Z", "{at}");
    }
}
