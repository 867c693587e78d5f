//! `roomlog janitor plan|run|runs`: the running server's janitor.

use std::process::ExitCode;

use anyhow::Context;
use roomlog::event::{JanitorRan, RuleTally};
use roomlog::views::{JanitorRunRecord, JanitorRuns};
use roomlog::Config;

use super::args::JanitorAction;
use super::remote::{ask_server_answer, error_answer};

/// `roomlog janitor plan|run|runs`: asks the server, prints its answer; exit code 2 on an
/// incomplete run.
pub async fn run(
    config: &Config,
    action: JanitorAction,
    addr: Option<std::net::SocketAddr>,
    json: bool,
) -> anyhow::Result<ExitCode> {
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
        print_janitor_answer(&action, answer)?;
    }
    Ok(if run_incomplete { ExitCode::from(JANITOR_RUN_INCOMPLETE_EXIT) } else { ExitCode::SUCCESS })
}

/// The exit code of `roomlog janitor run` when the run was `partial` (some items failed) or
/// `failed` (none could be done): not 1, which says the command itself failed (no server).
const JANITOR_RUN_INCOMPLETE_EXIT: u8 = 2;

/// What `roomlog janitor plan|run|runs` prints for a person. A run and the runs are read as
/// the server's own types ([`JanitorRan`], [`JanitorRuns`]), so that a field renamed there
/// fails here instead of printing `?`; so are a plan's rules. The plan's items stay JSON: their
/// type carries what the janitor does with them, which no client should build.
fn print_janitor_answer(action: &JanitorAction, answer: serde_json::Value) -> anyhow::Result<()> {
    match action {
        JanitorAction::Plan => {
            let items = answer["items"].as_array().map_or(0, Vec::len);
            println!("janitor plan: {items} items (nothing deleted; `roomlog janitor run` applies it)");
            let rules: Vec<RuleTally> =
                serde_json::from_value(answer["rules"].clone()).context("/api/janitor/plan: its rules")?;
            print_rules(&rules);
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
            let ran: JanitorRan = serde_json::from_value(answer).context("/api/janitor/run: not a run's record")?;
            println!("janitor run {}: {} in {:.1} s{}", ran.run, ran.outcome, seconds(&ran), error_suffix(&ran));
            print_rules(&ran.rules);
        }
        JanitorAction::Runs { .. } => {
            let runs: JanitorRuns = serde_json::from_value(answer).context("/api/janitor/runs: not a list of runs")?;
            for JanitorRunRecord { ran, .. } in &runs.runs {
                println!(
                    "run {} ({}): {} in {:.1} s{}",
                    ran.run,
                    ran.trigger,
                    ran.outcome,
                    seconds(ran),
                    error_suffix(ran)
                );
                print_rules(&ran.rules);
            }
        }
    }
    Ok(())
}

/// How long a run took, in seconds.
fn seconds(ran: &JanitorRan) -> f64 {
    ran.finished_at_unix_ms.saturating_sub(ran.started_at_unix_ms) as f64 / 1000.0
}

/// `: why` when the run did not do everything, else nothing.
fn error_suffix(ran: &JanitorRan) -> String {
    ran.error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
}

/// One line per rule of a plan or a run: items and bytes.
fn print_rules(rules: &[RuleTally]) {
    for rule in rules {
        // `items` without a width, as when it was printed from JSON (which ignores widths).
        println!("  {:<28} {} items {:>12.1} MiB", rule.rule, rule.items, super::mib(rule.bytes));
    }
}
