//! `roomlog search`: searches past messages from the index directly, whether or not the server
//! runs.

use anyhow::bail;
use roomlog::projection::search;
use roomlog::Config;

use super::args::SearchArgs;

/// `roomlog search`: parses the flags into the same parameters `GET /api/search` takes.
pub fn run(config: &Config, args: SearchArgs) -> anyhow::Result<()> {
    let SearchArgs { query, room, author, since, until, limit, sort, json } = args;
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
    search_command(config, &params, json)
}

/// `roomlog search`: prints hits newest or best first, matches in [brackets].
fn search_command(config: &Config, params: &search::SearchParams, json: bool) -> anyhow::Result<()> {
    let dir = config.search_dir();
    if !dir.join("meta.json").exists() {
        bail!("no search index in {}: start the server once, or run `roomlog rebuild search`", dir.display());
    }
    let index = search::open_reader(&dir)?;
    let request = search::SearchRequest::new(params, None, usize::MAX, std::time::SystemTime::now())?;
    let hits = index.search(&request)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&hits)?);
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
