//! Search: indexing throughput, and query latency over 1,000,000 messages of a generated corpus
//! with a realistic word distribution, side by side with SQLite FTS5 on the same corpus and the
//! same queries, in the same run.
//!
//!   cargo bench --bench search                  # MESSAGES=1000000 QUERIES=2000 SQLITE=1
//!   MESSAGES=10000000 SQLITE=0 cargo bench --bench search   # roomlog alone at 10 million
//!   SEARCH_BENCH_DIR=/some/dir ...              # keep the index there; a later run with the
//!                                               # same MESSAGES queries it without indexing again
//!
//! Both engines answer the same thing: the top 20 by relevance (BM25 in both), a highlighted
//! snippet for each (roomlog reads the hits' texts from its log, which the run writes first), and
//! the total number of matches (roomlog counts exactly up to
//! `TOTAL_EXACT_MAX` and then says "at least"; SQLite's count is compared up to that bound).

#[path = "corpus/mod.rs"]
mod corpus;

use std::time::{Instant, SystemTime};

use corpus::{Corpus, Rng};
use hdrhistogram::Histogram;
use roomlog::config::SearchConfig;
use roomlog::event::{Event, MessagePosted, RoomId};
use roomlog::log::{EventLog, LogConfig};
use roomlog::projection::search::{self, SearchParams, SearchRequest, Sort};
use roomlog::projection::Projection;

/// The allocator the `roomlog` binary runs with (mimalloc, transparent huge pages off), so that
/// the searches are timed as the server would run them.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; `cargo test --benches` would pass nothing useful to us.
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_thp_disable(true)?;
    let messages = env_or("MESSAGES", 1_000_000);
    let queries = env_or("QUERIES", 2000);
    let with_sqlite = env_or("SQLITE", 1) != 0;
    let corpus = Corpus::new();
    let rooms: Vec<RoomId> = (0..20).map(|i| RoomId::parse(&format!("room-{i}"))).collect::<Result<_, _>>()?;
    let mut rng = Rng::new(42);
    let bodies: Vec<String> = (0..messages).map(|_| corpus.message(&mut rng)).collect();
    let raw_bytes: usize = bodies.iter().map(String::len).sum();
    println!("corpus: {messages} messages, {:.1} MB of text", raw_bytes as f64 / 1e6);

    let temporary = tempfile::tempdir()?;
    let kept = std::env::var_os("SEARCH_BENCH_DIR").map(std::path::PathBuf::from);
    let dir = kept.clone().unwrap_or_else(|| temporary.path().to_owned());
    let index_dir = dir.join(format!("search-{messages}"));
    let log_dir = dir.join(format!("log-{messages}"));
    let runtime = tokio::runtime::Runtime::new()?;
    let _entered = runtime.enter();
    if kept.is_some() && index_dir.join("meta.json").exists() && log_dir.exists() {
        let index = search::open_reader(&index_dir)?;
        let log = EventLog::open(&log_dir, &LogConfig::default())?;
        println!("tantivy: the index kept in {} ({} documents)", index_dir.display(), index.documents());
        return query(&corpus, &bodies, &index, &log, &dir, queries, with_sqlite);
    }
    // The log the hits' texts are read from: the index keeps none.
    let _ = std::fs::remove_dir_all(&log_dir);
    let log = EventLog::open(&log_dir, &LogConfig::default())?;
    let started = Instant::now();
    runtime.block_on(async {
        for (chunk_no, chunk) in bodies.chunks(20_000).enumerate() {
            let mut pending = Vec::with_capacity(chunk.len());
            for (i, body) in chunk.iter().enumerate() {
                let n = chunk_no * 20_000 + i + 1;
                let room = rooms[n % rooms.len()].clone();
                let posted = MessagePosted {
                    room,
                    author: format!("user{}", n % 500),
                    client_id: format!("c{n}"),
                    body: body.clone(),
                };
                pending.push(log.submit(Event::MessagePosted(posted)).await?);
            }
            for append in pending {
                append.durable().await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
        }
        anyhow::Ok(())
    })?;
    println!("log: {messages} messages appended in {:.1} s", started.elapsed().as_secs_f64());
    // Index: the projection as the server runs it (one indexing thread), in batches as the log
    // gives them; one commit at the end, as a rebuild does.
    let config = SearchConfig { commit_events_max: usize::MAX, ..SearchConfig::default() };
    let (index, mut projection) = search::open(&index_dir, &config, 1)?;
    let started = Instant::now();
    let mut next = 1;
    loop {
        let batch = log.read_range_blocking(next, 4096)?;
        let Some(last) = batch.last() else { break };
        next = last.seq + 1;
        projection.apply(&batch)?;
    }
    projection.flush()?;
    projection.finish()?;
    let tantivy_secs = started.elapsed().as_secs_f64();
    let index_bytes = search::SearchIndex::size_bytes(&index_dir);
    println!(
        "tantivy (roomlog's projection, 1 thread): indexed in {tantivy_secs:.1} s = {:.0} messages/s, {:.0} MB on disk",
        messages as f64 / tantivy_secs,
        index_bytes as f64 / 1e6
    );
    let index = {
        drop(index);
        search::open_reader(&index_dir)?
    };
    query(&corpus, &bodies, &index, &log, &dir, queries, with_sqlite)
}

/// Times the queries against the index (and SQLite FTS5 of the same bodies when asked).
fn query(
    corpus: &Corpus,
    bodies: &[String],
    index: &search::SearchIndex,
    log: &EventLog,
    dir: &std::path::Path,
    queries: usize,
    with_sqlite: bool,
) -> anyhow::Result<()> {
    let db_path = dir.join(format!("fts-{}.sqlite", bodies.len()));
    for stale in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{stale}", db_path.display()));
    }
    let db = rusqlite::Connection::open(&db_path)?;
    // Without SQLite the table stays empty and is never queried.
    index_sqlite(&db, &db_path, if with_sqlite { bodies } else { &[] })?;

    // Queries: one word as people search (see Corpus::query_word), and two words that occur
    // together in some message.
    let mut rng = Rng::new(99);
    let one: Vec<String> = (0..queries).map(|_| corpus.query_word(&mut rng).to_owned()).collect();
    let two: Vec<String> = (0..queries)
        .map(|_| loop {
            let body = &bodies[rng.below(bodies.len())];
            let words: Vec<&str> = body.split(' ').collect();
            if words.len() >= 2 && body.is_ascii() {
                let a = rng.below(words.len());
                let b = (a + 1 + rng.below(words.len() - 1)) % words.len();
                if words[a] != words[b] {
                    break format!("{} {}", words[a], words[b]);
                }
            }
        })
        .collect();

    let top = |order: &str| {
        db.prepare(&format!(
            "SELECT rowid, room, author, at, snippet(m, 0, '<b>', '</b>', '…', 24) FROM m WHERE m MATCH ?1 ORDER BY {order} LIMIT 20"
        ))
    };
    let (mut fts_top, mut fts_newest) = (top("rank")?, top("rowid DESC")?);
    let mut fts_count = db.prepare("SELECT count(*) FROM m WHERE m MATCH ?1")?;
    let now = SystemTime::now();
    println!();
    println!("| queries (top 20, snippets, total) | engine | p50 | p99 | mean | hits/query |");
    println!("|---|---|---|---|---|---|");
    let sets = [
        ("one word", &one, Sort::Relevance),
        ("two words", &two, Sort::Relevance),
        ("two words, newest first", &two, Sort::Time),
    ];
    for (label, set, sort) in sets {
        let run_tantivy = |q: &str| -> anyhow::Result<usize> {
            let params = SearchParams { q: q.to_owned(), limit: Some(20), sort: Some(sort), ..SearchParams::default() };
            let request = SearchRequest::new(&params, None, 20, now)?;
            Ok(index.search(&request, log)?.total)
        };
        let mut run_sqlite = |q: &str| -> anyhow::Result<usize> {
            let statement = if sort == Sort::Time { &mut fts_newest } else { &mut fts_top };
            let rows = statement.query_map([q], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, i64>(3)?,
                    row.get::<_, String>(4)?,
                ))
            })?;
            let page = rows.collect::<Result<Vec<_>, _>>()?;
            let total: i64 = fts_count.query_row([q], |row| row.get(0))?;
            std::hint::black_box(page);
            Ok((total as usize).min(search::TOTAL_EXACT_MAX))
        };
        // Warm both (page cache, mmap) with the first 200 queries, then measure all.
        for q in set.iter().take(200) {
            run_tantivy(q)?;
            if with_sqlite {
                run_sqlite(q)?;
            }
        }
        let (mut t_hist, mut s_hist) = (Histogram::<u64>::new(3)?, Histogram::<u64>::new(3)?);
        let (mut t_hits, mut s_hits) = (0usize, 0usize);
        for q in set.iter() {
            let started = Instant::now();
            t_hits += run_tantivy(q)?;
            t_hist.record(started.elapsed().as_micros() as u64)?;
            if with_sqlite {
                let started = Instant::now();
                s_hits += run_sqlite(q)?;
                s_hist.record(started.elapsed().as_micros() as u64)?;
            }
        }
        if with_sqlite && t_hits != s_hits {
            println!("note: totals differ ({t_hits} vs {s_hits}); the tokenizers split some text differently");
        }
        let engines = [("roomlog (tantivy)", &t_hist, t_hits), ("SQLite FTS5", &s_hist, s_hits)];
        for (engine, hist, hits) in engines.into_iter().take(if with_sqlite { 2 } else { 1 }) {
            println!(
                "| {label} | {engine} | {} | {} | {} | {:.0} |",
                ms(hist.value_at_quantile(0.5)),
                ms(hist.value_at_quantile(0.99)),
                ms(hist.mean() as u64),
                hits as f64 / set.len() as f64
            );
        }
    }
    Ok(())
}

/// SQLite FTS5 over the same messages, in one transaction.
fn index_sqlite(db: &rusqlite::Connection, db_path: &std::path::Path, bodies: &[String]) -> anyhow::Result<()> {
    let messages = bodies.len();
    db.execute_batch(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;
         CREATE VIRTUAL TABLE m USING fts5(body, room UNINDEXED, author UNINDEXED, at UNINDEXED);",
    )?;
    let started = Instant::now();
    {
        let tx = db.unchecked_transaction()?;
        let mut insert = tx.prepare("INSERT INTO m(rowid, body, room, author, at) VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for (i, body) in bodies.iter().enumerate() {
            let seq = i as i64 + 1;
            insert.execute(rusqlite::params![
                seq,
                body,
                format!("room-{}", seq % 20),
                format!("user{}", seq % 500),
                seq
            ])?;
        }
        drop(insert);
        tx.commit()?;
    }
    let sqlite_secs = started.elapsed().as_secs_f64();
    if messages == 0 {
        return Ok(());
    }
    println!(
        "SQLite FTS5 (unicode61): indexed in {sqlite_secs:.1} s = {:.0} messages/s, {:.0} MB on disk",
        messages as f64 / sqlite_secs,
        std::fs::metadata(db_path).map(|m| m.len()).unwrap_or(0) as f64 / 1e6
    );
    Ok(())
}

fn ms(us: u64) -> String {
    format!("{:.2} ms", us as f64 / 1000.0)
}
