//! Criterion benchmarks of the internals: durable appends through the group-commit log,
//! replaying the log into the history projection (the cost of `roomlog rebuild history`), and
//! reading the history back (its pages keep no text: each read takes the texts from the log).
//!
//! `cargo bench --bench log`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use roomlog::event::{Event, MessagePosted, RoomId};
use roomlog::log::{EventLog, LogConfig};
use roomlog::projection::{self, history};

/// A message of a typical size (about 100 bytes of text) in one of 20 rooms.
fn message(n: u64) -> Event {
    Event::MessagePosted(MessagePosted {
        room: RoomId::parse(&format!("room-{}", n % 20)).expect("valid room"),
        author: format!("user{}", n % 100),
        client_id: format!("c{n}"),
        body: format!("message number {n} with some ordinary chat text to make it about a hundred bytes long ..."),
    })
}

/// Appends `count` events as concurrent callers would: all submitted, then all awaited, so the
/// writer groups them into as few flushes as the queue allows.
async fn append_burst(log: &EventLog, first: u64, count: u64) {
    let mut pending = Vec::with_capacity(count as usize);
    for n in first..first + count {
        pending.push(log.submit(message(n)).await.expect("submit"));
    }
    for p in pending {
        p.durable().await.expect("durable");
    }
}

fn durable_appends(c: &mut Criterion) {
    const BURST: u64 = 20_000;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let mut group = c.benchmark_group("log");
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(BURST));
    // 20,000 appends into a fresh log: the writer's own cost.
    group.bench_function("durable_append_20k_batched_fresh_log", |b| {
        b.iter_batched(
            || {
                let dir = tempfile::tempdir().expect("tempdir");
                let log = EventLog::open(dir.path(), &LogConfig::default()).expect("open log");
                (dir, log)
            },
            |(dir, log)| {
                runtime.block_on(async {
                    append_burst(&log, 0, BURST).await;
                    log.close().await;
                });
                dir
            },
            BatchSize::PerIteration,
        )
    });
    // 20,000 more appends into a log that already holds 1,000,000 events (larger than sled's
    // page cache of the default configuration by then): the steady state of a busy server.
    // LOG_BENCH_BASE_EVENTS=10000000 measures into a log of 10 million instead (issue 19).
    let base: u64 = std::env::var("LOG_BENCH_BASE_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(dir.path(), &LogConfig::default()).expect("open log");
    let mut next = 0;
    while next < base {
        runtime.block_on(append_burst(&log, next, BURST));
        next += BURST;
    }
    let name = match base {
        1_000_000 => "durable_append_20k_batched_1m_log".to_owned(),
        _ => format!("durable_append_20k_batched_{base}_log"),
    };
    group.bench_function(name, |b| {
        b.iter(|| {
            runtime.block_on(append_burst(&log, next, BURST));
            next += BURST;
        })
    });
    // One caller that waits for each append: the cost of one flush + fsync.
    group.throughput(Throughput::Elements(1));
    group.bench_function("durable_append_one_at_a_time", |b| {
        b.iter(|| {
            runtime.block_on(async {
                log.append(message(next)).await.expect("append");
            });
            next += 1;
        })
    });
    group.finish();
    runtime.block_on(log.close());
}

fn replay(c: &mut Criterion) {
    const EVENTS: u64 = 200_000;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = EventLog::open(&dir.path().join("log"), &LogConfig::default()).expect("open log");
    for start in (0..EVENTS).step_by(20_000) {
        runtime.block_on(append_burst(&log, start, 20_000));
    }
    let state = roomlog::state::StateDb::open(&dir.path().join("state"), 256 << 20).expect("state");
    let (reader, mut projection) = history::open(&state, std::sync::Arc::new(log.clone())).expect("history");
    let mut group = c.benchmark_group("projection");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));
    group.throughput(Throughput::Elements(EVENTS));
    group.bench_function("rebuild_history_200k", |b| {
        b.iter_batched(
            || (),
            |()| {
                let (applied, _) = projection::rebuild(&log, &mut projection, |_| {}).expect("rebuild");
                assert_eq!(applied, EVENTS);
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();

    // What a client's history request and a room's start read, from one of the 20 rooms (of a
    // history built here, whether or not the rebuild above ran).
    projection::rebuild(&log, &mut projection, |_| {}).expect("rebuild");
    let room = RoomId::parse("room-7").expect("valid room");
    let mut group = c.benchmark_group("history");
    group.bench_function("recent_50_of_one_room_in_20", |b| {
        b.iter(|| assert_eq!(reader.recent(&room, 50).expect("recent").len(), 50))
    });
    group.bench_function("room_start_window_10000_ring_1000", |b| {
        b.iter(|| {
            let known = reader.recent_kept(&room, 10_000).expect("kept");
            let ring = reader.with_texts(&room, known[known.len() - 1_000..].to_vec()).expect("texts");
            assert_eq!((known.len(), ring.len()), (10_000, 1_000));
        })
    });
    group.finish();
    runtime.block_on(log.close());
}

criterion_group!(benches, durable_appends, replay);
criterion_main!(benches);
