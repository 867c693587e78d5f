//! `roomlog janitor plan|run|runs`: the running server's janitor.

use roomlog::Config;

use super::args::JanitorAction;
use super::remote::{ask_server_answer, error_answer};

/// `roomlog janitor plan|run|runs`: asks the server, prints its answer; exits 2 on an incomplete run.
pub async fn run(
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
