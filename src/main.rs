//! The `roomlog` command: parses the command line and config, sets up tracing, and calls the
//! library.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use roomlog::log::EventLog;
use roomlog::projection::{self, history, search};
use roomlog::{Config, Server};

#[derive(Parser, Debug)]
#[command(name = "roomlog", version, about = "Durable real-time chat rooms in one binary")]
struct Cli {
    /// TOML configuration file; ROOMLOG_* environment variables override it.
    #[arg(long, global = true, env = "ROOMLOG_CONFIG")]
    config: Option<PathBuf>,
    /// Data folder (overrides `data` in the config).
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the server.
    Serve {
        /// Address to listen on (overrides `listen` in the config), e.g. 127.0.0.1:7700.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Drop a projection and rebuild it from the log. The server must be stopped.
    Rebuild {
        /// The projection: `history`, `search`, `sessions`, `files`, or `all`.
        name: String,
    },
    /// Check a stopped server's data folder: every record of the log decodes, and the log
    /// holds everything the seq floor and the projections say was acknowledged. Creates
    /// nothing; exits 1 when it finds a problem.
    Check {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Signed tokens: issue one, or rotate the secret.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Rewrite the log without the events that retention cuts and key deletions superseded,
    /// into a fresh database swapped in atomically; prints the bytes on disk before and after.
    /// The server must be stopped.
    Compact {
        #[arg(long)]
        json: bool,
    },
    /// Print the configuration in force, as TOML.
    Config,
    /// Back up the log (up to its head now) into one archive, from the running server if one
    /// answers, else from the data folder.
    Backup {
        #[command(subcommand)]
        action: Option<BackupAction>,
        /// The archive to write.
        #[arg(long)]
        out: Option<PathBuf>,
        /// An earlier archive: back up only what came after it (incremental).
        #[arg(long)]
        since: Option<PathBuf>,
        /// The server's address (default: from `<data>/roomlog.addr`).
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// Pace the backup of a running server to at most this many events per second, so
        /// that it leaves the CPU to chat (0: as fast as possible).
        #[arg(long, default_value_t = 40_000)]
        max_events_per_sec: u64,
        /// Leave the token secret out of the archive (a restore then voids every token).
        #[arg(long)]
        without_secret: bool,
    },
    /// Restore archives (a full one, then incrementals on top) into an empty data folder and
    /// rebuild the projections.
    Restore {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Stop after this seq (point-in-time restore).
        #[arg(long)]
        until_seq: Option<u64>,
        /// Stop after this time, RFC 3339 (`2026-11-22T21:00:00Z`).
        #[arg(long)]
        until_time: Option<String>,
    },
    /// Search past messages from the command line (reads the index directly; works whether
    /// or not the server runs). Query syntax: words, "phrases", -exclusions, prefix*.
    Search {
        query: String,
        /// Only these rooms (comma-separated).
        #[arg(long)]
        room: Option<String>,
        #[arg(long)]
        author: Option<String>,
        /// Oldest message: `7d` (ago), an RFC 3339 time, or Unix ms.
        #[arg(long)]
        since: Option<String>,
        /// Newest message, same forms.
        #[arg(long)]
        until: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// `relevance` or `time` (newest first).
        #[arg(long, default_value = "relevance")]
        sort: String,
        /// Print the JSON answer, as `GET /api/search` gives it.
        #[arg(long)]
        json: bool,
    },
    /// The janitor of the running server: `plan` (what a run would remove now, per rule, and the
    /// bytes it would free; nothing is deleted), `run` (now), `runs` (the last ones).
    Janitor {
        #[command(subcommand)]
        action: JanitorAction,
        #[arg(long, global = true)]
        addr: Option<std::net::SocketAddr>,
        /// Print the server's JSON answer.
        #[arg(long, global = true)]
        json: bool,
    },
    /// What the running server stores and where: bytes on disk per part, files by prefix and
    /// tier, messages per room, sessions by state, and the disk state (`GET /api/storage`).
    Stats {
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        #[arg(long)]
        json: bool,
    },
    /// Ask the running server to re-hash every stored file: damaged ones are quarantined and
    /// reported, and content no key references (orphans) is listed. Exits 2 if any was damaged.
    Scrub {
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        #[arg(long)]
        json: bool,
    },
    /// Ask the running server how it is. Exits 1 when it cannot be reached, 2 when not ready.
    Status {
        /// The server's address; default: the one it wrote to `<data>/roomlog.addr`, else `listen`.
        #[arg(long)]
        addr: Option<std::net::SocketAddr>,
        /// Print the server's JSON answer instead of a summary.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum JanitorAction {
    /// What a run would do now, without doing it.
    Plan,
    /// Run now (after a run under way, if any). Exits 2 if the run was `partial` or `failed`
    /// (it still prints the record), 1 if the command itself failed (no server).
    Run,
    /// The last runs, newest first.
    Runs {
        #[arg(long, default_value_t = 10)]
        limit: usize,
    },
}

#[derive(Subcommand, Debug)]
enum TokenAction {
    /// Print a signed token for a user: the rooms it may write (`--rooms`) and only read
    /// (`--read-only`), as patterns where `*` matches anything, comma-separated.
    Issue {
        #[arg(long)]
        user: String,
        #[arg(long, default_value = "")]
        rooms: String,
        #[arg(long, default_value = "")]
        read_only: String,
        /// File key prefixes it may read and write (upload, copy to, delete), comma-separated.
        #[arg(long, default_value = "")]
        files: String,
        /// File key prefixes it may only read.
        #[arg(long, default_value = "")]
        files_read_only: String,
        /// How long it is valid (humantime: `24h`, `30d`).
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Also the admin scope: admin endpoints, and edits and deletions of anyone's messages.
        #[arg(long)]
        admin: bool,
        /// Bind it to a roomlog session: it stops working when the session ends, expires or is
        /// purged.
        #[arg(long)]
        session: Option<String>,
    },
    /// Make a new secret; tokens signed with the old one stay valid for `--grace`. Restart the
    /// server to use it.
    Rotate {
        #[arg(long, default_value = "24h")]
        grace: String,
    },
}

#[derive(Subcommand, Debug)]
enum BackupAction {
    /// Check an archive (hashes, every record decodes) without restoring it.
    Verify { file: PathBuf },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut config = Config::load(cli.config.as_deref())?;
    config.logging.json |= cli.log_json;
    // The server logs to stdout; every other command's stdout is its answer (a token, JSON), so
    // its log lines go to stderr.
    let to_stderr = !matches!(cli.command, Command::Serve { .. });
    let _log_files = init_tracing(&config.logging, to_stderr)?;
    if let Some(data) = cli.data {
        config.data = data;
    }
    match cli.command {
        Command::Serve { listen } => serve(config, listen).await,
        Command::Rebuild { name } => rebuild(&config, &name),
        Command::Token { action } => token_command(&config, action),
        Command::Compact { json } => {
            let started = Instant::now();
            migrate(&config)?;
            let done = roomlog::log::compact::compact(&config.log_dir(), config.log.cache_bytes_max)
                .with_context(|| format!("compacting {} (is a server running on it?)", config.log_dir().display()))?;
            if json {
                println!("{}", serde_json::to_string(&done)?);
            } else {
                let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
                println!(
                    "compacted {}: {} records kept of {} ({} message and {} file events dropped); {:.1} MiB on disk before, {:.1} MiB after, in {:.1} s",
                    config.log_dir().display(),
                    done.records_after,
                    done.records_before,
                    done.dropped_message_events,
                    done.dropped_file_events,
                    mib(done.bytes_before),
                    mib(done.bytes_after),
                    started.elapsed().as_secs_f64()
                );
            }
            Ok(())
        }
        Command::Check { json } => {
            let report = roomlog::check::check(&config.data, config.log.cache_bytes_max);
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", check_summary(&report));
            }
            if !report.ok() {
                std::process::exit(1);
            }
            Ok(())
        }
        Command::Config => {
            print!("{}", config_listing(&config)?);
            Ok(())
        }
        Command::Backup { action: Some(BackupAction::Verify { file }), .. } => {
            let verified = roomlog::backup::verify(&file)?;
            let m = &verified.manifest;
            println!(
                "{}: ok, {} backup, {} events, seqs {}..={}, manifest blake3 {}",
                file.display(),
                if m.base.is_some() { "incremental" } else { "full" },
                m.events,
                m.after_seq.saturating_add(1),
                m.through_seq,
                verified.manifest_blake3
            );
            Ok(())
        }
        Command::Backup { action: None, out, since, addr, max_events_per_sec, without_secret } => {
            let out = out.context("give --out FILE for the archive")?;
            backup(config, out, since, addr, max_events_per_sec, without_secret).await
        }
        Command::Restore { files, until_seq, until_time } => {
            let at_unix_ms = until_time
                .map(|t| {
                    humantime::parse_rfc3339_weak(&t)
                        .map(|time| time.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64))
                        .with_context(|| format!("--until-time {t:?} is not an RFC 3339 time"))
                })
                .transpose()?;
            let until = roomlog::backup::Until { seq: until_seq, at_unix_ms };
            let store = roomlog::blob::BlobStore::at(&config.blob_dir(), config.files.cold_dir.as_deref());
            let secrets = roomlog::token::SecretFiles { dir: config.secret_dir() };
            let restored = roomlog::backup::restore(&files, &config.log_dir(), &store, &config.data, &secrets, until)?;
            if restored.secret_restored {
                println!(
                    "token secret restored into {} (mode 0600): tokens issued before still work",
                    secrets.dir.display()
                );
            }
            println!(
                "restored {} events (through seq {}) and {} content files ({:.1} MiB) into {}",
                restored.events,
                restored.last_seq,
                restored.content_files,
                restored.content_bytes as f64 / (1024.0 * 1024.0),
                config.data.display()
            );
            rebuild(&config, "all")
        }
        Command::Search { query, room, author, since, until, limit, sort, json } => {
            let sort = match sort.as_str() {
                "relevance" => search::Sort::Relevance,
                "time" => search::Sort::Time,
                other => bail!("--sort {other:?}: use relevance or time"),
            };
            let params = search::SearchParams {
                q: query,
                room,
                author,
                since,
                until,
                limit: Some(limit),
                cursor: None,
                sort: Some(sort),
            };
            search_command(&config, &params, json)
        }
        Command::Janitor { action, addr, json } => janitor_command(&config, action, addr, json).await,
        Command::Stats { addr, json } => {
            let storage = ask_server(&config, addr, reqwest::Method::GET, "/api/storage").await?;
            if json {
                println!("{storage}");
                return Ok(());
            }
            let mib = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
            println!(
                "disk: {} ({:.0}% used)",
                storage["disk_state"].as_str().unwrap_or("?"),
                storage["disk_used_ratio"].as_f64().unwrap_or(0.0) * 100.0
            );
            for (part, bytes) in storage["on_disk"].as_object().into_iter().flatten() {
                println!("  {part:<14} {:>10.1} MiB", mib(bytes));
            }
            println!("files by prefix/tier:");
            for (prefix, total) in storage["keys"].as_object().into_iter().flatten() {
                println!("  {prefix:<24} {:>8} keys {:>10.1} MiB", total["keys"], mib(&total["bytes"]));
            }
            println!("messages per room:");
            for (room, total) in storage["messages"].as_object().into_iter().flatten() {
                println!("  {room:<24} {:>10} messages {:>10.1} MiB", total["messages"], mib(&total["bytes"]));
            }
            let sessions: Vec<String> = storage["sessions"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(state, count)| format!("{} {state}", count.as_u64().unwrap_or(0)))
                .collect();
            println!("sessions: {}", if sessions.is_empty() { "none".to_owned() } else { sessions.join(", ") });
            let growth = &storage["growth"];
            for (span, rate) in [("7 days", &growth["last_7_days"]), ("30 days", &growth["last_30_days"])] {
                match rate["fs_used_bytes_per_day"].as_f64() {
                    Some(fs) => println!(
                        "growth over the last {span}: {:+.1} MiB/day on the disk, {:+.1} MiB/day of roomlog's data",
                        fs / (1024.0 * 1024.0),
                        mib(&rate["roomlog_bytes_per_day"])
                    ),
                    None => println!("growth over the last {span}: not enough samples yet (one a day)"),
                }
            }
            for (threshold, days) in growth["days_until"].as_object().into_iter().flatten() {
                match days.as_f64() {
                    Some(d) => println!("  days until {threshold}: {d:.0}"),
                    None => println!("  days until {threshold}: not growing or no rate yet"),
                }
            }
            Ok(())
        }
        Command::Scrub { addr, json } => {
            let report = ask_server(&config, addr, reqwest::Method::POST, "/api/scrub").await?;
            let damaged = report["damaged"].as_array().map_or(0, Vec::len);
            if json {
                println!("{report}");
            } else {
                println!(
                    "scrubbed {} files ({:.1} MiB) in {:.1} s: {} damaged, {} orphans",
                    report["files"],
                    report["bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0),
                    report["seconds"].as_f64().unwrap_or(0.0),
                    damaged,
                    report["orphans"].as_array().map_or(0, Vec::len),
                );
                for d in report["damaged"].as_array().into_iter().flatten() {
                    println!(
                        "  damaged {} ({} tier): bytes hash to {}; moved to {}",
                        d["hash"], d["tier"], d["found"], d["quarantined_to"]
                    );
                }
                for o in report["orphans"].as_array().into_iter().flatten() {
                    println!("  orphan {} ({} tier, {} bytes): no key references it", o["hash"], o["tier"], o["bytes"]);
                }
            }
            std::process::exit(if damaged > 0 { 2 } else { 0 });
        }
        Command::Status { addr, json } => {
            let code = status(&config, addr, json).await;
            std::process::exit(code);
        }
    }
}

/// Moves a data folder of the layout before the separate state store (see `roomlog::layout`).
fn migrate(config: &Config) -> anyhow::Result<()> {
    roomlog::layout::migrate(&config.data, config.log.cache_bytes_max)
        .with_context(|| format!("moving {} to the new layout (is a server running on it?)", config.data.display()))?;
    Ok(())
}

async fn serve(mut config: Config, listen: Option<std::net::SocketAddr>) -> anyhow::Result<()> {
    if let Some(listen) = listen {
        config.listen = listen;
    }
    roomlog::durable::create_dir_all(&config.data)
        .with_context(|| format!("creating data folder {}", config.data.display()))?;
    // Checked before binding and compacting: a second server on a folder in use says which
    // one holds it, not that the port is taken or the database locked. `Server::start` takes
    // the lock for good.
    let checked = roomlog::data_lock::DataLock::acquire(&config.data, &config.addr_file())?;
    // `Server::start` moves an old layout itself (and says so in /api/status); compaction
    // before it needs the new layout first.
    if config.log.compact_at_start {
        migrate(&config)?;
    }
    if config.log.compact_at_start && config.log_dir().exists() {
        let done = roomlog::log::compact::compact(&config.log_dir(), config.log.cache_bytes_max)
            .context("compacting the log at start-up (log.compact_at_start)")?;
        tracing::info!(
            records_before = done.records_before,
            records_after = done.records_after,
            bytes_before = done.bytes_before,
            bytes_after = done.bytes_after,
            "log compacted at start-up"
        );
    }
    let listener =
        tokio::net::TcpListener::bind(config.listen).await.with_context(|| format!("binding {}", config.listen))?;
    drop(checked);
    let server = Server::start(config, listener).await?;
    println!("roomlog listening on {}", server.addr());
    let failure = tokio::select! {
        () = shutdown_signal() => None,
        why = server.failed() => Some(why),
    };
    match failure {
        None => {
            tracing::info!("shutting down");
            server.shutdown().await;
            Ok(())
        }
        Some(why) => {
            // Not a zombie that answers every request with an error: stop, and let the
            // supervisor (systemd's Restart=on-failure) start a fresh process.
            tracing::error!(error = %why, "a core task failed: stopping so that roomlog is restarted");
            server.shutdown().await;
            bail!("stopped because a core task failed: {why}")
        }
    }
}

fn rebuild(config: &Config, name: &str) -> anyhow::Result<()> {
    let names: &[&str] = match name {
        "all" => &["history", "search", "sessions", "files"],
        "history" => &["history"],
        "search" => &["search"],
        "sessions" => &["sessions"],
        "files" => &["files"],
        other => bail!("no projection named {other:?}; known: history, search, sessions, files, all"),
    };
    let log = open_log(config)?;
    let state = roomlog::state::StateDb::open(&config.state_dir(), config.log.cache_bytes_max).with_context(|| {
        format!("opening the projections' store in {} (is a server running on it?)", config.state_dir().display())
    })?;
    for &name in names {
        let head = log.head();
        let started = Instant::now();
        let bar = indicatif::ProgressBar::new(head).with_prefix(name);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} events, {per_sec}, eta {eta}")?
                .progress_chars("=> "),
        );
        let progress = |applied: u64| bar.set_position(applied);
        let (applied, rate) = match name {
            "history" => {
                let (_, mut projection) = history::open(&state)?;
                projection::rebuild(&log, &mut projection, progress)?
            }
            "sessions" => {
                let (_, mut projection) = roomlog::projection::sessions::open(&state)?;
                projection::rebuild(&log, &mut projection, progress)?
            }
            "files" => {
                let (_, mut projection) = roomlog::projection::files::open(&state)?;
                projection::rebuild(&log, &mut projection, progress)?
            }
            _ => {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let (_, mut projection) = search::open(&config.search_dir(), &config.search, threads)
                    .context("opening the search index (is the server running?)")?;
                let result = projection::rebuild(&log, &mut projection, progress)?;
                projection.finish()?;
                result
            }
        };
        bar.finish_and_clear();
        state.sync()?;
        println!("rebuilt {name}: {applied} events in {:.2?} ({rate:.0} events/s)", started.elapsed());
    }
    Ok(())
}

/// `roomlog search`: prints hits newest or best first, matches in [brackets].
fn search_command(config: &Config, params: &search::SearchParams, json: bool) -> anyhow::Result<()> {
    let dir = config.search_dir();
    if !dir.join("meta.json").exists() {
        bail!("no search index in {}: start the server once, or run `roomlog rebuild search`", dir.display());
    }
    let index = search::open_reader(&dir)?;
    let request = search::SearchRequest::new(params, None, usize::MAX, std::time::SystemTime::now())?;
    let hits = index.search(&request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
        return Ok(());
    }
    for hit in &hits.hits {
        let at = std::time::UNIX_EPOCH + std::time::Duration::from_millis(hit.at_unix_ms);
        let snippet = hit
            .snippet
            .replace("<b>", "[")
            .replace("</b>", "]")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&#x27;", "'")
            .replace("&amp;", "&");
        println!(
            "{}#{}  {}  {}: {}",
            hit.room,
            hit.seq,
            humantime::format_rfc3339_seconds(at),
            hit.author,
            snippet.replace('\n', " ")
        );
    }
    println!(
        "{} of {} matching messages (index through seq {})",
        hits.hits.len(),
        hits.total,
        hits.indexed_through_seq
    );
    Ok(())
}

/// Writes a backup archive: through the running server's export route if it answers, else
/// from the data folder directly (the server is stopped, so its lock is free).
async fn backup(
    config: Config,
    out: PathBuf,
    since: Option<PathBuf>,
    addr: Option<std::net::SocketAddr>,
    max_events_per_sec: u64,
    without_secret: bool,
) -> anyhow::Result<()> {
    let (after_seq, base) = match &since {
        Some(previous) => {
            let verified = roomlog::backup::verify(previous)?;
            let base = roomlog::backup::Base {
                through_seq: verified.manifest.through_seq,
                manifest_blake3: verified.manifest_blake3,
            };
            (base.through_seq, Some(base))
        }
        None => (0, None),
    };
    let mut config_toml = toml::to_string_pretty(&config)?;
    let secrets = match without_secret {
        true => Vec::new(),
        false => roomlog::token::SecretFiles { dir: config.secret_dir() }.export().with_context(|| {
            format!("reading the token secret in {} (or give --without-secret)", config.secret_dir().display())
        })?,
    };
    let store = roomlog::blob::BlobStore::at(&config.blob_dir(), config.files.cold_dir.as_deref());
    let addr = addr.or_else(|| config.recorded_addr());
    let client = operator_client(&config, std::time::Duration::from_secs(30))?;
    let live_head = match addr {
        Some(addr) => match client.get(format!("http://{addr}/api/status")).send().await {
            Ok(response) => response
                .json::<serde_json::Value>()
                .await
                .ok()
                .and_then(|s| s["log"]["head_seq"].as_u64())
                .map(|head| (addr, head)),
            Err(_) => None,
        },
        None => None,
    };
    if let Some((addr, _)) = live_head {
        // The configuration the server runs with, not this command's own.
        let running = client.get(format!("http://{addr}/api/config")).send().await.and_then(|r| r.error_for_status());
        config_toml = running
            .context("asking the running server for its configuration")?
            .text()
            .await
            .context("reading the running server's configuration")?;
    }
    let started = Instant::now();
    let manifest = match live_head {
        Some((addr, head)) => {
            let runtime = tokio::runtime::Handle::current();
            let target = out.clone();
            let paced_from = Instant::now();
            let mut fetched = 0u64;
            tokio::task::spawn_blocking(move || {
                let carried = roomlog::backup::Carried { config_toml: &config_toml, secrets: &secrets };
                roomlog::backup::write_archive(&target, after_seq, head, base, carried, &store, |after| {
                    if max_events_per_sec > 0 {
                        // Sleep until the events fetched so far fit the pace.
                        let due = std::time::Duration::from_secs_f64(fetched as f64 / max_events_per_sec as f64);
                        std::thread::sleep(due.saturating_sub(paced_from.elapsed()));
                    }
                    fetched += roomlog::http::api::EXPORT_LIMIT_MAX as u64;
                    runtime.block_on(async {
                        let url = format!("http://{addr}/api/log/export?after={after}");
                        let body = client.get(url).send().await.and_then(|r| r.error_for_status());
                        let body = match body {
                            Ok(response) => response
                                .bytes()
                                .await
                                .map_err(|e| roomlog::backup::BackupError::Source(e.to_string()))?,
                            Err(e) => return Err(roomlog::backup::BackupError::Source(e.to_string())),
                        };
                        roomlog::http::api::parse_export(&body)
                            .ok_or_else(|| roomlog::backup::BackupError::Source("a malformed export page".into()))
                    })
                })
            })
            .await??
        }
        None => {
            let log = open_log(&config)?;
            let head = log.head();
            let carried = roomlog::backup::Carried { config_toml: &config_toml, secrets: &secrets };
            let manifest = roomlog::backup::write_archive(&out, after_seq, head, base, carried, &store, |after| {
                Ok(log.read_raw(after.saturating_add(1), 4096)?)
            })?;
            log.close().await;
            manifest
        }
    };
    let size = std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0);
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    let content = manifest.parts.iter().filter(|p| p.path.starts_with("content/")).count();
    println!(
        "backup {}: {} backup through seq {}, {} events, {} content files, {:.1} MiB in {:.2} s ({:.0} events/s, {:.1} MB/s)",
        out.display(),
        if manifest.base.is_some() { "incremental" } else { "full" },
        manifest.through_seq,
        manifest.events,
        content,
        size as f64 / (1024.0 * 1024.0),
        secs,
        manifest.events as f64 / secs,
        size as f64 / 1e6 / secs,
    );
    for skipped in &manifest.content_skipped {
        eprintln!("content {} is not in the archive: {}", skipped.hash, skipped.why);
    }
    Ok(())
}

fn token_command(config: &Config, action: TokenAction) -> anyhow::Result<()> {
    let files = roomlog::token::SecretFiles { dir: config.secret_dir() };
    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
    let duration = |text: &str, flag: &str| {
        humantime::parse_duration(text).with_context(|| format!("{flag} {text:?} is not a duration (24h, 30d)"))
    };
    match action {
        TokenAction::Issue { user, rooms, read_only, files: file_prefixes, files_read_only, ttl, admin, session } => {
            let session = session
                .map(|id| roomlog::event::SessionId::parse(&id).map_err(|e| anyhow::anyhow!("--session: {e}")))
                .transpose()?;
            if user.is_empty() || user.len() > roomlog::auth::USER_LEN_MAX || user.chars().any(char::is_control) {
                bail!("--user: 1 to {} bytes, no control characters", roomlog::auth::USER_LEN_MAX);
            }
            let grant = |list: &str, write: bool| -> Vec<roomlog::token::RoomGrant> {
                list.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|pattern| roomlog::token::RoomGrant { pattern: pattern.to_owned(), write })
                    .collect()
            };
            let mut grants = grant(&rooms, true);
            grants.extend(grant(&read_only, false));
            let file_grants: Vec<roomlog::token::FileGrant> = [(&file_prefixes, true), (&files_read_only, false)]
                .into_iter()
                .flat_map(|(list, write)| {
                    list.split(',')
                        .map(str::trim)
                        .filter(|p| !p.is_empty())
                        .map(move |prefix| roomlog::token::FileGrant { prefix: prefix.to_owned(), write })
                })
                .collect();
            let exp = (now_ms / 1000).saturating_add(duration(&ttl, "--ttl")?.as_secs());
            let secrets = files.load_or_create().context("loading the token secret")?;
            println!(
                "{}",
                secrets.issue(&roomlog::token::Claims { user, rooms: grants, admin, exp, session, files: file_grants })
            );
        }
        TokenAction::Rotate { grace } => {
            let until = now_ms.saturating_add(roomlog::clock::millis(duration(&grace, "--grace")?));
            files.rotate(until).context("rotating the token secret")?;
            println!(
                "new secret in {}; tokens signed with the old one stay valid for {grace} (restart the server to sign with the new one)",
                files.dir.display()
            );
        }
    }
    Ok(())
}

/// One line per rule of a plan or a run: items and bytes.
fn print_rules(rules: &serde_json::Value) {
    for rule in rules.as_array().into_iter().flatten() {
        println!(
            "  {:<28} {:>8} items {:>12.1} MiB",
            rule["rule"].as_str().unwrap_or("?"),
            rule["items"],
            rule["bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0)
        );
    }
}

async fn janitor_command(
    config: &Config,
    action: JanitorAction,
    addr: Option<std::net::SocketAddr>,
    json: bool,
) -> anyhow::Result<()> {
    let (method, path) = match &action {
        JanitorAction::Plan => (reqwest::Method::GET, "/api/janitor/plan".to_owned()),
        JanitorAction::Run => (reqwest::Method::POST, "/api/janitor/run".to_owned()),
        JanitorAction::Runs { limit } => (reqwest::Method::GET, format!("/api/janitor/runs?limit={limit}")),
    };
    let (status, answer) = ask_server_answer(config, addr, method, &path).await?;
    // A run that did not do everything answers 500 with its record (`outcome` partial or
    // failed): show the record, then exit 2, as documented; any other error answer is an error.
    let run_incomplete = matches!(action, JanitorAction::Run) && answer["outcome"].is_string() && !status.is_success();
    if !status.is_success() && !run_incomplete {
        return Err(error_answer(&path, status, &answer));
    }
    if json {
        println!("{answer}");
    } else {
        print_janitor_answer(&action, &answer);
    }
    if run_incomplete {
        std::process::exit(JANITOR_RUN_INCOMPLETE_EXIT);
    }
    Ok(())
}

/// The exit code of `roomlog janitor run` when the run was `partial` (some items failed) or
/// `failed` (none could be done): not 1, which says the command itself failed (no server).
const JANITOR_RUN_INCOMPLETE_EXIT: i32 = 2;

/// What `roomlog janitor plan|run|runs` prints for a person.
fn print_janitor_answer(action: &JanitorAction, answer: &serde_json::Value) {
    match action {
        JanitorAction::Plan => {
            let items = answer["items"].as_array().map_or(0, Vec::len);
            println!("janitor plan: {items} items (nothing deleted; `roomlog janitor run` applies it)");
            print_rules(&answer["rules"]);
            for item in answer["items"].as_array().into_iter().flatten().take(50) {
                println!(
                    "    {} {} ({}, {} bytes)",
                    item["action"].as_str().unwrap_or(""),
                    item["target"].as_str().unwrap_or(""),
                    item["rule"].as_str().unwrap_or(""),
                    item["bytes"]
                );
            }
            if items > 50 {
                println!("    ... and {} more (--json for all)", items - 50);
            }
        }
        JanitorAction::Run => {
            let seconds = (answer["finished_at_unix_ms"].as_u64().unwrap_or(0))
                .saturating_sub(answer["started_at_unix_ms"].as_u64().unwrap_or(0)) as f64
                / 1000.0;
            println!(
                "janitor run {}: {} in {seconds:.1} s{}",
                answer["run"],
                answer["outcome"].as_str().unwrap_or("?"),
                answer["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default()
            );
            print_rules(&answer["rules"]);
        }
        JanitorAction::Runs { .. } => {
            for run in answer["runs"].as_array().into_iter().flatten() {
                let seconds = (run["finished_at_unix_ms"].as_u64().unwrap_or(0))
                    .saturating_sub(run["started_at_unix_ms"].as_u64().unwrap_or(0))
                    as f64
                    / 1000.0;
                println!(
                    "run {} ({}): {} in {seconds:.1} s{}",
                    run["run"],
                    run["trigger"].as_str().unwrap_or("?"),
                    run["outcome"].as_str().unwrap_or("?"),
                    run["error"].as_str().map(|e| format!(": {e}")).unwrap_or_default()
                );
                print_rules(&run["rules"]);
            }
        }
    }
}

/// An HTTP client for the operator's commands: it carries an admin token signed with the
/// secret in the data folder (valid for an hour), so the admin endpoints answer it.
fn operator_client(config: &Config, timeout: std::time::Duration) -> anyhow::Result<reqwest::Client> {
    let files = roomlog::token::SecretFiles { dir: config.secret_dir() };
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = files.operator_token(now_ms, std::time::Duration::from_secs(3600)) {
        let value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(reqwest::Client::builder().timeout(timeout).default_headers(headers).build()?)
}

/// Sends one request to the running server and returns its JSON answer; an error answer is an
/// error naming its code.
async fn ask_server(
    config: &Config,
    addr: Option<std::net::SocketAddr>,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<serde_json::Value> {
    let (status, body) = ask_server_answer(config, addr, method, path).await?;
    if !status.is_success() {
        return Err(error_answer(path, status, &body));
    }
    Ok(body)
}

/// Sends one request to the running server and returns its status and JSON answer, whatever
/// the status.
async fn ask_server_answer(
    config: &Config,
    addr: Option<std::net::SocketAddr>,
    method: reqwest::Method,
    path: &str,
) -> anyhow::Result<(reqwest::StatusCode, serde_json::Value)> {
    let addr = addr.or_else(|| config.recorded_addr()).unwrap_or(config.listen);
    let client = operator_client(config, std::time::Duration::from_secs(3600))?;
    let response = client
        .request(method, format!("http://{addr}{path}"))
        .send()
        .await
        .with_context(|| format!("nothing answers on {addr}: is roomlog running? (--addr to name it)"))?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.with_context(|| format!("{path}: not a JSON answer"))?;
    Ok((status, body))
}

/// An error answer as an error naming its code.
fn error_answer(path: &str, status: reqwest::StatusCode, body: &serde_json::Value) -> anyhow::Error {
    match body["error"]["message"].as_str() {
        Some(message) => {
            anyhow::anyhow!("{path}: {status}: {message} ({})", body["error"]["code"].as_str().unwrap_or(""))
        }
        None => anyhow::anyhow!("{path}: {status}: {body}"),
    }
}

/// Prints the server's status; returns the exit code: 0 ready, 1 unreachable, 2 not ready.
async fn status(config: &Config, addr: Option<std::net::SocketAddr>, json: bool) -> i32 {
    let addr = addr.or_else(|| config.recorded_addr()).unwrap_or(config.listen);
    let client = match operator_client(config, std::time::Duration::from_secs(5)) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("roomlog status: {error}");
            return 1;
        }
    };
    let answer = match client.get(format!("http://{addr}/api/status")).send().await {
        Ok(response) => response.json::<serde_json::Value>().await,
        Err(error) => Err(error),
    };
    let status = match answer {
        Ok(status) => status,
        Err(error) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "up": false, "addr": addr.to_string(), "error": error.to_string() })
                );
            } else {
                println!("roomlog is down: nothing answers on {addr} ({error})");
            }
            return 1;
        }
    };
    let ready = status["ready"].as_bool().unwrap_or(false);
    if json {
        println!("{status}");
    } else {
        print!("{}", summary(&status));
    }
    if ready {
        0
    } else {
        2
    }
}

/// The human summary of `/api/status`.
fn summary(s: &serde_json::Value) -> String {
    let uptime = humantime::format_duration(std::time::Duration::from_secs(s["uptime_seconds"].as_u64().unwrap_or(0)));
    let mut out = format!(
        "roomlog {} up {uptime} on {} (data {})\nready: {}\nlog: head seq {}, {:.1} MiB on disk\n",
        s["version"].as_str().unwrap_or("?"),
        s["listen"].as_str().unwrap_or("?"),
        s["data"].as_str().unwrap_or("?"),
        if s["ready"].as_bool().unwrap_or(false) { "yes" } else { "NO" },
        s["log"]["head_seq"],
        s["log"]["disk_bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0),
    );
    for (name, p) in s["projections"].as_object().into_iter().flatten() {
        out.push_str(&format!(
            "{name} projection: applied {} (lag {} events{})\n",
            p["applied_seq"],
            p["lag_events"],
            if p["running"].as_bool().unwrap_or(false) { "" } else { ", STOPPED" },
        ));
    }
    out.push_str(&format!(
        "search index: {} messages, {:.1} MiB on disk\nrooms active: {}, connections open: {}\n",
        s["search"]["documents"],
        s["search"]["disk_bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0),
        s["rooms_active"],
        s["connections_open"],
    ));
    for reason in s["not_ready_because"].as_array().into_iter().flatten() {
        out.push_str(&format!("  not ready: {}\n", reason.as_str().unwrap_or("?")));
    }
    let errors = s["recent_errors"].as_array().cloned().unwrap_or_default();
    if errors.is_empty() {
        out.push_str("recent errors: none\n");
    } else {
        out.push_str(&format!("recent errors ({}, newest last):\n", errors.len()));
        for e in errors.iter().rev().take(5).rev() {
            out.push_str(&format!(
                "  {} {} {}\n",
                e["level"].as_str().unwrap_or("?"),
                e["target"].as_str().unwrap_or("?"),
                e["message"].as_str().unwrap_or("?")
            ));
        }
    }
    out
}

/// What `roomlog check` prints for a person.
fn check_summary(report: &roomlog::check::CheckReport) -> String {
    let seq = |s: Option<u64>| s.map_or_else(|| "unreadable".to_owned(), |s| s.to_string());
    let mut out = format!("data folder {}\n", report.data.display());
    if let Some(records) = report.log_records {
        out.push_str(&format!("log: {records} records, head seq {}\n", seq(report.log_head_seq)));
    }
    if let (Some(reserved), Some(acked)) = (report.floor_reserved_through, report.floor_acked_through) {
        out.push_str(&format!("seq floor: acknowledged through {acked}, reserved through {reserved}\n"));
    }
    for (name, checkpoint) in &report.projections {
        out.push_str(&format!("projection {name}: applied through {}\n", seq(*checkpoint)));
    }
    if report.ok() {
        out.push_str("ok\n");
    }
    for finding in &report.findings {
        out.push_str(&format!("PROBLEM: {finding}\n"));
    }
    out
}

/// Opens the log for an operator's command, moving a data folder of the old layout first.
fn open_log(config: &Config) -> anyhow::Result<EventLog> {
    migrate(config)?;
    EventLog::open(&config.log_dir(), &config.log)
        .with_context(|| format!("opening the log in {} (is a server running on it?)", config.log_dir().display()))
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(error = %error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// Sets up tracing: stdout (text or JSON), optional daily log files, and the recent-errors
/// ring. The returned guard flushes the log files when `main` ends.
fn init_tracing(
    logging: &roomlog::config::Logging,
    to_stderr: bool,
) -> anyhow::Result<Option<tracing_appender::non_blocking::WorkerGuard>> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_env("ROOMLOG_LOG")
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    use std::io::IsTerminal;
    // Colour only on a terminal: journald and files keep escape codes as text.
    let (writer, ansi) = if to_stderr {
        (tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stderr), std::io::stderr().is_terminal())
    } else {
        (tracing_subscriber::fmt::writer::BoxMakeWriter::new(std::io::stdout), std::io::stdout().is_terminal())
    };
    let stdout = if logging.json {
        tracing_subscriber::fmt::layer().json().with_writer(writer).boxed()
    } else {
        tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(writer).boxed()
    };
    let (files, guard) = match &logging.dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating log folder {}", dir.display()))?;
            let appender = tracing_appender::rolling::RollingFileAppender::builder()
                .rotation(tracing_appender::rolling::Rotation::DAILY)
                .filename_prefix("roomlog")
                .filename_suffix("log")
                .max_log_files(logging.keep_files.max(1))
                .build(dir)
                .with_context(|| format!("log files in {}", dir.display()))?;
            let (writer, guard) = tracing_appender::non_blocking(appender);
            let layer = tracing_subscriber::fmt::layer().with_ansi(false).with_writer(writer);
            let layer =
                if logging.json { layer.json().boxed() } else { layer.fmt_fields(FileFields::default()).boxed() };
            (Some(layer.with_filter(filter())), Some(guard))
        }
        None => (None, None),
    };
    // The recent-errors ring sees warnings and errors whatever the output filter says.
    tracing_subscriber::registry()
        .with(stdout.with_filter(filter()))
        .with(files)
        .with(roomlog::recent_errors::RecentErrorsLayer.with_filter(tracing::level_filters::LevelFilter::WARN))
        .init();
    Ok(guard)
}

/// The log files' span field formatter: `DefaultFields` under a type of its own. Span fields
/// are formatted once per formatter type and shared between layers, so with the terminal's
/// formatter type the files got the terminal's colour codes in span fields (issue 17).
#[derive(Debug, Default)]
struct FileFields(tracing_subscriber::fmt::format::DefaultFields);

impl<'a> tracing_subscriber::field::MakeVisitor<tracing_subscriber::fmt::format::Writer<'a>> for FileFields {
    type Visitor = tracing_subscriber::fmt::format::DefaultVisitor<'a>;

    fn make_visitor(&self, target: tracing_subscriber::fmt::format::Writer<'a>) -> Self::Visitor {
        self.0.make_visitor(target)
    }
}

/// The configuration in force as TOML, with every key: TOML has no null, so a key without a
/// value (`files.cold_dir`, `logging.dir`, ...) is listed commented out, and an empty list of
/// tables (`files.on_pay`) as `[]`.
fn config_listing(config: &Config) -> anyhow::Result<String> {
    fn leaves(value: &serde_json::Value, section: &str, out: &mut Vec<(String, String, serde_json::Value)>) {
        for (key, child) in value.as_object().into_iter().flatten() {
            match child {
                serde_json::Value::Object(_) => {
                    let inner = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
                    leaves(child, &inner, out);
                }
                _ => out.push((section.to_owned(), key.clone(), child.clone())),
            }
        }
    }
    let text = toml::to_string_pretty(config)?;
    // (header, lines) in order; the first has no header (the top-level keys).
    let mut sections: Vec<(String, Vec<String>)> = vec![(String::new(), Vec::new())];
    for line in text.lines() {
        match line.trim().strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            Some(header) if !header.starts_with('[') => sections.push((header.to_owned(), Vec::new())),
            _ => {
                if let Some(last) = sections.last_mut() {
                    last.1.push(line.to_owned());
                }
            }
        }
    }
    let mut all = Vec::new();
    leaves(&serde_json::to_value(config)?, "", &mut all);
    for (section, key, value) in all {
        let path = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
        if text.contains(&format!("[[{path}]]")) {
            continue;
        }
        let line = match &value {
            serde_json::Value::Null => format!("# {key} =   (unset)"),
            other => format!("{key} = {}", toml::Value::try_from(other)?),
        };
        let index = match sections.iter().position(|(header, _)| *header == section) {
            Some(index) => index,
            None => {
                sections.push((section.clone(), Vec::new()));
                sections.len() - 1
            }
        };
        let lines = &mut sections[index].1;
        if lines.iter().any(|l| l.trim_start().starts_with(&format!("{key} ="))) {
            continue;
        }
        // Before the blank line that ends the section.
        let at = lines.iter().rposition(|l| !l.trim().is_empty()).map_or(0, |i| i + 1);
        lines.insert(at, line);
    }
    let mut out = String::new();
    for (header, lines) in sections {
        if !header.is_empty() {
            if !out.is_empty() && !out.ends_with("\n\n") {
                out.push('\n');
            }
            out.push_str(&format!("[{header}]\n"));
        }
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    Ok(out)
}
