//! The WebSocket client side that the load run and the resume storm share: which targets
//! may be loaded (loopback only), how a connection is opened, and how a failed connect is
//! named in the reports.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub(crate) type ClientSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepts only `ws://` URLs whose host is 127.0.0.0/8, ::1 or localhost (parsed the way
/// the WebSocket client will parse it).
pub(crate) fn check_loopback_url(url: &str) -> Result<()> {
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

/// Every bench connection's configuration: a small read buffer, and writes go out at once.
pub(crate) fn client_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
}

/// Opens one connection within `CONNECT_TIMEOUT`.
pub(crate) async fn connect(url: &str) -> Result<ClientSocket> {
    let attempt = tokio_tungstenite::connect_async_with_config(url, Some(client_config()), true);
    match timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(Ok((ws, _))) => Ok(ws),
        Ok(Err(e)) => Err(anyhow!(connect_failure_reason(&e))),
        Err(_) => Err(anyhow!("connect timed out")),
    }
}

pub(crate) fn connect_failure_reason(error: &WsError) -> String {
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
