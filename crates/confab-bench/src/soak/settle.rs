//! The end of a soak: once nothing is sent any more, every client must catch up. The node
//! is asked (`rooms`) for each soak room's last `seq`, and every client-room pair still
//! followed must hold it: what one lacks was lost. Also the one-off request/reply helper.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::time::{sleep, timeout, Instant};
use tokio_tungstenite::tungstenite::Message;

use super::{Shared, UNTRACKED};
use crate::ws::{connect, ClientSocket};

/// Waits until every client is connected and holds its rooms' last events, or `within`
/// passes; returns the client-room pairs still behind and the events they lack.
pub(super) async fn settle(
    shared: &Shared,
    clients: usize,
    within: Duration,
) -> Result<(usize, u64)> {
    let deadline = Instant::now() + within;
    loop {
        sleep(Duration::from_millis(500)).await;
        let all_open = shared.tally.open.load(Relaxed) == clients as i64;
        match rooms_last_seq(shared).await {
            Ok(last) => {
                let (pairs, missing) = behind(shared, &last);
                if (pairs == 0 && all_open) || Instant::now() > deadline {
                    return Ok((pairs, missing));
                }
            }
            Err(e) if Instant::now() > deadline => {
                return Err(e.context("the rooms query at the end"))
            }
            Err(_) => {}
        }
    }
}

/// Reads frames until the reply with this `ref`.
pub(super) async fn reply_of(ws: &mut ClientSocket, reference: &str) -> Result<Value> {
    loop {
        let frame = timeout(Duration::from_secs(30), ws.next())
            .await
            .context("no reply within 30 s")?;
        match frame {
            Some(Ok(Message::Text(text))) => {
                let v: Value = serde_json::from_str(&text)?;
                if v["ref"] == reference {
                    return Ok(v);
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => bail!("{e}"),
            None => bail!("closed before the reply"),
        }
    }
}

/// Each soak room's last seq, by room index, as the node reports it (`rooms`).
async fn rooms_last_seq(shared: &Shared) -> Result<Vec<u64>> {
    let mut ws = connect(&shared.url).await?;
    ws.send(Message::text(r#"{"type":"rooms","ref":"rooms"}"#))
        .await?;
    let reply = reply_of(&mut ws, "rooms").await?;
    let _ = ws.close(None).await;
    let mut last = vec![0; shared.rooms];
    for room in reply["rooms"].as_array().into_iter().flatten() {
        let (Some(name), Some(seq)) = (room["name"].as_str(), room["last_seq"].as_u64()) else {
            continue;
        };
        if let Some(i) = name
            .strip_prefix(&shared.prefix)
            .and_then(|i| i.parse::<usize>().ok())
        {
            if let Some(slot) = last.get_mut(i) {
                *slot = seq;
            }
        }
    }
    Ok(last)
}

/// Client-room pairs that do not hold their room's last event yet, and the events they lack.
fn behind(shared: &Shared, last: &[u64]) -> (usize, u64) {
    let mut pairs = 0;
    let mut missing = 0;
    for rooms in &shared.positions {
        for (room, position) in rooms.iter().enumerate() {
            let held = position.load(Relaxed);
            if held != UNTRACKED && held < last[room] {
                pairs += 1;
                missing += last[room] - held;
            }
        }
    }
    (pairs, missing)
}
