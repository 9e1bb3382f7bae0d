//! Configuration: every environment variable the server reads, read once into
//! a typed [`Config`] at start-up. A bad value stops start-up with a message
//! naming the variable. README.md and `.env.example` list the same variables.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context, Result};

/// Where events are stored.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// The embedded default: one SQLite file.
    Sqlite { path: String },
    /// PostgreSQL, the clustered path.
    Postgres { url: String, pool_size: usize },
}

impl fmt::Debug for StoreConfig {
    // The database URL may carry a password: never print it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreConfig::Sqlite { path } => write!(f, "sqlite:{path}"),
            StoreConfig::Postgres { url, pool_size } => {
                write!(f, "postgres:{} (pool {pool_size})", redact_url(url))
            }
        }
    }
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

/// Everything a node needs to know, with the defaults of README.md.
#[derive(Debug, Clone)]
pub struct Config {
    pub host: String,
    pub port: u16,
    pub node_id: String,
    pub store: StoreConfig,
    pub redis_url: Option<String>,
    pub redis_channel: String,
    /// Actix worker threads serving sockets (default: one per core).
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
    /// Frames the server may queue for one socket before it is evicted (4000).
    pub session_mailbox: usize,
    /// HTTP write buffer per connection, bytes.
    pub write_buffer_bytes: usize,
    pub tcp_user_timeout: Duration,
    pub writer_queue: usize,
    pub writer_batch_max: usize,
    pub shutdown_timeout: Duration,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Config> {
        Config::from_vars(std::env::vars().collect())
    }

    /// Reads the given variables (tests pass their own).
    pub fn from_vars(vars: HashMap<String, String>) -> Result<Config> {
        let env = Env(vars);
        let store = match env.string("DATABASE_URL") {
            Some(url) => StoreConfig::Postgres {
                url,
                pool_size: env.parse("PG_POOL_SIZE", 16)?,
            },
            None => StoreConfig::Sqlite {
                path: env
                    .string("SQLITE_PATH")
                    .unwrap_or_else(|| "confab.db".into()),
            },
        };
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let config = Config {
            host: env.string("HOST").unwrap_or_else(|| "0.0.0.0".into()),
            port: env.parse("PORT", 8080)?,
            node_id: env.string("NODE_ID").unwrap_or_else(default_node_id),
            store,
            redis_url: env.string("REDIS_URL"),
            redis_channel: env
                .string("REDIS_CHANNEL")
                .unwrap_or_else(|| "chat:events".into()),
            workers: env.parse("WORKERS", cores)?,
            max_frame_bytes: env.parse("MAX_FRAME_BYTES", 64 * 1024)?,
            max_message_chars: env.parse("MAX_MESSAGE_CHARS", 4096)?,
            replay_limit: env.parse("REPLAY_LIMIT", 10_000)?,
            heartbeat_interval: Duration::from_secs(env.parse("HEARTBEAT_INTERVAL_SECS", 15)?),
            client_timeout: Duration::from_secs(env.parse("CLIENT_TIMEOUT_SECS", 45)?),
            rate_per_sec: env.parse("RATE_LIMIT_PER_SEC", 50)?,
            rate_burst: env.parse("RATE_LIMIT_BURST", 100)?,
            rate_close_after: env.parse("RATE_LIMIT_CLOSE_AFTER", 50)?,
            session_mailbox: env.parse("SESSION_MAILBOX", 4096)?,
            write_buffer_bytes: env.parse("WRITE_BUFFER_BYTES", 32 * 1024)?,
            tcp_user_timeout: Duration::from_secs(env.parse("TCP_USER_TIMEOUT_SECS", 30)?),
            writer_queue: env.parse("WRITER_QUEUE", 50_000)?,
            writer_batch_max: env.parse("WRITER_BATCH_MAX", 2_000)?,
            shutdown_timeout: Duration::from_secs(env.parse("SHUTDOWN_TIMEOUT_SECS", 10)?),
        };
        config.check()?;
        Ok(config)
    }

    fn check(&self) -> Result<()> {
        let positive = [
            ("WORKERS", self.workers as u64),
            ("MAX_FRAME_BYTES", self.max_frame_bytes as u64),
            ("MAX_MESSAGE_CHARS", self.max_message_chars as u64),
            ("REPLAY_LIMIT", self.replay_limit.max(0) as u64),
            ("HEARTBEAT_INTERVAL_SECS", self.heartbeat_interval.as_secs()),
            ("RATE_LIMIT_PER_SEC", u64::from(self.rate_per_sec)),
            ("RATE_LIMIT_BURST", u64::from(self.rate_burst)),
            ("SESSION_MAILBOX", self.session_mailbox as u64),
            ("WRITER_QUEUE", self.writer_queue as u64),
            ("WRITER_BATCH_MAX", self.writer_batch_max as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                bail!("{name} must be greater than 0");
            }
        }
        if self.client_timeout <= self.heartbeat_interval {
            bail!("CLIENT_TIMEOUT_SECS must be greater than HEARTBEAT_INTERVAL_SECS");
        }
        if let StoreConfig::Postgres { url, pool_size } = &self.store {
            if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                bail!("DATABASE_URL must start with postgres:// or postgresql://");
            }
            if *pool_size == 0 {
                bail!("PG_POOL_SIZE must be greater than 0");
            }
        }
        if let Some(url) = &self.redis_url {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                bail!("REDIS_URL must start with redis:// or rediss://");
            }
        }
        Ok(())
    }
}

fn default_node_id() -> String {
    format!("node-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

struct Env(HashMap<String, String>);

impl Env {
    /// A set, non-empty variable.
    fn string(&self, name: &str) -> Option<String> {
        self.0
            .get(name)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::error::Error + Send + Sync + 'static,
    {
        match self.string(name) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .with_context(|| format!("{name}={v:?} is not a valid value")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_give_the_embedded_store_on_8080() {
        let c = Config::from_vars(vars(&[])).unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(
            c.store,
            StoreConfig::Sqlite {
                path: "confab.db".into()
            }
        );
        assert_eq!(c.replay_limit, 10_000);
        assert_eq!(c.max_message_chars, 4096);
    }

    #[test]
    fn a_bad_value_names_the_variable() {
        let err = Config::from_vars(vars(&[("PORT", "eighty")])).unwrap_err();
        assert!(format!("{err:#}").contains("PORT"), "{err:#}");
        let err = Config::from_vars(vars(&[("DATABASE_URL", "mysql://x")])).unwrap_err();
        assert!(err.to_string().contains("DATABASE_URL"));
        let err = Config::from_vars(vars(&[("RATE_LIMIT_PER_SEC", "0")])).unwrap_err();
        assert!(err.to_string().contains("RATE_LIMIT_PER_SEC"));
    }

    #[test]
    fn database_passwords_are_not_printed() {
        let c = Config::from_vars(vars(&[("DATABASE_URL", "postgres://u:hunter2@h/db")])).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
