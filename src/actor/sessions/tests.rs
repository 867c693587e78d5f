//! Sessions as the HTTP API drives them (create, command, read), with their actors, the
//! supervisor's sweeper and the sessions projection on the memory log, and time moved by a
//! [`ManualClock`] instead of waited for.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::clock::{Clock, ManualClock};
use crate::config::SessionsConfig;
use crate::log::EventLog;
use crate::projection::testing::{memory_log, state, WAIT};
use crate::projection::{sessions, Runner};
use crate::session::SessionState;

const START_MS: u64 = 1_800_000_000_000;
const DAY: Duration = Duration::from_secs(24 * 3600);

struct Fixture {
    handle: SessionsHandle,
    clock: ManualClock,
    log: EventLog,
    stop: watch::Sender<bool>,
    _state: crate::state::StateDb,
}

async fn fixture() -> Fixture {
    let log = memory_log();
    let db = state();
    let (read, projection) = sessions::open(&db).expect("open sessions");
    let (runner, _following) = Runner::start(log.clone(), projection, None).await.expect("start the runner");
    let clock = ManualClock::new(START_MS);
    let config = SessionsConfig::default(); // expires after 24 h, purged after 7 days
    let ctx = SessionContext { log: log.clone(), sessions: read, runner, config, clock: Arc::new(clock.clone()) };
    let (stop, stopping) = watch::channel(false);
    let handle = SessionsHandle::start(ctx, stopping).await.expect("start the supervisor");
    Fixture { handle, clock, log, stop, _state: db }
}

impl Fixture {
    /// Waits until the session reaches `state` (the actor's timer or the sweeper moves it).
    async fn reaches(&self, id: &SessionId, state: SessionState) -> Session {
        tokio::time::timeout(WAIT, async {
            loop {
                let session = self.handle.get(id).await.expect("read").expect("the session exists");
                if session.state == state {
                    return session;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("session {id} did not become {} within the wait", state.as_str()))
    }

    /// Waits until no session actor runs.
    async fn no_actors(&self) {
        tokio::time::timeout(WAIT, async {
            while self.handle.live_actors().await > 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the actors stop once their sessions are no longer live");
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.handle.stop().await;
        self.log.close().await;
    }
}

#[tokio::test]
async fn given_a_created_session_when_the_clock_passes_its_ttl_then_its_actor_expires_it_on_time() {
    let f = fixture().await;
    let session = f.handle.create(None).await.expect("create");
    assert_eq!((session.state, session.expires_at_unix_ms), (SessionState::Active, START_MS + DAY.as_millis() as u64));
    assert_eq!(f.handle.live_actors().await, 1, "a new session is live");

    f.clock.advance(DAY);
    let expired = f.reaches(&session.id, SessionState::Expired).await;

    assert_eq!(expired.changed_at_unix_ms, Some(f.clock.now_ms()));
    let told = f.handle.history(&expired, 10).await.expect("history");
    assert!(
        matches!(told.last().map(|e| &e.event), Some(Event::SessionExpired(due)) if due.due_at_unix_ms == session.expires_at_unix_ms),
        "its history ends with its expiry at its due time: {told:?}"
    );
    f.stop().await;
}

#[tokio::test]
async fn given_an_unpaid_session_without_an_actor_when_seven_days_pass_then_the_sweeper_purges_it() {
    let f = fixture().await;
    let session = f.handle.create(None).await.expect("create");
    f.clock.advance(DAY);
    f.reaches(&session.id, SessionState::Expired).await;
    f.no_actors().await;

    f.clock.advance(6 * DAY);
    let purged = f.reaches(&session.id, SessionState::Purged).await;

    assert_eq!(purged.sweeps.len(), 1, "the sweeper's batch event purged it, not an actor");
    let told = f.handle.history(&purged, 10).await.expect("history");
    assert!(
        matches!(told.last().map(|e| &e.event), Some(Event::SessionPurged(due)) if due.due_at_unix_ms == session.purge_at_unix_ms),
        "its history tells of the purge at its due time: {told:?}"
    );
    assert_eq!(f.handle.live_actors().await, 0, "the sweeper started no actor to purge it");
    f.stop().await;
}

#[tokio::test]
async fn given_a_paid_session_when_seven_days_pass_then_it_is_kept_while_an_unpaid_one_is_purged() {
    let f = fixture().await;
    let kept = f.handle.create(None).await.expect("create");
    let unpaid = f.handle.create(None).await.expect("create");
    let paid = f.handle.command(&kept.id, Command::Pay).await.expect("pay");
    assert_eq!(paid.state, SessionState::Paid);

    f.clock.advance(8 * DAY);
    f.reaches(&unpaid.id, SessionState::Purged).await;

    let after = f.handle.get(&kept.id).await.expect("read").expect("exists");
    assert_eq!(after.state, SessionState::Paid);
    assert!(f.handle.purges_due(f.clock.now_ms(), 10).expect("purges due").is_empty());
    f.stop().await;
}

#[tokio::test]
async fn given_a_sliding_session_when_it_is_touched_then_its_expiry_moves_and_after_expiry_a_touch_is_refused() {
    let f = fixture().await;
    let session = f.handle.create(Some(true)).await.expect("create");
    f.clock.advance(Duration::from_secs(3600));

    let touched = f.handle.command(&session.id, Command::Touch).await.expect("touch");

    assert_eq!(touched.expires_at_unix_ms, f.clock.now_ms() + DAY.as_millis() as u64, "a day from the touch");
    f.clock.advance(DAY);
    f.reaches(&session.id, SessionState::Expired).await;
    match f.handle.command(&session.id, Command::Touch).await {
        Err(SessionError::Conflict { state, .. }) => assert_eq!(state, "expired"),
        other => panic!("a touch of an expired session is refused, not {other:?}"),
    }
    f.stop().await;
}
