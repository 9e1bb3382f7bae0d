//! Small helpers every command shares: a lock that survives a poisoned mutex, the run id
//! that keeps runs' rooms apart, and the `--json` report writer.

use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::Serialize;

pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Writes a report as pretty JSON (`--json`).
pub(crate) fn write_json(path: &std::path::Path, report: &impl Serialize) -> Result<()> {
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
}

/// A short, per-run room name prefix so that runs do not share rooms.
pub(crate) fn run_id() -> String {
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
