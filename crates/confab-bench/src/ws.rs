//! The WebSocket client side that the load run, the resume storm and the soak share: which
//! targets may be loaded (loopback only), how a connection is opened (optionally with a small
//! kernel receive buffer, for the soak's slow readers), and how a failed connect is named in
//! the reports.

use std::net::IpAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use tokio::net::{lookup_host, TcpSocket, TcpStream};
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

/// The MSS a slow reader announces: an Ethernet peer's. On loopback the MSS is 64 KiB, and
/// the node's kernel would size the socket's send buffer for that (up to `tcp_wmem`'s 4 MiB),
/// so a stalled reader's backlog would sit in the kernel instead of the node.
pub(crate) const SLOW_READER_MSS: u32 = 1460;

/// Opens one connection within `CONNECT_TIMEOUT`, with `SO_RCVBUF` set to `recv_buffer`
/// bytes and `TCP_MAXSEG` to [`SLOW_READER_MSS`] before the connect (through socket2), so
/// the TCP window is small from the start (Linux doubles the value) and the node's send
/// buffer is sized as for a network peer. Without `recv_buffer` it is [`connect`].
pub(crate) async fn connect_with_recv_buffer(
    url: &str,
    recv_buffer: Option<u32>,
) -> Result<ClientSocket> {
    let Some(size) = recv_buffer else {
        return connect(url).await;
    };
    let attempt = async {
        let uri: Uri = url
            .parse()
            .with_context(|| format!("invalid URL {url:?}"))?;
        let host = uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri.port_u16().unwrap_or(80);
        let addr = lookup_host((host, port))
            .await?
            .next()
            .ok_or_else(|| anyhow!("{host} does not resolve"))?;
        let socket = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        let raw = socket2::SockRef::from(&socket);
        raw.set_recv_buffer_size(size as usize)?;
        raw.set_tcp_mss(SLOW_READER_MSS)?;
        let stream = socket.connect(addr).await?;
        stream.set_nodelay(true)?;
        tokio_tungstenite::client_async_with_config(
            url,
            MaybeTlsStream::Plain(stream),
            Some(client_config()),
        )
        .await
        .map(|(ws, _)| ws)
        .map_err(|e| anyhow!(connect_failure_reason(&e)))
    };
    match timeout(CONNECT_TIMEOUT, attempt).await {
        Ok(result) => result,
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
