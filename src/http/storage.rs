//! `GET /api/storage`: what is stored and where, measured when asked: bytes on disk of the log,
//! the search index and each tier of the file store (the files' real sizes), messages per room,
//! keys and bytes by key prefix and tier, sessions by state, and the disk state.

use std::collections::BTreeMap;
use std::sync::Arc;

use warp::{Filter, Reply};

use super::{ApiError, App};
use crate::blob::Tier;
use crate::views::{PrefixTotal, RoomTotal, Storage};

async fn measure(app: &App) -> Result<Storage, String> {
    // Read your writes: what was acknowledged before the question is counted.
    app.files.caught_up().await;
    app.history_barrier().await;
    let (config, store) = (app.config.clone(), app.files.store.clone());
    let (on_disk, contents) = tokio::task::spawn_blocking(move || {
        let mut on_disk = BTreeMap::new();
        on_disk.insert("log".to_owned(), crate::metrics::disk_bytes(&config.log_dir()));
        on_disk.insert("projections".to_owned(), crate::metrics::disk_bytes(&config.state_dir()));
        on_disk.insert("search_index".to_owned(), crate::metrics::disk_bytes(&config.search_dir()));
        on_disk.insert("quarantine".to_owned(), crate::metrics::disk_bytes(&config.blob_dir().join("quarantine")));
        let contents = store.contents();
        (on_disk, contents)
    })
    .await
    .map_err(|e| e.to_string())?;
    let mut on_disk = on_disk;
    let mut content: BTreeMap<String, PrefixTotal> = BTreeMap::new();
    for (_, tier, bytes) in contents.map_err(|e| e.to_string())? {
        let total = content.entry(tier.as_str().to_owned()).or_default();
        total.keys += 1;
        total.bytes += bytes;
    }
    on_disk.insert("files_hot".to_owned(), content.get("hot").map_or(0, |t| t.bytes));
    on_disk.insert("files_cold".to_owned(), content.get("cold").map_or(0, |t| t.bytes));
    let mut keys: BTreeMap<String, PrefixTotal> = BTreeMap::new();
    let mut after: Option<String> = None;
    loop {
        let page = app.files.files.list("", after.as_deref(), 1000).map_err(|e| e.to_string())?;
        for entry in &page {
            let tier = app.files.files.tier(&entry.hash).unwrap_or(Tier::Hot);
            let prefix = entry.key.as_str().split('/').next().unwrap_or("");
            let total = keys.entry(format!("{prefix}/{}", tier.as_str())).or_default();
            total.keys += 1;
            total.bytes += entry.size;
        }
        match page.last() {
            Some(last) if page.len() == 1000 => after = Some(last.key.to_string()),
            _ => break,
        }
    }
    let messages = app
        .history
        .rooms()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(room, s)| (room.as_str().to_owned(), RoomTotal { messages: s.message_count, bytes: s.message_bytes }))
        .collect();
    let growth = app.growth.report(&app.disk.config).map_err(|e| e.to_string())?;
    let sessions = app
        .sessions_read
        .counts()
        .map_err(|e| e.to_string())?
        .into_iter()
        .map(|(s, n)| (s.as_str().to_owned(), n))
        .collect();
    Ok(Storage {
        disk_state: app.disk.state(),
        disk_used_ratio: app.disk.used(),
        thresholds: app.disk.config.clone(),
        on_disk,
        content,
        keys,
        messages,
        sessions,
        growth,
    })
}

/// The route.
pub fn routes(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let history_app = app.clone();
    let history =
        warp::path!("api" / "storage" / "history").and(warp::get()).and(super::admin(app.clone())).map(move || {
            history_app
                .growth
                .samples()
                .map(|samples| warp::reply::json(&serde_json::json!({ "samples": samples })))
                .map_err(ApiError::storage)
                .into_response()
        });
    history
        .or(warp::path!("api" / "storage")
            .and(warp::get())
            .and(super::admin(app.clone()))
            .and(warp::any().map(move || app.clone()))
            .then(|app: Arc<App>| async move {
                measure(&app)
                    .await
                    .map(|storage| warp::reply::json(&storage))
                    .map_err(ApiError::storage)
                    .into_response()
            }))
        .unify()
        .boxed()
}
