//! What an operator and Prometheus see: `/metrics` and `roomlog status`.

mod common;

use std::collections::HashMap;
use std::process::Command;

use common::{config, start, Client};
use serde_json::json;

/// Scrapes `/metrics` and returns (series → value, metric → type), failing if the body is not
/// the Prometheus text format.
async fn scrape(addr: std::net::SocketAddr) -> (HashMap<String, f64>, HashMap<String, String>) {
    let response = reqwest::get(format!("http://{addr}/metrics")).await.expect("scrape");
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.expect("body");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("the Prometheus text format");
    let mut values = HashMap::new();
    for sample in &parsed.samples {
        let mut labels: Vec<_> = sample.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        let value = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            prometheus_parse::Value::Histogram(ref buckets) => buckets.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => continue,
        };
        values.insert(format!("{}{{{}}}", sample.metric, labels.join(",")), value);
    }
    let mut types = HashMap::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
            types.insert(name.to_owned(), kind.to_owned());
        }
    }
    (values, types)
}

fn value(values: &HashMap<String, f64>, series: &str) -> f64 {
    values.get(series).copied().unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_and_move_when_clients_chat() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    let (before, _) = scrape(addr).await;

    let mut ann = Client::connect(addr, "ann").await;
    let mut bob = Client::connect(addr, "bob").await;
    ann.join("metrics-room", None).await;
    bob.join("metrics-room", None).await;
    for n in 0..5 {
        ann.say("metrics-room", &format!("m{n}"), &format!("{n}")).await;
    }
    ann.send_text("{broken".into()).await;
    assert_eq!(ann.recv().await["code"], "malformed_json");
    let upload = reqwest::Client::new().put(format!("http://{addr}/api/files/tts/m.mp3")).body(vec![7u8; 5000]).send();
    assert_eq!(upload.await.expect("upload").status().as_u16(), 201);
    let run = reqwest::Client::new().post(format!("http://{addr}/api/janitor/run")).send();
    assert_eq!(run.await.expect("janitor run").status().as_u16(), 200);
    common::projections_caught_up(addr).await;
    let (status, hits) = common::get(addr, "/api/search?q=m3").await;
    assert_eq!((status, hits["total"].as_u64()), (200, Some(1)));
    let (after, types) = scrape(addr).await;

    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert!(
        moved("roomlog_messages_appended_total{}") >= 5.0,
        "appended: {}",
        moved("roomlog_messages_appended_total{}")
    );
    assert!(moved("roomlog_messages_delivered_total{}") >= 10.0, "two members, five messages");
    assert!(moved("roomlog_joins_total{}") >= 2.0);
    assert!(moved("roomlog_connections_total{}") >= 2.0);
    assert!(moved("roomlog_frame_errors_total{code=malformed_json}") >= 1.0);
    assert!(moved("roomlog_log_events_total{}") >= 5.0);
    assert!(value(&after, "roomlog_connections_open{}") >= 2.0);
    assert!(value(&after, "roomlog_log_head_seq{}") >= 5.0);
    assert!(value(&after, "roomlog_log_disk_bytes{}") > 0.0);
    assert!(
        value(&after, "roomlog_append_durable_seconds_count{}") >= 1.0,
        "{:?}",
        after.keys().filter(|k| k.contains("durable")).collect::<Vec<_>>()
    );
    assert!(after.contains_key("roomlog_projection_lag_events{projection=history}"));
    assert_eq!(value(&after, "roomlog_projection_lag_events{projection=search}"), 0.0);
    assert!(moved("roomlog_search_seconds_count{}") >= 1.0, "the search was timed");
    assert_eq!(value(&after, "roomlog_search_index_documents{}"), 5.0, "five messages indexed");
    assert!(value(&after, "roomlog_search_index_disk_bytes{}") > 0.0);
    assert_eq!(value(&after, "roomlog_sessions{state=active}"), 0.0, "sessions by state are exported");
    assert_eq!(value(&after, "roomlog_ready{}"), 1.0);
    let used = value(&after, "roomlog_disk_used_ratio{folder=data}");
    assert!(used > 0.0 && used < 1.0, "disk used ratio {used}");
    assert!(after.contains_key("roomlog_disk_state{}"), "the threshold state is exported");
    assert!(moved("roomlog_file_uploads_total{}") >= 1.0);
    assert!(moved("roomlog_file_upload_bytes_total{}") >= 5000.0);
    assert!(value(&after, "roomlog_files{tier=hot}") >= 1.0, "files by tier");
    assert!(value(&after, "roomlog_file_bytes{tier=hot}") >= 5000.0);
    assert!(moved("roomlog_janitor_runs_total{outcome=succeeded}") >= 1.0, "the janitor run is counted");
    assert!(moved("roomlog_janitor_run_seconds_count{}") >= 1.0);
    for (name, kind) in &types {
        assert!(name.starts_with("roomlog_"), "{name}: every metric is roomlog_<thing>_<unit>");
        assert_eq!(
            kind == "counter",
            name.ends_with("_total"),
            "{name} is a {kind}: counters, and only counters, end in _total"
        );
    }
    drop((ann, bob));
    server.shutdown().await;
}

fn status(data: &std::path::Path, json: bool) -> (i32, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_roomlog"));
    command.args(["status", "--data"]).arg(data);
    if json {
        command.arg("--json");
    }
    let output = command.output().expect("run roomlog status");
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_a_running_server_and_a_stopped_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The host is not trusted as admin (the default): the command signs its own admin token
    // with the secret in the data folder, which a caller without it cannot.
    let env = [("ROOMLOG_AUTH__ADMIN_FROM_HOST", "false")];
    let mut server = common::spawn_with(dir.path(), &env, std::process::Stdio::inherit());
    let (refused, _) = common::get(server.addr, "/api/status").await;
    assert_eq!(refused, 401, "/api/status is for admins");
    let mut ann = Client::connect(server.addr, "ann").await;
    ann.join("lobby", None).await;
    ann.say("lobby", "hello", "1").await;

    let (code, text) = status(dir.path(), false);
    assert_eq!(code, 0, "{text}");
    assert!(text.starts_with(&format!("roomlog {} up", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains(&format!("on {}", server.addr)), "{text}");
    assert!(text.contains("ready: yes"), "{text}");
    assert!(text.contains("log: head seq 1,"), "{text}");
    assert!(text.contains("rooms active: 1, connections open: 1"), "{text}");

    let (code, text) = status(dir.path(), true);
    assert_eq!(code, 0);
    let answer: serde_json::Value = serde_json::from_str(&text).expect("json");
    assert_eq!(answer["ready"], json!(true));
    assert_eq!(answer["log"]["head_seq"], json!(1));
    assert!(answer["recent_errors"].is_array());

    server.child.kill().expect("kill");
    let _ = server.child.wait();
    let (code, text) = status(dir.path(), false);
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("roomlog is down: nothing answers on"), "{text}");
    let (code, text) = status(dir.path(), true);
    assert_eq!(code, 1);
    assert_eq!(serde_json::from_str::<serde_json::Value>(&text).expect("json")["up"], json!(false));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_readyz_report_a_server_that_is_up_but_not_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Any disk is fuller than a danger threshold of 0: the server is up, not ready.
    let mut config = config(dir.path());
    config.disk.danger = 0.0;
    let server = start(config).await;
    let (status_code, ready) = common::get(server.addr(), "/readyz").await;
    assert_eq!(status_code, 503);
    assert_eq!(ready["ready"], json!(false));
    assert!(
        ready["not_ready_because"][0].as_str().is_some_and(|r| r.contains("above the danger threshold")),
        "{ready}"
    );

    let data = dir.path().to_owned();
    let (code, text) = tokio::task::spawn_blocking(move || status(&data, false)).await.expect("status");
    assert_eq!(code, 2, "up but not ready: {text}");
    assert!(text.contains("ready: NO") && text.contains("not ready: the disk is"), "{text}");
    server.shutdown().await;
}

/// One exported series: name and labels, as a line of the text format names it.
type Series = (String, Vec<(String, String)>);

/// Splits `name{a="x",b="y"}` (the part of a line or an expression before its value) into its
/// name and its `=` label pairs.
fn parse_series(text: &str) -> Series {
    let (name, labels) = match text.split_once('{') {
        Some((name, rest)) => (name, rest.trim_end_matches('}')),
        None => (text, ""),
    };
    let labels = labels
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(k, _)| !k.ends_with('!') && !k.ends_with('~'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        .collect();
    (name.trim().to_owned(), labels)
}

/// The raw text of a scrape, as (series, value) pairs: histogram buckets keep their `_bucket`
/// name, as PromQL sees them.
async fn scrape_raw(addr: std::net::SocketAddr) -> Vec<(Series, f64)> {
    let text = reqwest::get(format!("http://{addr}/metrics")).await.expect("scrape").text().await.expect("body");
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(series, value)| (parse_series(series), value.parse().unwrap_or(f64::NAN)))
        .collect()
}

/// Every `roomlog_*` series named in `expr`, with its `=` matchers.
fn series_in_expr(expr: &str) -> Vec<Series> {
    let mut out = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("roomlog_") {
        let tail = &rest[at..];
        let name_len = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        let end = if tail[name_len..].starts_with('{') {
            name_len + tail[name_len..].find('}').map_or(0, |i| i + 1)
        } else {
            name_len
        };
        out.push(parse_series(&tail[..end]));
        rest = &tail[end..];
    }
    out
}

fn ops_file(path: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("ops").join(path)).expect(path)
}

/// Issue 17: counters appeared on `/metrics` only at their first increment, at 1, so
/// `increase(...)` never saw the first failure after a start and its alert never fired. A fresh
/// server (a new process: nothing counted yet) exports every series an alert uses, every
/// counter, and the failure counters the issue names at 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_server_exports_every_series_an_alert_uses_and_every_counter_at_zero() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::spawn(dir.path());
    let exported = scrape_raw(server.addr).await;
    let find = |(name, matchers): &Series| {
        exported.iter().find(|((n, labels), _)| n == name && matchers.iter().all(|m| labels.contains(m)))
    };

    let rules = ops_file("prometheus/alerts.yml");
    let mut missing = Vec::new();
    for expr in rules.lines().filter_map(|l| l.trim().strip_prefix("expr:")) {
        for series in series_in_expr(expr) {
            if find(&series).is_none() {
                missing.push(format!("{series:?} (in {})", expr.trim()));
            }
        }
    }
    assert!(missing.is_empty(), "series alerts use that a fresh server does not export: {missing:#?}");

    // Every counter src/metrics.rs names.
    let names = std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/metrics.rs"))
        .expect("src/metrics.rs");
    let counters: Vec<&str> = names
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub const "))
        .filter_map(|l| l.split('"').nth(1))
        .filter(|name| name.ends_with("_total"))
        .collect();
    assert!(counters.len() > 15, "{counters:?}");
    let absent: Vec<&&str> = counters.iter().filter(|c| find(&((**c).to_owned(), vec![])).is_none()).collect();
    assert!(absent.is_empty(), "counters missing from a fresh server's /metrics: {absent:?}");

    let zero = |name: &str, labels: &[(&str, &str)]| {
        let series = (name.to_owned(), labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect());
        assert_eq!(find(&series).map(|(_, v)| *v), Some(0.0), "{name}{labels:?} at 0 from the start");
    };
    zero("roomlog_janitor_runs_total", &[("outcome", "failed")]);
    zero("roomlog_janitor_runs_total", &[("outcome", "partial")]);
    assert!(find(&("roomlog_janitor_runs_total".into(), vec![("outcome".into(), "succeeded".into())])).is_some());
    zero("roomlog_append_failures_total", &[]);
    zero("roomlog_backup_failures_total", &[]);
    zero("roomlog_room_restarts_total", &[]);
    zero("roomlog_slow_consumers_disconnected_total", &[]);
    zero("roomlog_accept_errors_total", &[]);
    zero("roomlog_frame_errors_total", &[("code", "storage_unavailable")]);
    zero("roomlog_connections_refused_total", &[("reason", "too_many_connections")]);
}

/// The rule tests in `ops/prometheus/alerts_test.yml` feed series with the names and labels the
/// server exports (besides Prometheus' own `instance` and `job`): a rule test on a series the
/// server never exports, or with labels it does not carry, proves nothing about the alert.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rule_tests_feed_series_as_the_server_exports_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = common::spawn(dir.path());
    let exported = scrape_raw(server.addr).await;
    let tests = ops_file("prometheus/alerts_test.yml");
    let mut fed = 0;
    let mut unlike = Vec::new();
    for line in tests.lines().filter_map(|l| l.trim().strip_prefix("- series:")) {
        let (name, mut labels) = parse_series(line.trim().trim_matches('\''));
        labels.retain(|(k, _)| k != "instance" && k != "job");
        labels.sort();
        fed += 1;
        let same = exported.iter().any(|((n, l), _)| {
            let mut l: Vec<_> = l.iter().filter(|(k, _)| k != "le").cloned().collect();
            l.sort();
            *n == name && l == labels
        });
        if !same {
            unlike.push(format!("{name}{labels:?}"));
        }
    }
    assert!(fed > 5, "{fed} series fed");
    assert!(unlike.is_empty(), "rule tests feed series the server does not export so: {unlike:#?}");
}

/// Issue 17: a second server on a data folder in use failed with sled's raw lock error. It
/// names the one that holds the folder, and exits 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_data_folder_names_the_first_and_exits_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = common::spawn(dir.path());
    let mut second = Command::new(env!("CARGO_BIN_EXE_roomlog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(dir.path())
        .env("ROOMLOG_LOG", "warn")
        .envs(common::HOST_DISK_INDEPENDENT)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("a second roomlog starts");
    let mut code = None;
    for _ in 0..1500 {
        if let Some(status) = second.try_wait().expect("wait") {
            code = status.code();
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    if code.is_none() {
        let _ = second.kill();
    }
    let output = second.wait_with_output().expect("stderr");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(code, Some(1), "{stderr}");
    let expected = format!(
        "another roomlog (pid {}, listening on {}) is using {}",
        first.child.id(),
        first.addr,
        dir.path().display()
    );
    assert!(stderr.contains(&expected), "expected {expected:?} in: {stderr}");
    // The first one still serves.
    let (alive, _) = common::get(first.addr, "/healthz").await;
    assert_eq!(alive, 200);
}

/// Issue 17: log lines carried ANSI colour codes when stdout was not a terminal (journald keeps
/// them as `\x1b[32m`), and so did the daily files of `logging.dir`. Colour only on a terminal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_no_colour_codes_when_stdout_is_not_a_terminal() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (data, logs) = (dir.path().join("data"), dir.path().join("logs"));
    std::fs::create_dir_all(&data).expect("data");
    let stdout_path = dir.path().join("stdout.txt");
    let stdout = std::fs::File::create(&stdout_path).expect("stdout file");
    let mut child = Command::new(env!("CARGO_BIN_EXE_roomlog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(&data)
        .env("ROOMLOG_LOG", "info")
        .env("ROOMLOG_LOGGING__DIR", &logs)
        .envs(common::HOST_DISK_INDEPENDENT)
        .stdout(stdout)
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("roomlog starts");
    let files_text = || -> String {
        std::fs::read_dir(&logs)
            .map(|entries| {
                entries.filter_map(Result::ok).filter_map(|e| std::fs::read_to_string(e.path()).ok()).collect()
            })
            .unwrap_or_default()
    };
    let mut seen = false;
    for _ in 0..1500 {
        let out = std::fs::read_to_string(&stdout_path).unwrap_or_default();
        if out.contains("INFO") && out.contains("listening") && files_text().contains("INFO") {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let (out, files) = (std::fs::read_to_string(&stdout_path).unwrap_or_default(), files_text());
    assert!(seen, "info lines on stdout and in the log folder; stdout: {out}\nfiles: {files}");
    assert!(!out.contains('\x1b'), "no colour codes on a stdout that is not a terminal: {out:?}");
    assert!(!files.contains('\x1b'), "no colour codes in the log files: {files:?}");
}

/// Every key of `value` (a configuration as JSON) as (section, key), `null` leaves included.
fn config_keys(value: &serde_json::Value, section: &str, out: &mut Vec<(String, String)>) {
    for (key, child) in value.as_object().into_iter().flatten() {
        match child {
            serde_json::Value::Object(_) => {
                let inner = if section.is_empty() { key.clone() } else { format!("{section}.{key}") };
                config_keys(child, &inner, out);
            }
            _ => out.push((section.to_owned(), key.clone())),
        }
    }
}

/// Issue 17: `roomlog config` left out the keys without a value (`files.cold_dir`,
/// `logging.dir`, `janitor.at`, ...), though the README says it lists every key. Every key of
/// the configuration is there, the unset ones commented out.
#[test]
fn config_lists_every_key_the_unset_ones_commented_out() {
    let dir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(env!("CARGO_BIN_EXE_roomlog")).args(["config", "--data"]).arg(dir.path()).output();
    let output = output.expect("roomlog config runs");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let text = String::from_utf8(output.stdout).expect("utf-8");
    let parsed: toml::Value = toml::from_str(&text).expect("the listing is TOML");
    assert!(parsed.get("listen").is_some(), "{text}");
    let mut listed = std::collections::HashSet::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if let Some(tables) = line.strip_prefix("[[").and_then(|l| l.strip_suffix("]]")) {
            // An array of tables lists its key in the table above.
            let (parent, key) = tables.rsplit_once('.').unwrap_or(("", tables));
            listed.insert((parent.to_owned(), key.to_owned()));
            section = tables.to_owned();
        } else if let Some(header) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = header.to_owned();
        } else if let Some(key) = line.trim_start_matches("# ").split([' ', '=']).next() {
            listed.insert((section.clone(), key.to_owned()));
        }
    }
    let mut keys = Vec::new();
    config_keys(&serde_json::to_value(roomlog::Config::default()).expect("json"), "", &mut keys);
    let missing: Vec<_> = keys.iter().filter(|k| !listed.contains(*k)).collect();
    assert!(missing.is_empty(), "keys `roomlog config` leaves out: {missing:?}\n{text}");
}

/// Issue 17: `roomlog stats` printed the sessions by state as raw JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_prints_sessions_by_state_for_a_person() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let mut command = Command::new(env!("CARGO_BIN_EXE_roomlog"));
    command.args(["stats", "--addr", &server.addr().to_string(), "--data"]).arg(dir.path());
    let output = tokio::task::spawn_blocking(move || command.output()).await.expect("join").expect("stats runs");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(output.status.success(), "{text}");
    let line = text.lines().find(|l| l.starts_with("sessions:")).expect("a sessions line");
    assert!(!line.contains(['{', '"']), "sessions in words, not JSON: {line}");
    assert!(line.contains("0 active"), "{line}");
    server.shutdown().await;
}

/// Issue 17: after a server stopped, `roomlog status` said nothing answered on the default
/// port, not on the one the server last used; an operator looking for it needs the latter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_of_a_stopped_folder_names_the_last_address_used() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    server.shutdown().await;
    let data = dir.path().to_owned();
    let (code, text) = tokio::task::spawn_blocking(move || status(&data, false)).await.expect("status");
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with(&format!("roomlog is down: nothing answers on {addr}")), "{text}");
}
