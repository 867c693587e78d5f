//! `roomlog-load`: a WebSocket load generator for the chat benchmark.
//!
//! Opens `--clients` connections to one room; `--senders` of them send `--rate` messages per
//! second in total for `--secs` seconds. Every client records when each message reaches it:
//! deliveries per second, delivery latency (send → receipt) p50/p99/max, and messages lost or
//! delivered twice. `--protocol baseline` speaks to the Python reproduction in
//! `benches/baseline/` (same frames, no join). `--idle N` instead holds N idle connections
//! and reports the server's resident memory (`--server-pid`).
//!
//! Every loop is bounded: sending stops after `--secs`, draining after `--drain-secs`.

#[path = "../corpus/mod.rs"]
mod corpus;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser, Debug, Clone)]
struct Args {
    /// Server address, host:port; several, comma-separated, spread the clients over them in
    /// turn (the nodes of a cluster).
    #[arg(long, default_value = "127.0.0.1:7700")]
    addr: String,
    #[arg(long, value_enum, default_value_t = Protocol::Roomlog)]
    protocol: Protocol,
    /// Connections that join the room and receive.
    #[arg(long, default_value_t = 100)]
    clients: usize,
    /// How many of the clients also send.
    #[arg(long, default_value_t = 5)]
    senders: usize,
    /// Messages per second, all senders together.
    #[arg(long, default_value_t = 2000)]
    rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    secs: u64,
    /// Longest wait for outstanding deliveries after sending stops.
    #[arg(long, default_value_t = 10)]
    drain_secs: u64,
    /// Bytes of each message body.
    #[arg(long, default_value_t = 100)]
    body_bytes: usize,
    /// Room to use (a fresh one per run keeps runs apart).
    #[arg(long, default_value = "load")]
    room: String,
    /// Label printed with the results.
    #[arg(long, default_value = "roomlog")]
    label: String,
    /// Hold this many idle connections instead, and report memory.
    #[arg(long)]
    idle: Option<usize>,
    /// Instead of a load: one client sends this many messages one at a time, each after the
    /// previous one's ack, and the acknowledgement latency is reported.
    #[arg(long)]
    acks: Option<usize>,
    /// Connect with this token (`?token=`) instead of a name.
    #[arg(long)]
    token: Option<String>,
    /// Process id of the server, to read its resident memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Instead of a load, append this many messages straight into the log of `--data` (the
    /// server must be stopped), to prepare a large log for the backup benchmark.
    #[arg(long)]
    fill: Option<u64>,
    /// The data folder `--fill` writes to.
    #[arg(long)]
    data: Option<std::path::PathBuf>,
    /// What `--fill` writes: `filler` (numbered bodies of `--body-bytes`) or `zipf` (the
    /// generated corpus of `benches/corpus`, realistic words for search, over 20 rooms).
    #[arg(long, default_value = "filler")]
    text: String,
    /// With `--fill`: also this many sessions (every other one paid), for the janitor benchmark.
    #[arg(long, default_value_t = 0)]
    sessions: u64,
    /// With `--fill`: also this many file keys (`tts/f<i>.mp3`, sharing one small content) and
    /// as many orphan content files (no key names them), for the janitor benchmark.
    #[arg(long, default_value_t = 0)]
    files: u64,
    /// With `--fill`: also write every message as a JSON line (`room`, `author`, `body`) to
    /// this file, so that another store can be filled with the same messages.
    #[arg(long)]
    dump: Option<std::path::PathBuf>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Protocol {
    Roomlog,
    Baseline,
}

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default, borrow)]
    body: Option<&'a str>,
}

/// What one receiving client saw.
struct Received {
    latency_us: Histogram<u64>,
    /// Per sender, which message numbers arrived.
    seen: HashMap<usize, Vec<bool>>,
    duplicates: u64,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let (Some(n), Some(data)) = (args.fill, &args.data) {
        fill(data, n, &args.room, args.body_bytes, &args.text, args.dump.as_deref()).await?;
        return fill_sessions_and_files(data, args.sessions, args.files).await;
    }
    if let Some(n) = args.idle {
        return idle(&args, n).await;
    }
    if let Some(n) = args.acks {
        return acks(&args, n).await;
    }
    if args.senders == 0 || args.senders > args.clients {
        bail!("--senders must be between 1 and --clients");
    }
    let run_id = format!("{:x}", std::process::id() ^ Instant::now().elapsed().subsec_nanos());
    let epoch = Instant::now();
    let per_sender = args.rate as f64 / args.senders as f64;
    let total_per_sender = (per_sender * args.secs as f64).round() as usize;

    // Connect and join everyone before anyone sends.
    let mut sockets = Vec::with_capacity(args.clients);
    let addrs: Vec<&str> = args.addr.split(',').collect();
    for i in 0..args.clients {
        let addr = addrs[i % addrs.len()];
        let url = match args.protocol {
            Protocol::Roomlog => match &args.token {
                Some(token) => format!("ws://{addr}/ws?token={token}"),
                None => format!("ws://{addr}/ws?name=load{i}"),
            },
            Protocol::Baseline => format!("ws://{addr}/ws"),
        };
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.with_context(|| format!("connecting {url}"))?;
        if args.protocol == Protocol::Roomlog {
            let join = serde_json::json!({"type":"join","room":args.room,"since":u64::MAX});
            ws.send(Message::text(join.to_string())).await?;
        }
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Rates are over the sending window and its drain, not the connecting before it.
    let sending_from_us = epoch.elapsed().as_micros() as u64;
    let last_delivery_us = Arc::new(AtomicU64::new(sending_from_us));

    let sent_total = Arc::new(AtomicU64::new(0));
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (i, ws) in sockets.into_iter().enumerate() {
        let (mut tx, mut rx) = ws.split();
        let receiver_run_id = run_id.clone();
        let drain = Duration::from_secs(args.drain_secs);
        let expected = total_per_sender * args.senders;
        let send_deadline = Duration::from_secs(args.secs);
        let last_delivery_us = last_delivery_us.clone();
        receivers.push(tokio::spawn(async move {
            let mut got =
                Received { latency_us: Histogram::new(3).expect("histogram"), seen: HashMap::new(), duplicates: 0 };
            let mut distinct = 0usize;
            let hard_stop = epoch + send_deadline + drain + Duration::from_secs(1);
            while distinct < expected {
                let Ok(next) = tokio::time::timeout_at(hard_stop.into(), rx.next()).await else { break };
                let Some(Ok(Message::Text(text))) = next else { break };
                let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else { continue };
                if frame.kind != "message" {
                    continue;
                }
                let Some((sender, n, sent_us)) = frame.body.and_then(|b| parse_body(b, &receiver_run_id)) else {
                    continue;
                };
                let now_us = epoch.elapsed().as_micros() as u64;
                last_delivery_us.fetch_max(now_us, Ordering::Relaxed);
                let _ = got.latency_us.record(now_us.saturating_sub(sent_us));
                let seen = got.seen.entry(sender).or_default();
                if seen.len() <= n {
                    seen.resize(n + 1, false);
                }
                if seen[n] {
                    got.duplicates += 1;
                } else {
                    seen[n] = true;
                    distinct += 1;
                }
            }
            (rx, got)
        }));
        if i < args.senders {
            let body_bytes = args.body_bytes;
            let run_id = run_id.clone();
            let room = args.room.clone();
            let protocol = args.protocol;
            let sent_total = sent_total.clone();
            let interval = Duration::from_secs_f64(1.0 / per_sender);
            senders.push(tokio::spawn(async move {
                let start = Instant::now();
                for n in 0..total_per_sender {
                    tokio::time::sleep_until((start + interval.mul_f64(n as f64)).into()).await;
                    let sent_us = epoch.elapsed().as_micros() as u64;
                    let mut body = format!("{run_id}:{i}:{n}:{sent_us}:");
                    body.extend(std::iter::repeat_n('x', body_bytes.saturating_sub(body.len())));
                    let frame = match protocol {
                        Protocol::Roomlog => serde_json::json!({"type":"send","room":room,"body":body,"client_id":format!("{run_id}-{i}-{n}")}),
                        Protocol::Baseline => serde_json::json!({"type":"send","room":room,"body":body}),
                    };
                    if tx.send(Message::text(frame.to_string())).await.is_err() {
                        break;
                    }
                    sent_total.fetch_add(1, Ordering::Relaxed);
                }
                tx
            }));
        } else {
            drop(tx);
        }
    }
    let mut keep_writers = Vec::new();
    for sender in senders {
        keep_writers.push(sender.await?);
    }
    let mut latency = Histogram::<u64>::new(3)?;
    let (mut delivered, mut lost, mut duplicates) = (0u64, 0u64, 0u64);
    let sent = sent_total.load(Ordering::Relaxed);
    for receiver in receivers {
        let (_rx, got) = receiver.await?;
        latency.add(&got.latency_us)?;
        let distinct: u64 = got.seen.values().map(|v| v.iter().filter(|&&b| b).count() as u64).sum();
        delivered += distinct;
        lost += sent.saturating_sub(distinct);
        duplicates += got.duplicates;
    }
    drop(keep_writers);
    let sending_secs = (last_delivery_us.load(Ordering::Relaxed) - sending_from_us) as f64 / 1e6;
    let expected = sent * args.clients as u64;
    println!(
        "{label}: clients={clients} senders={senders} rate={rate}/s secs={secs} sent={sent} deliveries={delivered}/{expected} \
         deliveries_per_s={dps:.0} latency_ms p50={p50:.2} p99={p99:.2} max={max:.2} lost={lost} duplicated={duplicates}",
        label = args.label,
        clients = args.clients,
        senders = args.senders,
        rate = args.rate,
        secs = args.secs,
        dps = delivered as f64 / sending_secs.max(1e-9),
        p50 = latency.value_at_quantile(0.50) as f64 / 1000.0,
        p99 = latency.value_at_quantile(0.99) as f64 / 1000.0,
        max = latency.max() as f64 / 1000.0,
    );
    Ok(())
}

/// `run:sender:n:sent_us:padding` → (sender, n, sent_us), for this run's messages only.
fn parse_body(body: &str, run_id: &str) -> Option<(usize, usize, u64)> {
    let mut parts = body.splitn(5, ':');
    if parts.next()? != run_id {
        return None;
    }
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

/// Appends `n` messages to the log in `data`, in bursts the group commit can batch.
async fn fill(
    data: &std::path::Path,
    n: u64,
    room: &str,
    body_bytes: usize,
    text: &str,
    dump: Option<&std::path::Path>,
) -> anyhow::Result<()> {
    use roomlog::event::{Event, MessagePosted, RoomId};
    use std::io::Write;
    let mut dump = dump.map(std::fs::File::create).transpose()?.map(std::io::BufWriter::new);
    let log = roomlog::log::EventLog::open(&roomlog::layout::log_dir(data), &roomlog::log::LogConfig::default())?;
    let zipf = match text {
        "filler" => None,
        "zipf" => Some((corpus::Corpus::new(), corpus::Rng::new(42))),
        other => bail!("--text {other:?}: use filler or zipf"),
    };
    let mut zipf = zipf;
    let rooms: Vec<RoomId> = match zipf {
        Some(_) => (0..20).map(|i| RoomId::parse(&format!("{room}-{i}"))).collect::<Result<_, _>>()?,
        None => vec![RoomId::parse(room)?],
    };
    let started = Instant::now();
    let mut done = 0;
    while done < n {
        let burst = (n - done).min(20_000);
        let mut pending = Vec::with_capacity(burst as usize);
        for i in done..done + burst {
            let body = match &mut zipf {
                Some((corpus, rng)) => corpus.message(rng),
                None => {
                    let mut body = format!("bulk message {i} ");
                    body.extend(std::iter::repeat_n('x', body_bytes.saturating_sub(body.len())));
                    body
                }
            };
            let posted = MessagePosted {
                room: rooms[i as usize % rooms.len()].clone(),
                author: format!("user{}", i % 100),
                client_id: format!("f{i}"),
                body,
            };
            if let Some(out) = &mut dump {
                let line =
                    serde_json::json!({"room": posted.room.as_str(), "author": posted.author, "body": posted.body});
                writeln!(out, "{line}")?;
            }
            let event = Event::MessagePosted(posted);
            pending.push(log.submit(event).await?);
        }
        for p in pending {
            p.durable().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        done += burst;
    }
    log.close().await;
    if let Some(out) = &mut dump {
        out.flush()?;
    }
    println!("fill: {n} messages into {} in {:.1} s", data.display(), started.elapsed().as_secs_f64());
    Ok(())
}

/// Appends `sessions` sessions (every other one paid) and `files` keys sharing one content,
/// and writes `files` orphan content files into the hot tier.
async fn fill_sessions_and_files(data: &std::path::Path, sessions: u64, files: u64) -> anyhow::Result<()> {
    use roomlog::blob::{ContentHash, FileKey};
    use roomlog::event::{Event, FileStored, SessionCreated, SessionId, SessionPaid};
    if sessions == 0 && files == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let log = roomlog::log::EventLog::open(&roomlog::layout::log_dir(data), &roomlog::log::LogConfig::default())?;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as u64;
    let mut events = Vec::new();
    for i in 0..sessions {
        let id = SessionId::random();
        events.push(Event::SessionCreated(SessionCreated {
            id: id.clone(),
            created_at_unix_ms: now,
            expires_at_unix_ms: now + 24 * 3600 * 1000,
            purge_at_unix_ms: now + 7 * 24 * 3600 * 1000,
            sliding: false,
        }));
        if i % 2 == 0 {
            events.push(Event::SessionPaid(SessionPaid { id, at_unix_ms: now }));
        }
    }
    let hot = data.join("blobs/hot");
    let write_content = |bytes: &[u8]| -> anyhow::Result<ContentHash> {
        let hex = blake3::hash(bytes).to_hex().to_string();
        let dir = hot.join(&hex[..2]);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(&hex), bytes)?;
        ContentHash::parse(&hex).ok_or_else(|| anyhow::anyhow!("hash"))
    };
    if files > 0 {
        let shared = vec![7u8; 2048];
        let hash = write_content(&shared)?;
        for i in 0..files {
            events.push(Event::FileStored(FileStored {
                key: FileKey::parse(&format!("tts/f{i}.mp3"))?,
                hash: hash.clone(),
                size: shared.len() as u64,
                content_type: "audio/mpeg".into(),
                owner: None,
            }));
            write_content(format!("orphan {i}").repeat(64).as_bytes())?;
        }
    }
    for chunk in events.chunks(20_000) {
        let mut pending = Vec::with_capacity(chunk.len());
        for event in chunk {
            pending.push(log.submit(event.clone()).await?);
        }
        for p in pending {
            p.durable().await.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
    }
    log.close().await;
    println!(
        "fill: {sessions} sessions, {files} keys and {files} orphan files in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Holds `n` idle joined connections and reports the server's resident memory.
async fn idle(args: &Args, n: usize) -> anyhow::Result<()> {
    let rss_before = args.server_pid.and_then(rss_kib);
    let mut sockets = Vec::with_capacity(n);
    let started = Instant::now();
    for i in 0..n {
        let url = format!("ws://{}/ws?name=idle{i}", args.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.with_context(|| format!("connection {i}"))?;
        let join = serde_json::json!({"type":"join","room":format!("{}-{}", args.room, i % 100),"since":u64::MAX});
        ws.send(Message::text(join.to_string())).await?;
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = args.server_pid.and_then(rss_kib);
    println!(
        "{label}: idle_connections={n} opened_in_s={secs:.1} server_rss_mib before={before} after={after}",
        label = args.label,
        secs = started.elapsed().as_secs_f64(),
        before = rss_before.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
        after = rss_after.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
    );
    drop(sockets);
    Ok(())
}

/// One client, one message at a time: the latency from a send to its ack.
async fn acks(args: &Args, n: usize) -> anyhow::Result<()> {
    let addr = args.addr.split(',').next().unwrap_or(&args.addr);
    let url = format!("ws://{addr}/ws?name=acks");
    let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.with_context(|| format!("connecting {url}"))?;
    let join = serde_json::json!({"type":"join","room":args.room,"since":u64::MAX});
    ws.send(Message::text(join.to_string())).await?;
    let mut latency = Histogram::<u64>::new(3)?;
    let body = "x".repeat(args.body_bytes);
    let started = Instant::now();
    for i in 0..n {
        let sent = Instant::now();
        let frame = serde_json::json!({"type":"send","room":args.room,"body":body,"client_id":format!("a{i}")});
        ws.send(Message::text(frame.to_string())).await?;
        loop {
            let next = tokio::time::timeout(Duration::from_secs(30), ws.next()).await.context("no ack within 30 s")?;
            let Some(Ok(Message::Text(text))) = next else { bail!("connection closed") };
            let Ok(frame) = serde_json::from_str::<Frame>(text.as_str()) else { continue };
            match frame.kind {
                "ack" => break,
                "error" => bail!("refused: {text}"),
                _ => {}
            }
        }
        let _ = latency.record(sent.elapsed().as_micros() as u64);
    }
    println!(
        "{label}: one_at_a_time={n} acks_per_s={rate:.0} ack_latency_ms p50={p50:.2} p99={p99:.2} max={max:.2}",
        label = args.label,
        rate = n as f64 / started.elapsed().as_secs_f64(),
        p50 = latency.value_at_quantile(0.50) as f64 / 1000.0,
        p99 = latency.value_at_quantile(0.99) as f64 / 1000.0,
        max = latency.max() as f64 / 1000.0,
    );
    Ok(())
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
}
