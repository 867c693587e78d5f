//! `/api/files/{key}`: streaming upload (PUT) and download (GET, with `Range`), copy, delete,
//! and listing by prefix. Content is addressed by blake3, which is also the `ETag`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Reply};

use super::{error_reply, App, Caller, Refusal};
use crate::auth::{FileAccess, Identity};
use crate::blob::service::FileError;
use crate::blob::{FileKey, Tier};
use crate::event::SessionId;

/// Most keys one list page returns.
pub const LIST_LIMIT_MAX: usize = 1000;

fn file_error(error: &FileError) -> warp::reply::Response {
    let status = match error {
        FileError::NotFound(_) => StatusCode::NOT_FOUND,
        FileError::NoSession(_) => StatusCode::CONFLICT,
        FileError::Blob(crate::blob::BlobError::TooLarge { .. }) => StatusCode::PAYLOAD_TOO_LARGE,
        FileError::Blob(crate::blob::BlobError::HashMismatch { .. } | crate::blob::BlobError::Cut(_)) => {
            StatusCode::BAD_REQUEST
        }
        FileError::Blob(crate::blob::BlobError::NoTier(_)) => StatusCode::CONFLICT,
        FileError::ContentMissing(_) => StatusCode::INTERNAL_SERVER_ERROR,
        FileError::Blob(crate::blob::BlobError::Io(_)) | FileError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
    };
    error_reply(status, error.code(), &error.to_string())
}

fn key_of(tail: &str) -> Result<FileKey, Refusal> {
    // A key never needs escapes, but a client may send them: `%2e%2e` must not slip past the check.
    let decoded = percent_encoding::percent_decode_str(tail).decode_utf8_lossy();
    FileKey::parse(&decoded).map_err(|e| Refusal::bad_request("invalid_key", e.to_string()))
}

fn owner_of(query: &HashMap<String, String>) -> Result<Option<SessionId>, Refusal> {
    query
        .get("session")
        .map(|s| SessionId::parse(s))
        .transpose()
        .map_err(|e| Refusal::bad_request("invalid_session_id", e.to_string()))
}

/// All file routes.
/// Boxed: the route types are deep enough otherwise to overflow the compiler's recursion limit.
pub fn routes(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let caller = super::caller(app.clone());
    let with_app = warp::any().map(move || app.clone());
    let files = warp::path("api").and(warp::path("files"));
    let list = files
        .and(warp::path::end())
        .and(warp::get())
        .and(super::credentials())
        .and(caller.clone())
        .and(with_app.clone())
        .then(|query, caller: Caller, app: Arc<App>| async move {
            match caller {
                Ok(identity) => list(&query, &identity, &app).await,
                Err(refusal) => refusal.reply(),
            }
        });
    let put = files
        .and(warp::path::tail())
        .and(warp::put())
        .and(super::credentials())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(caller.clone())
        .and(with_app.clone())
        .then(|tail: warp::path::Tail, query: HashMap<String, String>, headers: HeaderMap, body, caller: Caller, app: Arc<App>| async move {
            let identity = match caller {
                Ok(identity) => identity,
                Err(refusal) => return refusal.reply(),
            };
            let key = match key_of(tail.as_str()) {
                Ok(key) => key,
                Err(refusal) => return refusal.reply(),
            };
            let owner = match owner_of(&query) {
                // A token bound to a session uploads as that session unless it names another.
                Ok(owner) => owner.or_else(|| identity.session.clone()),
                Err(refusal) => return refusal.reply(),
            };
            if let Err(refusal) = may_write(&identity, &key, owner.as_ref(), &app).await {
                return refusal.reply();
            }
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("application/octet-stream")
                .chars()
                .take(200)
                .collect();
            let expected = headers.get("x-content-blake3").and_then(|v| v.to_str().ok()).map(str::to_owned);
            if app.disk.state() == crate::disk::DiskState::Danger {
                let text = format!(
                    "the disk is {:.0}% full, above the danger threshold of {:.0}%: uploads are refused until space is freed",
                    app.disk.used().unwrap_or(1.0) * 100.0,
                    app.disk.config.danger * 100.0
                );
                return error_reply(StatusCode::INSUFFICIENT_STORAGE, "insufficient_storage", &text);
            }
            let limit = app.config.limits.upload_bytes_max;
            // The upload must fit above the log's floor of free space (see `space`): its
            // declared length, or the most it may be.
            let need = headers
                .get("content-length")
                .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
                .unwrap_or(limit)
                .min(limit);
            let floor = app.log.floors().log;
            let data = app.config.data.clone();
            let free = tokio::task::spawn_blocking(move || crate::space::available(&data)).await.ok().flatten();
            if let Some(free) = free.filter(|&free| free < floor.saturating_add(need)) {
                let text = format!(
                    "the disk has {free} bytes free: this upload of up to {need} bytes would take it below the floor of {floor} (log.min_free_bytes); retry once space is freed"
                );
                return error_reply(StatusCode::INSUFFICIENT_STORAGE, "disk_full", &text);
            }
            let body = Box::pin(body);
            match app.files.put(key, body, limit, expected.as_deref(), content_type, owner).await {
                Ok(entry) => warp::reply::with_status(warp::reply::json(&entry), StatusCode::CREATED).into_response(),
                Err(error) => file_error(&error),
            }
        });
    let get = files
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(caller.clone())
        .and(with_app.clone())
        .then(|tail: warp::path::Tail, headers: HeaderMap, caller: Caller, app: Arc<App>| async move {
            match (key_of(tail.as_str()), caller) {
                (_, Err(refusal)) => refusal.reply(),
                (Ok(key), Ok(identity)) => download(&key, &headers, &identity, &app).await,
                (Err(refusal), _) => refusal.reply(),
            }
        });
    let delete = files.and(warp::path::tail()).and(warp::delete()).and(caller.clone()).and(with_app.clone()).then(
        |tail: warp::path::Tail, caller: Caller, app: Arc<App>| async move {
            let identity = match caller {
                Ok(identity) => identity,
                Err(refusal) => return refusal.reply(),
            };
            let key = match key_of(tail.as_str()) {
                Ok(key) => key,
                Err(refusal) => return refusal.reply(),
            };
            if let Err(refusal) = may_write(&identity, &key, None, &app).await {
                return refusal.reply();
            }
            match app.files.delete(&key, "deleted by the app").await {
                Ok(entry) => warp::reply::json(&serde_json::json!({ "deleted": entry })).into_response(),
                Err(error) => file_error(&error),
            }
        },
    );
    let copy =
        files.and(warp::path::tail()).and(warp::post()).and(super::credentials()).and(caller).and(with_app).then(
            |tail: warp::path::Tail, query: HashMap<String, String>, caller: Caller, app: Arc<App>| async move {
                let identity = match caller {
                    Ok(identity) => identity,
                    Err(refusal) => return refusal.reply(),
                };
                let from = match key_of(tail.as_str()) {
                    Ok(key) => key,
                    Err(refusal) => return refusal.reply(),
                };
                if let Some(tier) = query.get("tier") {
                    if !identity.manages_all() {
                        return Refusal::forbidden("moving content between tiers is for an admin token").reply();
                    }
                    return move_tier(&from, tier, &app).await;
                }
                let Some(to) = query.get("copy_to") else {
                    return error_reply(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        "POST a key with ?copy_to=OTHER_KEY, or ?tier=hot|cold to move its content",
                    );
                };
                let to = match FileKey::parse(to) {
                    Ok(to) => to,
                    Err(e) => return error_reply(StatusCode::BAD_REQUEST, "invalid_key", &e.to_string()),
                };
                let owner = match owner_of(&query) {
                    Ok(owner) => owner.or_else(|| identity.session.clone()),
                    Err(refusal) => return refusal.reply(),
                };
                if let Err(refusal) = may_read(&identity, &from, &app).await {
                    return refusal.reply();
                }
                if let Err(refusal) = may_write(&identity, &to, owner.as_ref(), &app).await {
                    return refusal.reply();
                }
                match app.files.copy(&from, to, owner).await {
                    Ok(entry) => {
                        warp::reply::with_status(warp::reply::json(&entry), StatusCode::CREATED).into_response()
                    }
                    Err(error) => file_error(&error),
                }
            },
        );
    list.or(put).unify().or(get).unify().or(delete).unify().or(copy).unify().boxed()
}

/// Whether `identity` may read `key`, owned by `owner`: a refusal is 403 whether or not the
/// key exists, so a caller learns nothing of keys it may not read.
fn readable(identity: &Identity, key: &FileKey, owner: Option<&SessionId>) -> Result<(), Refusal> {
    let by_prefix = identity.may_file(key.as_str(), &[], FileAccess::Read);
    if by_prefix || (owner.is_some() && identity.may_file(key.as_str(), &[owner], FileAccess::Read)) {
        return Ok(());
    }
    Err(Refusal::forbidden("your token does not cover this key (its prefix, or its owner session)"))
}

/// [`readable`], reading the key's owner only when a prefix grant does not settle it.
async fn may_read(identity: &Identity, key: &FileKey, app: &App) -> Result<(), Refusal> {
    if identity.may_file(key.as_str(), &[], FileAccess::Read) {
        return Ok(());
    }
    let owner = app.files.get(key).await.ok().flatten().and_then(|entry| entry.owner);
    readable(identity, key, owner.as_ref())
}

/// Whether `identity` may write `key`, now owned by whoever it is and then by `owner`.
async fn may_write(identity: &Identity, key: &FileKey, owner: Option<&SessionId>, app: &App) -> Result<(), Refusal> {
    if identity.may_file(key.as_str(), &[], FileAccess::Write) {
        return Ok(());
    }
    // Without a prefix grant, only a key that exists and is owned by the caller's session
    // (and stays so) may be written: a session's token cannot create keys anywhere it likes.
    let present = app.files.get(key).await.ok().flatten();
    let mut owners = Vec::new();
    if let Some(entry) = &present {
        owners.push(entry.owner.as_ref());
        if owner.is_some() {
            owners.push(owner);
        }
    }
    if identity.may_file(key.as_str(), &owners, FileAccess::Write) {
        return Ok(());
    }
    Err(Refusal::forbidden("your token may not write this key (its prefix, or its owner session)"))
}

/// Moves a key's content (and so every key sharing it) to a tier, as an operator asks.
async fn move_tier(key: &FileKey, tier: &str, app: &App) -> warp::reply::Response {
    let Some(tier) = Tier::parse(tier) else {
        return error_reply(StatusCode::BAD_REQUEST, "invalid_query", "tier must be hot or cold");
    };
    let entry = match app.files.get(key).await {
        Ok(Some(entry)) => entry,
        Ok(None) => return file_error(&FileError::NotFound(key.to_string())),
        Err(error) => return file_error(&error),
    };
    match app.files.move_content(&entry.hash, tier, format!("moved to {} by an operator", tier.as_str())).await {
        Ok(moved) => warp::reply::json(&serde_json::json!({
            "key": key, "hash": entry.hash, "tier": tier, "moved": moved,
        }))
        .into_response(),
        Err(error) => file_error(&error),
    }
}

/// `POST /api/scrub`: re-hash every content file, quarantine damaged ones, list orphans.
pub fn scrub_route(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!("api" / "scrub")
        .and(warp::post())
        .and(super::admin(app.clone()))
        .and(warp::any().map(move || app.clone()))
        .then(|app: Arc<App>| async move {
            match app.files.scrub().await {
                Ok(report) => warp::reply::json(&report).into_response(),
                Err(error) => file_error(&error),
            }
        })
        .boxed()
}

async fn list(query: &HashMap<String, String>, identity: &Identity, app: &App) -> warp::reply::Response {
    let prefix = query.get("prefix").map(String::as_str).unwrap_or("");
    if !identity.may_list(prefix) {
        return Refusal::forbidden("your token does not cover every key under this prefix").reply();
    }
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=LIST_LIMIT_MAX).contains(&l) => l,
        _ => {
            return error_reply(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                &format!("limit must be 1 to {LIST_LIMIT_MAX}"),
            )
        }
    };
    app.files.caught_up().await;
    match app.files.files.list(prefix, query.get("after").map(String::as_str), limit) {
        Ok(entries) => {
            let next = (entries.len() == limit).then(|| entries.last().map(|e| e.key.to_string())).flatten();
            warp::reply::json(&serde_json::json!({ "files": entries, "next_after": next })).into_response()
        }
        Err(error) => error_reply(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", &error.to_string()),
    }
}

/// A byte range of a file of `size` bytes, from a `Range` header: `bytes=a-b`, `bytes=a-`
/// or `bytes=-n`. `Err` for a header that is malformed or asks for bytes the file lacks.
fn parse_range(header: &str, size: u64) -> Result<(u64, u64), String> {
    let spec = header.strip_prefix("bytes=").ok_or("Range must start with bytes=")?;
    if spec.contains(',') {
        return Err("only one range per request is served".into());
    }
    let (from, to) = spec.split_once('-').ok_or("a range is FIRST-LAST, FIRST- or -SUFFIX")?;
    let number = |s: &str| s.trim().parse::<u64>().map_err(|_| format!("{s:?} is not a byte position"));
    let (start, end) = match (from.trim().is_empty(), to.trim().is_empty()) {
        (true, false) => {
            let suffix = number(to)?.min(size);
            (size - suffix, size.saturating_sub(1))
        }
        (false, true) => (number(from)?, size.saturating_sub(1)),
        (false, false) => (number(from)?, number(to)?.min(size.saturating_sub(1))),
        (true, true) => return Err("a range needs a position".into()),
    };
    if size == 0 || start > end || start >= size {
        return Err(format!("bytes {spec} are outside a file of {size} bytes"));
    }
    Ok((start, end))
}

async fn download(key: &FileKey, headers: &HeaderMap, identity: &Identity, app: &App) -> warp::reply::Response {
    let entry = app.files.get(key).await;
    let owner = entry.as_ref().ok().and_then(Option::as_ref).and_then(|entry| entry.owner.as_ref());
    if let Err(refusal) = readable(identity, key, owner) {
        return refusal.reply();
    }
    let entry = match entry {
        Ok(Some(entry)) => entry,
        Ok(None) => return file_error(&FileError::NotFound(key.to_string())),
        Err(error) => return file_error(&error),
    };
    let etag = format!("\"{}\"", entry.hash);
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        let mut reply = warp::reply::Response::new(Default::default());
        *reply.status_mut() = StatusCode::NOT_MODIFIED;
        reply.headers_mut().insert("etag", etag.parse().expect("hex is a valid header"));
        return reply;
    }
    let range = match headers.get("range").map(|v| v.to_str().unwrap_or("")) {
        None => None,
        Some(header) => match parse_range(header, entry.size) {
            Ok(range) => Some(range),
            Err(text) => {
                let mut reply = error_reply(StatusCode::RANGE_NOT_SATISFIABLE, "invalid_range", &text);
                reply.headers_mut().insert("content-range", format!("bytes */{}", entry.size).parse().expect("ascii"));
                return reply;
            }
        },
    };
    let (start, end) = range.unwrap_or((0, entry.size.saturating_sub(1)));
    let length = if entry.size == 0 { 0 } else { end - start + 1 };
    let (tier, path) = match app.files.content_path(&entry).await {
        Ok(found) => found,
        Err(error) => return file_error(&error),
    };
    let mut file = match tokio::fs::File::open(path).await {
        Ok(file) => file,
        Err(e) => {
            return error_reply(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                &format!("content unreadable: {e}"),
            )
        }
    };
    if start > 0 {
        if let Err(e) = file.seek(std::io::SeekFrom::Start(start)).await {
            return error_reply(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", &e.to_string());
        }
    }
    let stream = tokio_util::io::ReaderStream::with_capacity(file.take(length), 64 * 1024);
    let mut reply = warp::reply::stream(stream).into_response();
    let h = reply.headers_mut();
    let header = |v: String| v.parse().expect("ascii header value");
    h.insert("content-type", entry.content_type.parse().unwrap_or_else(|_| header("application/octet-stream".into())));
    h.insert("content-length", header(length.to_string()));
    h.insert("etag", header(etag));
    h.insert("accept-ranges", header("bytes".into()));
    h.insert("x-roomlog-tier", header(tier.as_str().into()));
    if range.is_some() {
        h.insert("content-range", header(format!("bytes {start}-{end}/{}", entry.size)));
        *reply.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(parse_range("bytes=0-9", 100), Ok((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Ok((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Ok((90, 99)));
        assert_eq!(parse_range("bytes=95-200", 100), Ok((95, 99)));
        for bad in ["bytes=100-", "bytes=5-2", "items=0-1", "bytes=0-1,3-4", "bytes=-", "bytes=a-b"] {
            assert!(parse_range(bad, 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn escaped_dots_do_not_slip_past_the_key_check() {
        assert!(key_of("a/%2e%2e/b").is_err());
        assert!(key_of("tts/%41.mp3").is_ok());
    }
}
