//! `roomlog stats` and `roomlog scrub`: what the running server stores, and a re-hash of every
//! stored file.

use roomlog::Config;

use super::remote::ask_server;

/// `roomlog stats`: bytes on disk per part, files, messages, sessions, disk state and growth.
pub async fn stats(config: &Config, addr: Option<std::net::SocketAddr>, json: bool) -> anyhow::Result<()> {
    let storage = ask_server(config, addr, reqwest::Method::GET, "/api/storage").await?;
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

/// `roomlog scrub`: re-hashes every stored file; exits 2 if any was damaged.
pub async fn scrub(config: &Config, addr: Option<std::net::SocketAddr>, json: bool) -> anyhow::Result<()> {
    let report = ask_server(config, addr, reqwest::Method::POST, "/api/scrub").await?;
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
