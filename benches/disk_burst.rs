//! How much disk one group commit can take: the figure behind the disk floor (`log.min_free_bytes`
//! and `log.batch_bytes_max`, issue 18). sled grows its files by more than the bytes appended
//! (leaves are rewritten whole, segments are cleaned later), so the floor must cover the worst
//! burst between two checks, not the payload.
//!
//! `cargo bench --bench disk_burst`: appends bursts of messages of 100 B, 20 KiB and 64 KiB
//! through the real log, catching the history projection up after each, and prints, per body
//! size, the largest growth of the bytes allocated on disk in one burst and per byte appended.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use roomlog::event::{Event, MessagePosted, RoomId};
use roomlog::log::{EventLog, LogConfig};
use roomlog::projection::{self, history};

/// Bytes allocated on disk under `dir` (what `du` counts, sparse files included as allocated).
fn allocated(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.metadata() {
            Ok(m) if m.is_dir() => allocated(&entry.path()),
            Ok(m) => m.blocks() * 512,
            Err(_) => 0,
        })
        .sum()
}

fn message(n: u64, body_bytes: usize) -> Event {
    Event::MessagePosted(MessagePosted {
        room: RoomId::parse(&format!("room-{}", n % 5)).expect("valid room"),
        author: format!("user{}", n % 50),
        client_id: format!("c{n}"),
        body: "x".repeat(body_bytes),
    })
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let payload_per_burst: usize = 4 * 1024 * 1024;
    for body_bytes in [100usize, 20 * 1024, 64 * 1024] {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = EventLog::open(&dir.path().join("log"), &LogConfig::default()).expect("open log");
        let state = roomlog::state::StateDb::open(&dir.path().join("state"), 256 << 20).expect("state");
        let mut projection = history::projection(&state).expect("history");
        let per_burst = (payload_per_burst / body_bytes.max(1)).max(1) as u64;
        let (mut worst_log, mut worst_state, mut worst_ratio) = (0u64, 0u64, 0f64);
        let mut n = 0u64;
        let mut appended = 0u64;
        for _ in 0..40 {
            let (log_before, state_before) = (allocated(&dir.path().join("log")), allocated(&dir.path().join("state")));
            runtime.block_on(async {
                let mut pending = Vec::new();
                for _ in 0..per_burst {
                    pending.push(log.submit(message(n, body_bytes)).await.expect("submit"));
                    n += 1;
                }
                for p in pending {
                    p.durable().await.expect("durable");
                }
            });
            projection::catch_up(&log, &mut projection, |_| {}).expect("history catches up");
            state.sync().expect("sync state");
            let payload = per_burst * body_bytes as u64;
            appended += payload;
            let grew_log = allocated(&dir.path().join("log")).saturating_sub(log_before);
            let grew_state = allocated(&dir.path().join("state")).saturating_sub(state_before);
            worst_log = worst_log.max(grew_log);
            worst_state = worst_state.max(grew_state);
            worst_ratio = worst_ratio.max((grew_log + grew_state) as f64 / payload as f64);
        }
        let total = allocated(dir.path());
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        println!(
            "{body_bytes:>6}-byte bodies, bursts of {:.1} MiB: worst burst grew the log {:.1} MiB and the projections' store {:.1} MiB ({worst_ratio:.1}x the payload); {:.0} MiB appended took {:.0} MiB",
            mib(payload_per_burst as u64),
            mib(worst_log),
            mib(worst_state),
            mib(appended),
            mib(total)
        );
        runtime.block_on(log.close());
    }
}
