//! Configuration: every setting a node reads, each an environment variable
//! with a default (and a flag beside it), declared once in [`settings!`] so
//! that `confab --help`, [`Settings::VARS`] and the defaults cannot drift.
//! README.md's table and `.env.example` list the same variables (a test
//! checks it). Values are parsed here, not by clap, so that a bad one stops
//! start-up with a message naming its variable. Secrets (URLs with
//! passwords, `AUTH_SECRET`) never appear in `Debug` output or logs.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::auth::{Auth, KeySource, Origins};
use crate::http::limit::TrustedProxies;

/// Declares the settings: field, variable, default ("" for none or a
/// computed one, then how it is chosen in parentheses), whether its value is
/// secret (clap then never shows it).
macro_rules! settings {
    ($( $(#[doc = $doc:literal])+ $field:ident: $var:literal = $default:literal $(($shown:literal))? $(, $secret:ident)?; )*) => {
        /// Every setting as given (flag or environment variable), not yet parsed.
        #[derive(clap::Args, Clone, Default)]
        pub struct Settings {
            $(
                $(#[doc = $doc])+
                #[arg(long, env = $var, global = true, value_name = $var,
                      help = concat!($($doc),+, " [default: ", $default, $($shown,)? "]"),
                      hide_default_value = true $(, hide_env_values = settings!(@secret $secret))?)]
                pub $field: Option<String>,
            )*
        }

        impl Settings {
            /// Every variable a node reads, in `--help`'s order.
            pub const VARS: &'static [&'static str] = &[$($var),*];

            /// The settings from a map of variables (tests pass their own).
            pub fn from_vars(vars: &HashMap<String, String>) -> Settings {
                Settings { $( $field: vars.get($var).cloned(), )* }
            }

            /// A variable's value, or its default; `None` when neither is set.
            /// An empty value counts as unset.
            fn get(&self, var: &str) -> Option<&str> {
                let (value, default): (Option<&String>, &str) = match var {
                    $( $var => (self.$field.as_ref(), $default), )*
                    _ => (None, ""),
                };
                value
                    .map(|v| v.trim())
                    .filter(|v| !v.is_empty())
                    .or(Some(default).filter(|d| !d.is_empty()))
            }
        }
    };
    (@secret secret) => { true };
}

settings! {
    /// Address to listen on.
    host: "HOST" = "127.0.0.1";
    /// Port for WebSocket (/ws) and HTTP (/health, /metrics, /rooms, /).
    port: "PORT" = "8080";
    /// Most WebSocket connections this node serves; past it a handshake gets 503.
    max_connections: "MAX_CONNECTIONS" = "50000";
    /// Comma-separated addresses or CIDR ranges of the proxies (nginx) whose
    /// X-Forwarded-For names the client. Unset: the peer is the client.
    trusted_proxies: "TRUSTED_PROXIES" = "" ("unset: no proxy is trusted");
    /// REST requests per second per client address (token refill rate).
    rest_rate_per_sec: "REST_RATE_PER_SEC" = "20";
    /// REST token bucket size per client address.
    rest_rate_burst: "REST_RATE_BURST" = "50";
    /// Token mode with HS256: the shared secret tokens are signed with (at
    /// least 32 bytes). Unset (and no AUTH_PUBLIC_KEY): open mode, anyone
    /// may speak as any user.
    auth_secret: "AUTH_SECRET" = "" ("unset: open mode"), secret;
    /// Token mode with RS256 or EdDSA: path of the PEM public key tokens are
    /// verified with. Not with AUTH_SECRET.
    auth_public_key: "AUTH_PUBLIC_KEY" = "" ("unset");
    /// Token mode: the iss claim every token must carry.
    auth_issuer: "AUTH_ISSUER" = "" ("unset: not checked");
    /// Token mode: the aud claim every token must carry (unset: a token with
    /// an aud is refused).
    auth_audience: "AUTH_AUDIENCE" = "" ("unset");
    /// Token mode: seconds of clock skew allowed on exp and nbf; a
    /// connection closes with 4001 this long after its token's exp.
    auth_leeway_secs: "AUTH_LEEWAY_SECS" = "30";
    /// Comma-separated web origins (https://chat.example.com) whose pages may
    /// open a WebSocket; others get 403. Unset: every origin.
    allowed_origins: "ALLOWED_ORIGINS" = "" ("unset: every origin");
    /// The node's name in hello, in events, in metrics and in Redis presence
    /// keys; give each node of a cluster its own.
    node_id: "NODE_ID" = "" ("node- and 6 random hex digits, new at each start");
    /// SQLite file of the embedded store (used when DATABASE_URL is unset).
    sqlite_path: "SQLITE_PATH" = "confab.db";
    /// postgres:// URL: when set, PostgreSQL is the store.
    database_url: "DATABASE_URL" = "" ("unset"), secret;
    /// PostgreSQL connections per node.
    pg_pool_size: "PG_POOL_SIZE" = "16";
    /// redis:// URL: when set, events and presence are shared with peers.
    redis_url: "REDIS_URL" = "" ("unset: the node runs alone"), secret;
    /// Redis channel for events; also the prefix of the presence keys.
    redis_channel: "REDIS_CHANNEL" = "chat:events";
    /// Shared by every node of a cluster (at least 32 bytes): each envelope
    /// published on the bus is signed with it (HMAC-SHA256), and envelopes
    /// unsigned or badly signed are dropped. Unset: nothing is signed or checked.
    bus_secret: "BUS_SECRET" = "" ("unset: the bus is not authenticated"), secret;
    /// Actix worker threads serving sockets.
    workers: "WORKERS" = "" ("the number of CPUs");
    /// Largest WebSocket frame in bytes (a larger one closes with 1009).
    max_frame_bytes: "MAX_FRAME_BYTES" = "65536";
    /// Longest message, in characters.
    max_message_chars: "MAX_MESSAGE_CHARS" = "4096";
    /// Most events a join with since replays.
    replay_limit: "REPLAY_LIMIT" = "10000";
    /// Seconds between the server's pings.
    heartbeat_interval_secs: "HEARTBEAT_INTERVAL_SECS" = "15";
    /// A socket silent this many seconds is dropped.
    client_timeout_secs: "CLIENT_TIMEOUT_SECS" = "45";
    /// Commands per second per connection (token refill rate).
    rate_limit_per_sec: "RATE_LIMIT_PER_SEC" = "50";
    /// Token bucket size per connection.
    rate_limit_burst: "RATE_LIMIT_BURST" = "100";
    /// Refused commands in a row after which the connection closes with 1008.
    rate_limit_close_after: "RATE_LIMIT_CLOSE_AFTER" = "50";
    /// Messages (each up to 64 frames) a session's mailbox holds; a full
    /// mailbox evicts the connection (4000).
    session_mailbox: "SESSION_MAILBOX" = "4096";
    /// Bytes the node holds for one connection, not yet written to its
    /// socket; past it the connection is evicted (4000).
    outbound_max_bytes: "OUTBOUND_MAX_BYTES" = "1048576";
    /// Rooms one connection may be subscribed to (too_many_rooms past it).
    max_rooms_per_connection: "MAX_ROOMS_PER_CONNECTION" = "500";
    /// HTTP write buffer per connection, in bytes.
    write_buffer_bytes: "WRITE_BUFFER_BYTES" = "32768";
    /// Seconds of unacknowledged data after which the kernel drops a peer.
    tcp_user_timeout_secs: "TCP_USER_TIMEOUT_SECS" = "30";
    /// Appends waiting for the event writer (full: unavailable).
    writer_queue: "WRITER_QUEUE" = "50000";
    /// Bytes of appends waiting for the event writer (full: unavailable).
    writer_queue_bytes: "WRITER_QUEUE_BYTES" = "67108864";
    /// Bytes of recent events kept in memory (per room at most 256 events)
    /// so that resumes are served without a store read; 0: off.
    recent_events_bytes: "RECENT_EVENTS_BYTES" = "16777216";
    /// Most appends committed in one transaction.
    writer_batch_max: "WRITER_BATCH_MAX" = "2000";
    /// Transactions the event writer keeps in flight, each for its own share
    /// of the rooms (PostgreSQL; SQLite commits one at a time).
    writer_lanes: "WRITER_LANES" = "2";
    /// On SIGTERM, seconds to wait for workers and for the writer.
    shutdown_timeout_secs: "SHUTDOWN_TIMEOUT_SECS" = "10";
    /// Log filter (env_logger), e.g. info or confab=debug.
    rust_log: "RUST_LOG" = "info";
    /// Log colours: auto, always or never.
    rust_log_style: "RUST_LOG_STYLE" = "auto";
    /// Log line format: text, or json (one JSON object per line).
    log_format: "LOG_FORMAT" = "text";
}

/// `confab`: a real-time chat server. Every setting is an environment
/// variable (shown in brackets) or the flag beside it.
#[derive(Parser)]
#[command(name = "confab", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Cmd>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Subcommand, Clone, PartialEq, Eq, Debug)]
pub enum Cmd {
    /// Run the node (what `confab` alone does).
    Serve,
    /// Apply the store's migrations and exit (for deploy pipelines).
    Migrate,
    /// Ask this node's /health (HOST, PORT) and exit 0 when it is healthy,
    /// 1 otherwise: the container health check, with no curl in the image.
    Healthcheck,
    /// Print a token for USER signed with AUTH_SECRET (to try token mode,
    /// e.g. wscat -c "ws://127.0.0.1:8080/ws?token=$(confab token alice)").
    Token {
        /// The user the token speaks for (its sub).
        #[arg(value_name = "USER", value_parser = crate::auth::parse_user)]
        user: crate::protocol::UserId,
        /// How long the token is valid: 30s, 15m, 1h, 2d, ...
        #[arg(long, value_name = "TTL", default_value = "1h", value_parser = crate::auth::parse_ttl)]
        ttl: Duration,
    },
}

/// A URL that may carry a password: `Debug` and `Display` show it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL itself, for the client library that connects with it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// Where events are stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded default: one SQLite file.
    Sqlite { path: String },
    /// PostgreSQL, the clustered path.
    Postgres { url: SecretUrl, pool_size: usize },
}

/// `scheme://user:secret@host/db` → `scheme://user:***@host/db`.
pub fn redact_url(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        if let Some((auth, host)) = rest.rsplit_once('@') {
            let user = auth.split(':').next().unwrap_or("");
            return format!("{scheme}://{user}:***@{host}");
        }
    }
    url.to_owned()
}

/// Everything a node needs to know, parsed and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub max_connections: usize,
    pub trusted_proxies: TrustedProxies,
    pub rest_rate_per_sec: u32,
    pub rest_rate_burst: u32,
    /// Token mode (`AUTH_SECRET` or `AUTH_PUBLIC_KEY`); `None`: open mode.
    pub auth: Option<Auth>,
    /// `ALLOWED_ORIGINS`; `None`: every origin.
    pub allowed_origins: Option<Origins>,
    pub node_id: String,
    pub store: StoreConfig,
    pub redis_url: Option<SecretUrl>,
    pub redis_channel: String,
    /// `BUS_SECRET`, keyed (its `Debug` shows nothing); `None`: the bus is
    /// not authenticated.
    pub bus_key: Option<crate::protocol::BusKey>,
    /// Actix worker threads serving sockets.
    pub workers: usize,
    pub max_frame_bytes: usize,
    pub max_message_chars: usize,
    pub replay_limit: i64,
    pub heartbeat_interval: Duration,
    pub client_timeout: Duration,
    pub rate_per_sec: u32,
    pub rate_burst: u32,
    /// Rejected commands in a row after which a connection is closed with 1008.
    pub rate_close_after: u32,
    /// Messages a session's mailbox holds before it is evicted (4000).
    pub session_mailbox: usize,
    /// Bytes the node may hold for one connection before it is evicted (4000).
    pub outbound_max_bytes: usize,
    pub max_rooms_per_connection: usize,
    /// HTTP write buffer per connection, bytes.
    pub write_buffer_bytes: usize,
    pub tcp_user_timeout: Duration,
    pub writer_queue: usize,
    pub writer_queue_bytes: usize,
    pub writer_batch_max: usize,
    pub writer_lanes: usize,
    pub recent_events_bytes: usize,
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Reads the process environment alone (no flags).
    pub fn from_env() -> Result<Config> {
        Config::from_vars(std::env::vars().collect())
    }

    /// Reads the given variables (tests pass their own).
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Config> {
        Config::from_settings(&Settings::from_vars(&vars))
    }

    /// Parses and checks the settings.
    pub fn from_settings(s: &Settings) -> Result<Config> {
        let store = match s.get("DATABASE_URL") {
            Some(url) => StoreConfig::Postgres {
                url: SecretUrl(url.to_owned()),
                pool_size: parse(s, "PG_POOL_SIZE")?,
            },
            None => StoreConfig::Sqlite {
                path: string(s, "SQLITE_PATH"),
            },
        };
        let workers = match s.get("WORKERS") {
            Some(_) => parse(s, "WORKERS")?,
            None => std::thread::available_parallelism().map_or(1, |n| n.get()),
        };
        let secs = |var| parse(s, var).map(Duration::from_secs);
        let config = Config {
            host: string(s, "HOST"),
            port: parse(s, "PORT")?,
            max_connections: parse(s, "MAX_CONNECTIONS")?,
            trusted_proxies: TrustedProxies::parse(s.get("TRUSTED_PROXIES").unwrap_or_default())
                .map_err(anyhow::Error::msg)?,
            rest_rate_per_sec: parse(s, "REST_RATE_PER_SEC")?,
            rest_rate_burst: parse(s, "REST_RATE_BURST")?,
            auth: auth(s)?,
            allowed_origins: s
                .get("ALLOWED_ORIGINS")
                .map(Origins::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?,
            node_id: s.get("NODE_ID").map_or_else(default_node_id, str::to_owned),
            store,
            redis_url: s.get("REDIS_URL").map(|u| SecretUrl(u.to_owned())),
            redis_channel: string(s, "REDIS_CHANNEL"),
            bus_key: bus_key(s)?,
            workers,
            max_frame_bytes: parse(s, "MAX_FRAME_BYTES")?,
            max_message_chars: parse(s, "MAX_MESSAGE_CHARS")?,
            replay_limit: parse(s, "REPLAY_LIMIT")?,
            heartbeat_interval: secs("HEARTBEAT_INTERVAL_SECS")?,
            client_timeout: secs("CLIENT_TIMEOUT_SECS")?,
            rate_per_sec: parse(s, "RATE_LIMIT_PER_SEC")?,
            rate_burst: parse(s, "RATE_LIMIT_BURST")?,
            rate_close_after: parse(s, "RATE_LIMIT_CLOSE_AFTER")?,
            session_mailbox: parse(s, "SESSION_MAILBOX")?,
            outbound_max_bytes: parse(s, "OUTBOUND_MAX_BYTES")?,
            max_rooms_per_connection: parse(s, "MAX_ROOMS_PER_CONNECTION")?,
            write_buffer_bytes: parse(s, "WRITE_BUFFER_BYTES")?,
            tcp_user_timeout: secs("TCP_USER_TIMEOUT_SECS")?,
            writer_queue: parse(s, "WRITER_QUEUE")?,
            writer_queue_bytes: parse(s, "WRITER_QUEUE_BYTES")?,
            writer_batch_max: parse(s, "WRITER_BATCH_MAX")?,
            writer_lanes: parse(s, "WRITER_LANES")?,
            recent_events_bytes: parse(s, "RECENT_EVENTS_BYTES")?,
            shutdown_timeout: secs("SHUTDOWN_TIMEOUT_SECS")?,
        };
        config.check()?;
        Ok(config)
    }

    /// The most event JSON one `history` page carries: a quarter of the
    /// outbound bound, so that a page never gets its reader evicted.
    pub fn history_max_bytes(&self) -> usize {
        self.outbound_max_bytes / 4
    }

    /// The most event JSON one replay sends: half the outbound bound. A
    /// resume that would need more answers `recovered: false`.
    pub fn replay_max_bytes(&self) -> usize {
        self.outbound_max_bytes / 2
    }

    fn check(&self) -> Result<()> {
        let positive = [
            ("WORKERS", self.workers as u64),
            ("MAX_CONNECTIONS", self.max_connections as u64),
            ("REST_RATE_PER_SEC", u64::from(self.rest_rate_per_sec)),
            ("REST_RATE_BURST", u64::from(self.rest_rate_burst)),
            ("MAX_FRAME_BYTES", self.max_frame_bytes as u64),
            ("MAX_MESSAGE_CHARS", self.max_message_chars as u64),
            ("REPLAY_LIMIT", self.replay_limit.max(0) as u64),
            ("HEARTBEAT_INTERVAL_SECS", self.heartbeat_interval.as_secs()),
            ("RATE_LIMIT_PER_SEC", u64::from(self.rate_per_sec)),
            ("RATE_LIMIT_BURST", u64::from(self.rate_burst)),
            ("SESSION_MAILBOX", self.session_mailbox as u64),
            (
                "MAX_ROOMS_PER_CONNECTION",
                self.max_rooms_per_connection as u64,
            ),
            ("WRITER_QUEUE", self.writer_queue as u64),
            ("WRITER_BATCH_MAX", self.writer_batch_max as u64),
            ("WRITER_LANES", self.writer_lanes as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("{name} must be greater than 0");
            }
        }
        // The bound must hold the largest frame the node sends: a history
        // page is cut at a quarter of it, a message is at most 4 bytes a character.
        let min_outbound = (64 * 1024).max(4 * self.max_message_chars + 4096) * 4;
        if self.outbound_max_bytes < min_outbound {
            bail!("OUTBOUND_MAX_BYTES must be at least {min_outbound} (4 x the largest frame)");
        }
        if self.writer_queue_bytes < self.outbound_max_bytes {
            bail!("WRITER_QUEUE_BYTES must be at least OUTBOUND_MAX_BYTES");
        }
        if self.client_timeout <= self.heartbeat_interval {
            bail!("CLIENT_TIMEOUT_SECS must be greater than HEARTBEAT_INTERVAL_SECS");
        }
        if let StoreConfig::Postgres { url, pool_size } = &self.store {
            let url = url.expose();
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("DATABASE_URL must start with postgres:// or postgresql://");
            }
            if *pool_size == 0 {
                bail!("PG_POOL_SIZE must be greater than 0");
            }
        }
        if let Some(url) = &self.redis_url {
            let url = url.expose();
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                bail!("REDIS_URL must start with redis:// or rediss://");
            }
        }
        Ok(())
    }
}

/// Token mode from `AUTH_SECRET` or `AUTH_PUBLIC_KEY` (never both).
fn auth(s: &Settings) -> Result<Option<Auth>> {
    let key = match (s.get("AUTH_SECRET"), s.get("AUTH_PUBLIC_KEY")) {
        (Some(_), Some(_)) => {
            bail!("AUTH_SECRET and AUTH_PUBLIC_KEY are both set: token mode takes one of them")
        }
        (Some(secret), None) => KeySource::Secret(secret),
        (None, Some(path)) => KeySource::PublicKeyFile(path),
        (None, None) => {
            for var in ["AUTH_ISSUER", "AUTH_AUDIENCE"] {
                if s.get(var).is_some() {
                    bail!("{var} is set but AUTH_SECRET and AUTH_PUBLIC_KEY are not: nothing would check it");
                }
            }
            return Ok(None);
        }
    };
    let leeway = parse(s, "AUTH_LEEWAY_SECS").map(Duration::from_secs)?;
    let issuer = s.get("AUTH_ISSUER").map(str::to_owned);
    let audience = s.get("AUTH_AUDIENCE").map(str::to_owned);
    Auth::new(key, issuer, audience, leeway).map(Some)
}

/// `BUS_SECRET`: long enough that a captured signed envelope (anyone who
/// can read the channel has one) does not give it away to a guessing attack.
fn bus_key(s: &Settings) -> Result<Option<crate::protocol::BusKey>> {
    match s.get("BUS_SECRET") {
        None => Ok(None),
        Some(secret) if secret.len() < 32 => {
            bail!(
                "BUS_SECRET must be at least 32 bytes (it is {})",
                secret.len()
            )
        }
        Some(secret) => Ok(Some(crate::protocol::BusKey::new(secret.as_bytes()))),
    }
}

fn default_node_id() -> String {
    format!("node-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

fn string(s: &Settings, var: &str) -> String {
    s.get(var).unwrap_or_default().to_owned()
}

/// Parses a variable (or its default), naming it and its flag when the value is bad.
fn parse<T: FromStr>(s: &Settings, var: &str) -> Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    let value = s.get(var).unwrap_or_default();
    value.parse().with_context(|| {
        let flag = var.to_lowercase().replace('_', "-");
        format!("{var}={value:?} (or --{flag}) is not a valid value")
    })
}

#[cfg(test)]
mod tests;
