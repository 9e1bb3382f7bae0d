//! `confab-bench store-floor --sqlite PATH`: the store floor on SQLite, the rate at which the
//! store alone ingests rows shaped like Confab's `events`, beside W3's durable messages/s.
//!
//! It does what the event writer's append does for a batch of plain chat messages
//! (src/store/sqlite/write.rs), minus the decisions: one `BEGIN IMMEDIATE` transaction per
//! batch of `--batch` rows, each row one execution of the store's INSERT INTO events statement
//! (type 'message', user 'b<k>', a `--size`-byte text, a client_msg_id, node 'node-1'), then
//! the store's `UPDATE rooms SET last_seq, owner` once per room the batch touched, then the
//! commit. The connection has the store's PRAGMAs (WAL, synchronous=FULL, foreign_keys,
//! secure_delete, wal_autocheckpoint=0) and, as in the store, a second connection checkpoints
//! the WAL (PASSIVE) every 500 ms. Rows go to 1,000 rooms `r-0` .. `r-999`, each batch from a
//! random room on, one row per room until it wraps. Not mirrored: the batch's loads (the
//! rooms' rows, memberships) and the read-marker UPDATE of room_members.
//!
//! The database must hold Confab's schema (scripts/bench makes it with `confab migrate`); the
//! rooms are created here when missing.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{SecondsFormat, Utc};
use clap::Args;
use hdrhistogram::Histogram;
use rusqlite::{params, Connection, TransactionBehavior};
use serde::Serialize;

use crate::util::write_json;

/// The rooms the rows go to, as W3's (`--rooms 1000`).
const ROOMS: usize = 1000;
/// The store's checkpointer period (src/store/sqlite/mod.rs, CHECKPOINT_INTERVAL).
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(500);
/// The store writer's PRAGMAs (src/store/sqlite/mod.rs, open_blocking).
const WRITER_PRAGMAS: &str =
    "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;
     PRAGMA secure_delete=ON;
     PRAGMA busy_timeout=5000; PRAGMA wal_autocheckpoint=0;";

#[derive(Args, Debug)]
pub(crate) struct StoreFloorArgs {
    /// The SQLite database, migrated by Confab (`SQLITE_PATH=PATH confab migrate`).
    #[arg(long, value_name = "PATH")]
    sqlite: PathBuf,
    /// Rows per transaction.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Seconds to run.
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Message text size in bytes (as the load run's --size).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Also write the report as a JSON object to this file.
    #[arg(long, value_name = "OUT")]
    json: Option<PathBuf>,
}

#[derive(Serialize, Debug)]
struct Report {
    workload: &'static str,
    target: &'static str,
    batch: usize,
    clients: usize,
    size: usize,
    seconds: f64,
    transactions: u64,
    rows: u64,
    rows_per_s: f64,
    tps: f64,
    /// One transaction, BEGIN IMMEDIATE to the end of COMMIT, in ms.
    commit_latency_ms: Latency,
}

#[derive(Serialize, Debug)]
struct Latency {
    mean: f64,
    p50: f64,
    p99: f64,
    max: f64,
}

pub(crate) async fn main(args: StoreFloorArgs) -> i32 {
    let json = args.json.clone();
    let report = match tokio::task::spawn_blocking(move || run(&args)).await {
        Ok(Ok(report)) => report,
        Ok(Err(e)) => {
            eprintln!("confab-bench store-floor: {e:#}");
            return 2;
        }
        Err(e) => {
            eprintln!("confab-bench store-floor: {e}");
            return 2;
        }
    };
    let l = &report.commit_latency_ms;
    println!(
        "store-floor sqlite: {:.0} rows/s ({:.1} commits/s of {} rows, 1 writer), commit p50 {:.2} ms p99 {:.2} ms max {:.2} ms",
        report.rows_per_s, report.tps, report.batch, l.p50, l.p99, l.max
    );
    if let Some(path) = &json {
        if let Err(e) = write_json(path, &report) {
            eprintln!("confab-bench store-floor: {e:#}");
            return 2;
        }
    }
    0
}

fn run(args: &StoreFloorArgs) -> Result<Report> {
    anyhow::ensure!(args.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= 3600.0,
        "--seconds must be in (0, 3600]"
    );
    let path = &args.sqlite;
    let mut conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
    conn.execute_batch(WRITER_PRAGMAS)?;
    let has_events: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'events')",
        [],
        |r| r.get(0),
    )?;
    anyhow::ensure!(
        has_events,
        "{} has no events table: migrate it first (SQLITE_PATH=... confab migrate)",
        path.display()
    );
    let at = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
    {
        let tx = conn.transaction()?;
        let mut room = tx.prepare(
            "INSERT OR IGNORE INTO rooms (name, created_by, created_at, last_seq, owner)
             VALUES (?1, ?2, ?3, 0, ?2)",
        )?;
        for k in 0..ROOMS {
            room.execute(params![format!("r-{k}"), format!("b{k}"), at])?;
        }
        drop(room);
        tx.commit()?;
    }
    let mut last_seq = vec![0i64; ROOMS];
    {
        let mut st = conn.prepare("SELECT name, last_seq FROM rooms WHERE name LIKE 'r-%'")?;
        let rows = st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (name, seq) = row?;
            if let Some(k) = name
                .strip_prefix("r-")
                .and_then(|k| k.parse::<usize>().ok())
            {
                if k < ROOMS {
                    last_seq[k] = seq;
                }
            }
        }
    }

    let checkpointer = Connection::open(path)?;
    checkpointer.execute_batch("PRAGMA busy_timeout=5000; PRAGMA synchronous=FULL;")?;
    let (stop, stopped) = mpsc::channel::<()>();
    let checkpoints = std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(CHECKPOINT_INTERVAL)
            {
                if let Err(e) =
                    checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
                {
                    log::warn!("sqlite checkpoint failed: {e}");
                }
            }
        })
        .context("starting the checkpointer thread")?;

    let names: Vec<String> = (0..ROOMS).map(|k| format!("r-{k}")).collect();
    let users: Vec<String> = (0..ROOMS).map(|k| format!("b{k}")).collect();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let mut rng = (u64::from(std::process::id()) << 32) | 0x9e37_79b9;
    let (mut transactions, mut rows) = (0u64, 0u64);
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(args.seconds);
    let mut touched = Vec::with_capacity(args.batch.min(ROOMS));
    while Instant::now() < until {
        // xorshift: the batch's first room.
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let first = (rng % ROOMS as u64) as usize;
        let t0 = Instant::now();
        let at = Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true);
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO events (room, seq, type, user_id, message, client_msg_id, node, at,
                                     target, data, target_seq)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            )?;
            touched.clear();
            for i in 0..args.batch {
                let k = (first + i) % ROOMS;
                if i < ROOMS {
                    touched.push(k);
                }
                last_seq[k] += 1;
                let seq = last_seq[k];
                let mut text = format!("{k}:{seq}:{}:m1:", t0.duration_since(start).as_nanos());
                text.extend(std::iter::repeat_n(
                    'x',
                    args.size.saturating_sub(text.len()),
                ));
                insert.execute(params![
                    names[k],
                    seq,
                    "message",
                    users[k],
                    text,
                    format!("c-{seq}"),
                    "node-1",
                    at,
                    None::<&str>,
                    None::<String>,
                    None::<i64>,
                ])?;
            }
            let mut last =
                tx.prepare_cached("UPDATE rooms SET last_seq = ?2, owner = ?3 WHERE name = ?1")?;
            for &k in &touched {
                last.execute(params![names[k], last_seq[k], users[k]])?;
            }
        }
        tx.commit()?;
        hist.saturating_record((t0.elapsed().as_micros() as u64).max(1));
        transactions += 1;
        rows += args.batch as u64;
    }
    let elapsed = start.elapsed().as_secs_f64();
    drop(stop);
    let _ = checkpoints.join();
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Report {
        workload: "store-floor",
        target: "sqlite",
        batch: args.batch,
        clients: 1,
        size: args.size,
        seconds: elapsed,
        transactions,
        rows,
        rows_per_s: rows as f64 / elapsed,
        tps: transactions as f64 / elapsed,
        commit_latency_ms: Latency {
            mean: hist.mean() / 1000.0,
            p50: ms(hist.value_at_quantile(0.5)),
            p99: ms(hist.value_at_quantile(0.99)),
            max: ms(hist.max()),
        },
    })
}
