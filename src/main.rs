//! The `confab` binary: parses the command line and the environment, then
//! runs a node (`confab`, `confab serve`), migrates its store (`confab
//! migrate`) or prints a token for token mode (`confab token USER`).

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser;
use confab::config::{Cli, Cmd, Config};

/// jemalloc, not glibc's malloc: a chat server allocates and frees small
/// frames all day from several threads. Measured on W3 at 16,000 msg/s on
/// one core: glibc's malloc took about a fifth of the node's CPU (7.07 s of
/// CPU in 10 s, p99 33 ms), jemalloc 5.27 s and p99 23 ms, with no more
/// memory per idle connection (docs/operations.md, The allocator).
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    // --help and --version print and exit here, before anything starts.
    let cli = Cli::parse();
    let settings = &cli.settings;
    let mut logger = env_logger::Builder::new();
    logger
        .parse_filters(settings.rust_log.as_deref().unwrap_or("info"))
        .parse_write_style(settings.rust_log_style.as_deref().unwrap_or("auto"));
    if settings.log_format.as_deref() == Some("json") {
        logger.format(|buf, record| {
            let line = serde_json::json!({
                "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": record.level().as_str(),
                "target": record.target(),
                "msg": record.args().to_string(),
            });
            writeln!(buf, "{line}")
        });
    }
    logger.init();
    let config = match Config::from_settings(settings) {
        Ok(c) => c,
        Err(e) => {
            log::error!("bad configuration: {e:#}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Cmd::Serve);
    if let Cmd::Token { user, ttl } = &command {
        return token(&config, user, *ttl);
    }
    if command == Cmd::Healthcheck {
        return healthcheck(&config);
    }
    let result = actix_web::rt::System::new().block_on(async move {
        match command {
            Cmd::Serve => {
                confab::Node::build(config)
                    .await?
                    .run(confab::node::signal())
                    .await
            }
            Cmd::Migrate => confab::store::migrate(&config.store).await,
            Cmd::Token { .. } | Cmd::Healthcheck => unreachable!("handled above"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `confab healthcheck`: `GET /health` on this node's port (on 127.0.0.1
/// when HOST is a wildcard), exit 0 on 200 and 1 otherwise, within 3 s.
fn healthcheck(config: &Config) -> ExitCode {
    use std::io::Read as _;
    use std::net::{TcpStream, ToSocketAddrs};
    use std::time::Duration;
    let host = match config.host.as_str() {
        "0.0.0.0" | "::" | "" => "127.0.0.1",
        h => h,
    };
    let check = || -> std::io::Result<bool> {
        let addr = (host, config.port)
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        s.write_all(b"GET /health HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head)?;
        Ok(head.starts_with(b"HTTP/1.") && &head[9..12] == b"200")
    };
    match check() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            log::error!("the node at {host}:{} is not healthy", config.port);
            ExitCode::FAILURE
        }
        Err(e) => {
            log::error!("cannot reach the node at {host}:{}: {e}", config.port);
            ExitCode::FAILURE
        }
    }
}

/// `confab token USER [--ttl 1h]`: prints a token signed with `AUTH_SECRET`
/// on stdout, alone on its line.
fn token(config: &Config, user: &confab::protocol::UserId, ttl: std::time::Duration) -> ExitCode {
    let Some(auth) = &config.auth else {
        log::error!(
            "AUTH_SECRET is not set: confab token signs with the secret the nodes verify with \
             (set AUTH_SECRET, or pass --auth-secret)"
        );
        return ExitCode::from(2);
    };
    match auth.sign(user, ttl) {
        // The token is this command's output, for a shell or a script: stdout,
        // not the log.
        Ok(token) => match writeln!(std::io::stdout().lock(), "{token}") {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                log::error!("cannot write the token: {e}");
                ExitCode::FAILURE
            }
        },
        Err(e) => {
            log::error!("{e:#}");
            ExitCode::from(2)
        }
    }
}
