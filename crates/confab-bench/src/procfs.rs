//! Readings from `/proc`: a process's resident memory (RSS, and its anonymous part) and its
//! CPU time, for the server processes given with `--pid` and for the bench itself ("self").

use anyhow::{anyhow, Context, Result};

/// `/proc/PID/stat` times are in clock ticks; `getconf CLK_TCK` is 100 on Linux.
const CLOCK_TICKS_PER_S: f64 = 100.0;

/// VmRSS of a process ("self" or a pid), in KiB.
pub(crate) fn read_rss_kib(pid: impl std::fmt::Display) -> Result<u64> {
    read_status_kib(pid, "VmRSS")
}

/// One `kB` field of `/proc/PID/status` (`VmRSS`, `RssAnon`, `RssFile`, ...), in KiB.
pub(crate) fn read_status_kib(pid: impl std::fmt::Display, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))
}

pub(crate) fn server_rss_kib(pids: &[u32]) -> Result<u64> {
    pids.iter().map(|&pid| read_rss_kib(pid)).sum()
}

/// utime + stime of a process ("self" or a pid), in clock ticks.
pub(crate) fn cpu_ticks(pid: &str) -> Result<u64> {
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

pub(crate) fn server_cpu_ticks(pids: &[u32]) -> Result<Option<u64>> {
    if pids.is_empty() {
        return Ok(None);
    }
    pids.iter()
        .map(|pid| cpu_ticks(&pid.to_string()))
        .sum::<Result<u64>>()
        .map(Some)
}

/// CPU seconds between two tick readings, if both were taken.
pub(crate) fn cpu_s_between(before: Option<u64>, after: Option<u64>) -> Option<f64> {
    before
        .zip(after)
        .map(|(before, after)| after.saturating_sub(before) as f64 / CLOCK_TICKS_PER_S)
}
