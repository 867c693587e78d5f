//! `roomlog backup`, `backup verify` and `restore`: one archive of the log (and the content
//! files, the configuration and the token secret), written from the running server if one
//! answers, else from the data folder.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::Context;
use roomlog::Config;

use super::offline::{open_log, rebuild};
use super::remote::operator_client;

/// `roomlog backup verify`: checks an archive without restoring it.
pub fn verify(file: &Path) -> anyhow::Result<()> {
    let verified = roomlog::backup::verify(file)?;
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

/// `roomlog restore`: restores archives into an empty data folder, then rebuilds the projections.
pub fn restore(
    config: &Config,
    files: &[PathBuf],
    until_seq: Option<u64>,
    until_time: Option<String>,
) -> anyhow::Result<()> {
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
    let restored = roomlog::backup::restore(files, &config.log_dir(), &store, &config.data, &secrets, until)?;
    if restored.secret_restored {
        println!("token secret restored into {} (mode 0600): tokens issued before still work", secrets.dir.display());
    }
    println!(
        "restored {} events (through seq {}) and {} content files ({:.1} MiB) into {}",
        restored.events,
        restored.last_seq,
        restored.content_files,
        super::mib(restored.content_bytes),
        config.data.display()
    );
    rebuild(config, "all")
}

/// Writes a backup archive: through the running server's export route if it answers, else
/// from the data folder directly (the server is stopped, so its lock is free).
pub async fn backup(
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
                Ok(log.read_raw_blocking(after.saturating_add(1), 4096)?)
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
        super::mib(size),
        secs,
        manifest.events as f64 / secs,
        size as f64 / 1e6 / secs,
    );
    for skipped in &manifest.content_skipped {
        eprintln!("content {} is not in the archive: {}", skipped.hash, skipped.why);
    }
    Ok(())
}
