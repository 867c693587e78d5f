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
