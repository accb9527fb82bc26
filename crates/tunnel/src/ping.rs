//! Heartbeats: an HTTP/2 PING every two seconds; an answer missing for `SILENCE` means
//! the peer is gone (a crashed host, a cut network path that TCP would take minutes to
//! notice), and the tunnel is closed. `SILENCE` leaves room for a PING queued behind a
//! busy tunnel's data on a slow link (a closed connection is noticed at once anyway).

use std::time::Duration;

use h2::{Ping, PingPong};

const EVERY: Duration = Duration::from_secs(2);
pub const SILENCE: Duration = Duration::from_secs(8);

/// Runs until a ping goes unanswered; returns why.
pub async fn run(mut pings: PingPong) -> String {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tick.tick().await;
        match tokio::time::timeout(SILENCE, pings.ping(Ping::opaque())).await {
            Ok(Ok(_pong)) => {}
            Ok(Err(e)) => return format!("heartbeat failed: {e}"),
            Err(_) => return format!("no heartbeat answer for {SILENCE:?}"),
        }
    }
}
