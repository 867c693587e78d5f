//! `roomlog status`: asks the running server how it is (`GET /api/status`).

use std::process::ExitCode;

use roomlog::views::Status;
use roomlog::Config;

use super::remote::operator_client;

/// The exit code of `roomlog status` when the server answers but is not ready.
const NOT_READY_EXIT: u8 = 2;

/// Prints the server's status; returns the exit code: 0 ready, 1 unreachable, 2 not ready.
pub async fn status(config: &Config, addr: Option<std::net::SocketAddr>, json: bool) -> ExitCode {
    let addr = addr.or_else(|| config.recorded_addr()).unwrap_or(config.listen);
    let client = match operator_client(config, std::time::Duration::from_secs(5)) {
        Ok(client) => client,
        Err(error) => {
            eprintln!("roomlog status: {error}");
            return ExitCode::FAILURE;
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
            return ExitCode::FAILURE;
        }
    };
    // `--json` prints the answer as it came; the summary and the exit code read it as the
    // server's own `Status`, so that a field renamed there fails here instead of printing `?`.
    let typed = serde_json::from_value::<Status>(status.clone());
    let ready = typed.as_ref().is_ok_and(|s| s.ready);
    if json {
        println!("{status}");
    } else {
        match &typed {
            Ok(typed) => print!("{}", summary(typed)),
            Err(error) => eprintln!("roomlog status: {addr} answered, but not with a status ({error}): {status}"),
        }
    }
    if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(NOT_READY_EXIT)
    }
}

/// The human summary of `/api/status`.
fn summary(s: &Status) -> String {
    let uptime = humantime::format_duration(std::time::Duration::from_secs(s.uptime_seconds));
    let mut out = format!(
        "roomlog {} up {uptime} on {} (data {})\nready: {}\nlog: head seq {}, {:.1} MiB on disk\n",
        s.version,
        s.listen,
        s.data,
        if s.ready { "yes" } else { "NO" },
        s.log.head_seq,
        super::mib(s.log.disk_bytes),
    );
    for (name, p) in &s.projections {
        out.push_str(&format!(
            "{name} projection: applied {} (lag {} events{})\n",
            p.applied_seq,
            p.lag_events,
            if p.running { "" } else { ", STOPPED" },
        ));
    }
    out.push_str(&format!(
        "search index: {} messages, {:.1} MiB on disk\nrooms active: {}, connections open: {}\n",
        s.search.documents,
        super::mib(s.search.disk_bytes),
        s.rooms_active,
        s.connections_open,
    ));
    for reason in &s.not_ready_because {
        out.push_str(&format!("  not ready: {reason}\n"));
    }
    let errors = &s.recent_errors;
    if errors.is_empty() {
        out.push_str("recent errors: none\n");
    } else {
        out.push_str(&format!("recent errors ({}, newest last):\n", errors.len()));
        for e in errors.iter().rev().take(5).rev() {
            out.push_str(&format!("  {} {} {}\n", e.level, e.target, e.message));
        }
    }
    out
}
