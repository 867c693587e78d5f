//! `roomlog stats` and `roomlog scrub`: what the running server stores, and a re-hash of every
//! stored file. Both read the server's answer as its own type (`views::Storage`,
//! `ScrubReport`); `--json` prints the answer as it came.

use std::process::ExitCode;

use roomlog::blob::service::ScrubReport;
use roomlog::views::Storage;
use roomlog::Config;

use super::mib;
use super::remote::{ask_server, typed};

/// The exit code of `roomlog scrub` when it found damaged content.
const SCRUB_DAMAGED_EXIT: u8 = 2;

/// `roomlog stats`: bytes on disk per part, files, messages, sessions, disk state and growth.
pub async fn stats(config: &Config, addr: Option<std::net::SocketAddr>, json: bool) -> anyhow::Result<ExitCode> {
    let answer = ask_server(config, addr, reqwest::Method::GET, "/api/storage").await?;
    if json {
        println!("{answer}");
        return Ok(ExitCode::SUCCESS);
    }
    let storage: Storage = typed("/api/storage", &answer)?;
    let used = storage.disk_used_ratio.map_or("not measured yet".to_owned(), |r| format!("{:.0}% used", r * 100.0));
    println!("disk: {} ({used})", storage.disk_state.as_str());
    for (part, bytes) in &storage.on_disk {
        println!("  {part:<14} {:>10.1} MiB", mib(*bytes));
    }
    println!("files by prefix/tier:");
    for (prefix, total) in &storage.keys {
        println!("  {prefix:<24} {:>8} keys {:>10.1} MiB", total.keys, mib(total.bytes));
    }
    println!("messages per room:");
    for (room, total) in &storage.messages {
        println!("  {room:<24} {:>10} messages {:>10.1} MiB", total.messages, mib(total.bytes));
    }
    let sessions: Vec<String> = storage.sessions.iter().map(|(state, count)| format!("{count} {state}")).collect();
    println!("sessions: {}", if sessions.is_empty() { "none".to_owned() } else { sessions.join(", ") });
    let growth = &storage.growth;
    for (span, rate) in [("7 days", &growth.last_7_days), ("30 days", &growth.last_30_days)] {
        match rate {
            Some(rate) => println!(
                "growth over the last {span}: {:+.1} MiB/day on the disk, {:+.1} MiB/day of roomlog's data",
                rate.fs_used_bytes_per_day / (1024.0 * 1024.0),
                rate.roomlog_bytes_per_day / (1024.0 * 1024.0)
            ),
            None => println!("growth over the last {span}: not enough samples yet (one a day)"),
        }
    }
    for (threshold, days) in &growth.days_until {
        match days {
            Some(d) => println!("  days until {threshold}: {d:.0}"),
            None => println!("  days until {threshold}: not growing or no rate yet"),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `roomlog scrub`: re-hashes every stored file; exit code 2 if any was damaged.
pub async fn scrub(config: &Config, addr: Option<std::net::SocketAddr>, json: bool) -> anyhow::Result<ExitCode> {
    let answer = ask_server(config, addr, reqwest::Method::POST, "/api/scrub").await?;
    let report: ScrubReport = typed("/api/scrub", &answer)?;
    if json {
        println!("{answer}");
    } else {
        println!(
            "scrubbed {} files ({:.1} MiB) in {:.1} s: {} damaged, {} orphans",
            report.files,
            mib(report.bytes),
            report.seconds,
            report.damaged.len(),
            report.orphans.len(),
        );
        for d in &report.damaged {
            println!(
                "  damaged {} ({} tier): bytes hash to {}; moved to {}",
                d.hash,
                d.tier.as_str(),
                d.found,
                d.quarantined_to.display()
            );
        }
        for o in &report.orphans {
            println!("  orphan {} ({} tier, {} bytes): no key references it", o.hash, o.tier.as_str(), o.bytes);
        }
    }
    Ok(if report.damaged.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(SCRUB_DAMAGED_EXIT) })
}
