//! Presence across nodes: each node keeps the set of users connected to it
//! in the Redis key `<channel>:presence:<node>` with a TTL of
//! [`PRESENCE_TTL`], rewritten every [`PRESENCE_TICK`], and its name in the
//! sorted set `<channel>:presence:nodes` scored by the time of its last
//! write. Every tick a node reads the sets of the nodes seen within the TTL.
//! So a user is online everywhere within one tick of connecting, and offline
//! within one tick of its last connection closing, or within the TTL when its
//! node dies.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use actix::Recipient;

use std::sync::Arc;

use crate::messages::{LocalPresence, RemotePresence};
use crate::metrics::Metrics;
use crate::protocol::UserId;

/// How often presence is written and read.
pub const PRESENCE_TICK: Duration = Duration::from_millis(500);
/// How long a node's presence outlives its last write (a dead node's users
/// go offline within this).
pub const PRESENCE_TTL: Duration = Duration::from_secs(10);

/// What the presence task works with.
pub(super) struct Presence {
    pub pool: deadpool_redis::Pool,
    pub channel: String,
    pub node: String,
    pub local_users: Recipient<LocalPresence>,
    pub remote: Recipient<RemotePresence>,
    /// This node's connection count (`confab_connections`).
    pub metrics: Arc<Metrics>,
    /// Where the nodes alive and their counts go, for `/stats`.
    pub nodes: super::NodeCounts,
}

/// Writes this node's online users and connection count, and reads the
/// other nodes', every tick. The count is the key
/// `<channel>:presence:<node>:connections`, with the same TTL.
pub(super) async fn run(p: Presence) {
    let Presence {
        pool,
        channel,
        node,
        local_users,
        remote,
        metrics,
        nodes: counts,
    } = p;
    let nodes_key = format!("{channel}:presence:nodes");
    let own_key = format!("{channel}:presence:{node}");
    let count_key = format!("{channel}:presence:{node}:connections");
    let ttl_ms = PRESENCE_TTL.as_millis() as i64;
    let mut tick = tokio::time::interval(PRESENCE_TICK);
    // What this node last wrote, and when: the set is written again when it
    // changes, after a failed tick, and every PRESENCE_TTL / 2 (Redis may
    // have lost it: a restart without persistence, or an outage).
    let mut written: Option<(Vec<UserId>, Instant)> = None;
    let mut last_read = Instant::now();
    loop {
        tick.tick().await;
        let local = match local_users.send(LocalPresence).await {
            Ok(users) => users,
            Err(_) => return,
        };
        let fresh = written
            .as_ref()
            .is_some_and(|(w, at)| *w == local && at.elapsed() < PRESENCE_TTL / 2);
        let result = async {
            let mut conn = pool.get().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let now_ms = chrono::Utc::now().timestamp_millis();
            let mut pipe = redis::pipe();
            pipe.atomic();
            if !fresh {
                pipe.del(&own_key).ignore();
                if !local.is_empty() {
                    pipe.sadd(
                        &own_key,
                        local.iter().map(UserId::as_str).collect::<Vec<_>>(),
                    )
                    .ignore();
                }
            }
            let connections = metrics.connections.get().max(0);
            pipe.pexpire(&own_key, ttl_ms)
                .ignore()
                .cmd("SET")
                .arg(&count_key)
                .arg(connections)
                .arg("PX")
                .arg(ttl_ms)
                .ignore()
                .zadd(&nodes_key, &node, now_ms)
                .ignore()
                .zrembyscore(&nodes_key, "-inf", now_ms - ttl_ms)
                .ignore()
                .zrangebyscore(&nodes_key, now_ms - ttl_ms, "+inf");
            let (nodes,): (Vec<String>,) = pipe.query_async(&mut conn).await?;
            let mut read = redis::pipe();
            let others: Vec<&String> = nodes.iter().filter(|n| **n != node).collect();
            for other in &others {
                read.smembers(format!("{channel}:presence:{other}"));
            }
            let sets: Vec<Vec<String>> = if others.is_empty() {
                Vec::new()
            } else {
                read.query_async(&mut conn).await?
            };
            let mut read = redis::pipe();
            for n in &nodes {
                read.get(format!("{channel}:presence:{n}:connections"));
            }
            let alive: Vec<Option<u64>> = read.query_async(&mut conn).await?;
            let mut alive: Vec<(String, u64)> = nodes
                .iter()
                .zip(alive)
                .map(|(n, c)| (n.clone(), c.unwrap_or(0)))
                .collect();
            alive.sort();
            if let Ok(mut shared) = counts.lock() {
                *shared = alive;
            }
            anyhow::Ok(sets)
        }
        .await;
        let users: HashSet<UserId> = match result {
            Ok(sets) => {
                if !fresh {
                    written = Some((local, Instant::now()));
                }
                last_read = Instant::now();
                // Names from Redis are checked like a client's: a bad one is dropped.
                sets.into_iter()
                    .flatten()
                    .filter_map(|u| UserId::parse(&u).ok())
                    .collect()
            }
            Err(e) => {
                log::debug!("presence update failed: {e}");
                written = None;
                // What the other nodes said is as old as a dead node's key
                // would be: nobody elsewhere is known to be online any more.
                if last_read.elapsed() <= PRESENCE_TTL {
                    continue;
                }
                HashSet::new()
            }
        };
        // The next tick sends it again if the mailbox is full.
        let _ = remote.try_send(RemotePresence { users });
    }
}
