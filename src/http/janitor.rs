//! `/api/janitor`: the plan (a dry run), a run now, and the runs so far.

use std::collections::HashMap;
use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::{ApiError, App};

/// Most runs one answer lists.
const RUNS_MAX: usize = 1000;

/// All janitor routes. Boxed, as the other route groups are.
pub fn routes(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let gate = super::admin(app.clone());
    let with_app = warp::any().map(move || app.clone());
    let plan = warp::path!("api" / "janitor" / "plan").and(warp::get()).and(gate.clone()).and(with_app.clone()).then(
        |app: Arc<App>| async move {
            app.janitor.plan().await.map(|plan| warp::reply::json(&plan)).map_err(ApiError::from).into_response()
        },
    );
    let run = warp::path!("api" / "janitor" / "run")
        .and(warp::post())
        .and(gate.clone())
        .and(with_app.clone())
        .then(|app: Arc<App>| async move { run(&app).await })
        .map(Reply::into_response);
    let rewrite = warp::path!("api" / "janitor" / "rewrite_log")
        .and(warp::post())
        .and(gate.clone())
        .and(with_app.clone())
        .then(|app: Arc<App>| async move { rewrite_log(&app).await })
        .map(Reply::into_response);
    let runs = warp::path!("api" / "janitor" / "runs")
        .and(warp::get())
        .and(gate)
        .and(super::credentials())
        .and(with_app)
        .then(|query: HashMap<String, String>, app: Arc<App>| async move { runs(&query, &app).await.into_response() });
    plan.or(run).unify().or(rewrite).unify().or(runs).unify().boxed()
}

/// `POST /api/janitor/run`: a run now; 500 with the run's record when it failed part way.
async fn run(app: &App) -> Result<impl Reply, ApiError> {
    let ran = app.janitor.run("manual").await?;
    let status = if ran.error.is_none() { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
    Ok(warp::reply::with_status(warp::reply::json(&ran), status))
}

/// `POST /api/janitor/rewrite_log`: rewrites the log's files now, while serving, as the janitor
/// does after a large purge; `{"rewritten": null}` where the log frees space itself (a
/// cluster's stream) or holds nothing on disk.
async fn rewrite_log(app: &App) -> Result<impl Reply, ApiError> {
    let rewritten = app.log.rewrite().await?;
    Ok(warp::reply::json(&serde_json::json!({ "rewritten": rewritten })))
}

/// `GET /api/janitor/runs?limit=`: the last `limit` runs, each with its seq.
async fn runs(query: &HashMap<String, String>, app: &App) -> Result<impl Reply, ApiError> {
    let limit = match query.get("limit").map(|l| l.parse::<usize>()) {
        None => 20,
        Some(Ok(l)) if (1..=RUNS_MAX).contains(&l) => l,
        _ => return Err(ApiError::invalid_query(format!("limit must be 1 to {RUNS_MAX}"))),
    };
    let runs = app
        .janitor
        .runs(limit)
        .await?
        .into_iter()
        .map(|(seq, ran)| crate::views::JanitorRunRecord { seq, ran })
        .collect();
    Ok(warp::reply::json(&crate::views::JanitorRuns { runs }))
}
