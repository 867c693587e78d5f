//! Sessions at scale: 1,000,000 sessions in one server, the memory it takes, and 100,000 of
//! them falling due in the same millisecond: how long applying them takes and how late each
//! expiry is (the lag from its due time to its durable `SessionExpired` event, or the
//! sweeper's `SessionsExpired` batch naming it).
//!
//!   cargo bench --bench sessions                 # SESSIONS=1000000 DUE=100000
//!
//! The server runs in this process on a manual clock, so that the due moment is exact: 100,000
//! sessions are created at t0, the clock moves an hour, the other 900,000 are created, then the
//! clock jumps to t0 + 24 h and the first 100,000 are due at once. The lag is wall time from
//! that jump to each expiry being durable in the log. Memory is the process's resident set
//! (`VmRSS`), the server's sled cache included.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use hdrhistogram::Histogram;
use roomlog::auth::NameOnly;
use roomlog::clock::ManualClock;
use roomlog::event::Event;
use roomlog::Server;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Resident and peak memory of this process, in MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

async fn create(server: &Server, n: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let sessions = server.sessions().clone();
    let failures = stream::iter(0..n)
        .map(|_| {
            let sessions = sessions.clone();
            async move { sessions.create(None).await.is_err() }
        })
        .buffer_unordered(256)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    anyhow::ensure!(failures == 0, "{failures} sessions were not created");
    Ok(n as f64 / started.elapsed().as_secs_f64())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let total = env_or("SESSIONS", 1_000_000);
    let due = env_or("DUE", 100_000).min(total);
    let dir = tempfile::tempdir()?;
    let mut config = roomlog::Config { data: dir.path().to_path_buf(), ..Default::default() };
    // Actors stop soon after their session was last used: memory is what the server keeps for
    // sessions nobody is touching, which is nearly all of them.
    config.sessions.actor_idle_stop = Duration::from_secs(5);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let t0 = 1_800_000_000_000;
    let clock = ManualClock::new(t0);
    let server = Server::start_with_clock(config, listener, Arc::new(NameOnly), Arc::new(clock.clone())).await?;
    let (rss_empty, _) = memory_mib();

    let rate_first = create(&server, due).await?;
    clock.advance(Duration::from_secs(3600));
    let rate_rest = create(&server, total - due).await?;
    println!(
        "created {total} sessions: {:.0}/s (each a durable event, an actor and a projection row)",
        (rate_first * due as f64 + rate_rest * (total - due) as f64) / total as f64
    );
    let (rss_created, _) = memory_mib();
    // Let the idle actors stop, as they would in a server where most sessions sit unused.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let (rss_idle, peak) = memory_mib();
    println!(
        "memory: {rss_empty:.0} MiB empty, {rss_created:.0} MiB just after creating, {rss_idle:.0} MiB once their actors idled out (peak {peak:.0} MiB); log and state on disk {:.0} MiB",
        (roomlog::metrics::disk_bytes(&dir.path().join("log")) + roomlog::metrics::disk_bytes(&dir.path().join("state")))
            as f64
            / (1024.0 * 1024.0)
    );

    println!("session actors running before the jump: {}", server.sessions().live_actors().await);
    // The jump: the first `due` sessions are due at this instant.
    let from_seq = server.log().head();
    let mut head = server.log().watch_head();
    let jumped = Instant::now();
    clock.advance(Duration::from_secs(23 * 3600));
    let mut lag = Histogram::<u64>::new(3)?;
    let mut seen = 0usize;
    let (mut singles, mut batches) = (0usize, 0usize);
    let mut next = from_seq + 1;
    let deadline = Instant::now() + Duration::from_secs(600);
    while seen < due && Instant::now() < deadline {
        let _ = tokio::time::timeout(Duration::from_millis(50), head.changed()).await;
        let batch = server.log().read_range(next, 10_000).await?;
        let at = jumped.elapsed();
        for envelope in &batch {
            next = envelope.seq + 1;
            let expired = match &envelope.event {
                Event::SessionExpired(_) => {
                    singles += 1;
                    1
                }
                Event::SessionsExpired(batch) => {
                    batches += 1;
                    batch.sessions.len()
                }
                _ => 0,
            };
            for _ in 0..expired {
                lag.record(at.as_micros() as u64)?;
                seen += 1;
            }
        }
    }
    let all = jumped.elapsed();
    println!("written as {batches} batch events and {singles} single ones");
    anyhow::ensure!(seen == due, "only {seen} of {due} expiries applied within 10 minutes");
    println!(
        "{due} expiries due at once: all applied in {:.2} s ({:.0}/s); lag p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        all.as_secs_f64(),
        due as f64 / all.as_secs_f64(),
        lag.value_at_quantile(0.5) as f64 / 1000.0,
        lag.value_at_quantile(0.99) as f64 / 1000.0,
        lag.max() as f64 / 1000.0,
    );
    let (rss_after, peak) = memory_mib();
    println!("memory after the expiries: {rss_after:.0} MiB (peak {peak:.0} MiB)");
    server.shutdown().await;
    Ok(())
}
