//! JSON HTTP handlers: room list, paged history, readiness.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use warp::http::StatusCode;
use warp::Reply;

use super::{ApiError, App};
use crate::error_code::ErrorCode;
use crate::event::RoomId;
use crate::wire::WireMessage;

#[derive(Serialize)]
struct RoomView<'a> {
    room: &'a str,
    message_count: u64,
    last_seq: u64,
    last_at_unix_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    removed_through_seq: Option<u64>,
}

/// Who an HTTP caller is, from the same credentials as a WebSocket's (`?token=`, or `?name=`
/// where `auth.anonymous` allows it); a caller that presents nothing is `auth.anonymous`'s
/// anonymous identity. A refusal is answered 401 `unauthorized` with its text.
pub fn identity_of(
    query: &HashMap<String, String>,
    app: &App,
) -> Result<crate::auth::Identity, crate::auth::AuthError> {
    let presented = query.contains_key("token") || query.contains_key("name");
    match app.auth.authenticate(&crate::auth::Credentials { query: query.clone() }) {
        Ok(identity) => Ok(identity),
        Err(error) if presented => Err(error),
        Err(error) => app.auth.anonymous().ok_or(error),
    }
}

/// A handler's answer: the reply, or the error to answer with.
type Answer = Result<warp::reply::Response, ApiError>;

/// [`identity_of`], refused with 401 `unauthorized`.
fn caller(query: &HashMap<String, String>, app: &App) -> Result<crate::auth::Identity, ApiError> {
    identity_of(query, app).map_err(|error| ApiError::unauthorized(error.to_string()))
}

/// The room a path names, or 400 `invalid_room`.
fn room_of(room: &str) -> Result<RoomId, ApiError> {
    RoomId::parse(room).map_err(|error| ApiError::new(ErrorCode::InvalidRoom, error.to_string()))
}

/// Whether the caller may read `room`: 401 `unauthorized` or 403 `forbidden` if not.
fn may_read(room: &RoomId, query: &HashMap<String, String>, app: &App) -> Result<(), ApiError> {
    if !caller(query, app)?.may_read(room) {
        return Err(ApiError::forbidden(format!("you may not read room {room}")));
    }
    Ok(())
}

/// `GET /api/rooms`: the rooms the caller may read, with their summaries.
pub fn rooms(query: HashMap<String, String>, app: Arc<App>) -> Answer {
    let identity = caller(&query, &app)?;
    let rooms = app.history.rooms().map_err(ApiError::storage)?;
    let rooms: Vec<_> = rooms
        .iter()
        .filter(|(room, _)| identity.may_read(room))
        .map(|(room, s)| RoomView {
            room: room.as_str(),
            message_count: s.message_count,
            last_seq: s.last_seq,
            last_at_unix_ms: s.last_at_unix_ms,
            removed_through_seq: (s.removed_through_seq > 0).then_some(s.removed_through_seq),
        })
        .collect();
    Ok(warp::reply::json(&serde_json::json!({ "rooms": rooms })).into_response())
}

/// `GET /api/rooms/{room}/messages?before=&after=&limit=`: a page of history, oldest first.
/// Without `before` or `after`, the newest page.
pub async fn messages(room: String, query: HashMap<String, String>, app: Arc<App>) -> Answer {
    let room = room_of(&room)?;
    let number = |key: &str| -> Result<Option<u64>, String> {
        query
            .get(key)
            .map(|v| v.parse::<u64>().map_err(|_| format!("{key} must be a whole number, got {v:?}")))
            .transpose()
    };
    // A bad number is reported before who is asking, as it always was.
    let (before, after, limit) = (number("before"), number("after"), number("limit"));
    let (before, after, limit) = (
        before.map_err(ApiError::invalid_query)?,
        after.map_err(ApiError::invalid_query)?,
        limit.map_err(ApiError::invalid_query)?,
    );
    may_read(&room, &query, &app)?;
    if let Some(unknown) = query.keys().find(|k| !["before", "after", "limit", "name", "token"].contains(&k.as_str())) {
        return Err(ApiError::invalid_query(format!("unknown parameter {unknown:?}; use before, after, limit")));
    }
    if before.is_some() && after.is_some() {
        return Err(ApiError::invalid_query("give before or after, not both"));
    }
    let page_max = app.config.chat.history_page_max;
    let limit = limit.map_or(app.config.chat.recent_count, |l| l as usize).clamp(1, page_max);
    let summary = app
        .history
        .summary(&room)
        .map_err(ApiError::storage)?
        .ok_or_else(|| ApiError::new(ErrorCode::RoomNotFound, format!("room {room} has no messages")))?;
    let page = match after {
        Some(after) => {
            let room = room.clone();
            app.history.off_async(move |history| history.after(&room, after, limit + 1)).await.map(|mut m| {
                let more = m.len() > limit;
                m.truncate(limit);
                (m, more)
            })
        }
        None => app.history_page(&room, before.unwrap_or(u64::MAX), limit).await.map(|(m, more, _)| (m, more)),
    };
    let (messages, more) = page.map_err(ApiError::storage)?;
    let messages: Vec<_> = messages.iter().map(|m| WireMessage::of(room.as_str(), m)).collect();
    let removed = (summary.removed_through_seq > 0).then_some(summary.removed_through_seq);
    Ok(warp::reply::json(&serde_json::json!({ "room": room.as_str(), "messages": messages, "more": more, "removed_through_seq": removed })).into_response())
}

/// `GET /api/rooms/{room}/members`: who is in the room now, with their connection counts
/// (`{"room":"lobby","members":[{"user":"ann","connections":2}]}`). Refused exactly as
/// the room's history is: 400 `invalid_room`, 401 `unauthorized`, 403 `forbidden`. A room
/// nobody is in answers an empty list, whether or not it has messages.
pub async fn members(room: String, query: HashMap<String, String>, app: Arc<App>) -> Answer {
    let room = room_of(&room)?;
    may_read(&room, &query, &app)?;
    if let Some(unknown) = query.keys().find(|k| !["name", "token"].contains(&k.as_str())) {
        return Err(ApiError::invalid_query(format!("unknown parameter {unknown:?}")));
    }
    let members = app.members(&room).await?;
    Ok(warp::reply::json(&serde_json::json!({ "room": room.as_str(), "members": members })).into_response())
}

/// Why the server is not ready, if it is not: a failed log writer, a disk below the log's
/// floor or in danger, a projection paused, retrying or stopped, or a shutdown under way. A
/// projection a few group commits behind is normal under load.
pub fn not_ready_reasons(app: &App, disk: crate::disk::DiskState) -> Vec<String> {
    let mut reasons = Vec::new();
    if let Some(failure) = app.log.failure() {
        reasons.push(format!("{failure}; the server is restarting"));
    }
    if let Some(trouble) = app.log.cluster_trouble() {
        reasons.push(trouble);
    }
    if let Some(free) = app.log.refusing_for_space() {
        reasons.push(format!(
            "the disk has {free} bytes free, below the floor of {} (log.min_free_bytes): new messages and uploads are refused until space is freed",
            app.log.floors().log
        ));
    }
    for runner in app.runners() {
        if let Some(why) = runner.failed() {
            reasons.push(format!("the {} projection gave up ({why}); the server is restarting", runner.name()));
        } else if let Some(why) = runner.stalled() {
            reasons.push(format!("the {} projection is not applying the log: {why}", runner.name()));
        } else if !runner.is_running() && !*app.shutdown.borrow() {
            reasons.push(format!("the {} projection stopped (see recent errors)", runner.name()));
        }
    }
    if disk == crate::disk::DiskState::Danger {
        reasons.push(format!(
            "the disk is {:.0}% full, above the danger threshold of {:.0}%: uploads are refused",
            app.disk.used().unwrap_or(1.0) * 100.0,
            app.disk.config.danger * 100.0
        ));
    }
    if *app.shutdown.borrow() {
        reasons.push("the server is shutting down".to_owned());
    }
    reasons
}

/// `GET /readyz`: 200 when ready, else 503 with what is wrong.
pub async fn readyz(app: Arc<App>) -> Result<warp::reply::Response, std::convert::Infallible> {
    let head = app.log.head();
    let disk = app.disk.clone();
    let state = tokio::task::spawn_blocking(move || disk.measure()).await.unwrap_or(crate::disk::DiskState::Danger);
    let disk_used = app.disk.used();
    let reasons = not_ready_reasons(&app, state);
    let body = serde_json::json!({
        "ready": reasons.is_empty(),
        "not_ready_because": reasons,
        "log_head_seq": head,
        "disk_used_ratio": disk_used,
        "disk_state": state,
        "projections": projections(&app, head),
        "shutting_down": *app.shutdown.borrow(),
    });
    let status = if reasons.is_empty() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    Ok(warp::reply::with_status(warp::reply::json(&body), status).into_response())
}

/// Each projection's applied seq, lag behind `head` and whether it runs, by name.
fn projections(app: &App, head: u64) -> std::collections::BTreeMap<String, crate::views::ProjectionStatus> {
    app.runners()
        .map(|r| {
            let view = crate::views::ProjectionStatus {
                applied_seq: r.applied(),
                lag_events: head.saturating_sub(r.applied()),
                running: r.is_running(),
            };
            (r.name().to_owned(), view)
        })
        .collect()
}

/// What `refresh_gauges` measured, for `/api/status` to show without measuring again.
struct Gauges {
    head: u64,
    rooms: usize,
    log_disk: u64,
    search_disk: u64,
    not_ready_because: Vec<String>,
}

/// Updates the gauges that are read at scrape time rather than kept up to date.
async fn refresh_gauges(app: &App) -> Gauges {
    let head = app.log.head();
    let rooms = app.rooms.active().await;
    let log_dir = app.config.log_dir();
    let search_dir = app.config.search_dir();
    let watched = app.disk.clone();
    let store = app.files.store.clone();
    let (disk, state, search_disk) = tokio::task::spawn_blocking(move || {
        let search_disk = crate::projection::search::SearchIndex::size_bytes(&search_dir);
        // Content files by tier, counted on disk (a directory walk per scrape).
        if let Ok(contents) = store.contents() {
            for tier in [crate::blob::Tier::Hot, crate::blob::Tier::Cold] {
                let (files, bytes) = contents
                    .iter()
                    .filter(|(_, t, _)| *t == tier)
                    .fold((0u64, 0u64), |(n, b), (_, _, size)| (n + 1, b + size));
                metrics::gauge!(crate::metrics::FILES, "tier" => tier.as_str()).set(files as f64);
                metrics::gauge!(crate::metrics::FILE_BYTES, "tier" => tier.as_str()).set(bytes as f64);
            }
        }
        (crate::metrics::disk_bytes(&log_dir), watched.measure(), search_disk)
    })
    .await
    .unwrap_or((0, crate::disk::DiskState::Danger, 0));
    let reasons = not_ready_reasons(app, state);
    metrics::gauge!(crate::metrics::READY).set(if reasons.is_empty() { 1.0 } else { 0.0 });
    metrics::gauge!(crate::metrics::LOG_HEAD_SEQ).set(head as f64);
    for runner in app.runners() {
        let lag = head.saturating_sub(runner.applied());
        metrics::gauge!(crate::metrics::PROJECTION_LAG_EVENTS, "projection" => runner.name()).set(lag as f64);
    }
    metrics::gauge!(crate::metrics::SEARCH_INDEX_DOCUMENTS).set(app.search.documents() as f64);
    if let Ok(counts) = app.sessions_read.counts() {
        for (state, count) in counts {
            metrics::gauge!(crate::metrics::SESSIONS, "state" => state.as_str()).set(count as f64);
        }
    }
    metrics::gauge!(crate::metrics::SEARCH_INDEX_DISK_BYTES).set(search_disk as f64);
    metrics::gauge!(crate::metrics::ROOMS_ACTIVE).set(rooms as f64);
    metrics::gauge!(crate::metrics::LOG_DISK_BYTES).set(disk as f64);
    metrics::gauge!(crate::metrics::UPTIME_SECONDS).set(app.started.elapsed().as_secs_f64());
    Gauges { head, rooms, log_disk: disk, search_disk, not_ready_because: reasons }
}

/// `GET /metrics`: the Prometheus text format.
pub async fn metrics(app: Arc<App>) -> Result<warp::reply::Response, std::convert::Infallible> {
    refresh_gauges(&app).await;
    Ok(match crate::metrics::handle() {
        Some(handle) => {
            warp::reply::with_header(handle.render(), "content-type", "text/plain; version=0.0.4").into_response()
        }
        None => ApiError::new(ErrorCode::MetricsUnavailable, "another metrics recorder is installed in this process")
            .into_response(),
    })
}

/// `GET /api/status`: what `roomlog status` prints.
pub async fn status(app: Arc<App>) -> Result<warp::reply::Response, std::convert::Infallible> {
    let Gauges { head, rooms, log_disk, search_disk, not_ready_because: reasons } = refresh_gauges(&app).await;
    let body = crate::views::Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        uptime_seconds: app.started.elapsed().as_secs(),
        listen: app.listen.to_string(),
        data: app.config.data.display().to_string(),
        ready: reasons.is_empty(),
        not_ready_because: reasons,
        log: crate::views::LogStatus { head_seq: head, disk_bytes: log_disk },
        projections: projections(&app, head),
        search: crate::views::SearchStatus { documents: app.search.documents(), disk_bytes: search_disk },
        rooms_active: rooms,
        connections_open: app.config.limits.connections_max - app.connections.available_permits(),
        recent_errors: crate::recent_errors::snapshot(),
        recovered_at_start: app.recovered.clone(),
        cluster: app.log.cluster_status(),
    };
    Ok(warp::reply::json(&body).into_response())
}

/// `GET /api/search?q=&room=&author=&since=&until=&limit=&cursor=&sort=`: messages that
/// match, from the rooms the caller may read. The caller's identity comes from the same
/// credentials as a WebSocket's (`?name=` until tokens exist).
pub async fn search(query: HashMap<String, String>, app: Arc<App>) -> Answer {
    let identity = caller(&query, &app)?;
    let params = search_params(&query).map_err(ApiError::invalid_query)?;
    let hits = app.search(&identity, &params).await?;
    Ok(warp::reply::json(&hits).into_response())
}

/// The search options of a query string; `name` (the caller) is not one of them.
fn search_params(query: &HashMap<String, String>) -> Result<crate::projection::search::SearchParams, String> {
    let options: serde_json::Map<String, serde_json::Value> = query
        .iter()
        .filter(|(k, _)| k.as_str() != "name" && k.as_str() != "token")
        .map(|(k, v)| {
            let value = match k.as_str() {
                "limit" => v
                    .parse::<u64>()
                    .map(serde_json::Value::from)
                    .map_err(|_| format!("limit must be a whole number, got {v:?}"))?,
                _ => serde_json::Value::from(v.as_str()),
            };
            Ok((k.clone(), value))
        })
        .collect::<Result<_, String>>()?;
    serde_json::from_value(serde_json::Value::Object(options)).map_err(|e| e.to_string())
}

/// Records per export request at most.
pub const EXPORT_LIMIT_MAX: usize = 4096;

/// `GET /api/log/export?after=SEQ&limit=N`: log records after `after`, as stored, for backups:
/// `(seq u64 BE, length u32 BE, bytes)` repeated. Reads run beside the writer: chat is not
/// blocked.
pub async fn export(
    query: HashMap<String, String>,
    app: Arc<App>,
) -> Result<warp::reply::Response, std::convert::Infallible> {
    let parse = |key: &str, default: u64| query.get(key).map_or(Ok(default), |v| v.parse::<u64>());
    let (Ok(after), Ok(limit)) = (parse("after", 0), parse("limit", EXPORT_LIMIT_MAX as u64)) else {
        return Ok(ApiError::invalid_query("after and limit must be whole numbers").into_response());
    };
    let limit = (limit as usize).clamp(1, EXPORT_LIMIT_MAX);
    // Reading and framing a page takes milliseconds: off the async threads that serve chat.
    let log = app.log.clone();
    let page = tokio::task::spawn_blocking(move || {
        log.read_raw_blocking(after.saturating_add(1), limit).map(|records| {
            let mut body = Vec::with_capacity(records.iter().map(|(_, r)| r.len() + 12).sum());
            for (seq, record) in records {
                body.extend_from_slice(&seq.to_be_bytes());
                body.extend_from_slice(&(record.len() as u32).to_be_bytes());
                body.extend_from_slice(&record);
            }
            body
        })
    })
    .await;
    let page = match page {
        Ok(Ok(body)) => Ok(warp::reply::with_header(body, "content-type", "application/octet-stream")),
        Ok(Err(error)) => Err(ApiError::storage(error)),
        Err(error) => Err(ApiError::new(ErrorCode::Internal, error.to_string())),
    };
    Ok(page.into_response())
}

/// Parses an export body back into records.
pub fn parse_export(mut body: &[u8]) -> Option<Vec<(u64, Vec<u8>)>> {
    let mut out = Vec::new();
    while !body.is_empty() {
        let (seq, rest) = body.split_at_checked(8)?;
        let (len, rest) = rest.split_at_checked(4)?;
        let len = u32::from_be_bytes(len.try_into().ok()?) as usize;
        let (record, rest) = rest.split_at_checked(len)?;
        out.push((u64::from_be_bytes(seq.try_into().ok()?), record.to_vec()));
        body = rest;
    }
    Some(out)
}
