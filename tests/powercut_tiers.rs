//! Power cuts during moves between the hot and the cold tier, under the real binary: the data
//! folder and the cold tier folder both on CutFs (tests/cutfs), random keys' content moved back
//! and forth while the power is cut at a random moment, the server SIGKILLed at the cut and
//! started again on what survived. A user's checks after each restart: every acknowledged
//! upload reads back exactly its bytes; once start-up has settled the moves a cut broke off,
//! each content is in exactly one tier, intact (the blake3 of its bytes is its file name); an
//! acknowledged move left the content in the tier it was moved to; and the server starts
//! (DESIGN.md invariant 1, for files). Where FUSE cannot be had, the test says why it skips.
//!
//! The switches of tests/powercut.rs work here too: `POWERCUT_SEED=<n>` replays the keys moved
//! and the moments of the cuts (the server's timing still varies), `POWERCUT_NAMES=journaled`
//! keeps every folder's names at any fsync, and `POWERCUT_CONTROL=kill9` makes each cut a plain
//! kill -9 (a control run, which must pass).

mod common;
mod cutfs;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cutfs::CutFs;
use serde_json::Value;

/// Power cuts made.
const CUTS: usize = 20;
/// Upload sizes, one file each: from within one block to many copy buffers (256 KiB) of a move.
const FILE_BYTES: [usize; 10] =
    [1 << 10, 3 << 10, 10 << 10, 40 << 10, 100 << 10, 300 << 10, 600 << 10, 1 << 20, 3 << 19, 2 << 20];
/// Clients asking for moves at once, each one move after another over its own share of the
/// keys, so that the moves of one content never overlap and each has a last answer.
const MOVERS: usize = 2;
/// Moves one mover asks for in a round at most.
const MOVES_PER_ROUND_MAX: usize = 200;
/// Load before each cut, in ms: a random moment in this range.
const LOAD_MS_MIN: u64 = 20;
const LOAD_MS_MAX: u64 = 700;
/// Longest wait for an answer to one request.
const REQUEST_WAIT: Duration = Duration::from_secs(20);
/// A server that fails to start this many times in a row will not start on this data: the
/// remaining cuts are not made (each failure is counted).
const START_FAILURES_IN_A_ROW_MAX: usize = 3;
/// How long a start may take before it counts as failed.
const START_WAIT: Duration = Duration::from_secs(30);
/// Refusals kept for the report, at most; findings printed, at most, are four times as many
/// (one share for each kind).
const FINDINGS_PRINTED_MAX: usize = 10;

/// A small deterministic generator (xorshift64), so that a seed replays the moves and the cuts.
struct Rng(u64);

impl Rng {
    /// Seeded from `POWERCUT_SEED`, else the clock; the seed is printed.
    fn seeded(test: &str) -> Self {
        let seed = std::env::var("POWERCUT_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| SystemTime::now().duration_since(UNIX_EPOCH).map_or(7, |d| d.as_nanos() as u64) | 1);
        eprintln!("{test}: seed {seed} (POWERCUT_SEED={seed} replays the moves and the cut moments)");
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
/// [`START_WAIT`] is a [`StartFailure`]. The address is written after start-up has settled
/// the tier moves a crash broke off.
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

/// Mounts CutFs under `dir` and makes `<mount>/data` and `<mount>/cold` durable, as an
/// operator's mkdir and a sync would; `None` (said why, in the summary too) where FUSE cannot
/// be had. Returns the mount, the data folder and the cold tier folder.
fn mount_data_and_cold(dir: &Path, test: &str) -> Option<(CutFs, PathBuf, PathBuf)> {
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
    let (data, cold) = (fs.mountpoint().join("data"), fs.mountpoint().join("cold"));
    std::fs::create_dir(&data).expect("data folder");
    std::fs::create_dir(&cold).expect("cold tier folder");
    File::open(fs.mountpoint()).and_then(|root| root.sync_all()).expect("fsync the mount's root");
    Some((fs, data, cold))
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

/// A tier, as the server names it in `?tier=` and in its answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Hot,
    Cold,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::Cold => "cold",
        }
    }

    fn other(self) -> Self {
        match self {
            Tier::Hot => Tier::Cold,
            Tier::Cold => Tier::Hot,
        }
    }
}

/// One uploaded file: its key, bytes and blake3.
struct Upload {
    key: String,
    bytes: Vec<u8>,
    hash: String,
}

/// The files: one per size of [`FILE_BYTES`], each with bytes of its own (no two share content).
fn uploads() -> Vec<Upload> {
    FILE_BYTES
        .iter()
        .enumerate()
        .map(|(i, &size)| {
            let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (i as u64 + 1));
            let mut bytes = Vec::with_capacity(size + 8);
            while bytes.len() < size {
                bytes.extend_from_slice(&rng.next().to_le_bytes());
            }
            bytes.truncate(size);
            let hash = blake3::hash(&bytes).to_hex().to_string();
            Upload { key: format!("permanent/tiers/f{i}.bin"), bytes, hash }
        })
        .collect()
}

/// Where one file's content is, as far as the movers were told.
#[derive(Debug, Clone, Copy)]
struct Placement {
    /// Where the movers last saw the content: the next move asks for the other tier.
    believed: Tier,
    /// Where the content must be after a restart: the target of the last move acknowledged,
    /// or where the last check found it; `None` while a move was asked and not answered (a cut
    /// may fall on either side of it).
    expected: Option<Tier>,
}

/// What the movers were told, across every round.
#[derive(Default)]
struct Moves {
    placements: Vec<Placement>,
    /// Moves answered 2xx.
    acked: usize,
    /// Of those, moves that copied content (`"moved": true`), not just found it in place.
    moved: usize,
    /// Non-2xx answers, by status, while the file system was still up.
    refused: BTreeMap<u16, usize>,
    /// The first refusals' bodies.
    refusals: Vec<String>,
    /// Requests without an answer (the cut came first) or answered after the cut began.
    unanswered: usize,
}

/// One mover until the cut: asks, one after another, to move a random key of its share to the
/// tier other than the one it was last told.
async fn move_until_cut(
    addr: SocketAddr,
    mover: usize,
    seed: u64,
    moves: Arc<Mutex<Moves>>,
    cut_made: Arc<AtomicBool>,
) {
    let client = reqwest::Client::builder().timeout(REQUEST_WAIT).build().expect("http client");
    let mut rng = Rng(seed | 1);
    let share = (FILE_BYTES.len() - mover).div_ceil(MOVERS) as u64;
    for _ in 0..MOVES_PER_ROUND_MAX {
        if cut_made.load(Ordering::SeqCst) {
            return;
        }
        let file = mover + MOVERS * (rng.next() % share) as usize;
        let to = {
            let mut moves = moves.lock().expect("lock");
            let placement = &mut moves.placements[file];
            placement.expected = None;
            placement.believed.other()
        };
        let key = format!("permanent/tiers/f{file}.bin");
        let sent = client.post(format!("http://{addr}/api/files/{key}?tier={}", to.name())).send().await;
        let answer = match sent {
            Ok(response) => {
                let status = response.status().as_u16();
                response.json::<Value>().await.map(|body| (status, body)).ok()
            }
            Err(_) => None,
        };
        let unanswered = {
            let mut moves = moves.lock().expect("lock");
            match answer {
                Some((200..=299, body)) => {
                    assert_eq!(body["tier"], to.name(), "a move to {} of {key} answered {body}", to.name());
                    moves.acked += 1;
                    moves.moved += usize::from(body["moved"] == true);
                    moves.placements[file] = Placement { believed: to, expected: Some(to) };
                    false
                }
                Some((status, body)) if !cut_made.load(Ordering::SeqCst) => {
                    *moves.refused.entry(status).or_default() += 1;
                    if moves.refusals.len() < FINDINGS_PRINTED_MAX {
                        moves.refusals.push(format!("{key} to {}: HTTP {status} {body}", to.name()));
                    }
                    false
                }
                _ => {
                    moves.unanswered += 1;
                    true
                }
            }
        };
        if unanswered {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// What is wrong after a restart, each kind by key or hash, so that a fault seen at several
/// restarts counts once.
#[derive(Default)]
struct Findings {
    /// Files, by key, that did not read back exactly their bytes or whose content has no
    /// intact copy in either tier.
    lost: BTreeSet<String>,
    /// Acknowledged moves whose content was not in their target tier at the next restart.
    undone: BTreeSet<String>,
    /// Content found intact in both tiers.
    duplicates: BTreeSet<String>,
    /// Files in a tier that are not intact content under its hash: damaged copies, strays,
    /// temporary files left after start-up.
    bad_files: BTreeSet<String>,
    /// What each finding was, first seen where: for the report.
    details: Vec<String>,
}

impl Findings {
    fn add(&mut self, kind: fn(&mut Self) -> &mut BTreeSet<String>, what: String, detail: String) {
        if kind(self).insert(what) {
            self.details.push(detail);
        }
    }
}

/// The files under a tier folder: content (by hash, in fan-out folders named by the hash's
/// first two digits) checked against its name, and anything else.
#[derive(Default)]
struct TierScan {
    /// Hash → tiers holding an intact copy.
    intact: BTreeMap<String, Vec<Tier>>,
    /// Paths of files that are not intact content under their hash, with why.
    bad: Vec<(String, String)>,
}

fn scan_tier(root: &Path, tier: Tier, scan: &mut TierScan) {
    let entries = match std::fs::read_dir(root) {
        Ok(entries) => entries,
        Err(e) => return scan.bad.push((root.display().to_string(), format!("the tier folder cannot be read: {e}"))),
    };
    for entry in entries.flatten() {
        let fan = entry.path();
        let fan_name = entry.file_name().to_string_lossy().into_owned();
        let Ok(files) = std::fs::read_dir(&fan) else {
            scan.bad.push((fan.display().to_string(), "a file where fan-out folders belong".into()));
            continue;
        };
        for file in files.flatten() {
            let path = file.path();
            let name = file.file_name().to_string_lossy().into_owned();
            let why = if fan_name == "tmp" {
                let bytes = file.metadata().map_or(0, |m| m.len());
                Some(format!("a temporary file of {bytes} bytes left after start-up"))
            } else if fan_name.len() != 2 || !name.starts_with(&fan_name) || name.len() != 64 {
                Some("not named by a content hash in its fan-out folder".to_owned())
            } else {
                match std::fs::read(&path) {
                    Ok(bytes) => {
                        let found = blake3::hash(&bytes).to_hex().to_string();
                        (found != name).then(|| format!("damaged: {} bytes whose blake3 is {found}", bytes.len()))
                    }
                    Err(e) => Some(format!("unreadable: {e}")),
                }
            };
            match why {
                Some(why) => scan.bad.push((path.display().to_string(), why)),
                None => scan.intact.entry(name).or_default().push(tier),
            }
        }
    }
}

/// Keys of `files` that do not read back exactly their bytes, with what came instead.
async fn unreadable(addr: SocketAddr, files: &[Upload]) -> Vec<(String, String)> {
    let client = reqwest::Client::builder().timeout(REQUEST_WAIT).build().expect("http client");
    let mut out = Vec::new();
    for file in files {
        let read = match client.get(format!("http://{addr}/api/files/{}", file.key)).send().await {
            Ok(response) => {
                let status = response.status().as_u16();
                response.bytes().await.map(|b| (status, b.to_vec())).map_err(|e| e.to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        match read {
            Ok((200, bytes)) if bytes == file.bytes => {}
            Ok((status, bytes)) => {
                // An error's body says why; content that differs is only counted.
                let why = match status {
                    200 => String::new(),
                    _ => format!(": {}", String::from_utf8_lossy(&bytes[..bytes.len().min(200)])),
                };
                out.push((
                    file.key.clone(),
                    format!("HTTP {status}, {} bytes of {}{why}", bytes.len(), file.bytes.len()),
                ))
            }
            Err(e) => out.push((file.key.clone(), e)),
        }
    }
    out
}

/// The checks after a restart (`after` names the cut and the moves it broke off): keys read
/// back, one intact copy per content, acknowledged moves kept. Then, with nothing in flight,
/// every placement is set to where its content was found.
async fn check_after_restart(
    server: &Server,
    (hot, cold): (&Path, &Path),
    files: &[Upload],
    moves: &Mutex<Moves>,
    findings: &mut Findings,
    after: &str,
) {
    for (key, what) in unreadable(server.addr, files).await {
        findings.add(|f| &mut f.lost, key.clone(), format!("{after}: {key} does not read back: {what}"));
    }
    let (hot, cold) = (hot.to_path_buf(), cold.to_path_buf());
    let scan = tokio::task::spawn_blocking(move || {
        let mut scan = TierScan::default();
        scan_tier(&hot, Tier::Hot, &mut scan);
        scan_tier(&cold, Tier::Cold, &mut scan);
        scan
    })
    .await
    .expect("scan task");
    for (path, why) in &scan.bad {
        findings.add(|f| &mut f.bad_files, path.clone(), format!("{after}: {path}: {why}"));
    }
    let known: BTreeSet<&str> = files.iter().map(|f| f.hash.as_str()).collect();
    for hash in scan.intact.keys().filter(|h| !known.contains(h.as_str())) {
        findings.add(|f| &mut f.bad_files, hash.clone(), format!("{after}: content {hash} that no upload had"));
    }
    let mut moves = moves.lock().expect("lock");
    for (i, file) in files.iter().enumerate() {
        let tiers = scan.intact.get(&file.hash).cloned().unwrap_or_default();
        let placement = moves.placements[i];
        match tiers.as_slice() {
            [] => findings.add(
                |f| &mut f.lost,
                file.key.clone(),
                format!("{after}: {} ({}): no intact copy in either tier", file.key, file.hash),
            ),
            [_, _, ..] => findings.add(
                |f| &mut f.duplicates,
                file.hash.clone(),
                format!("{after}: {} ({}): intact in {tiers:?}", file.key, file.hash),
            ),
            [_] => {}
        }
        if let Some(expected) = placement.expected.filter(|t| !tiers.is_empty() && !tiers.contains(t)) {
            findings.add(
                |f| &mut f.undone,
                format!("{after}: {}", file.key),
                format!(
                    "{after}: {}: acknowledged moved to {}, found in {tiers:?} (size {} bytes)",
                    file.key,
                    expected.name(),
                    file.bytes.len()
                ),
            );
        }
        if let [found] = tiers.as_slice() {
            moves.placements[i] = Placement { believed: *found, expected: Some(*found) };
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_content_is_in_exactly_one_tier_after_power_cuts_during_tier_moves() {
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let Some((fs, data, cold)) = mount_data_and_cold(dir.path(), "tier-move power cuts") else { return };
    let hot = data.join("blobs/hot");
    let cold_env = cold.display().to_string();
    let env = [("ROOMLOG_FILES__COLD_DIR", cold_env.as_str())];
    let mut rng = Rng::seeded("tier moves");
    let files = Arc::new(uploads());
    let moves = Arc::new(Mutex::new(Moves {
        placements: vec![Placement { believed: Tier::Hot, expected: Some(Tier::Hot) }; files.len()],
        ..Moves::default()
    }));
    let mut findings = Findings::default();
    let mut start_failures: Vec<String> = Vec::new();
    let mut failures_in_a_row = 0;
    let mut uploaded = false;
    let mut cuts = 0;
    let mut in_flight_at_cut = String::new();

    for round in 0..=CUTS {
        let log = dir.path().join(format!("server-{round}.log"));
        let starting = Instant::now();
        let server = match start(&data, &log, &env).await {
            Ok(server) => server,
            Err(failure) => {
                eprintln!("round {round}: the server did not start: {}\n{}", failure.why, gist(&failure.stderr, 12));
                start_failures.push(format!(
                    "round {round}, after cut {cuts} ({in_flight_at_cut}): {}: {}",
                    failure.why,
                    gist(&failure.stderr, 2)
                ));
                failures_in_a_row += 1;
                if failures_in_a_row == START_FAILURES_IN_A_ROW_MAX {
                    eprintln!("{failures_in_a_row} failed starts in a row: no more cuts");
                    break;
                }
                continue;
            }
        };
        failures_in_a_row = 0;
        let started_in = starting.elapsed();
        if !uploaded {
            for file in files.iter() {
                let (status, answer) =
                    common::put_file(server.addr, &file.key, file.bytes.clone(), "application/octet-stream").await;
                assert_eq!(status, 201, "uploading {}: {answer}", file.key);
                assert_eq!(answer["hash"], file.hash.as_str(), "{}", file.key);
            }
            uploaded = true;
        }
        let after = format!("after cut {cuts} ({in_flight_at_cut})");
        check_after_restart(&server, (&hot, &cold), &files, &moves, &mut findings, &after).await;
        let checked_in = starting.elapsed().saturating_sub(started_in);
        if round == CUTS {
            break;
        }

        let cut_made = Arc::new(AtomicBool::new(false));
        let movers: Vec<_> = (0..MOVERS)
            .map(|m| tokio::spawn(move_until_cut(server.addr, m, rng.next(), moves.clone(), cut_made.clone())))
            .collect();
        let load = Duration::from_millis(rng.between(LOAD_MS_MIN, LOAD_MS_MAX));
        tokio::time::sleep(load).await;
        cut_made.store(true, Ordering::SeqCst);
        cut(&fs, server);
        cuts += 1;
        for mover in movers {
            tokio::time::timeout(Duration::from_secs(60), mover)
                .await
                .expect("a mover ends once its server is gone")
                .expect("mover task");
        }
        let moves = moves.lock().expect("lock");
        let broken_off: Vec<String> = (moves.placements.iter().enumerate())
            .filter(|(_, p)| p.expected.is_none())
            .map(|(i, p)| format!("f{i} ({} KiB) to {}", FILE_BYTES[i] >> 10, p.believed.other().name()))
            .collect();
        in_flight_at_cut = format!(
            "at {load:?}, {}",
            if broken_off.is_empty() {
                "no move in flight".into()
            } else {
                format!("moving {}", broken_off.join(", "))
            }
        );
        eprintln!(
            "cut {cuts} {in_flight_at_cut}; {} moves acknowledged so far; the start before it took {} ms, \
             the check {} ms",
            moves.acked,
            started_in.as_millis(),
            checked_in.as_millis()
        );
    }

    let moves = std::mem::take(&mut *moves.lock().expect("lock"));
    eprintln!(
        "{} s in all; {} moves acknowledged ({} copied content), {} unanswered, refused before a cut: {:?}; cutfs: {:?}",
        started.elapsed().as_secs(),
        moves.acked,
        moves.moved,
        moves.unanswered,
        moves.refused,
        fs.stats()
    );
    for refusal in &moves.refusals {
        eprintln!("refused: {refusal}");
    }
    for detail in findings.details.iter().take(FINDINGS_PRINTED_MAX * 4) {
        eprintln!("finding: {detail}");
    }
    for failure in &start_failures {
        eprintln!("start-up failure: {failure}");
    }
    report(&format!(
        "tier-move power cuts: {cuts}, moves acknowledged {}, lost {}, moves undone {}, duplicate copies {}, \
         bad files {}, start-up failures {}",
        moves.acked,
        findings.lost.len(),
        findings.undone.len(),
        findings.duplicates.len(),
        findings.bad_files.len(),
        start_failures.len()
    ));
    assert_eq!(findings.lost.len(), 0, "keys or content lost");
    assert_eq!(findings.undone.len(), 0, "acknowledged moves undone");
    assert_eq!(findings.duplicates.len(), 0, "content in both tiers after start-up");
    assert_eq!(findings.bad_files.len(), 0, "damaged, stray or temporary files in a tier after start-up");
    assert_eq!(start_failures.len(), 0, "start-up failures");
    assert_eq!(cuts, CUTS, "every cut made");
    assert!(moves.acked > CUTS, "the test must acknowledge moves to mean anything");
}
