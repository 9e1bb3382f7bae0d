//! What the soak reads from the node: its RSS (`/proc/PID/status` VmRSS, and RssAnon: the
//! heap and stacks, without the binary's pages that a debug build touches bit by bit), its
//! open file descriptors (entries of `/proc/PID/fd`), whether it still runs, and from its `/metrics`
//! the `confab_connections` gauge and the `confab_evictions_total` counter. `/metrics` is
//! fetched with a plain HTTP/1.0 GET on the port of the soak's WebSocket URL.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{anyhow, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::http::Uri;

use super::report::Sample;
use super::Tally;
use crate::procfs::{read_rss_kib, read_status_kib};

pub(super) struct Probe {
    pid: u32,
    /// host:port of the node's HTTP side.
    authority: String,
}

/// The figures read from `/metrics`.
#[derive(Default)]
pub(super) struct NodeMetrics {
    pub(super) connections: Option<u64>,
    pub(super) evictions: Option<u64>,
}

impl Probe {
    pub(super) fn new(url: &str, pid: u32) -> Result<Probe> {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        let authority = uri
            .authority()
            .ok_or_else(|| anyhow!("{url:?} has no host"))?
            .to_string();
        let authority = if uri.port().is_none() {
            format!("{authority}:80")
        } else {
            authority
        };
        Ok(Probe { pid, authority })
    }

    /// The process exists and is neither a zombie nor dead.
    pub(super) fn node_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next());
        !matches!(state, None | Some("Z" | "X" | "x"))
    }

    pub(super) fn sample_rss(&self) -> Result<u64> {
        read_rss_kib(self.pid)
    }

    pub(super) fn open_fds(&self) -> Option<u64> {
        let entries = std::fs::read_dir(format!("/proc/{}/fd", self.pid)).ok()?;
        Some(entries.count() as u64)
    }

    pub(super) async fn metrics(&self) -> Result<NodeMetrics> {
        let fetch = async {
            let mut stream = TcpStream::connect(&self.authority).await?;
            let request = format!(
                "GET /metrics HTTP/1.0\r\nHost: {}\r\nAccept: text/plain\r\n\r\n",
                self.authority
            );
            stream.write_all(request.as_bytes()).await?;
            let mut body = Vec::new();
            stream.read_to_end(&mut body).await?;
            anyhow::Ok(String::from_utf8_lossy(&body).into_owned())
        };
        let text = timeout(Duration::from_secs(5), fetch)
            .await
            .map_err(|_| anyhow!("/metrics did not answer within 5 s"))??;
        if !text.starts_with("HTTP/1.") || !text.lines().next().unwrap_or_default().contains(" 200")
        {
            return Err(anyhow!(
                "/metrics: {}",
                text.lines().next().unwrap_or("no answer")
            ));
        }
        Ok(NodeMetrics {
            connections: metric(&text, "confab_connections"),
            evictions: metric(&text, "confab_evictions_total"),
        })
    }

    /// One line of the report: the node's figures beside the soak's counters.
    pub(super) async fn sample(&self, elapsed: Duration, tally: &Tally) -> Sample {
        let metrics = self.metrics().await.unwrap_or_else(|e| {
            tally.error(format!("metrics: {e:#}"));
            NodeMetrics::default()
        });
        Sample {
            elapsed_s: elapsed.as_secs_f64(),
            rss_kib: self.sample_rss().ok(),
            rss_anon_kib: read_status_kib(self.pid, "RssAnon").ok(),
            fds: self.open_fds(),
            connections: metrics.connections,
            node_evictions: metrics.evictions,
            threads: read_status_kib(self.pid, "Threads").ok(),
            open: tally.open.load(Relaxed),
            sent: tally.sent.load(Relaxed),
            acked: tally.acked.load(Relaxed),
            evictions: tally.evictions.load(Relaxed),
            cut: tally.cut.load(Relaxed),
            resumes: tally.resumes.load(Relaxed),
            churned: tally.churned.load(Relaxed),
            errors: tally.error_total(),
            gaps: tally.gaps.load(Relaxed),
            duplicates: tally.duplicates.load(Relaxed),
        }
    }
}

/// The value of an unlabelled-or-labelled sample `name{...} value` (or `name value`),
/// summed over its label sets.
fn metric(text: &str, name: &str) -> Option<u64> {
    let mut found = None;
    for line in text.lines() {
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with('{') || rest.starts_with(' ')) {
            continue; // another metric whose name starts with this one
        }
        let value = rest
            .rsplit_once('}')
            .map_or(rest, |(_, v)| v)
            .split_whitespace()
            .next();
        if let Some(v) = value.and_then(|v| v.parse::<f64>().ok()) {
            found = Some(found.unwrap_or(0) + v as u64);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::metric;

    #[test]
    fn reads_a_gauge_and_not_the_longer_names() {
        let text = "# TYPE confab_connections gauge\nconfab_connections{node=\"n\"} 201\n\
                    confab_connections_accepted_total{node=\"n\"} 999\nconfab_evictions_total{node=\"n\"} 7\n# EOF\n";
        assert_eq!(metric(text, "confab_connections"), Some(201));
        assert_eq!(metric(text, "confab_evictions_total"), Some(7));
        assert_eq!(metric(text, "confab_rooms"), None);
    }
}
