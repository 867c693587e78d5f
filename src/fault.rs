//! A seam for crash tests: with `ROOMLOG_FAULT_PAUSE=<point>` in its environment, the server
//! stops for good when it reaches that point, after saying so on stderr, so that a test can
//! kill -9 it exactly there. Without the variable (always, in production) nothing happens.
//!
//! Points: `tier-move:copying` (half way through copying content to another tier),
//! `tier-move:copied` (the copy is complete and checked, nothing recorded yet),
//! `tier-move:recorded` (the move is in the log, the source copy not yet removed).

/// The environment variable naming the point to stop at.
pub const ENV: &str = "ROOMLOG_FAULT_PAUSE";

/// Stops here forever if the environment names `point`.
pub async fn pause(point: &str) {
    if std::env::var(ENV).is_ok_and(|p| p == point) {
        eprintln!("roomlog fault: paused at {point}");
        std::future::pending::<()>().await;
    }
}
