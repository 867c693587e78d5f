//! `/api/janitor`: the plan (a dry run), a run now, and the runs so far.

use std::collections::HashMap;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::{error_reply, App};
use crate::janitor::JanitorError;

/// Most runs one answer lists.
const RUNS_MAX: usize = 1000;

fn janitor_error(error: &JanitorError) -> warp::reply::Response {
    let code = match error {
        JanitorError::Read(_) => "storage_unavailable",
        JanitorError::Stopped => "shutting_down",
    };
    error_reply(StatusCode::SERVICE_UNAVAILABLE, code, &error.to_string())
}

/// All janitor routes. Boxed, as the other route groups are.
pub fn routes(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let gate = super::admin(app.clone());
    let with_app = warp::any().map(move || app.clone());
    let plan = warp::path!("api" / "janitor" / "plan").and(warp::get()).and(gate.clone()).and(with_app.clone()).then(
        |app: Arc<App>| async move {
            match app.janitor.plan().await {
                Ok(plan) => warp::reply::json(&plan).into_response(),
                Err(error) => janitor_error(&error),
            }
        },
    );
    let run = warp::path!("api" / "janitor" / "run").and(warp::post()).and(gate.clone()).and(with_app.clone()).then(
        |app: Arc<App>| async move {
            match app.janitor.run("manual").await {
                Ok(ran) => {
                    let status = if ran.error.is_none() { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
                    warp::reply::with_status(warp::reply::json(&ran), status).into_response()
                }
                Err(error) => janitor_error(&error),
            }
        },
    );
    let runs = warp::path!("api" / "janitor" / "runs")
        .and(warp::get())
        .and(gate)
        .and(super::credentials())
        .and(with_app)
        .then(|query: HashMap<String, String>, app: Arc<App>| async move {
            let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
                None => 20,
                Some(Ok(l)) if (1..=RUNS_MAX).contains(&l) => l,
                _ => {
                    return error_reply(
                        StatusCode::BAD_REQUEST,
                        "invalid_query",
                        &format!("limit must be 1 to {RUNS_MAX}"),
                    )
                }
            };
            match app.janitor.runs(limit) {
                Ok(runs) => {
                    let runs = runs.into_iter().map(|(seq, ran)| crate::views::JanitorRunRecord { seq, ran }).collect();
                    warp::reply::json(&crate::views::JanitorRuns { runs }).into_response()
                }
                Err(error) => janitor_error(&error),
            }
        });
    plan.or(run).unify().or(runs).unify().boxed()
}
