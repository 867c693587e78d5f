//! Commands on a stopped server's data folder: `rebuild`, `check` and `compact` (each takes the
//! folder's locks, so a running server makes them fail rather than race it).

use std::process::ExitCode;

use std::time::Instant;

use anyhow::{bail, Context};
use roomlog::log::EventLog;
use roomlog::projection::{self, history, search, Kind};
use roomlog::Config;

/// `roomlog compact`: rewrites the log without what retention and deletions superseded.
pub fn compact(config: &Config, json: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    migrate(config)?;
    let done = roomlog::log::compact::compact(&config.log_dir(), config.log.cache_bytes_max)
        .with_context(|| format!("compacting {} (is a server running on it?)", config.log_dir().display()))?;
    if json {
        println!("{}", serde_json::to_string(&done)?);
    } else {
        println!(
            "compacted {}: {} records kept of {} ({} message and {} file events dropped); {:.1} MiB on disk before, {:.1} MiB after, in {:.1} s",
            config.log_dir().display(),
            done.records_after,
            done.records_before,
            done.dropped_message_events,
            done.dropped_file_events,
            super::mib(done.bytes_before),
            super::mib(done.bytes_after),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}

/// `roomlog check`: checks the data folder; exit code 1 when it finds a problem.
pub fn check(config: &Config, json: bool) -> anyhow::Result<ExitCode> {
    let report = roomlog::check::check(&config.data, config.log.cache_bytes_max);
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", check_summary(&report));
    }
    Ok(if report.ok() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
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

/// `roomlog rebuild`: drops a projection (or `all`) and rebuilds it from the log, with a progress bar.
pub fn rebuild(config: &Config, name: &str) -> anyhow::Result<()> {
    let kinds: Vec<Kind> = match (name, Kind::parse(name)) {
        ("all", _) => Kind::ALL.to_vec(),
        (_, Some(kind)) => vec![kind],
        (other, None) => {
            let known: Vec<&str> = Kind::ALL.iter().map(|kind| kind.name()).collect();
            bail!("no projection named {other:?}; known: {}, all", known.join(", "))
        }
    };
    let log = open_log(config)?;
    let state = roomlog::state::StateDb::open(&config.state_dir(), config.log.cache_bytes_max).with_context(|| {
        format!("opening the projections' store in {} (is a server running on it?)", config.state_dir().display())
    })?;
    for kind in kinds {
        let name = kind.name();
        let head = log.head();
        let started = Instant::now();
        let bar = indicatif::ProgressBar::new(head).with_prefix(name);
        bar.set_style(
            indicatif::ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} events, {per_sec}, eta {eta}")?
                .progress_chars("=> "),
        );
        let progress = |applied: u64| bar.set_position(applied);
        let (applied, rate) = match kind {
            Kind::History => {
                let mut projection = history::projection(&state)?;
                projection::rebuild(&log, &mut projection, progress)?
            }
            Kind::Sessions => {
                let (_, mut projection) = roomlog::projection::sessions::open(&state)?;
                projection::rebuild(&log, &mut projection, progress)?
            }
            Kind::Files => {
                let (_, mut projection) = roomlog::projection::files::open(&state)?;
                projection::rebuild(&log, &mut projection, progress)?
            }
            Kind::Search => {
                let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
                let (_, mut projection) = search::open(&config.search_dir(), &config.search, threads)
                    .context("opening the search index (is the server running?)")?;
                let result = projection::rebuild(&log, &mut projection, progress)?;
                let merging = Instant::now();
                let segments = projection.finish()?;
                if segments > 1 {
                    println!("merged the search index's {segments} segments into one in {:.2?}", merging.elapsed());
                }
                result
            }
        };
        bar.finish_and_clear();
        state.sync()?;
        println!("rebuilt {name}: {applied} events in {:.2?} ({rate:.0} events/s)", started.elapsed());
    }
    Ok(())
}

/// Moves a data folder of the layout before the separate state store (see `roomlog::layout`).
pub fn migrate(config: &Config) -> anyhow::Result<()> {
    roomlog::layout::refuse_sled_database(&config.data)?;
    roomlog::layout::migrate(&config.data, config.log.cache_bytes_max)
        .with_context(|| format!("moving {} to the new layout (is a server running on it?)", config.data.display()))?;
    Ok(())
}

/// Opens the log for an operator's command, moving a data folder of the old layout first.
pub fn open_log(config: &Config) -> anyhow::Result<EventLog> {
    migrate(config)?;
    EventLog::open(&config.log_dir(), &config.log)
        .with_context(|| format!("opening the log in {} (is a server running on it?)", config.log_dir().display()))
}

/// `roomlog cluster-import --from DIR`: a single node's data folder into the cluster.
pub async fn cluster_import(config: &Config, from: &std::path::Path, json: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let cache = config.log.cache_bytes_max;
    roomlog::layout::refuse_sled_database(from)?;
    let source_data = from.to_owned();
    tokio::task::spawn_blocking(move || roomlog::layout::migrate(&source_data, cache))
        .await?
        .with_context(|| format!("moving {} to the current layout", from.display()))?;
    let source = roomlog::log::open_backend(&roomlog::layout::log_dir(from), cache)
        .with_context(|| format!("opening the log in {} (is its server stopped?)", from.display()))?;
    let store = roomlog::blob::BlobStore::at(&from.join("blobs"), config.files.cold_dir.as_deref());
    let contents = store
        .contents()
        .with_context(|| format!("listing the file content in {}", from.join("blobs").display()))?
        .into_iter()
        .filter_map(|(hash, tier, size)| Some((hash.to_string(), store.path_in(tier, &hash)?, size)))
        .collect();
    let imported = roomlog::log::jetstream::import(&config.jetstream, source, contents)
        .await
        .context("importing into the cluster's stream")?;
    let secret = roomlog::token::SecretFiles { dir: from.join("auth") };
    if secret.dir.join("secret").exists() {
        let local = secret.shared_form().context("reading the token secret")?;
        let shared = roomlog::log::jetstream::share_secret(&config.jetstream, local.clone()).await?;
        if shared != local {
            eprintln!("the cluster already had a token secret: tokens issued by the single node will be refused");
        }
    }
    if json {
        println!("{}", serde_json::to_string(&imported)?);
    } else {
        println!(
            "imported {} records (head seq {}, {} gaps kept) and {} files ({:.1} MiB) into stream {} in {:.1} s",
            imported.records,
            imported.head_seq,
            imported.gaps,
            imported.files,
            super::mib(imported.file_bytes),
            config.jetstream.stream,
            started.elapsed().as_secs_f64()
        );
    }
    Ok(())
}
