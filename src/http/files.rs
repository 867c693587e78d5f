//! `/api/files/{key}`: streaming upload (PUT) and download (GET, with `Range`), copy, delete,
//! and listing by prefix. Content is addressed by blake3, which is also the `ETag`.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use warp::http::{HeaderMap, StatusCode};
use warp::{Filter, Reply};

use super::{ApiError, App, Caller};
use crate::auth::{FileAccess, Identity};
use crate::blob::service::FileError;
use crate::blob::{FileKey, Tier};
use crate::error_code::ErrorCode;
use crate::event::SessionId;

/// Most keys one list page returns.
pub const LIST_LIMIT_MAX: usize = 1000;

/// A handler's answer: the reply, or the error to answer with.
type Answer = Result<warp::reply::Response, ApiError>;

fn key_of(tail: &str) -> Result<FileKey, ApiError> {
    // A key never needs escapes, but a client may send them: `%2e%2e` must not slip past the check.
    let decoded = percent_encoding::percent_decode_str(tail).decode_utf8_lossy();
    FileKey::parse(&decoded).map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.to_string()))
}

fn owner_of(query: &HashMap<String, String>) -> Result<Option<SessionId>, ApiError> {
    query
        .get("session")
        .map(|s| SessionId::parse(s))
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::InvalidSessionId, e.to_string()))
}

/// All file routes.
/// Boxed: the route types are deep enough otherwise to overflow the compiler's recursion limit.
pub fn routes(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let caller = super::caller(app.clone());
    let admin = super::admin_status(app.clone());
    let with_app = warp::any().map(move || app.clone());
    let files = warp::path("api").and(warp::path("files"));
    let list = files
        .and(warp::path::end())
        .and(warp::get())
        .and(super::credentials())
        .and(caller.clone())
        .and(with_app.clone())
        .then(|query, caller: Caller, app: Arc<App>| async move { list(&query, caller, &app).await.into_response() });
    let put = files
        .and(warp::path::tail())
        .and(warp::put())
        .and(super::credentials())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(caller.clone())
        .and(with_app.clone())
        .then(
            |tail: warp::path::Tail,
             query: HashMap<String, String>,
             headers: HeaderMap,
             body,
             caller: Caller,
             app: Arc<App>| async move {
                put(tail.as_str(), &query, &headers, body, caller, &app).await.into_response()
            },
        );
    let get = files
        .and(warp::path::tail())
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(caller.clone())
        .and(with_app.clone())
        .then(|tail: warp::path::Tail, headers: HeaderMap, caller: Caller, app: Arc<App>| async move {
            // An unknown caller is told so before a bad key is.
            let identity = caller?;
            download(&key_of(tail.as_str())?, &headers, &identity, &app).await
        })
        .map(Reply::into_response);
    let delete = files.and(warp::path::tail()).and(warp::delete()).and(caller.clone()).and(with_app.clone()).then(
        |tail: warp::path::Tail, caller: Caller, app: Arc<App>| async move {
            delete(tail.as_str(), caller, &app).await.into_response()
        },
    );
    let copy = files
        .and(warp::path::tail())
        .and(warp::post())
        .and(super::credentials())
        .and(caller)
        .and(admin)
        .and(with_app)
        .then(
            |tail: warp::path::Tail,
             query: HashMap<String, String>,
             caller: Caller,
             admin: super::AdminStatus,
             app: Arc<App>| async move {
                copy(tail.as_str(), &query, caller, admin, &app).await.into_response()
            },
        );
    list.or(put).unify().or(get).unify().or(delete).unify().or(copy).unify().boxed()
}

/// `PUT /api/files/{key}`: stores the body under the key, if the disk has room for it.
async fn put(
    tail: &str,
    query: &HashMap<String, String>,
    headers: &HeaderMap,
    body: impl futures_util::Stream<Item = Result<impl bytes::Buf, warp::Error>> + Send + 'static,
    caller: Caller,
    app: &App,
) -> Answer {
    let identity = caller?;
    let key = key_of(tail)?;
    // A token bound to a session uploads as that session unless it names another.
    let owner = owner_of(query)?.or_else(|| identity.session.clone());
    may_write(&identity, &key, owner.as_ref(), app).await?;
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
        return Err(ApiError::new(ErrorCode::InsufficientStorage, text));
    }
    let limit = app.config.limits.upload_bytes_max;
    // The upload must fit above the log's floor of free space (see `space`): its
    // declared length, or the most it may be.
    let need =
        headers.get("content-length").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(limit).min(limit);
    let floor = app.log.floors().log;
    let data = app.config.data.clone();
    let free = tokio::task::spawn_blocking(move || crate::space::available(&data)).await.ok().flatten();
    if let Some(free) = free.filter(|&free| free < floor.saturating_add(need)) {
        let text = format!(
            "the disk has {free} bytes free: this upload of up to {need} bytes would take it below the floor of {floor} (log.min_free_bytes); retry once space is freed"
        );
        return Err(ApiError::new(ErrorCode::DiskFull, text));
    }
    let entry = app.files.put(key, Box::pin(body), limit, expected.as_deref(), content_type, owner).await?;
    Ok(warp::reply::with_status(warp::reply::json(&entry), StatusCode::CREATED).into_response())
}

/// `DELETE /api/files/{key}`.
async fn delete(tail: &str, caller: Caller, app: &App) -> Answer {
    let identity = caller?;
    let key = key_of(tail)?;
    may_write(&identity, &key, None, app).await?;
    let entry = app.files.delete(&key, "deleted by the app").await?;
    Ok(warp::reply::json(&serde_json::json!({ "deleted": entry })).into_response())
}

/// `POST /api/files/{key}?copy_to=OTHER_KEY`, or `?tier=hot|cold` (the admin scope moving
/// content, as for the other operator's endpoints: not a caller trusted by
/// `auth.anonymous = "write"`).
async fn copy(
    tail: &str,
    query: &HashMap<String, String>,
    caller: Caller,
    admin: super::AdminStatus,
    app: &App,
) -> Answer {
    if let Some(tier) = query.get("tier") {
        admin?;
        return move_tier(&key_of(tail)?, tier, app).await;
    }
    let identity = caller?;
    let from = key_of(tail)?;
    let Some(to) = query.get("copy_to") else {
        return Err(ApiError::invalid_query(
            "POST a key with ?copy_to=OTHER_KEY, or ?tier=hot|cold to move its content",
        ));
    };
    let to = FileKey::parse(to).map_err(|e| ApiError::new(ErrorCode::InvalidKey, e.to_string()))?;
    let owner = owner_of(query)?.or_else(|| identity.session.clone());
    may_read(&identity, &from, app).await?;
    may_write(&identity, &to, owner.as_ref(), app).await?;
    let entry = app.files.copy(&from, to, owner).await?;
    Ok(warp::reply::with_status(warp::reply::json(&entry), StatusCode::CREATED).into_response())
}

/// Whether `identity` may read `key`, owned by `owner`: a refusal is 403 whether or not the
/// key exists, so a caller learns nothing of keys it may not read.
fn readable(identity: &Identity, key: &FileKey, owner: Option<&SessionId>) -> Result<(), ApiError> {
    let by_prefix = identity.may_file(key.as_str(), &[], FileAccess::Read);
    if by_prefix || (owner.is_some() && identity.may_file(key.as_str(), &[owner], FileAccess::Read)) {
        return Ok(());
    }
    Err(ApiError::forbidden("your token does not cover this key (its prefix, or its owner session)"))
}

/// [`readable`], reading the key's owner only when a prefix grant does not settle it.
async fn may_read(identity: &Identity, key: &FileKey, app: &App) -> Result<(), ApiError> {
    if identity.may_file(key.as_str(), &[], FileAccess::Read) {
        return Ok(());
    }
    let owner = app.files.get(key).await.ok().flatten().and_then(|entry| entry.owner);
    readable(identity, key, owner.as_ref())
}

/// Whether `identity` may write `key`, now owned by whoever it is and then by `owner`.
async fn may_write(identity: &Identity, key: &FileKey, owner: Option<&SessionId>, app: &App) -> Result<(), ApiError> {
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
    Err(ApiError::forbidden("your token may not write this key (its prefix, or its owner session)"))
}

/// Moves a key's content (and so every key sharing it) to a tier, as an operator asks.
async fn move_tier(key: &FileKey, tier: &str, app: &App) -> Answer {
    let tier = Tier::parse(tier).ok_or_else(|| ApiError::invalid_query("tier must be hot or cold"))?;
    let entry = app.files.get(key).await?.ok_or_else(|| FileError::NotFound(key.to_string()))?;
    let moved = app.files.move_content(&entry.hash, tier, format!("moved to {} by an operator", tier.as_str())).await?;
    Ok(warp::reply::json(&serde_json::json!({
        "key": key, "hash": entry.hash, "tier": tier, "moved": moved,
    }))
    .into_response())
}

/// `POST /api/scrub`: re-hash every content file, quarantine damaged ones, list orphans.
pub fn scrub_route(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    warp::path!("api" / "scrub")
        .and(warp::post())
        .and(super::admin(app.clone()))
        .and(warp::any().map(move || app.clone()))
        .then(|app: Arc<App>| async move {
            app.files.scrub().await.map(|report| warp::reply::json(&report)).map_err(ApiError::from).into_response()
        })
        .boxed()
}

/// `GET /api/files?prefix=&after=&limit=`: a page of keys under a prefix the caller covers.
async fn list(query: &HashMap<String, String>, caller: Caller, app: &App) -> Answer {
    let identity = caller?;
    let prefix = query.get("prefix").map(String::as_str).unwrap_or("");
    if !identity.may_list(prefix) {
        return Err(ApiError::forbidden("your token does not cover every key under this prefix"));
    }
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=LIST_LIMIT_MAX).contains(&l) => l,
        _ => return Err(ApiError::invalid_query(format!("limit must be 1 to {LIST_LIMIT_MAX}"))),
    };
    app.files.caught_up().await;
    let entries =
        app.files.files.list(prefix, query.get("after").map(String::as_str), limit).map_err(ApiError::storage)?;
    let next = (entries.len() == limit).then(|| entries.last().map(|e| e.key.to_string())).flatten();
    Ok(warp::reply::json(&serde_json::json!({ "files": entries, "next_after": next })).into_response())
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

async fn download(key: &FileKey, headers: &HeaderMap, identity: &Identity, app: &App) -> Answer {
    let entry = app.files.get(key).await;
    let owner = entry.as_ref().ok().and_then(Option::as_ref).and_then(|entry| entry.owner.as_ref());
    // Refused before "not found", so a caller learns nothing of keys it may not read.
    readable(identity, key, owner)?;
    let entry = entry?.ok_or_else(|| FileError::NotFound(key.to_string()))?;
    let etag = format!("\"{}\"", entry.hash);
    if headers.get("if-none-match").and_then(|v| v.to_str().ok()) == Some(etag.as_str()) {
        let mut reply = warp::reply::Response::new(Default::default());
        *reply.status_mut() = StatusCode::NOT_MODIFIED;
        reply.headers_mut().insert("etag", etag.parse().expect("hex is a valid header"));
        return Ok(reply);
    }
    let range = match headers.get("range").map(|v| v.to_str().unwrap_or("")) {
        None => None,
        Some(header) => match parse_range(header, entry.size) {
            Ok(range) => Some(range),
            Err(text) => {
                let mut reply = ApiError::new(ErrorCode::InvalidRange, text).into_response();
                reply.headers_mut().insert("content-range", format!("bytes */{}", entry.size).parse().expect("ascii"));
                return Ok(reply);
            }
        },
    };
    let (start, end) = range.unwrap_or((0, entry.size.saturating_sub(1)));
    let length = if entry.size == 0 { 0 } else { end - start + 1 };
    let (tier, path) = app.files.content_path(&entry).await?;
    let mut file =
        tokio::fs::File::open(path).await.map_err(|e| ApiError::storage(format_args!("content unreadable: {e}")))?;
    if start > 0 {
        file.seek(std::io::SeekFrom::Start(start)).await.map_err(ApiError::storage)?;
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
    Ok(reply)
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
