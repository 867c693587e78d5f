//! `/api/sessions`: create, read (with what happened to it, and why), touch, pay, end, list, and
//! the figures an operator asks for.

use std::collections::HashMap;
use std::sync::Arc;

use serde::Serialize;
use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::{AdminStatus, ApiError, App, Caller};
use crate::actor::session::{Command, SessionError};
use crate::auth::Identity;
use crate::error_code::ErrorCode;
use crate::event::{Envelope, SessionId};
use crate::session::{Session, SessionState};

/// Most sessions one list page returns.
pub const LIST_LIMIT_MAX: usize = 1000;
/// Largest body of a create request.
const CREATE_BODY_MAX: usize = 4096;
/// Most events of one session shown.
const EVENTS_MAX: usize = 1000;

/// A handler's answer: the reply, or the error to answer with.
type Answer = Result<warp::reply::Response, ApiError>;

#[derive(Serialize)]
struct EventView<'a> {
    seq: u64,
    at_unix_ms: u64,
    event: &'a crate::event::Event,
}

/// All session routes.
/// Boxed: the route types are deep enough otherwise to overflow the compiler's recursion limit.
pub fn routes(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let caller = super::caller(app.clone());
    let admin = super::admin_status(app.clone());
    let with_app = warp::any().map(move || app.clone());
    let create = warp::path!("api" / "sessions")
        .and(warp::post())
        .and(warp::body::stream())
        .and(admin.clone())
        .and(with_app.clone())
        .then(|body, admin: AdminStatus, app: Arc<App>| async move {
            admin?;
            create(&read_body(body).await?, &app).await
        })
        .map(Reply::into_response);
    let stats = warp::path!("api" / "sessions" / "stats")
        .and(warp::get())
        .and(admin.clone())
        .and(with_app.clone())
        .then(|admin: AdminStatus, app: Arc<App>| async move {
            admin?;
            stats(&app).await
        })
        .map(Reply::into_response);
    let get = warp::path!("api" / "sessions" / String)
        .and(warp::get())
        .and(caller.clone())
        .and(with_app.clone())
        .then(|id: String, caller: Caller, app: Arc<App>| async move { get(&id, caller, &app).await })
        .map(Reply::into_response);
    let act = warp::path!("api" / "sessions" / String / String)
        .and(warp::post())
        .and(caller.clone())
        .and(admin.clone())
        .and(with_app.clone())
        .then(|id: String, verb: String, caller: Caller, admin: AdminStatus, app: Arc<App>| async move {
            act(&id, &verb, caller, admin, &app).await
        })
        .map(Reply::into_response);
    let list = warp::path!("api" / "sessions")
        .and(warp::get())
        .and(super::credentials())
        .and(admin)
        .and(with_app)
        .then(|query: HashMap<String, String>, admin: AdminStatus, app: Arc<App>| async move {
            admin?;
            list(&query, &app).await
        })
        .map(Reply::into_response);
    create.or(stats).unify().or(get).unify().or(act).unify().or(list).unify().boxed()
}

/// A session id the caller may read, touch or end: its own (a token bound to it), or any
/// for a manager. A refusal does not say whether the session exists.
fn own_session(id: &str, caller: Caller) -> Result<(SessionId, Identity), ApiError> {
    let identity = caller?;
    let id = session_id(id)?;
    if !identity.may_session(&id) {
        return Err(ApiError::forbidden("your token is not bound to this session"));
    }
    Ok((id, identity))
}

fn session_id(id: &str) -> Result<SessionId, ApiError> {
    SessionId::parse(id).map_err(|error| ApiError::new(ErrorCode::InvalidSessionId, error.to_string()))
}

/// The body of a create request: at most CREATE_BODY_MAX bytes; no Content-Length (curl -X
/// POST) is an empty body.
async fn read_body(
    body: impl futures_util::Stream<Item = Result<impl bytes::Buf, warp::Error>>,
) -> Result<Vec<u8>, ApiError> {
    let mut body = Box::pin(body);
    let mut bytes = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut body).await {
        let Ok(mut chunk) = chunk else { break };
        while bytes::Buf::has_remaining(&chunk) {
            let part = bytes::Buf::chunk(&chunk);
            bytes.extend_from_slice(part);
            let n = part.len();
            bytes::Buf::advance(&mut chunk, n);
        }
        if bytes.len() > CREATE_BODY_MAX {
            return Err(ApiError::new(ErrorCode::BodyTooLarge, "the body is over 4 KiB"));
        }
    }
    Ok(bytes)
}

async fn create(body: &[u8], app: &App) -> Answer {
    #[derive(serde::Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct Create {
        sliding: Option<bool>,
    }
    let request: Create = if body.iter().all(u8::is_ascii_whitespace) {
        Create::default()
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::new(ErrorCode::InvalidBody, format!("expected {{\"sliding\": bool}}: {e}")))?
    };
    let session = app.sessions.create(request.sliding).await?;
    Ok(warp::reply::with_status(warp::reply::json(&session), StatusCode::CREATED).into_response())
}

async fn get(id: &str, caller: Caller, app: &App) -> Answer {
    let (id, _) = own_session(id, caller)?;
    let session = app.sessions.get(&id).await?.ok_or_else(|| SessionError::NotFound(id.to_string()))?;
    let events: Vec<Envelope> = app.sessions.history(&session, EVENTS_MAX).await?;
    let events: Vec<EventView> =
        events.iter().map(|e| EventView { seq: e.seq, at_unix_ms: e.at_unix_ms, event: &e.event }).collect();
    Ok(warp::reply::json(&serde_json::json!({ "session": session, "events": events })).into_response())
}

/// Touches, pays or ends a session. Paying is for the app's backend (the admin scope, as
/// `admin` says), in every `auth.anonymous` mode: otherwise anyone could pay themselves.
async fn act(id: &str, verb: &str, caller: Caller, admin: AdminStatus, app: &App) -> Answer {
    // The admin scope may act on any session (the host, with `auth.admin_from_host`, too).
    let id = match (own_session(id, caller), &admin) {
        (Ok((id, _)), _) => id,
        (Err(_), Ok(())) => session_id(id)?,
        (Err(refusal), Err(_)) => return Err(refusal),
    };
    let command = match verb {
        "touch" => Command::Touch,
        "pay" => Command::Pay,
        "end" => Command::End,
        _ => return Err(ApiError::new(ErrorCode::NotFound, "no such route: use touch, pay or end")),
    };
    let paying = matches!(command, Command::Pay);
    if paying {
        admin?;
    }
    let session = app.sessions.command(&id, command).await?;
    // Read your writes: once answered, everything that reads the projection (a token bound to
    // this session, the session list) sees the change.
    app.sessions.caught_up().await;
    if !paying {
        return Ok(warp::reply::json(&session).into_response());
    }
    // A paid session's temp_ keys become permanent ones. Should this fail half way, the
    // janitor's next run finishes it; the payment itself is recorded already.
    let moved = match app.files.move_paid(&id, &app.config.files.on_pay).await {
        Ok(moved) => moved,
        Err(error) => {
            tracing::warn!(session = %id, error = %error, "moving a paid session's files failed; the janitor retries");
            Vec::new()
        }
    };
    let mut answer = serde_json::to_value(&session).unwrap_or_default();
    answer["files_moved"] = serde_json::json!(moved);
    Ok(warp::reply::json(&answer).into_response())
}

async fn list(query: &HashMap<String, String>, app: &App) -> Answer {
    let state = match query.get("state").map(|s| SessionState::parse(s).ok_or(s)) {
        None => None,
        Some(Ok(state)) => Some(state),
        Some(Err(s)) => {
            return Err(ApiError::invalid_query(format!("state {s:?}: use active, expired, paid, ended or purged")))
        }
    };
    let now = app.sessions_clock_now();
    let created_before = match query.get("older_than").map(|t| humantime::parse_duration(t)) {
        None => None,
        Some(Ok(age)) => Some(now.saturating_sub(crate::clock::millis(age))),
        Some(Err(e)) => return Err(ApiError::invalid_query(format!("older_than: {e} (use 7d, 12h)"))),
    };
    let after = query
        .get("after")
        .map(|a| SessionId::parse(a))
        .transpose()
        .map_err(|e| ApiError::invalid_query(e.to_string()))?;
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(l)) if (1..=LIST_LIMIT_MAX).contains(&l) => l,
        _ => return Err(ApiError::invalid_query(format!("limit must be 1 to {LIST_LIMIT_MAX}"))),
    };
    app.sessions.caught_up().await;
    let sessions = app.sessions_read.list(state, created_before, after.as_ref(), limit).map_err(ApiError::storage)?;
    let next: Option<&Session> = (sessions.len() == limit).then(|| sessions.last()).flatten();
    let body = serde_json::json!({ "sessions": sessions, "next_after": next.map(|s| s.id.as_str()) });
    Ok(warp::reply::json(&body).into_response())
}

async fn stats(app: &App) -> Answer {
    app.sessions.caught_up().await;
    let now = app.sessions_clock_now();
    let counts = app.sessions_read.counts().map_err(ApiError::storage)?;
    let overdue = app.sessions_read.overdue_purges(now).map_err(ApiError::storage)?;
    let by_state: serde_json::Map<String, serde_json::Value> =
        SessionState::ALL.iter().map(|s| (s.as_str().to_owned(), counts[s].into())).collect();
    let body = serde_json::json!({
        "total": counts.values().sum::<u64>(),
        "by_state": by_state,
        "unpaid_older_than_purge_age": overdue,
    });
    Ok(warp::reply::json(&body).into_response())
}
