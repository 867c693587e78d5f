//! One suite of tests run against every log backend (sled and memory), through [`EventLog`]:
//! order, durable-then-acknowledged, the head, reads by stream after a removal, seqs never
//! reused, and what a restart keeps. A new backend joins by adding a [`Place`] and one line to
//! the `conformance!` list at the bottom.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::backend::{Backend, Encoded, Raw};
use super::floor::Floor;
use super::{EventLog, LogConfig, LogError, MemoryBackend, SledBackend};
use crate::event::{Event, MessagePosted, RoomId, StreamId};

pub(crate) fn posted(room: &str, n: usize) -> Event {
    Event::MessagePosted(MessagePosted {
        room: RoomId::parse(room).expect("valid test room"),
        author: "ann".into(),
        client_id: format!("c{n}"),
        body: format!("message {n}"),
    })
}

fn room(name: &str) -> StreamId {
    StreamId::room(&RoomId::parse(name).expect("room"))
}

/// Where a backend keeps its records between "restarts" of the log.
trait Place {
    fn new() -> Self;
    /// The backend as it is now (reopened, for one that persists).
    fn backend(&self) -> Arc<dyn Backend>;
    /// The log on it.
    async fn open(&self) -> EventLog {
        EventLog::on(self.backend(), &LogConfig::default()).expect("open log")
    }
}

/// Reopens the sled database in `dir`: a log dropped without `close` releases it when its
/// writer ends, a moment later.
fn reopen_sled(dir: &std::path::Path) -> Arc<dyn Backend> {
    for _ in 0..500 {
        match SledBackend::open(dir, 8 << 20) {
            Ok(backend) => return Arc::new(backend),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
        }
    }
    Arc::new(SledBackend::open(dir, 8 << 20).expect("open sled backend"))
}

struct SledPlace(tempfile::TempDir);

impl Place for SledPlace {
    fn new() -> Self {
        Self(tempfile::tempdir().expect("tempdir"))
    }
    fn backend(&self) -> Arc<dyn Backend> {
        reopen_sled(self.0.path())
    }
}

struct MemoryPlace(MemoryBackend);

impl Place for MemoryPlace {
    fn new() -> Self {
        Self(MemoryBackend::new())
    }
    fn backend(&self) -> Arc<dyn Backend> {
        Arc::new(self.0.clone())
    }
}

/// Wraps a backend and records what reached it, to check the writer's order of calls.
#[derive(Debug)]
struct Spy {
    inner: Arc<dyn Backend>,
    written_through: AtomicU64,
    synced_through: AtomicU64,
    groups: Mutex<Vec<usize>>,
}

impl Backend for Spy {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    fn last(&self) -> Result<Option<Raw>, LogError> {
        self.inner.last()
    }
    fn next_seq_floor(&self) -> Result<u64, LogError> {
        self.inner.next_seq_floor()
    }
    fn floor(&self) -> Floor {
        self.inner.floor()
    }
    fn reserve(&self, through: u64, acked_through: u64) -> Result<(), LogError> {
        self.inner.reserve(through, acked_through)
    }
    fn release(&self, head: u64) -> Result<(), LogError> {
        self.inner.release(head)
    }
    fn set_floor(&self, floor: Floor) -> Result<(), LogError> {
        self.inner.set_floor(floor)
    }
    fn write(&self, records: &[Encoded<'_>]) -> Result<(), LogError> {
        self.inner.write(records)?;
        if let Some(&(seq, _, _)) = records.last() {
            self.written_through.store(seq, Ordering::SeqCst);
        }
        self.groups.lock().expect("groups").push(records.len());
        Ok(())
    }
    fn sync(&self) -> Result<(), LogError> {
        self.inner.sync()?;
        self.synced_through.store(self.written_through.load(Ordering::SeqCst), Ordering::SeqCst);
        Ok(())
    }
    fn read_raw(&self, from_seq: u64, through_seq: u64, limit: usize) -> Result<Vec<Raw>, LogError> {
        self.inner.read_raw(from_seq, through_seq, limit)
    }
    fn read_stream_raw(&self, stream: &StreamId, after: u64, through: u64, limit: usize) -> Result<Vec<Raw>, LogError> {
        self.inner.read_stream_raw(stream, after, through, limit)
    }
    fn remove(&self, seqs: &[u64]) -> Result<u64, LogError> {
        self.inner.remove(seqs)
    }
    fn record_bytes_max(&self) -> usize {
        self.inner.record_bytes_max()
    }
    fn available_bytes(&self) -> Option<u64> {
        self.inner.available_bytes()
    }
}

/// Stops the log and lets go of it, as a server that stops does: the backend is free to
/// reopen.
async fn close(log: EventLog) {
    log.close().await;
}

async fn open<P: Place>(place: &P) -> EventLog {
    place.open().await
}

async fn seqs_of_stream(log: &EventLog, stream: &StreamId, after: u64) -> Vec<u64> {
    log.read_stream(stream, after, usize::MAX).await.expect("read stream").iter().map(|e| e.seq).collect()
}

async fn appends_get_consecutive_seqs_in_submission_order<P: Place>() {
    let place = P::new();
    let log = open(&place).await;
    let mut pending = Vec::new();
    for n in 0..300 {
        pending.push(log.submit(posted(if n % 3 == 0 { "a" } else { "b" }, n)).await.expect("submit"));
    }
    for (n, p) in pending.into_iter().enumerate() {
        let envelope = p.durable().await.expect("durable");
        assert_eq!(envelope.seq, n as u64 + 1);
        assert_eq!(envelope.event, posted(if n % 3 == 0 { "a" } else { "b" }, n));
    }
    let all = log.read_range(1, usize::MAX).await.expect("range");
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=300).collect::<Vec<_>>());
    assert!(all.windows(2).all(|w| w[0].at_unix_ms <= w[1].at_unix_ms), "timestamps never go back");
    assert_eq!(log.read_range(299, 10).await.expect("range").len(), 2);
    let a = seqs_of_stream(&log, &room("a"), 0).await;
    assert_eq!(a, (1..=300).step_by(3).collect::<Vec<_>>());
    assert_eq!(seqs_of_stream(&log, &room("a"), 280).await, vec![283, 286, 289, 292, 295, 298]);
    assert_eq!(log.read_stream(&room("b"), 0, 5).await.expect("limit").len(), 5);
    assert_eq!(log.verify().expect("verify"), 300);
    close(log).await;
}

async fn nothing_is_acknowledged_before_the_backend_synced_it<P: Place>() {
    let place = P::new();
    let spy = Arc::new(Spy {
        inner: place.backend(),
        written_through: AtomicU64::new(0),
        synced_through: AtomicU64::new(0),
        groups: Mutex::default(),
    });
    let log = EventLog::on(spy.clone(), &LogConfig::default()).expect("open log");
    let mut pending = Vec::new();
    for n in 0..500 {
        pending.push(log.submit(posted("a", n)).await.expect("submit"));
    }
    for p in pending {
        let seq = p.durable().await.expect("durable").seq;
        assert!(spy.synced_through.load(Ordering::SeqCst) >= seq, "seq {seq} acknowledged before it was synced");
        assert!(log.head() >= seq, "the head is at least every acknowledged seq");
    }
    let groups = spy.groups.lock().expect("groups").clone();
    assert_eq!(groups.iter().sum::<usize>(), 500);
    assert!(groups.len() < 500, "pipelined appends share group commits: {groups:?}");
    close(log).await;
}

async fn the_head_follows_durable_appends<P: Place>() {
    let place = P::new();
    let log = open(&place).await;
    assert_eq!(log.head(), 0);
    assert!(log.read_range(1, 10).await.expect("empty").is_empty());
    let mut head = log.watch_head();
    let seq = log.append(posted("a", 1)).await.expect("append").seq;
    assert_eq!(log.head(), seq);
    head.changed().await.expect("head moves");
    assert_eq!(*head.borrow(), seq);
    close(log).await;
    let reopened = open(&place).await;
    assert_eq!(reopened.head(), seq, "the head is the newest record after a restart");
    close(reopened).await;
}

async fn removed_records_are_not_read_by_range_or_stream<P: Place>() {
    let place = P::new();
    let log = open(&place).await;
    for n in 0..10 {
        log.append(posted(if n % 2 == 0 { "a" } else { "b" }, n)).await.expect("append");
    }
    // Room a holds 1, 3, 5, 7, 9; the newest record (10, room b) is kept whatever is asked.
    assert_eq!(log.remove(vec![1, 3, 5, 10]).await.expect("remove"), 3);
    assert_eq!(seqs_of_stream(&log, &room("a"), 0).await, vec![7, 9]);
    assert_eq!(seqs_of_stream(&log, &room("b"), 0).await, vec![2, 4, 6, 8, 10]);
    let range: Vec<u64> = log.read_range(1, usize::MAX).await.expect("range").iter().map(|e| e.seq).collect();
    assert_eq!(range, vec![2, 4, 6, 7, 8, 9, 10]);
    assert_eq!(log.remove(vec![1, 3]).await.expect("again"), 0, "removing what is gone removes nothing");
    assert_eq!(log.head(), 10);
    close(log).await;
    let reopened = open(&place).await;
    assert_eq!(seqs_of_stream(&reopened, &room("a"), 0).await, vec![7, 9], "a removal survives a restart");
    assert_eq!(reopened.verify().expect("verify"), 7);
    close(reopened).await;
}

async fn seqs_are_never_reused<P: Place>() {
    let place = P::new();
    let log = open(&place).await;
    for n in 0..5 {
        log.append(posted("a", n)).await.expect("append");
    }
    log.remove(vec![2, 3, 4]).await.expect("remove");
    assert_eq!(log.append(posted("a", 5)).await.expect("append").seq, 6);
    close(log).await;
    // A clean stop gives the unused reservation back: the next start goes on after the head.
    let reopened = open(&place).await;
    assert_eq!(reopened.append(posted("a", 6)).await.expect("append").seq, 7);
    // A crash (no clean stop) leaves the reservation: the next start goes on above it.
    drop(reopened);
    let backend = place.backend();
    let floor = backend.floor();
    assert!(floor.reserved_through > 7, "seqs are reserved ahead of those handed out: {floor:?}");
    drop(backend);
    let after_crash = open(&place).await;
    let seq = after_crash.append(posted("a", 7)).await.expect("append").seq;
    assert!(seq > floor.reserved_through, "seq {seq} is above the reservation {floor:?}");
    close(after_crash).await;
}

async fn a_record_over_the_limit_is_refused_and_the_log_goes_on<P: Place>() {
    let place = P::new();
    let log = open(&place).await;
    let max = log.record_bytes_max();
    let big = Event::MessagePosted(MessagePosted {
        room: RoomId::parse("a").expect("room"),
        author: "ann".into(),
        client_id: "big".into(),
        body: "x".repeat(max + 1),
    });
    let refused = log.append(big).await.expect_err("too large");
    assert!(matches!(*refused, LogError::RecordTooLarge { .. }), "{refused}");
    assert_eq!(log.append(posted("a", 1)).await.expect("append").seq, 1, "a refused append takes no seq");
    assert_eq!(log.verify().expect("verify"), 1);
    close(log).await;
}

async fn a_restart_keeps_records_streams_and_bytes<P: Place>() {
    let place = P::new();
    let log = open(&place).await;
    for n in 0..50 {
        log.append(posted(if n % 2 == 0 { "a" } else { "b" }, n)).await.expect("append");
    }
    let before = log.read_raw(1, usize::MAX).await.expect("raw");
    close(log).await;
    let reopened = open(&place).await;
    assert_eq!(reopened.read_raw(1, usize::MAX).await.expect("raw"), before, "the same bytes");
    assert_eq!(seqs_of_stream(&reopened, &room("b"), 40).await, vec![42, 44, 46, 48, 50]);
    assert_eq!(reopened.append(posted("a", 50)).await.expect("append").seq, 51);
    close(reopened).await;
}

async fn a_log_that_lost_acknowledged_records_does_not_start<P: Place>() {
    let place = P::new();
    let log = open(&place).await;
    for n in 0..3 {
        log.append(posted("a", n)).await.expect("append");
    }
    close(log).await;
    let backend = place.backend();
    backend.set_floor(Floor { reserved_through: 10, acked_through: 8 }).expect("floor");
    drop(backend);
    let refused = EventLog::on(place.backend(), &LogConfig::default()).expect_err("lost records");
    assert!(matches!(refused, LogError::LostRecords { head: 3, acked_through: 8 }), "{refused}");
    let config = LogConfig { accept_lost_records: true, ..LogConfig::default() };
    let accepted = EventLog::on(place.backend(), &config).expect("accepted");
    assert_eq!(accepted.append(posted("a", 3)).await.expect("append").seq, 11, "above every reserved seq");
    close(accepted).await;
}

/// The bytes of a test record: its seq in words, long for every ninth (so that packs also close
/// on bytes) and one over any pack's size.
fn record_bytes(seq: u64) -> Vec<u8> {
    let repeat = match seq {
        100 => 3_000,
        _ if seq.is_multiple_of(9) => 200,
        _ => 1 + (seq % 5) as usize,
    };
    format!("record {seq} ").repeat(repeat).into_bytes()
}

/// Checks what the backend reads back against `kept` (seq, stream), by range and by stream,
/// from several places and with several limits.
fn reads_back(backend: &dyn Backend, kept: &[(u64, StreamId)], context: &str) {
    let all: Vec<Raw> = kept.iter().map(|(seq, _)| (*seq, record_bytes(*seq))).collect();
    let head = kept.last().map_or(0, |(seq, _)| *seq);
    for from in [1, 2, 50, 63, 64, 65, 99, 100, 101, 150, 333, head, head + 1] {
        for limit in [1, 7, 64, usize::MAX] {
            let want: Vec<&Raw> = all.iter().filter(|(seq, _)| *seq >= from).take(limit).collect();
            let got = backend.read_raw(from, u64::MAX, limit).expect("read_raw");
            assert_eq!(got.iter().collect::<Vec<_>>(), want, "{context}: read_raw from {from}, limit {limit}");
        }
        let want: Vec<u64> = all.iter().map(|(seq, _)| *seq).filter(|&seq| seq >= from && seq <= from + 40).collect();
        let got: Vec<u64> = backend.read_raw(from, from + 40, usize::MAX).expect("range").iter().map(|r| r.0).collect();
        assert_eq!(got, want, "{context}: read_raw {from}..={}", from + 40);
    }
    for name in ["a", "b", "c"] {
        let stream = room(name);
        for after in [0, 10, 64, 100, 200, head] {
            let want: Vec<Raw> = kept
                .iter()
                .filter(|(seq, s)| *s == stream && *seq > after)
                .map(|(seq, _)| (*seq, record_bytes(*seq)))
                .collect();
            let got = backend.read_stream_raw(&stream, after, u64::MAX, usize::MAX).expect("read_stream_raw");
            assert_eq!(got, want, "{context}: stream {name} after {after}");
        }
    }
    assert_eq!(backend.last().expect("last"), all.last().cloned(), "{context}: last");
}

/// Writes `sizes` groups of records, from seq `from`, each group synced.
fn write_groups(backend: &dyn Backend, from: u64, sizes: &[usize], kept: &mut Vec<(u64, StreamId)>) -> u64 {
    let mut seq = from;
    for &size in sizes {
        let group: Vec<(u64, StreamId, Vec<u8>)> =
            (seq..seq + size as u64).map(|s| (s, room(["a", "b", "c"][(s % 3) as usize]), record_bytes(s))).collect();
        let encoded: Vec<Encoded<'_>> = group.iter().map(|(s, stream, bytes)| (*s, stream, bytes.as_slice())).collect();
        backend.write(&encoded).expect("write");
        backend.sync().expect("sync");
        kept.extend(group.into_iter().map(|(s, stream, _)| (s, stream)));
        seq += size as u64;
    }
    seq
}

async fn groups_of_any_size_read_back_through_removals_and_restarts<P: Place>() {
    let place = P::new();
    let mut kept = Vec::new();
    // Alone, a few at a time, more than a pack's worth at once, and a record over a pack's
    // size (seq 100) inside a group.
    let mut sizes = vec![1, 1, 1, 3, 1, 70, 1, 1, 5, 20];
    sizes.extend(std::iter::repeat_n(1, 40));
    sizes.extend([200, 2, 1]);
    let next = write_groups(place.backend().as_ref(), 1, &sizes, &mut kept);
    reads_back(place.backend().as_ref(), &kept, "written");
    let backend = place.backend();
    let gone: Vec<u64> =
        kept.iter().map(|(seq, _)| *seq).filter(|&s| s.is_multiple_of(7) || (80..=150).contains(&s)).collect();
    assert_eq!(backend.remove(&gone).expect("remove"), gone.len() as u64);
    assert_eq!(backend.remove(&gone).expect("again"), 0, "what is gone is not removed twice");
    backend.sync().expect("sync");
    kept.retain(|(seq, _)| gone.binary_search(seq).is_err());
    reads_back(backend.as_ref(), &kept, "after the removal");
    drop(backend);
    // Reopened: what was there, and appends after it (the unsealed newest entries are found).
    write_groups(place.backend().as_ref(), next, &[1, 1, 30, 1, 64, 2], &mut kept);
    reads_back(place.backend().as_ref(), &kept, "reopened and appended");
}

macro_rules! conformance {
    ($($backend:ident: $place:ty),* $(,)?) => {$(
        mod $backend {
            use super::*;

            #[tokio::test]
            async fn appends_get_consecutive_seqs_in_submission_order() {
                super::appends_get_consecutive_seqs_in_submission_order::<$place>().await;
            }
            #[tokio::test]
            async fn nothing_is_acknowledged_before_the_backend_synced_it() {
                super::nothing_is_acknowledged_before_the_backend_synced_it::<$place>().await;
            }
            #[tokio::test]
            async fn the_head_follows_durable_appends() {
                super::the_head_follows_durable_appends::<$place>().await;
            }
            #[tokio::test]
            async fn removed_records_are_not_read_by_range_or_stream() {
                super::removed_records_are_not_read_by_range_or_stream::<$place>().await;
            }
            #[tokio::test]
            async fn seqs_are_never_reused() {
                super::seqs_are_never_reused::<$place>().await;
            }
            #[tokio::test]
            async fn a_record_over_the_limit_is_refused_and_the_log_goes_on() {
                super::a_record_over_the_limit_is_refused_and_the_log_goes_on::<$place>().await;
            }
            #[tokio::test]
            async fn a_restart_keeps_records_streams_and_bytes() {
                super::a_restart_keeps_records_streams_and_bytes::<$place>().await;
            }
            #[tokio::test]
            async fn a_log_that_lost_acknowledged_records_does_not_start() {
                super::a_log_that_lost_acknowledged_records_does_not_start::<$place>().await;
            }
            #[tokio::test]
            async fn groups_of_any_size_read_back_through_removals_and_restarts() {
                super::groups_of_any_size_read_back_through_removals_and_restarts::<$place>().await;
            }
        }
    )*};
}

conformance!(sled: SledPlace, memory: MemoryPlace);

/// The log of a cluster: a nats-server with JetStream (one, so that each test starts its own
/// in a moment), and a node's replica in a folder. `backend` is the replica.
struct JetStreamPlace {
    _nats: crate::nats_harness::Cluster,
    url: String,
    dir: tempfile::TempDir,
}

impl Place for JetStreamPlace {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let nats = crate::nats_harness::Cluster::start(1, &dir.path().join("nats")).expect("start nats-server");
        let url = nats.servers[0].url();
        Self { _nats: nats, url, dir }
    }
    fn backend(&self) -> Arc<dyn Backend> {
        reopen_sled(&self.dir.path().join("replica"))
    }
    async fn open(&self) -> EventLog {
        self.node("replica").await
    }
}

impl JetStreamPlace {
    /// A node's log, with its replica in the folder `name`.
    async fn node(&self, name: &str) -> EventLog {
        let cluster =
            super::jetstream::JetStreamConfig { servers: vec![self.url.clone()], replicas: 1, ..Default::default() };
        let replica = reopen_sled(&self.dir.path().join(name));
        EventLog::on_jetstream(replica, &LogConfig::default(), &cluster, true).await.expect("open the JetStream log")
    }
}

/// The suite's tests that hold for a log whose seqs JetStream assigns. The others do not
/// apply: the seq floor and the spy are the local writer's, and a removal there takes only
/// the start of a stream (what a purge by subject removes), so removing seqs in the middle of
/// one removes nothing.
mod jetstream {
    use super::*;
    use crate::event::Envelope;

    #[tokio::test]
    async fn removed_records_are_not_read_by_range_or_stream() {
        super::removed_records_are_not_read_by_range_or_stream::<JetStreamPlace>().await;
    }

    /// A janitor's run, as recorded.
    fn janitor_ran() -> Event {
        Event::JanitorRan(crate::event::JanitorRan {
            run: 1,
            trigger: "manual".into(),
            started_at_unix_ms: 1,
            finished_at_unix_ms: 2,
            outcome: "succeeded".into(),
            error: None,
            rules: Vec::new(),
            failed: Vec::new(),
            failures: Vec::new(),
        })
    }

    fn seqs(envelopes: &[Envelope]) -> Vec<u64> {
        envelopes.iter().map(|e| e.seq).collect()
    }

    #[tokio::test]
    async fn a_removal_purges_the_stream_so_that_a_new_node_never_gets_the_records() {
        let place = JetStreamPlace::new();
        let a = place.node("a").await;
        for n in 0..2 {
            a.append(posted("a", n)).await.expect("post");
            a.append(posted("b", n)).await.expect("post");
        }
        // An edit of seq 1 is published on a subject of its own, below room a's.
        let edit = Event::MessageEdited(crate::event::MessageEdited {
            room: RoomId::parse("a").expect("room"),
            seq: 1,
            author: "ann".into(),
            client_id: "c0".into(),
            posted_at_unix_ms: 0,
            edited_by: "ann".into(),
            body: "edited".into(),
        });
        assert_eq!(a.append(edit).await.expect("edit").seq, 5);
        a.append(posted("a", 2)).await.expect("post");
        // Room a holds 1, 3, 5 (the edit), 6; room b 2, 4. Seq 4 is not where room b starts:
        // it stays, as a purge by subject could not take it alone.
        assert_eq!(a.remove(vec![1, 3, 4, 5]).await.expect("remove"), 3);
        assert_eq!(seqs(&a.read_range(1, usize::MAX).await.expect("range")), vec![2, 4, 6]);
        let c = place.node("c").await;
        c.watch_head().wait_for(|&head| head >= 6).await.expect("c catches up");
        assert_eq!(seqs(&c.read_range(1, usize::MAX).await.expect("range")), vec![2, 4, 6], "purged from the stream");
        close(a).await;
        close(c).await;
    }

    #[tokio::test]
    async fn after_a_janitor_run_every_node_purges_what_removals_superseded() {
        let place = JetStreamPlace::new();
        let (a, b) = (place.node("a").await, place.node("b").await);
        for n in 0..5 {
            a.append(posted("lobby", n)).await.expect("post");
        }
        let cut = Event::MessagesExpired(crate::event::MessagesExpired {
            room: RoomId::parse("lobby").expect("room"),
            through_seq: 3,
            policy: "retention.default.max_messages: max_messages 2".into(),
        });
        let cut = b.append(cut).await.expect("cut").seq;
        let ran = janitor_ran();
        b.append(ran).await.expect("run");
        for node in [&a, &b] {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while seqs_of_stream(node, &room("lobby"), 0).await != vec![4, 5, cut] {
                assert!(std::time::Instant::now() < deadline, "the node never purged its replica");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        let c = place.node("c").await;
        c.watch_head().wait_for(|&head| head > cut).await.expect("c catches up");
        assert_eq!(seqs_of_stream(&c, &room("lobby"), 0).await, vec![4, 5, cut], "purged from the stream");
        close(a).await;
        close(b).await;
        close(c).await;
    }

    #[tokio::test]
    async fn appends_get_consecutive_seqs_in_submission_order() {
        super::appends_get_consecutive_seqs_in_submission_order::<JetStreamPlace>().await;
    }
    #[tokio::test]
    async fn the_head_follows_durable_appends() {
        super::the_head_follows_durable_appends::<JetStreamPlace>().await;
    }
    #[tokio::test]
    async fn a_record_over_the_limit_is_refused_and_the_log_goes_on() {
        super::a_record_over_the_limit_is_refused_and_the_log_goes_on::<JetStreamPlace>().await;
    }
    #[tokio::test]
    async fn a_restart_keeps_records_streams_and_bytes() {
        super::a_restart_keeps_records_streams_and_bytes::<JetStreamPlace>().await;
    }

    #[tokio::test]
    async fn the_same_post_through_two_nodes_is_stored_once_with_one_seq() {
        let place = JetStreamPlace::new();
        let (a, b) = (place.node("a").await, place.node("b").await);
        let first = a.append(posted("lobby", 1)).await.expect("through a");
        let again = b.append(posted("lobby", 1)).await.expect("through b");
        assert_eq!(again.seq, first.seq, "the retry gets the original seq");
        assert_eq!(again, first, "and the stored record");
        let other = b.append(posted("lobby", 2)).await.expect("another post");
        assert_eq!(other.seq, first.seq + 1);
        for node in [&a, &b] {
            node.watch_head().wait_for(|&head| head >= other.seq).await.expect("head");
            assert_eq!(node.read_range(1, usize::MAX).await.expect("range").len(), 2, "stored once");
        }
        close(a).await;
        close(b).await;
    }

    #[tokio::test]
    async fn every_node_reads_what_any_node_appended_in_one_order() {
        let place = JetStreamPlace::new();
        let (a, b) = (place.node("a").await, place.node("b").await);
        let mut pending = Vec::new();
        for n in 0..200 {
            let node = if n % 2 == 0 { &a } else { &b };
            pending.push(node.submit(posted(if n % 3 == 0 { "x" } else { "y" }, n)).await.expect("submit"));
        }
        let mut seqs = Vec::new();
        for p in pending {
            seqs.push(p.durable().await.expect("durable").seq);
        }
        let last = seqs.iter().copied().max().expect("seqs");
        let mut orders = Vec::new();
        for node in [&a, &b] {
            node.watch_head().wait_for(|&head| head >= last).await.expect("head");
            let all = node.read_range(1, usize::MAX).await.expect("range");
            assert_eq!(all.len(), 200);
            assert!(all.windows(2).all(|w| w[0].at_unix_ms <= w[1].at_unix_ms), "timestamps never go back");
            orders.push(all);
        }
        assert_eq!(orders[0], orders[1], "both nodes hold the same records, seqs and times");
        close(a).await;
        close(b).await;
    }

    #[tokio::test]
    async fn an_amendment_based_on_a_stale_read_is_refused_with_a_conflict() {
        let place = JetStreamPlace::new();
        let (a, b) = (place.node("a").await, place.node("b").await);
        let target = a.append(posted("lobby", 1)).await.expect("post").seq;
        let edit = |by: &str| {
            Event::MessageEdited(crate::event::MessageEdited {
                room: RoomId::parse("lobby").expect("room"),
                seq: target,
                author: "ann".into(),
                client_id: "c1".into(),
                posted_at_unix_ms: 0,
                edited_by: by.into(),
                body: format!("edited by {by}"),
            })
        };
        // Both nodes read "no amendment yet"; the first to reach the log wins.
        let first = a.submit_if_last(edit("a"), 0).await.expect("submit").durable().await.expect("first edit");
        let second = b.submit_if_last(edit("b"), 0).await.expect("submit").durable().await;
        let refused = second.expect_err("the stale edit is refused");
        assert!(matches!(*refused, LogError::Conflict(_)), "{refused}");
        assert_eq!(refused.code(), crate::error_code::ErrorCode::Conflict);
        // Based on what is there now, it goes through; posts never conflict with amendments.
        let third = b.submit_if_last(edit("b"), first.seq).await.expect("submit").durable().await.expect("fresh edit");
        assert!(third.seq > first.seq);
        a.append(posted("lobby", 2)).await.expect("a post in between");
        close(a).await;
        close(b).await;
    }

    fn session_event(id: &crate::event::SessionId, kind: &str) -> Event {
        use crate::event::{SessionCreated, SessionDue, SessionPaid};
        let due = || SessionDue {
            id: id.clone(),
            due_at_unix_ms: 10,
            applied_at_unix_ms: 11,
            reason: "unpaid at its expiry".into(),
            rule: "sessions.expire_after=1s".into(),
        };
        match kind {
            "created" => Event::SessionCreated(SessionCreated {
                id: id.clone(),
                created_at_unix_ms: 1,
                expires_at_unix_ms: 10,
                purge_at_unix_ms: 20,
                sliding: false,
            }),
            "paid" => Event::SessionPaid(SessionPaid { id: id.clone(), at_unix_ms: 5 }),
            _ => Event::SessionExpired(due()),
        }
    }

    #[tokio::test]
    async fn a_session_change_based_on_a_stale_read_is_refused_and_stored_once() {
        let place = JetStreamPlace::new();
        let (a, b) = (place.node("a").await, place.node("b").await);
        let id = crate::event::SessionId::random();
        let stream = StreamId::session(&id);
        let created = a.append(session_event(&id, "created")).await.expect("created").seq;
        // Both nodes read the session as created; the sweeper's expiry on a reaches the log
        // first, and b's (a paused ex-holder's, or a command's) is refused.
        let expired = a.submit_if_last(session_event(&id, "expired"), created).await.expect("submit");
        let expired = expired.durable().await.expect("the first expiry").seq;
        let stale = b.submit_if_last(session_event(&id, "expired"), created).await.expect("submit").durable().await;
        let refused = stale.expect_err("the stale expiry is refused");
        assert!(matches!(*refused, LogError::Conflict(_)), "{refused}");
        // Other streams' records do not move a session's: a post in between changes nothing.
        b.append(posted("lobby", 1)).await.expect("a post");
        // b catches up with the cluster and decides again on what is there now.
        assert_eq!(b.newest_of(&stream).await.expect("newest"), expired);
        let paid = b.submit_if_last(session_event(&id, "paid"), expired).await.expect("submit").durable().await;
        let paid = paid.expect("a change based on the newest record goes through").seq;
        assert_eq!(a.newest_of(&stream).await.expect("newest"), paid);
        assert_eq!(seqs_of_stream(&a, &stream, 0).await, vec![created, expired, paid], "one expiry, one payment");
        assert_eq!(b.newest_held(&stream, paid - 1).await.expect("held"), expired);
        close(a).await;
        close(b).await;
    }

    #[tokio::test]
    async fn a_fenced_append_after_another_run_is_refused() {
        let place = JetStreamPlace::new();
        let (a, b) = (place.node("a").await, place.node("b").await);
        let janitor = StreamId::janitor();
        // Both nodes begin a run with no run recorded (fence 0); a records its run first.
        let fence = super::super::Fence { stream: janitor.clone(), last_seq: 0 };
        let ran = janitor_ran();
        let recorded = a.append_fenced(ran.clone(), Some(&fence)).await.expect("a's run").seq;
        // b, paused past its lease, resumes: its cut of a room (another stream) and its own
        // record are refused, so it deletes and records nothing.
        let cut = Event::MessagesExpired(crate::event::MessagesExpired {
            room: RoomId::parse("lobby").expect("room"),
            through_seq: 1,
            policy: "retention.default.max_messages: max_messages 1".into(),
        });
        for event in [cut.clone(), ran.clone()] {
            let refused = b.append_fenced(event, Some(&fence)).await.expect_err("fenced out");
            assert!(matches!(*refused, LogError::Conflict(_)), "{refused}");
        }
        assert!(seqs_of_stream(&a, &room("lobby"), 0).await.is_empty(), "no cut stored");
        // A run that begins after a's goes through.
        let newer =
            super::super::Fence { stream: janitor.clone(), last_seq: b.newest_of(&janitor).await.expect("newest") };
        assert_eq!(newer.last_seq, recorded);
        let cut = b.append_fenced(cut, Some(&newer)).await.expect("a run after a's").seq;
        assert_eq!(seqs_of_stream(&b, &room("lobby"), 0).await, vec![cut]);
        close(a).await;
        close(b).await;
    }

    #[tokio::test]
    async fn a_node_that_lost_its_replica_gets_it_back_from_the_stream() {
        let place = JetStreamPlace::new();
        let a = place.node("a").await;
        for n in 0..30 {
            a.append(posted("lobby", n)).await.expect("append");
        }
        let before = a.read_raw(1, usize::MAX).await.expect("raw");
        close(a).await;
        std::fs::remove_dir_all(place.dir.path().join("a")).expect("lose the replica");
        let a = place.node("a").await;
        a.watch_head().wait_for(|&head| head >= 30).await.expect("caught up");
        assert_eq!(a.read_raw(1, usize::MAX).await.expect("raw"), before, "the same records, byte for byte");
        assert_eq!(a.append(posted("lobby", 30)).await.expect("append").seq, 31);
        close(a).await;
    }
}
