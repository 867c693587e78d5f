//! Power cuts under the real binary: its data folder on CutFs (tests/cutfs), where a cut keeps
//! only what was fsynced, the server SIGKILLed at the cut and started again on what survived.
//! A user's checks: every acknowledged message back once with its seq, no seq given twice,
//! search and resume agree with the history, every acknowledged upload reads back its bytes,
//! and the server starts (DESIGN.md invariants 1 and 2). Where FUSE cannot be had, the tests
//! say why they skip.
//!
//! `POWERCUT_SEED=<n>` replays the moments of the cuts of an earlier run (each test prints its
//! seed); the server's timing still varies. `POWERCUT_NAMES=journaled` makes any fsync keep
//! every folder's names (as ext4's and XFS's journals do in practice) instead of only what
//! POSIX promises, to tell a missing folder fsync from a missing file fsync.
//! `POWERCUT_CONTROL=kill9` replaces each cut by a plain kill -9 (nothing dropped): a control
//! run, which must pass.

mod common;
mod cutfs;

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{get, search_all, whole_history};
use cutfs::CutFs;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

/// Power cuts in the chat test.
const CUTS: usize = 50;
const ROOMS: [&str; 3] = ["north", "south", "east"];
/// Senders, spread over the rooms: two in each room, so each also reads the other's messages.
const SENDERS: usize = 6;
/// Sends a sender keeps unacknowledged at once: enough to have appends in flight at the cut.
const WINDOW: usize = 8;
/// Body sizes, mixed: a line of text, a paste, and the largest body the server takes by default
/// (`limits.body_bytes_max`), which sled stores apart from its pages.
const BODY_BYTES: [usize; 3] = [100, 20 * 1024, 64 * 1024];
/// Load before each cut, in ms: a random moment in this range.
const LOAD_MS_MIN: u64 = 100;
const LOAD_MS_MAX: u64 = 500;
/// Longest wait for a round's first acks before its load clock starts anyway.
const WARM_UP_MAX: Duration = Duration::from_secs(10);
/// A server that fails to start this many times in a row will not start on this data: the
/// remaining cuts are not made (each failure is counted).
const START_FAILURES_IN_A_ROW_MAX: usize = 3;
/// How long a start may take before it counts as failed.
const START_WAIT: Duration = Duration::from_secs(30);

/// A small deterministic generator (xorshift64), so that a seed replays the cut moments.
struct Rng(u64);

impl Rng {
    /// Seeded from `POWERCUT_SEED`, else the clock; the seed is printed.
    fn seeded(test: &str) -> Self {
        let seed = std::env::var("POWERCUT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64) | 1);
        eprintln!("{test}: seed {seed} (POWERCUT_SEED={seed} replays the cut moments)");
        Self(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low + 1)
    }
}

/// FNV-1a: a stable hash of a name, to derive sizes and bytes from it.
fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// The real binary serving a data folder on CutFs. Dropping it SIGKILLs and reaps it by pid.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// SIGKILL, then reap, by pid: the `kill` of a cut.
    fn kill(mut self) {
        self.child.kill().expect("SIGKILL the server");
        self.child.wait().expect("reap the server");
    }
}

/// A start that failed: why, and the server's stderr.
struct StartFailure {
    why: String,
    stderr: String,
}

/// Starts the binary on `data`, its stderr to `log` (off the mount), as `common::spawn_with`
/// does but without panicking: a server that exits or writes no address within
/// [`START_WAIT`] is a [`StartFailure`].
async fn start(data: &Path, log: &Path, env: &[(&str, &str)]) -> Result<Server, StartFailure> {
    let addr_file = data.join("roomlog.addr");
    let _ = std::fs::remove_file(&addr_file);
    let stderr_of = || std::fs::read_to_string(log).unwrap_or_default();
    let stderr = File::create(log).expect("server log file");
    let child = Command::new(env!("CARGO_BIN_EXE_roomlog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("ROOMLOG_LOG", "warn")
        .env("ROOMLOG_AUTH__ANONYMOUS", "write")
        .env("ROOMLOG_LIMITS__FRAMES_PER_SECOND", "0")
        .env("ROOMLOG_AUTH__ADMIN_FROM_HOST", "true")
        .envs(common::HOST_DISK_INDEPENDENT)
        // A starting room reads its ring (whole messages) and its duplicate window from the
        // history: 1,000 and 10,000 messages of up to 64 KiB by default, read through FUSE by a
        // debug build at every restart. Durability does not depend on either size, and both
        // still cover every message a round sends to a room (a resend is always found).
        .env("ROOMLOG_CHAT__RING_CAPACITY", "100")
        .env("ROOMLOG_CHAT__DEDUP_WINDOW", "1000")
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| StartFailure { why: format!("the binary did not run: {e}"), stderr: String::new() })?;
    let mut server = Server { child, addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
    let deadline = Instant::now() + START_WAIT;
    loop {
        if let Some(addr) = std::fs::read_to_string(&addr_file).ok().and_then(|s| s.trim().parse().ok()) {
            server.addr = addr;
            return Ok(server);
        }
        if let Ok(Some(status)) = server.child.try_wait() {
            return Err(StartFailure { why: format!("the server exited: {status}"), stderr: stderr_of() });
        }
        if Instant::now() > deadline {
            drop(server);
            return Err(StartFailure { why: format!("no address within {START_WAIT:?}"), stderr: stderr_of() });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Prints a test's one-line result and adds it to `powercut-summary.txt` in cargo's target
/// folder for tests, which `.ci/run` prints: cargo shows nothing of a passing test.
fn report(line: &str) {
    println!("{line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("powercut-summary.txt");
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, format!("{line}\n").as_bytes()));
    if let Err(e) = appended {
        eprintln!("could not add the result to {}: {e}", path.display());
    }
}

/// Mounts CutFs under `dir` and makes `<mount>/data` durable, as an operator's mkdir and a
/// sync would; `None` (said why, in the summary too) where FUSE cannot be had.
fn mount_data(dir: &Path, test: &str) -> Option<(CutFs, PathBuf)> {
    let fs = match cutfs::mount_or_why(&dir.join("mnt")) {
        Ok(fs) => fs,
        Err(why) => {
            report(&format!("{test}: skipped: {why}"));
            return None;
        }
    };
    if std::env::var("POWERCUT_NAMES").as_deref() == Ok("journaled") {
        eprintln!("POWERCUT_NAMES=journaled: any fsync makes every folder's names durable (ext4-like)");
        fs.set_journaled_names(true);
    }
    let data = fs.mountpoint().join("data");
    std::fs::create_dir(&data).expect("data folder");
    File::open(fs.mountpoint()).and_then(|root| root.sync_all()).expect("fsync the mount's root");
    Some((fs, data))
}

/// The cut: SIGKILL and reap the server while the file system is frozen, then drop what was
/// not fsynced. Blocks this worker thread for the cut's length.
///
/// `POWERCUT_CONTROL=kill9` makes it a plain kill -9 that keeps everything (a control run: the
/// harness itself must then pass).
fn cut(fs: &CutFs, server: Server) {
    if std::env::var("POWERCUT_CONTROL").as_deref() == Ok("kill9") {
        return server.kill();
    }
    tokio::task::block_in_place(|| fs.cut(|| server.kill()));
}

/// Waits (bounded) until every projection has the whole log; says which lags otherwise.
async fn caught_up(addr: SocketAddr, wait: Duration) -> Result<(), String> {
    let deadline = Instant::now() + wait;
    loop {
        let (_, ready) = get(addr, "/readyz").await;
        let lagging: Vec<String> = ready["projections"]
            .as_object()
            .map(|p| p.iter().filter(|(_, v)| v["lag_events"] != 0).map(|(k, v)| format!("{k}: {v}")).collect())
            .unwrap_or_else(|| vec![format!("no projections in {ready}")]);
        if lagging.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(lagging.join(", "));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The gist of a server's stderr, for the report: its first `lines` lines that are not
/// backtrace frames.
fn gist(stderr: &str, lines: usize) -> String {
    let frame = |line: &&str| {
        let line = line.trim_start();
        line.starts_with("at ")
            || line == "stack backtrace:"
            || line.split_once(": ").is_some_and(|(n, _)| n.chars().all(|c| c.is_ascii_digit()))
    };
    stderr.lines().filter(|line| !frame(line)).take(lines).collect::<Vec<_>>().join("\n")
}

// ---------------------------------------------------------------------------------------------
// Chat

/// A message body for `client_id`: it starts with `body <client_id>` (searchable words), and
/// its size, one of [`BODY_BYTES`], follows from the id, so the history can be checked byte for
/// byte. The filler words are longer than any token the search index keeps.
fn body_of(client_id: &str) -> String {
    let size = BODY_BYTES[(fnv(client_id) % BODY_BYTES.len() as u64) as usize];
    let mut body = format!("body {client_id}");
    while body.len() < size {
        body.push(' ');
        body.extend(std::iter::repeat_n('z', (size - body.len()).min(99)));
    }
    body.truncate(size);
    body
}

/// What the senders were told, across every round.
#[derive(Default)]
struct Ledger {
    /// client id → (room, seq) of its first ack.
    acked: HashMap<String, (usize, u64)>,
    /// (room, seq) → the client id first acknowledged under it.
    by_seq: HashMap<(usize, u64), String>,
    /// Acks of a seq already acknowledged for another client id.
    reused: Vec<String>,
    /// Acks of a client id under a seq other than its first.
    moved: Vec<String>,
    /// Client ids first acknowledged in the current round.
    this_round: Vec<String>,
    /// Error frames about a send.
    send_errors: BTreeMap<String, usize>,
}

impl Ledger {
    fn ack(&mut self, room: usize, client_id: &str, seq: u64) {
        match self.acked.get(client_id) {
            Some(&(_, first)) if first != seq => {
                self.moved.push(format!("{client_id} acknowledged as seq {first}, then as {seq}"))
            }
            Some(_) => {}
            None => {
                self.acked.insert(client_id.to_owned(), (room, seq));
                self.this_round.push(client_id.to_owned());
            }
        }
        match self.by_seq.get(&(room, seq)) {
            Some(first) if first != client_id => {
                self.reused.push(format!("{} seq {seq}: acknowledged for {first} and {client_id}", ROOMS[room]))
            }
            Some(_) => {}
            None => {
                self.by_seq.insert((room, seq), client_id.to_owned());
            }
        }
    }
}

/// One sender's ids sent but never acknowledged (retried first on the next connection), and
/// its count of ids made.
#[derive(Default)]
struct Outbox {
    unacked: Vec<String>,
    made: u64,
}

/// One sender until the cut: connects, joins its room, retries its unacknowledged ids, then
/// sends new ones, keeping up to [`WINDOW`] in flight and reading everything the server sends;
/// connects again if dropped before the cut.
async fn send_until_cut(
    addr: SocketAddr,
    sender: usize,
    outbox: Arc<Mutex<Outbox>>,
    ledger: Arc<Mutex<Ledger>>,
    cut_made: Arc<AtomicBool>,
    held: Arc<AtomicBool>,
) {
    let room = sender % ROOMS.len();
    while !cut_made.load(Ordering::SeqCst) {
        send_on_one_connection(addr, sender, room, &outbox, &ledger, &held).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn send_on_one_connection(
    addr: SocketAddr,
    sender: usize,
    room: usize,
    outbox: &Mutex<Outbox>,
    ledger: &Mutex<Ledger>,
    held: &AtomicBool,
) {
    let Ok((ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?name=s{sender}")).await else { return };
    let (mut tx, mut rx) = ws.split();
    let join = json!({"type": "join", "room": ROOMS[room], "since": u64::MAX});
    if tx.send(Message::text(join.to_string())).await.is_err() {
        return;
    }
    let mut retry: Vec<String> = outbox.lock().expect("lock").unacked.clone();
    retry.reverse();
    let mut in_flight = 0;
    loop {
        while in_flight < WINDOW && !held.load(Ordering::SeqCst) {
            let client_id = retry.pop().unwrap_or_else(|| {
                let mut outbox = outbox.lock().expect("lock");
                outbox.made += 1;
                let id = format!("{}-s{sender}-{}", ROOMS[room], outbox.made);
                outbox.unacked.push(id.clone());
                id
            });
            let frame =
                json!({"type": "send", "room": ROOMS[room], "body": body_of(&client_id), "client_id": client_id});
            if tx.send(Message::text(frame.to_string())).await.is_err() {
                return;
            }
            in_flight += 1;
        }
        // Bounded, so that a sender held with nothing in flight sends again once let go.
        let Ok(next) = tokio::time::timeout(Duration::from_millis(50), rx.next()).await else { continue };
        let Some(Ok(Message::Text(text))) = next else { return };
        let Ok(frame) = serde_json::from_str::<Value>(text.as_str()) else { return };
        match frame["type"].as_str() {
            Some("ack") => {
                let client_id = frame["client_id"].as_str().expect("an ack names its client_id");
                let seq = frame["seq"].as_u64().expect("an ack has a seq");
                ledger.lock().expect("lock").ack(room, client_id, seq);
                outbox.lock().expect("lock").unacked.retain(|c| c != client_id);
                in_flight -= 1;
            }
            Some("error") if frame["client_id"].is_string() => {
                let code = frame["code"].as_str().unwrap_or("?").to_owned();
                *ledger.lock().expect("lock").send_errors.entry(code).or_default() += 1;
                // Left unacknowledged: retried on the next connection.
                in_flight -= 1;
            }
            _ => {}
        }
    }
}

/// The messages of `room` with seq in `from..=through`, by client id: (seq, body matches).
async fn stored_between(addr: SocketAddr, room: &str, from: u64, through: u64) -> HashMap<String, (u64, bool)> {
    let mut stored = HashMap::new();
    let mut after = from.saturating_sub(1);
    loop {
        let (status, page) = get(addr, &format!("/api/rooms/{room}/messages?after={after}&limit=200")).await;
        if status == 404 {
            return stored;
        }
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        for message in &messages {
            let seq = message["seq"].as_u64().expect("seq");
            let client_id = message["client_id"].as_str().unwrap_or_default().to_owned();
            if seq <= through {
                let intact = message["body"].as_str() == Some(body_of(&client_id).as_str());
                stored.insert(client_id, (seq, intact));
            }
            after = seq;
        }
        if page["more"] != true || after >= through {
            return stored;
        }
    }
}

/// Acknowledged ids of `ids` that the server does not have under their seq with their body.
async fn missing(addr: SocketAddr, acked: &HashMap<String, (usize, u64)>, ids: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for (room, name) in ROOMS.iter().enumerate() {
        let seqs: Vec<u64> =
            ids.iter().filter_map(|id| acked.get(id)).filter(|(r, _)| *r == room).map(|&(_, s)| s).collect();
        let (Some(&from), Some(&through)) = (seqs.iter().min(), seqs.iter().max()) else { continue };
        let stored = stored_between(addr, name, from, through).await;
        for id in ids {
            let Some(&(r, seq)) = acked.get(id) else { continue };
            if r == room && stored.get(id) != Some(&(seq, true)) {
                out.push(format!("{id} (seq {seq}): {:?}", stored.get(id)));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_power_cuts_at_random_moments() {
    chat_under_power_cuts("power cuts", CUTS, false).await;
}

/// The same while the log's files are rewritten online (`POST /api/janitor/rewrite_log`, what
/// the janitor does after a large purge) over and over, so that the cuts fall while the copy
/// is written, while appends are held off for the swap, and between its renames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_message_survives_power_cuts_during_online_rewrites_of_the_log() {
    chat_under_power_cuts("power cuts during online log rewrites", REWRITE_CUTS, true).await;
}

/// Power cuts in the test with online rewrites of the log.
const REWRITE_CUTS: usize = 9;
/// Where the first rounds of the rewrite test cut, one each: at each step of the swap, where
/// the server is made to stop (`fault::pause_blocking`) so that the cut falls exactly there.
/// The rounds after them cut at a random moment (most often while the copy is written). The
/// steps come first, while the log is small: a round waits for its rewrite to get there, and
/// the senders go on meanwhile.
/// Once a point is reached the round's load goes on for as long again before the cut: at the
/// first, the new log takes appends, so that messages acknowledged only by it are cut too.
const REWRITE_POINTS: [&str; 4] =
    ["log-rewrite:reopened", "log-rewrite:copied", "log-swap:moved-aside", "log-rewrite:swapped"];
/// Longest wait for a round's rewrite to reach its point.
const POINT_WAIT: Duration = Duration::from_secs(30);

/// Asks the server at `addr` for rewrites of its log, one after another, until the cut; how
/// many finished.
async fn rewrite_until_cut(addr: SocketAddr, cut_made: Arc<AtomicBool>) -> usize {
    let client = reqwest::Client::new();
    let mut done = 0;
    while !cut_made.load(Ordering::SeqCst) {
        let url = format!("http://{addr}/api/janitor/rewrite_log");
        match client.post(url).send().await {
            Ok(answer) if answer.status().is_success() => done += 1,
            Ok(answer) => eprintln!("a rewrite was refused: {}", answer.text().await.unwrap_or_default()),
            Err(_) => break, // the server is gone: the cut
        }
    }
    done
}

/// Senders under power cuts at random moments, `cuts` of them, with rewrites of the log
/// running throughout each round if `rewrites`; then the user's checks.
async fn chat_under_power_cuts(name: &str, cuts_wanted: usize, rewrites: bool) {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((fs, data)) = mount_data(dir.path(), name) else { return };
    let mut rng = Rng::seeded(if rewrites { "chat with rewrites" } else { "chat" });
    let mut rewrites_done = 0;
    let mut points_reached: BTreeMap<&str, usize> = BTreeMap::new();
    let ledger: Arc<Mutex<Ledger>> = Arc::default();
    let outboxes: Vec<Arc<Mutex<Outbox>>> = (0..SENDERS).map(|_| Arc::default()).collect();
    let mut start_failures: Vec<String> = Vec::new();
    let mut failures_in_a_row = 0;
    let mut cuts = 0;
    let mut lost_at_restart = 0;

    for round in 0..=cuts_wanted {
        let log = dir.path().join(format!("server-{round}.log"));
        let point = REWRITE_POINTS.get(round).copied().filter(|_| rewrites);
        let env: Vec<(&str, &str)> = point.map(|p| (roomlog::fault::ENV, p)).into_iter().collect();
        let server = match start(&data, &log, &env).await {
            Ok(server) => server,
            Err(failure) => {
                eprintln!("round {round}: the server did not start: {}\n{}", failure.why, gist(&failure.stderr, 12));
                start_failures.push(format!("round {round}: {}: {}", failure.why, gist(&failure.stderr, 2)));
                failures_in_a_row += 1;
                if failures_in_a_row == START_FAILURES_IN_A_ROW_MAX {
                    eprintln!("{failures_in_a_row} failed starts in a row: no more cuts");
                    break;
                }
                continue;
            }
        };
        failures_in_a_row = 0;

        // What the last round acknowledged is back after the restart.
        let checked: Vec<String> = std::mem::take(&mut ledger.lock().expect("lock").this_round);
        if !checked.is_empty() {
            if let Err(lagging) = caught_up(server.addr, Duration::from_secs(20)).await {
                eprintln!("round {round}: projections not caught up: {lagging}");
            }
            let acked: HashMap<String, (usize, u64)> = {
                let ledger = ledger.lock().expect("lock");
                checked.iter().filter_map(|id| Some((id.clone(), *ledger.acked.get(id)?))).collect()
            };
            let gone = missing(server.addr, &acked, &checked).await;
            if !gone.is_empty() {
                eprintln!(
                    "round {round}: {} of the {} messages acknowledged before cut {cuts} are missing, e.g. {}",
                    gone.len(),
                    checked.len(),
                    gone[..gone.len().min(3)].join("; ")
                );
                lost_at_restart += gone.len();
            }
        }
        if round == cuts_wanted {
            drop(server);
            break;
        }

        let cut_made = Arc::new(AtomicBool::new(false));
        let held = Arc::new(AtomicBool::new(false));
        let senders: Vec<_> = (0..SENDERS)
            .map(|s| {
                let (outbox, ledger, cut_made, held) =
                    (outboxes[s].clone(), ledger.clone(), cut_made.clone(), held.clone());
                tokio::spawn(send_until_cut(server.addr, s, outbox, ledger, cut_made, held))
            })
            .collect();
        let rewriter = rewrites.then(|| tokio::spawn(rewrite_until_cut(server.addr, cut_made.clone())));
        // The load's clock starts at the round's first acks: a restarted server may take a
        // while to take writes (rooms load their recent history), and the cut must fall under
        // load, not before it.
        let warm_up = Instant::now();
        while ledger.lock().expect("lock").this_round.len() < SENDERS && warm_up.elapsed() < WARM_UP_MAX {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let warm_up = warm_up.elapsed();
        let load = Duration::from_millis(rng.between(LOAD_MS_MIN, LOAD_MS_MAX));
        tokio::time::sleep(load).await;
        if let Some(point) = point {
            // The senders stop sending new messages while the rewrite gets there (appends
            // faster than its gentle copy would keep it from ending), then go on.
            held.store(true, Ordering::SeqCst);
            let paused = format!("roomlog fault: paused at {point}");
            let waiting = Instant::now();
            while !std::fs::read_to_string(&log).unwrap_or_default().contains(&paused) && waiting.elapsed() < POINT_WAIT
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            held.store(false, Ordering::SeqCst);
            if std::fs::read_to_string(&log).unwrap_or_default().contains(&paused) {
                *points_reached.entry(point).or_default() += 1;
                tokio::time::sleep(load).await;
            } else {
                eprintln!("round {round}: the rewrite did not reach {point} within {POINT_WAIT:?}; cut anyway");
            }
        }
        cut_made.store(true, Ordering::SeqCst);
        cut(&fs, server);
        cuts += 1;
        for sender in senders {
            tokio::time::timeout(Duration::from_secs(30), sender)
                .await
                .expect("a sender ends once its server is gone")
                .expect("sender task");
        }
        if let Some(rewriter) = rewriter {
            rewrites_done += tokio::time::timeout(Duration::from_secs(30), rewriter)
                .await
                .expect("the rewrites end once the server is gone")
                .expect("rewrite task");
        }
        let stats = fs.stats();
        eprintln!(
            "cut {cuts}: after {warm_up:?} to the first acks and {load:?} of load; {} acknowledged so far; the cuts dropped {} KiB, \
             {} names and {} files so far",
            ledger.lock().expect("lock").acked.len(),
            stats.bytes_dropped / 1024,
            stats.names_dropped,
            stats.inodes_dropped
        );
    }

    // The final check, on a server started once more.
    // The senders are done: the ledger is ours.
    let ledger = std::mem::take(&mut *ledger.lock().expect("lock"));
    let log = dir.path().join("server-final.log");
    let mut problems: Vec<String> = Vec::new();
    let (lost, reused) = match start(&data, &log, &[]).await {
        Err(failure) => {
            eprintln!("final start failed: {}\n{}", failure.why, gist(&failure.stderr, 12));
            start_failures.push(format!("final: {}: {}", failure.why, gist(&failure.stderr, 2)));
            problems
                .push("the server did not start for the final check: every acknowledged message counts lost".into());
            (ledger.acked.len(), ledger.reused.len())
        }
        Ok(server) => {
            let (lost, reused) = check_history(&server, &ledger, &mut problems).await;
            drop(server);
            (lost, reused)
        }
    };
    eprintln!(
        "{} s in all; {} sends refused ({:?}); {} messages missing at some restart; cutfs: {:?}",
        started.elapsed().as_secs(),
        ledger.send_errors.values().sum::<usize>(),
        ledger.send_errors,
        lost_at_restart,
        fs.stats()
    );
    for problem in problems.iter().take(20) {
        eprintln!("problem: {problem}");
    }
    for failure in &start_failures {
        eprintln!("start-up failure: {failure}");
    }
    let rewritten = if rewrites {
        format!(", online rewrites finished {rewrites_done}, cuts at a step of the swap {points_reached:?}")
    } else {
        String::new()
    };
    report(&format!(
        "{name}: {cuts}, acknowledged {}, lost {}, reused seqs {}, start-up failures {}{rewritten}",
        thousands(ledger.acked.len()),
        thousands(lost),
        thousands(reused),
        thousands(start_failures.len())
    ));
    assert_eq!(lost, 0, "acknowledged messages lost");
    assert_eq!(reused, 0, "seqs acknowledged for two messages");
    assert_eq!(start_failures.len(), 0, "start-up failures");
    assert!(ledger.acked.len() > cuts_wanted * 10, "the test must acknowledge messages to mean anything");
    if rewrites {
        let unreached: Vec<&str> = REWRITE_POINTS.iter().copied().filter(|p| !points_reached.contains_key(p)).collect();
        assert!(unreached.is_empty(), "the cuts must fall at every step of the swap; never reached: {unreached:?}");
    }
    assert!(problems.is_empty(), "{} problems, the first: {:?}", problems.len(), problems.first());
}

/// `12345` as `12,345`.
fn thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The final check of the history, search and resume; returns (lost, reused seqs) and adds
/// what else is wrong to `problems`.
async fn check_history(server: &Server, ledger: &Ledger, problems: &mut Vec<String>) -> (usize, usize) {
    if let Err(lagging) = caught_up(server.addr, Duration::from_secs(60)).await {
        problems.push(format!("projections never caught up: {lagging}"));
    }
    let mut stored: HashMap<String, (usize, u64, bool)> = HashMap::new();
    let mut reused = ledger.reused.len() + ledger.moved.len();
    problems.extend(ledger.reused.iter().chain(&ledger.moved).cloned());
    for (room, name) in ROOMS.iter().enumerate() {
        let history = whole_history(server.addr, name).await;
        let seqs: Vec<u64> = history.iter().map(|m| m["seq"].as_u64().expect("seq")).collect();
        if !seqs.windows(2).all(|w| w[0] < w[1]) {
            problems.push(format!("{name}: history seqs not increasing"));
        }
        for message in &history {
            let client_id = message["client_id"].as_str().unwrap_or_default().to_owned();
            let seq = message["seq"].as_u64().expect("seq");
            let intact = message["body"].as_str() == Some(body_of(&client_id).as_str());
            if let Some(acked_for) = ledger.by_seq.get(&(room, seq)) {
                if acked_for != &client_id {
                    reused += 1;
                    problems.push(format!("{name} seq {seq}: acknowledged for {acked_for}, stores {client_id}"));
                }
            }
            if stored.insert(client_id.clone(), (room, seq, intact)).is_some() {
                problems.push(format!("{client_id} stored twice"));
            }
        }

        // Search agrees with the history: every stored message once, newest first.
        let (total, hits) = search_all(server.addr, &format!("q=body&room={name}&sort=time")).await;
        let mut found: Vec<u64> = hits.iter().map(|h| h["seq"].as_u64().expect("seq")).collect();
        found.reverse();
        if total != seqs.len() as u64 || found != seqs {
            problems.push(format!(
                "{name}: search finds {} (total {total}), the history holds {}",
                found.len(),
                seqs.len()
            ));
        }

        // A reader resuming after a seq gets exactly the later messages.
        let Some(&since) = seqs.get(seqs.len().saturating_sub(150)) else { continue };
        let later: Vec<u64> = seqs.iter().copied().filter(|&s| s > since).collect();
        let resumed = resume(server.addr, name, since, later.len()).await;
        if resumed != later {
            problems.push(format!(
                "{name}: resuming after {since} gave {} messages ({:?}…), not the {} later ones ({:?}…)",
                resumed.len(),
                &resumed[..resumed.len().min(5)],
                later.len(),
                &later[..later.len().min(5)]
            ));
        }
    }
    let mut lost = 0;
    for (client_id, &(room, seq)) in &ledger.acked {
        match stored.get(client_id) {
            Some(&(r, s, true)) if (r, s) == (room, seq) => {}
            Some(&(r, s, intact)) => {
                lost += 1;
                problems.push(format!(
                    "{client_id}: acknowledged as {} seq {seq}, stored as {} seq {s}{}",
                    ROOMS[room],
                    ROOMS[r],
                    if intact { "" } else { " with another body" }
                ));
            }
            None => {
                lost += 1;
                if lost <= 5 {
                    problems.push(format!("{client_id}: acknowledged as {} seq {seq}, not stored", ROOMS[room]));
                }
            }
        }
    }
    (lost, reused)
}

/// The seqs a reader joining `room` with `since` receives: messages until `expected` have come
/// (or none came for 10 s), then any more that arrive before the answer to a ping.
async fn resume(addr: SocketAddr, room: &str, since: u64, expected: usize) -> Vec<u64> {
    let mut seqs = Vec::new();
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?name=reader")).await else {
        return seqs;
    };
    let join = json!({"type": "join", "room": room, "since": since});
    if ws.send(Message::text(join.to_string())).await.is_err() {
        return seqs;
    }
    let mut pinged = false;
    loop {
        if seqs.len() >= expected && !pinged {
            pinged = true;
            if ws.send(Message::text(json!({"type": "ping", "id": 1}).to_string())).await.is_err() {
                return seqs;
            }
        }
        let Ok(Some(Ok(Message::Text(text)))) = tokio::time::timeout(Duration::from_secs(10), ws.next()).await else {
            return seqs;
        };
        let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
        match frame["type"].as_str() {
            Some("message") => seqs.push(frame["seq"].as_u64().unwrap_or_default()),
            Some("pong") => return seqs,
            _ => {}
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Uploads

/// Power cuts in the upload test.
const UPLOAD_CUTS: usize = 20;
/// Uploads in flight at once, each one after another.
const UPLOADERS: usize = 2;
/// Upload sizes, mixed: within one copy buffer, a few buffers, and many.
const UPLOAD_BYTES: [usize; 4] = [1_000, 100_000, 1 << 20, 3 << 20];

/// The bytes uploaded under `key`: a size of [`UPLOAD_BYTES`] and content that follow from the
/// key, different for every key (no two uploads share content).
fn content_of(key: &str) -> Vec<u8> {
    let seed = fnv(key);
    let mut rng = Rng(seed | 1);
    let size = UPLOAD_BYTES[(seed % UPLOAD_BYTES.len() as u64) as usize];
    let mut bytes = Vec::with_capacity(size + 8);
    while bytes.len() < size {
        bytes.extend_from_slice(&rng.next().to_le_bytes());
    }
    bytes.truncate(size);
    bytes
}

/// Keys acknowledged (2xx), and what else the uploaders were told.
#[derive(Default)]
struct Uploads {
    acked: Vec<String>,
    this_round: Vec<String>,
    refused: BTreeMap<u16, usize>,
}

/// One uploader until the cut: uploads new keys one after another.
async fn upload_until_cut(
    addr: SocketAddr,
    uploader: usize,
    round: usize,
    uploads: Arc<Mutex<Uploads>>,
    cut_made: Arc<AtomicBool>,
) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
    for n in 0.. {
        if cut_made.load(Ordering::SeqCst) {
            return;
        }
        let key = format!("permanent/cut/r{round}-u{uploader}-{n}.bin");
        let sent = client
            .put(format!("http://{addr}/api/files/{key}"))
            .header("content-type", "application/octet-stream")
            .body(content_of(&key))
            .send()
            .await;
        match sent {
            Ok(response) if response.status().is_success() => {
                let mut uploads = uploads.lock().expect("lock");
                uploads.acked.push(key.clone());
                uploads.this_round.push(key);
            }
            Ok(response) => *uploads.lock().expect("lock").refused.entry(response.status().as_u16()).or_default() += 1,
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Keys of `keys` that do not read back exactly their bytes, with what came instead.
async fn unreadable(addr: SocketAddr, keys: &[String]) -> Vec<String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("http client");
    let mut out = Vec::new();
    for key in keys {
        let read = match client.get(format!("http://{addr}/api/files/{key}")).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                response.bytes().await.map(|b| (status, b.to_vec())).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok((200, bytes)) if bytes == content_of(key) => {}
            Ok((status, bytes)) => {
                out.push(format!("{key}: HTTP {status}, {} bytes of {}", bytes.len(), content_of(key).len()))
            }
            Err(e) => out.push(format!("{key}: {e}")),
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_upload_reads_back_its_bytes_after_power_cuts() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((fs, data)) = mount_data(dir.path(), "upload power cuts") else { return };
    let mut rng = Rng::seeded("uploads");
    let uploads: Arc<Mutex<Uploads>> = Arc::default();
    let mut start_failures: Vec<String> = Vec::new();
    let mut failures_in_a_row = 0;
    let mut cuts = 0;
    let mut lost_at_restart = 0;

    for round in 0..=UPLOAD_CUTS {
        let log = dir.path().join(format!("upload-server-{round}.log"));
        let server = match start(&data, &log, &[]).await {
            Ok(server) => server,
            Err(failure) => {
                eprintln!("round {round}: the server did not start: {}\n{}", failure.why, gist(&failure.stderr, 12));
                start_failures.push(format!("round {round}: {}: {}", failure.why, gist(&failure.stderr, 2)));
                failures_in_a_row += 1;
                if failures_in_a_row == START_FAILURES_IN_A_ROW_MAX {
                    eprintln!("{failures_in_a_row} failed starts in a row: no more cuts");
                    break;
                }
                continue;
            }
        };
        failures_in_a_row = 0;
        let checked = std::mem::take(&mut uploads.lock().expect("lock").this_round);
        let gone = unreadable(server.addr, &checked).await;
        if !gone.is_empty() {
            eprintln!(
                "round {round}: {} of the {} uploads acknowledged before cut {cuts} do not read back, e.g. {}",
                gone.len(),
                checked.len(),
                gone[..gone.len().min(3)].join("; ")
            );
            lost_at_restart += gone.len();
        }
        if round == UPLOAD_CUTS {
            break;
        }
        let cut_made = Arc::new(AtomicBool::new(false));
        let uploaders: Vec<_> = (0..UPLOADERS)
            .map(|u| tokio::spawn(upload_until_cut(server.addr, u, round, uploads.clone(), cut_made.clone())))
            .collect();
        let load = Duration::from_millis(rng.between(LOAD_MS_MIN, LOAD_MS_MAX));
        tokio::time::sleep(load).await;
        cut_made.store(true, Ordering::SeqCst);
        cut(&fs, server);
        cuts += 1;
        for uploader in uploaders {
            tokio::time::timeout(Duration::from_secs(60), uploader)
                .await
                .expect("an uploader ends once its server is gone")
                .expect("uploader task");
        }
    }

    let uploads = std::mem::take(&mut *uploads.lock().expect("lock"));
    let log = dir.path().join("upload-server-final.log");
    let lost = match start(&data, &log, &[]).await {
        Err(failure) => {
            eprintln!("final start failed: {}\n{}", failure.why, gist(&failure.stderr, 12));
            start_failures.push(format!("final: {}: {}", failure.why, gist(&failure.stderr, 2)));
            uploads.acked.clone()
        }
        Ok(server) => unreadable(server.addr, &uploads.acked).await,
    };
    eprintln!(
        "{} s in all; refused: {:?}; {lost_at_restart} uploads unreadable at some restart; cutfs: {:?}",
        started.elapsed().as_secs(),
        uploads.refused,
        fs.stats()
    );
    for key in lost.iter().take(10) {
        eprintln!("lost: {key}");
    }
    for failure in &start_failures {
        eprintln!("start-up failure: {failure}");
    }
    report(&format!(
        "upload power cuts: {cuts}, acknowledged {}, lost {}, start-up failures {}",
        thousands(uploads.acked.len()),
        thousands(lost.len()),
        thousands(start_failures.len())
    ));
    assert_eq!(lost.len(), 0, "acknowledged uploads lost");
    assert_eq!(start_failures.len(), 0, "start-up failures");
    assert!(uploads.acked.len() > UPLOAD_CUTS, "the test must acknowledge uploads to mean anything");
}
