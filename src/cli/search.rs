//! `roomlog search`: searches past messages, through the running server when one answers,
//! else from the index and the log of the data folder. The index keeps no texts; a hit's text
//! comes from the log, whose lock the running server holds.

use anyhow::{bail, Context};
use roomlog::projection::search;
use roomlog::Config;

use super::args::SearchArgs;
use super::remote::{error_answer, operator_client};

/// `roomlog search`: parses the flags into the same parameters `GET /api/search` takes.
pub async fn run(config: &Config, args: SearchArgs) -> anyhow::Result<()> {
    let SearchArgs { query, room, author, since, until, limit, sort, json, addr } = args;
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
    let hits = match ask_running_server(config, addr, &params).await? {
        Some(hits) => hits,
        None => search_offline(config, &params).await?,
    };
    print(&hits, json)
}

/// The running server's answer to the search (`GET /api/search` with an operator token), or
/// `None` when no server answers at `addr` (default: the address it recorded).
async fn ask_running_server(
    config: &Config,
    addr: Option<std::net::SocketAddr>,
    params: &search::SearchParams,
) -> anyhow::Result<Option<search::Hits>> {
    let Some(addr) = addr.or_else(|| config.recorded_addr()) else { return Ok(None) };
    let files = roomlog::token::SecretFiles { dir: config.secret_dir() };
    let now_ms =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
    let token = files.operator_token(now_ms, std::time::Duration::from_secs(300)).unwrap_or_default();
    let sort = match params.sort {
        Some(search::Sort::Time) => "time",
        _ => "relevance",
    };
    let limit = params.limit.unwrap_or(20).to_string();
    let mut pairs =
        vec![("q", params.q.as_str()), ("sort", sort), ("limit", limit.as_str()), ("token", token.as_str())];
    let optional =
        [("room", &params.room), ("author", &params.author), ("since", &params.since), ("until", &params.until)];
    pairs.extend(optional.iter().filter_map(|(name, value)| Some((*name, value.as_deref()?))));
    let client = operator_client(config, std::time::Duration::from_secs(60))?;
    let response = match client.get(format!("http://{addr}/api/search")).query(&pairs).send().await {
        Ok(response) => response,
        Err(e) if e.is_connect() => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("asking the server on {addr} to search")),
    };
    let status = response.status();
    let body: serde_json::Value = response.json().await.context("/api/search: not a JSON answer")?;
    if !status.is_success() {
        return Err(error_answer("/api/search", status, &body));
    }
    let hits = serde_json::from_value(body).context("/api/search: not the answer this roomlog expects")?;
    Ok(Some(hits))
}

/// The search run here: the index read directly, the hits' texts read from the log (the
/// server is stopped, so the log's lock is free).
async fn search_offline(config: &Config, params: &search::SearchParams) -> anyhow::Result<search::Hits> {
    if config.log.backend == roomlog::log::LogBackend::Jetstream {
        bail!("no server answers: on a cluster's node, `roomlog search` asks the running server (--addr to name it)");
    }
    let dir = config.search_dir();
    if !dir.join("meta.json").exists() {
        bail!("no search index in {}: start the server once, or run `roomlog rebuild search`", dir.display());
    }
    let index = search::open_reader(&dir)?;
    let request = search::SearchRequest::new(params, None, usize::MAX, std::time::SystemTime::now())?;
    let log = super::offline::open_log(config)?;
    let hits = index.search(&request, &log);
    log.close().await;
    Ok(hits?)
}

/// Prints hits newest or best first, matches in [brackets], or the JSON answer.
fn print(hits: &search::Hits, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(hits)?);
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
        "{} of {}{} matching messages (index through seq {})",
        hits.hits.len(),
        if hits.total_is_exact { "" } else { "at least " },
        hits.total,
        hits.indexed_through_seq
    );
    Ok(())
}
