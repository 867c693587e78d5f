//! The warp facade: WebSocket upgrade, the JSON HTTP API, and health.
//!
//! Errors over HTTP are `{"error": {"code": "...", "message": "..."}}` with a stable code from
//! the registry in [`crate::error_code`] (see [`ApiError`]).

pub mod api;
pub mod client_addr;
pub mod error;
pub mod files;
pub mod janitor;
pub mod listen;
pub mod sessions;
pub mod storage;
pub mod upgrade;
pub mod web;
pub mod ws;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use crate::actor::rooms::Rooms;
use crate::actor::sessions::SessionsHandle;
use crate::auth::{Authenticator, Credentials};
use crate::blob::service::FileService;
use crate::config::Config;
use crate::error_code::ErrorCode;
use crate::event::RoomId;
use crate::log::EventLog;
use crate::message::StoredMessage;
use crate::projection::history::History;
use crate::projection::search::SearchIndex;
use crate::projection::sessions::Sessions;
use crate::projection::{Kind, Runner};

pub use error::ApiError;

/// Longest a history read waits for the projection to catch up with the log head; past it,
/// the read answers with what is applied (it trails the head by one group commit normally).
pub const READ_BARRIER_MAX: std::time::Duration = std::time::Duration::from_secs(1);

/// Everything a request handler needs.
#[derive(Debug)]
pub struct App {
    pub config: Config,
    pub log: EventLog,
    /// The projections and actors; their fields read as the app's own (`app.history`).
    pub parts: Parts,
    pub auth: Arc<dyn Authenticator>,
    /// One permit per open WebSocket: bounds connections, and lets shutdown wait for them.
    pub connections: Arc<Semaphore>,
    /// Turns true when the server starts shutting down.
    pub shutdown: watch::Receiver<bool>,
    pub started: Instant,
    /// The address actually bound (the configured one may say port 0).
    pub listen: std::net::SocketAddr,
    /// Failed authentications per source address.
    pub auth_failures: crate::auth::FailureLimiter,
    /// Open connections per source address.
    pub address_slots: crate::auth::AddressSlots,
    next_member: AtomicU64,
}

/// The projections' read sides with their runners, and the actors' handles.
#[derive(Debug)]
pub struct Parts {
    pub history: History,
    pub history_runner: Runner,
    pub search: SearchIndex,
    pub search_runner: Runner,
    pub sessions_read: Sessions,
    pub sessions_runner: Runner,
    pub rooms: Rooms,
    pub sessions: SessionsHandle,
    pub files: FileService,
    pub files_runner: Runner,
    pub janitor: crate::janitor::JanitorHandle,
    pub disk: crate::disk::Disk,
    pub growth: crate::growth::Growth,
    /// What start-up repaired (a migration, a projection rebuilt from the log), for
    /// `/api/status`.
    pub recovered: Vec<String>,
}

impl std::ops::Deref for App {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.parts
    }
}

impl App {
    pub fn new(
        config: Config,
        listen: std::net::SocketAddr,
        log: EventLog,
        parts: Parts,
        auth: Arc<dyn Authenticator>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let connections = Arc::new(Semaphore::new(config.limits.connections_max));
        let auth_failures = crate::auth::FailureLimiter::new(config.limits.auth_failures_per_minute);
        let address_slots = crate::auth::AddressSlots::new(config.limits.connections_per_address_max);
        Self {
            auth_failures,
            address_slots,
            config,
            log,
            parts,
            auth,
            connections,
            shutdown,
            started: Instant::now(),
            listen,
            next_member: AtomicU64::new(1),
        }
    }

    /// Every projection's runner, for readiness and lag, in [`Kind::ALL`]'s order.
    pub fn runners(&self) -> impl Iterator<Item = &Runner> + '_ {
        Kind::ALL.into_iter().map(|kind| self.runner(kind))
    }

    /// The runner of one projection.
    pub fn runner(&self, kind: Kind) -> &Runner {
        match kind {
            Kind::History => &self.history_runner,
            Kind::Search => &self.search_runner,
            Kind::Sessions => &self.sessions_runner,
            Kind::Files => &self.files_runner,
        }
    }

    /// The rooms `identity` may read, for a search: `None` when it may read every room.
    pub fn readable_rooms(
        &self,
        identity: &crate::auth::Identity,
    ) -> Result<Option<Vec<RoomId>>, crate::projection::ProjectionError> {
        let rooms = self.history.rooms()?;
        let readable: Vec<RoomId> = rooms.iter().map(|(r, _)| r).filter(|r| identity.may_read(r)).cloned().collect();
        Ok((readable.len() < rooms.len()).then_some(readable))
    }

    /// Runs a search for `identity` off the async threads.
    pub async fn search(
        &self,
        identity: &crate::auth::Identity,
        params: &crate::projection::search::SearchParams,
    ) -> Result<crate::projection::search::Hits, SearchFailure> {
        use crate::projection::search::SearchRequest;
        let readable = self.readable_rooms(identity).map_err(SearchFailure::unavailable)?;
        let request = SearchRequest::new(params, readable, self.config.search.limit_max, std::time::SystemTime::now())
            .map_err(|e| SearchFailure::Invalid(e.0))?;
        let index = self.search.clone();
        let log = self.log.clone();
        let started = Instant::now();
        let result = tokio::task::spawn_blocking(move || index.search(&request, &log))
            .await
            .map_err(SearchFailure::unavailable)?
            .map_err(SearchFailure::unavailable);
        metrics::histogram!(crate::metrics::SEARCH_SECONDS).record(started.elapsed().as_secs_f64());
        result
    }

    /// Who is in `room`: the users present with their connection counts, merged over every
    /// node's set (see [`crate::presence`]; on a cluster's log the other nodes answer too).
    pub async fn members(&self, room: &RoomId) -> Result<Vec<crate::presence::PresentUser>, crate::actor::ChatError> {
        Ok(crate::presence::merge(self.rooms.members_everywhere(room).await?))
    }

    /// Now, by the sessions' clock.
    pub fn sessions_clock_now(&self) -> u64 {
        self.sessions.now_ms()
    }

    pub fn next_member_id(&self) -> u64 {
        self.next_member.fetch_add(1, Ordering::Relaxed)
    }

    /// Waits until the history has applied everything durable when it is called (at most
    /// [`READ_BARRIER_MAX`]), so that a client that was acknowledged reads its own message.
    pub async fn history_barrier(&self) {
        let head = self.log.head();
        let _ = tokio::time::timeout(READ_BARRIER_MAX, self.history_runner.wait_applied(head)).await;
    }

    /// A page of a room's history before `before`, with whether older messages remain and
    /// what retention removed.
    pub async fn history_page(
        &self,
        room: &RoomId,
        before: u64,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool, Option<u64>), crate::projection::ProjectionError> {
        let room = room.clone();
        self.history
            .off_async(move |history| {
                let mut messages = history.before(&room, before, limit + 1)?;
                let more = messages.len() > limit;
                if more {
                    messages.remove(0);
                }
                let removed = history.summary(&room)?.map(|s| s.removed_through_seq).filter(|&r| r > 0);
                Ok((messages, more, removed))
            })
            .await
    }
}

/// Why a search has no answer, over HTTP and WebSocket alike.
#[derive(Debug, thiserror::Error)]
pub enum SearchFailure {
    /// The query or an option is wrong (`invalid_query`).
    #[error("{0}")]
    Invalid(String),
    /// The index cannot be read now (`search_unavailable`).
    #[error("search is unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl SearchFailure {
    /// How the edges report this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            SearchFailure::Invalid(_) => ErrorCode::InvalidQuery,
            SearchFailure::Unavailable(_) => ErrorCode::SearchUnavailable,
        }
    }

    fn unavailable(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        SearchFailure::Unavailable(Box::new(error))
    }
}

/// All routes, behind the failure limit: a client (see [`client_addr`]) whose tokens were
/// refused `limits.auth_failures_per_minute` times this minute gets 429 for another token that
/// is not valid, over HTTP and WebSocket alike; a valid token is never refused for it (behind
/// a tunnel that names no client, others' failures would otherwise lock everyone out).
pub fn routes(app: Arc<App>) -> impl Filter<Extract = (warp::reply::Response,), Error = Infallible> + Clone {
    let trusted: Arc<[std::net::IpAddr]> = app.config.auth.trusted_proxies.clone().into();
    let inner = inner_routes(app.clone(), trusted.clone());
    let lenient = credentials().or(warp::any().map(HashMap::new)).unify();
    let (gate_app, count_app) = (app.clone(), app);
    client_addr::client(trusted)
        .and(lenient)
        .and_then(move |ip: Option<std::net::IpAddr>, query: HashMap<String, String>| {
            let refused = failure_gate(ip, &query, &gate_app);
            let presented = query.contains_key("token");
            async move {
                match refused {
                    Some(refusal) => Err(warp::reject::custom(TooManyFailures(refusal))),
                    None => Ok((ip, presented)),
                }
            }
        })
        .untuple_one()
        .and(inner)
        .map(move |ip: Option<std::net::IpAddr>, presented: bool, response: warp::reply::Response| {
            // A token that was refused (a missing one is no guess at a token).
            if presented && response.status() == StatusCode::UNAUTHORIZED {
                if let Some(ip) = ip {
                    count_app.auth_failures.failed(ip);
                }
            }
            response
        })
        .recover(|rejection: Rejection| async move {
            match rejection.find::<TooManyFailures>() {
                Some(TooManyFailures(refusal)) => Ok(refusal.clone().into_response()),
                None => self::rejection(rejection).await,
            }
        })
        .unify()
}

/// A request refused by the failure limit.
#[derive(Debug)]
struct TooManyFailures(ApiError);
impl warp::reject::Reject for TooManyFailures {}

/// The 429 for a request whose client is over the failure limit and whose token is not valid.
fn failure_gate(ip: Option<std::net::IpAddr>, query: &HashMap<String, String>, app: &App) -> Option<ApiError> {
    let ip = ip?;
    if !query.contains_key("token") || !app.auth_failures.blocked(ip) || api::identity_of(query, app).is_ok() {
        return None;
    }
    metrics::counter!(crate::metrics::CONNECTIONS_REFUSED_TOTAL, "reason" => "too_many_failures").increment(1);
    let message = format!(
        "more than {} failed authentications from your address this minute; wait and retry",
        app.config.limits.auth_failures_per_minute
    );
    Some(ApiError::new(ErrorCode::TooManyFailures, message))
}

fn inner_routes(
    app: Arc<App>,
    trusted: Arc<[std::net::IpAddr]>,
) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let with_app = {
        let app = app.clone();
        warp::any().map(move || app.clone())
    };
    let ws = warp::path("ws")
        .and(warp::path::end())
        .and(upgrade::request())
        .and(client_addr::client(trusted))
        .and(credentials())
        .and(with_app.clone())
        .map(|request, ip, query, app| upgrade(request, ip, query, app).into_response());
    let healthz = warp::path("healthz")
        .and(warp::path::end())
        .and(warp::get())
        .map(|| warp::reply::json(&serde_json::json!({"status": "ok"})).into_response());
    let readyz =
        warp::path("readyz").and(warp::path::end()).and(warp::get()).and(with_app.clone()).and_then(api::readyz);
    let rooms = warp::path!("api" / "rooms").and(warp::get()).and(credentials()).and(with_app.clone()).then(
        |query, app: Arc<App>| async move {
            app.history_barrier().await;
            api::rooms(query, app).into_response()
        },
    );
    let metrics_gate = {
        let app = app.clone();
        let gate = admin(app.clone());
        warp::any()
            .and_then(move || {
                let private = app.config.auth.metrics_private;
                async move {
                    if private {
                        Err(warp::reject::not_found())
                    } else {
                        Ok(())
                    }
                }
            })
            .untuple_one()
            .or(gate)
            .unify()
    };
    let metrics = warp::path("metrics")
        .and(warp::path::end())
        .and(warp::get())
        .and(metrics_gate)
        .and(with_app.clone())
        .and_then(api::metrics);
    let export = warp::path!("api" / "log" / "export")
        .and(warp::get())
        .and(admin(app.clone()))
        .and(credentials())
        .and(with_app.clone())
        .and_then(|mut query: HashMap<String, String>, app: Arc<App>| async move {
            query.remove("token");
            api::export(query, app).await
        });
    let status = warp::path!("api" / "status")
        .and(warp::get())
        .and(admin(app.clone()))
        .and(with_app.clone())
        .and_then(api::status);
    // The configuration the server runs with, as TOML: what `roomlog backup` puts in an
    // archive (not the backup command's own, which may differ).
    let running_config =
        warp::path!("api" / "config").and(warp::get()).and(admin(app.clone())).and(with_app.clone()).then(
            |app: Arc<App>| async move {
                toml::to_string_pretty(&app.config)
                    .map(|text| warp::reply::with_header(text, "content-type", "application/toml"))
                    .map_err(|error| ApiError::new(ErrorCode::ConfigUnavailable, error.to_string()))
                    .into_response()
            },
        );
    let lifecycle =
        warp::path!("api" / "lifecycle" / "plan").and(warp::get()).and(admin(app.clone())).and(with_app.clone()).then(
            |app: Arc<App>| async move {
                // The janitor's own plan, its lifecycle part: one planner, so this lists exactly
                // what the next run does (no moves of content already cold).
                match app.janitor.plan().await {
                    Ok(plan) => {
                        let lifecycle = |action: &str| action == "expire" || action == "move_to_cold";
                        let items: Vec<_> = plan.items.iter().filter(|i| lifecycle(i.action)).collect();
                        let bytes: u64 = items.iter().map(|i| i.bytes).sum();
                        let unreadable: Vec<_> = plan.unreadable.iter().filter(|u| u.rule == "lifecycle").collect();
                        let body = serde_json::json!({ "plan": items, "bytes": bytes, "unreadable": unreadable });
                        warp::reply::json(&body).into_response()
                    }
                    // Not the janitor's own codes (`/api/janitor/plan` answers those): this route
                    // has always said janitor_unavailable, and clients may rely on it.
                    Err(error) => ApiError::new(ErrorCode::JanitorUnavailable, error.to_string()).into_response(),
                }
            },
        );
    let search = warp::path!("api" / "search")
        .and(warp::get())
        .and(credentials())
        .and(with_app.clone())
        .then(api::search)
        .map(Reply::into_response);
    let members = warp::path!("api" / "rooms" / String / "members")
        .and(warp::get())
        .and(credentials())
        .and(with_app.clone())
        .then(api::members)
        .map(Reply::into_response);
    let messages =
        warp::path!("api" / "rooms" / String / "messages").and(warp::get()).and(credentials()).and(with_app).then(
            |room, query, app: Arc<App>| async move {
                app.history_barrier().await;
                api::messages(room, query, app).await.into_response()
            },
        );
    ws.or(sessions::routes(app.clone()))
        .unify()
        .or(files::routes(app.clone()))
        .unify()
        .or(files::scrub_route(app.clone()))
        .unify()
        .or(janitor::routes(app.clone()))
        .unify()
        .or(storage::routes(app.clone()))
        .unify()
        .or(web::routes(app.clone()))
        .unify()
        .boxed()
        .or(healthz)
        .unify()
        .or(readyz)
        .unify()
        .or(rooms)
        .unify()
        .or(messages)
        .unify()
        .or(members)
        .unify()
        .or(metrics)
        .unify()
        .or(status)
        .unify()
        .or(running_config)
        .unify()
        .or(export)
        .unify()
        .or(search)
        .unify()
        .or(lifecycle)
        .unify()
        .recover(rejection)
        .unify()
        .boxed()
}

/// A caller's credentials: the query string, with `token` taken from an `Authorization:
/// Bearer TOKEN` header when the query has none (browsers cannot set headers on a WebSocket,
/// so `?token=` stays).
pub fn credentials() -> impl Filter<Extract = (HashMap<String, String>,), Error = Rejection> + Clone {
    warp::query::<HashMap<String, String>>().and(warp::header::optional::<String>("authorization")).map(
        |mut query: HashMap<String, String>, authorization: Option<String>| {
            let bearer = authorization.as_deref().and_then(|value| {
                let (scheme, token) = value.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned())
            });
            if let Some(token) = bearer {
                query.entry("token".to_owned()).or_insert(token);
            }
            query
        },
    )
}

/// Who is calling (see [`api::identity_of`]), or the 401 to answer.
pub type Caller = Result<crate::auth::Identity, ApiError>;

/// Who is calling (see [`api::identity_of`]); the error is the 401 to answer.
pub fn caller(app: Arc<App>) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    credentials().map(move |query: HashMap<String, String>| {
        api::identity_of(&query, &app).map_err(|error| ApiError::unauthorized(error.to_string()))
    })
}

/// Whether a request comes from this host. The log export hands out every message, so until
/// admin tokens exist (issue 7) only a peer on the loopback interface may call it.
pub fn host_only(peer: Option<std::net::SocketAddr>) -> bool {
    peer.is_some_and(|p| p.ip().is_loopback())
}

/// Whether a caller may use the admin endpoints: with a token that has the admin scope, or
/// from the server's own host when `auth.admin_from_host` allows it.
pub fn admin_allowed(peer: Option<std::net::SocketAddr>, query: &HashMap<String, String>, app: &App) -> bool {
    admin_check(peer, query, app).is_ok()
}

/// [`admin_allowed`], with the refusal: 401 for a token that is not valid, else 403.
pub fn admin_check(
    peer: Option<std::net::SocketAddr>,
    query: &HashMap<String, String>,
    app: &App,
) -> Result<(), ApiError> {
    // A trusted proxy on this host (a tunnel) relays callers from anywhere: its loopback
    // address says nothing about who is calling.
    let relayed = peer.is_some_and(|p| app.config.auth.trusted_proxies.contains(&p.ip()));
    if app.config.auth.admin_from_host && host_only(peer) && !relayed {
        return Ok(());
    }
    let needed = "this endpoint needs an admin token (?token= or Authorization: Bearer)";
    if !query.contains_key("token") {
        return Err(ApiError::unauthorized(needed));
    }
    match api::identity_of(query, app) {
        Ok(identity) if identity.admin => Ok(()),
        Ok(_) => Err(ApiError::forbidden(needed)),
        Err(error) => Err(ApiError::unauthorized(error.to_string())),
    }
}

/// [`admin_check`] as a value rather than a rejection, for routes that also serve other callers
/// (sessions: creating, paying and listing them is for the admin scope in every
/// `auth.anonymous` mode; reading one is for its own token too).
pub type AdminStatus = Result<(), ApiError>;

/// The [`AdminStatus`] of a request.
pub fn admin_status(app: Arc<App>) -> impl Filter<Extract = (AdminStatus,), Error = Rejection> + Clone {
    listen::peer()
        .and(credentials())
        .map(move |peer: Option<std::net::SocketAddr>, query: HashMap<String, String>| admin_check(peer, &query, &app))
}

/// A request refused by [`admin`].
#[derive(Debug)]
pub struct AdminOnly(ApiError);
impl warp::reject::Reject for AdminOnly {}

/// Passes only callers that [`admin_allowed`]; others are refused as [`admin_check`] says.
pub fn admin(app: Arc<App>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    listen::peer()
        .and(credentials())
        .and_then(move |peer: Option<std::net::SocketAddr>, query: HashMap<String, String>| {
            let checked = admin_check(peer, &query, &app).map_err(|refusal| warp::reject::custom(AdminOnly(refusal)));
            async move { checked }
        })
        .untuple_one()
}

fn upgrade(
    request: upgrade::UpgradeRequest,
    ip: Option<std::net::IpAddr>,
    query: HashMap<String, String>,
    app: Arc<App>,
) -> Result<warp::reply::Response, ApiError> {
    if *app.shutdown.borrow() {
        return Err(ApiError::new(ErrorCode::ShuttingDown, "the server is shutting down"));
    }
    // The failure limit is in front of every route (see `routes`), which also counts this 401.
    let identity = match app.auth.authenticate(&Credentials { query }) {
        Ok(identity) => identity,
        Err(error) => {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED_TOTAL, "reason" => "unauthorized").increment(1);
            return Err(ApiError::unauthorized(error.0));
        }
    };
    let slot = match ip.map(|ip| app.address_slots.take(ip)) {
        Some(None) => {
            metrics::counter!(crate::metrics::CONNECTIONS_REFUSED_TOTAL, "reason" => "too_many_from_address")
                .increment(1);
            let text = format!(
                "your address has {} connections open, as many as one address may; close one and retry",
                app.config.limits.connections_per_address_max
            );
            return Err(ApiError::new(ErrorCode::TooManyConnectionsFromAddress, text));
        }
        Some(Some(slot)) => Some(slot),
        None => None,
    };
    let Ok(permit) = app.connections.clone().try_acquire_owned() else {
        metrics::counter!(crate::metrics::CONNECTIONS_REFUSED_TOTAL, "reason" => "too_many_connections").increment(1);
        return Err(ApiError::new(
            ErrorCode::TooManyConnections,
            "the server has as many connections as it accepts; retry later",
        ));
    };
    let for_connection = app.clone();
    Ok(request.accept(&app, move |socket| async move {
        let _slot = slot; // held while the connection is open
        ws::serve(socket, identity, for_connection, permit).await
    }))
}

async fn rejection(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let error = if let Some(AdminOnly(refusal)) = rejection.find::<AdminOnly>() {
        refusal.clone()
    } else if rejection.is_not_found() {
        ApiError::new(ErrorCode::NotFound, "no such route")
    } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
        ApiError::new(ErrorCode::MethodNotAllowed, "method not allowed on this route")
    } else if let Some(e) = rejection.find::<warp::reject::InvalidQuery>() {
        ApiError::invalid_query(e.to_string())
    } else if rejection.find::<warp::reject::PayloadTooLarge>().is_some() {
        ApiError::new(ErrorCode::BodyTooLarge, "request body too large")
    } else {
        ApiError::new(ErrorCode::BadRequest, format!("{rejection:?}"))
    };
    Ok(error.into_response())
}

#[cfg(test)]
mod tests {
    use super::{host_only, ErrorCode, SearchFailure};

    /// `GET /api/search` (through `From<SearchFailure> for ApiError`) and the WebSocket's
    /// `search` (ws.rs answers `error.code()`) both take the code from here: an index that
    /// cannot answer is `search_unavailable` on both (it was `storage_unavailable` over the
    /// WebSocket).
    #[test]
    fn a_failed_search_has_one_code_for_both_edges() {
        let unavailable = SearchFailure::unavailable(std::io::Error::other("index reader gone"));
        assert_eq!(unavailable.code(), ErrorCode::SearchUnavailable);
        assert_eq!(super::ApiError::from(unavailable).code(), ErrorCode::SearchUnavailable);
        assert_eq!(SearchFailure::Invalid("bad sort".into()).code(), ErrorCode::InvalidQuery);
    }

    #[test]
    fn only_loopback_peers_may_export_the_log() {
        for allowed in ["127.0.0.1:5000", "127.8.9.10:1", "[::1]:80"] {
            assert!(host_only(allowed.parse().ok()), "{allowed}");
        }
        for refused in ["10.0.0.5:5000", "192.168.1.2:80", "[2001:db8::1]:80"] {
            assert!(!host_only(refused.parse().ok()), "{refused}");
        }
        assert!(!host_only(None), "an unknown peer is refused");
    }
}
