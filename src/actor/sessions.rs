//! `SessionSupervisor`: creates sessions, finds or starts the actor of a session, and runs the
//! sweeper that applies due times from the projection's deadline index, for sessions whose
//! actor is not running and after a restart (overdue ones at once, with their original due
//! time recorded in the event).

use std::collections::HashMap;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::sync::watch;

use super::session::{Command, SessionActor, SessionContext, SessionError, SessionMsg};
use crate::event::{DueSession, Event, SessionCreated, SessionId, SessionsDue};
use crate::session::{Due, Session};

/// Due times the sweeper hands out per round.
const SWEEP_BATCH_MAX: usize = 10_000;
/// Sessions one batch event (`SessionsExpired`, `SessionsPurged`) names at most.
const SWEEP_EVENT_SESSIONS_MAX: usize = 1000;
/// Session actors the sweeper waits on at once.
const SWEEP_CONCURRENCY: usize = 1024;

/// Messages the supervisor handles.
#[derive(Debug)]
pub enum SessionsMsg {
    Get {
        id: SessionId,
        reply: RpcReplyPort<Result<ActorRef<SessionMsg>, SessionError>>,
    },
    Count {
        reply: RpcReplyPort<usize>,
    },
    /// Applies due times: those of sessions without a running actor here, in one batch of
    /// appends; those with one are handed back, for their actor.
    ApplyDue {
        due: Vec<(u64, Due, SessionId)>,
        reply: RpcReplyPort<Vec<(u64, Due, ActorRef<SessionMsg>)>>,
    },
    /// Answers once every due event appended so far is durable (or failed).
    Settle {
        reply: RpcReplyPort<()>,
    },
}

#[derive(Debug)]
pub struct SessionSupervisor;

#[derive(Debug)]
pub struct SessionSupervisorState {
    ctx: SessionContext,
    actors: HashMap<SessionId, ActorRef<SessionMsg>>,
    by_actor: HashMap<ActorId, SessionId>,
    /// The due events appended and not yet known durable: the sweeper goes on to its next
    /// page meanwhile, and an actor is started only once they are.
    in_flight: Vec<tokio::task::JoinHandle<()>>,
}

impl Actor for SessionSupervisor {
    type Msg = SessionsMsg;
    type State = SessionSupervisorState;
    type Arguments = SessionContext;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionsMsg>,
        ctx: SessionContext,
    ) -> Result<SessionSupervisorState, ActorProcessingErr> {
        Ok(SessionSupervisorState { ctx, actors: HashMap::new(), by_actor: HashMap::new(), in_flight: Vec::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionsMsg>,
        msg: SessionsMsg,
        s: &mut SessionSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionsMsg::Get { id, reply } => {
                let result = match s.actors.get(&id) {
                    Some(actor) => Ok(actor.clone()),
                    None => s.start(&myself, id).await,
                };
                let _ = reply.send(result);
            }
            SessionsMsg::Count { reply } => {
                let _ = reply.send(s.actors.len());
            }
            SessionsMsg::ApplyDue { due, reply } => {
                let _ = reply.send(s.apply_due(due).await);
            }
            SessionsMsg::Settle { reply } => {
                s.settle().await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<SessionsMsg>,
        event: SupervisionEvent,
        s: &mut SessionSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                if let Some(id) = s.forget(&cell) {
                    // Its state is in the projection; the next command or due time restarts it.
                    tracing::warn!(session = %id, error = %error, "session actor failed");
                }
            }
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                s.forget(&cell);
            }
            _ => {}
        }
        Ok(())
    }
}

impl SessionSupervisorState {
    /// A session without an actor can only get one through this supervisor, which handles one
    /// message at a time and starts an actor only once every due event it appended is durable
    /// and applied. So a due time is applied here exactly as the session's actor would,
    /// without starting 100,000 actors when 100,000 fall due, and in batch events of up to
    /// [`SWEEP_EVENT_SESSIONS_MAX`] sessions, so that 100,000 expiries are a hundred log records,
    /// not 100,000. It returns once they are submitted: the sweeper reads its next page while
    /// the log makes them durable.
    ///
    /// It trusts the projection's deadline index without waiting for the projection: a session
    /// without an actor has no event of its own in flight (an actor stops only once the
    /// projection has its events), and the sweeper never hands out a due time twice within a
    /// pass (a new pass first waits until the last one's events are durable and applied).
    ///
    /// On a cluster's log other nodes change sessions too, and the lease that makes this node
    /// the sweeper can be lost while it is paused: there each due time is its own event,
    /// conditional on the session's stream (`submit_each`), at the cost of one record per
    /// session.
    async fn apply_due(&mut self, due: Vec<(u64, Due, SessionId)>) -> Vec<(u64, Due, ActorRef<SessionMsg>)> {
        let now = self.ctx.clock.now_ms();
        let mut live = Vec::new();
        let (mut expire, mut purge) = (Vec::new(), Vec::new());
        for (at, kind, id) in due {
            if let Some(actor) = self.actors.get(&id) {
                live.push((at, kind, actor.clone()));
                continue;
            }
            // The deadline index holds exactly the due times of each session as the projection
            // has it, and the projection is current for a session without an actor (below):
            // an entry that has come is due, with no need to read the session itself.
            if at <= now {
                let batch = match kind {
                    Due::Expire => &mut expire,
                    Due::Purge => &mut purge,
                };
                batch.push(DueSession { id, due_at_unix_ms: at });
            }
        }
        let pending = if self.ctx.log.is_shared() {
            self.submit_each(
                now,
                expire.into_iter().map(|s| (Due::Expire, s)).chain(purge.into_iter().map(|s| (Due::Purge, s))),
            )
            .await
        } else {
            self.submit_batches(now, expire, purge).await
        };
        self.in_flight.retain(|task| !task.is_finished());
        self.in_flight.push(tokio::spawn(async move {
            for append in pending {
                match append.durable().await {
                    Err(error) if matches!(error.as_ref(), crate::log::LogError::Conflict(_)) => {
                        // A paused ex-holder of the sweeper's lease, or a command on another
                        // node: the next pass reads what that node wrote and decides again.
                        tracing::info!(error = %error, "a session changed on another node first: its due time is decided again");
                    }
                    Err(error) => tracing::warn!(error = %error, "due times were not applied; the sweeper retries"),
                    Ok(_) => {}
                }
            }
        }));
        live
    }

    /// The due times as batch events of up to [`SWEEP_EVENT_SESSIONS_MAX`] sessions each: on a
    /// local log, whose one writer is this node, and only this supervisor starts actors.
    async fn submit_batches(
        &self,
        now: u64,
        expire: Vec<DueSession>,
        purge: Vec<DueSession>,
    ) -> Vec<crate::log::PendingAppend> {
        let mut pending = Vec::new();
        'submit: for (kind, sessions) in [(Due::Expire, expire), (Due::Purge, purge)] {
            let (reason, rule) = kind.words(kind.age(&self.ctx.config));
            for chunk in sessions.chunks(SWEEP_EVENT_SESSIONS_MAX) {
                let due = SessionsDue {
                    sessions: chunk.to_vec(),
                    applied_at_unix_ms: now,
                    reason: reason.clone(),
                    rule: rule.clone(),
                };
                let event = match kind {
                    Due::Expire => Event::SessionsExpired(due),
                    Due::Purge => Event::SessionsPurged(due),
                };
                match self.ctx.log.submit(event).await {
                    Ok(append) => pending.push(append),
                    Err(error) => {
                        tracing::warn!(error = %error, "due times not applied; the sweeper retries");
                        break 'submit;
                    }
                }
            }
        }
        pending
    }

    /// The due times one event per session, each conditional on the newest record of that
    /// session's stream as this node read it: on a cluster's log, where another node may
    /// change the session meanwhile (a command there, or this node's lease lost while paused),
    /// a stale expiry or purge is refused rather than stored twice or over a payment.
    async fn submit_each(
        &self,
        now: u64,
        due: impl Iterator<Item = (Due, DueSession)>,
    ) -> Vec<crate::log::PendingAppend> {
        let mut pending = Vec::new();
        for (kind, DueSession { id, due_at_unix_ms: at }) in due {
            let (session, last_seq) = match self.ctx.read_held(&id).await {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(session = %id, error = %error, "due time not applied; the sweeper retries");
                    continue;
                }
            };
            let Some(event) = session.due_event(kind, at, now, kind.age(&self.ctx.config)) else { continue };
            match self.ctx.log.submit_if_last(event, last_seq).await {
                Ok(append) => pending.push(append),
                Err(error) => {
                    tracing::warn!(error = %error, "due times not applied; the sweeper retries");
                    break;
                }
            }
        }
        pending
    }

    /// Waits until every due event appended is durable (or failed).
    async fn settle(&mut self) {
        for task in self.in_flight.drain(..) {
            let _ = task.await;
        }
    }

    fn forget(&mut self, cell: &ActorCell) -> Option<SessionId> {
        let id = self.by_actor.remove(&cell.get_id())?;
        if self.actors.get(&id).is_some_and(|a| a.get_id() == cell.get_id()) {
            self.actors.remove(&id);
        }
        Some(id)
    }

    async fn start(
        &mut self,
        myself: &ActorRef<SessionsMsg>,
        id: SessionId,
    ) -> Result<ActorRef<SessionMsg>, SessionError> {
        // Its session may be in a due event still on its way to the log: the actor must see it.
        self.settle().await;
        self.ctx.caught_up().await;
        match self.ctx.sessions.get(&id) {
            Ok(Some(_)) => {}
            Ok(None) => return Err(SessionError::NotFound(id.to_string())),
            Err(e) => return Err(SessionError::storage(e)),
        }
        let (actor, _) = Actor::spawn_linked(None, SessionActor, (id.clone(), self.ctx.clone()), myself.get_cell())
            .await
            .map_err(SessionError::storage)?;
        self.by_actor.insert(actor.get_id(), id.clone());
        self.actors.insert(id, actor.clone());
        Ok(actor)
    }
}

/// A handle to the sessions, used by the HTTP API.
#[derive(Debug, Clone)]
pub struct SessionsHandle {
    supervisor: ActorRef<SessionsMsg>,
    ctx: SessionContext,
}

impl SessionsHandle {
    /// Starts the supervisor and its sweeper; the sweeper stops when `stopping` turns true.
    pub async fn start(ctx: SessionContext, stopping: watch::Receiver<bool>) -> Result<Self, ActorProcessingErr> {
        let (supervisor, _) = Actor::spawn(None, SessionSupervisor, ctx.clone()).await?;
        let handle = Self { supervisor, ctx };
        let lease = handle.ctx.log.lease("sessions.sweeper");
        tokio::spawn(handle.clone().sweep(stopping, lease));
        Ok(handle)
    }

    /// Creates a session; it is live (its actor holds its timer) until it expires or is paid.
    pub async fn create(&self, sliding: Option<bool>) -> Result<Session, SessionError> {
        let now = self.ctx.clock.now_ms();
        let config = &self.ctx.config;
        let id = SessionId::random();
        let created = SessionCreated {
            id: id.clone(),
            created_at_unix_ms: now,
            expires_at_unix_ms: now.saturating_add(crate::clock::millis(config.expire_after)),
            purge_at_unix_ms: now.saturating_add(crate::clock::millis(config.purge_after)),
            sliding: sliding.unwrap_or(config.sliding),
        };
        self.ctx.log.append(Event::SessionCreated(created)).await.map_err(SessionError::storage)?;
        // Starting the actor waits for the projection, so the session is readable on return.
        self.actor(&id).await?;
        self.get(&id).await?.ok_or_else(|| SessionError::NotFound(id.to_string()))
    }

    /// A session as the projection has it, after every acknowledged command.
    pub async fn get(&self, id: &SessionId) -> Result<Option<Session>, SessionError> {
        self.ctx.caught_up().await;
        self.ctx.sessions.get(id).map_err(SessionError::storage)
    }

    /// Runs a command through the session's actor.
    pub async fn command(&self, id: &SessionId, command: Command) -> Result<Session, SessionError> {
        for _ in 0..3 {
            let actor = self.actor(id).await?;
            match actor.call(|reply| SessionMsg::Command { command, reply }, None).await {
                Ok(ractor::rpc::CallResult::Success(result)) => return result,
                _ => continue, // the actor stopped as we asked (idle, or no longer live): ask again
            }
        }
        Err(SessionError::storage_because("the session's actor keeps stopping"))
    }

    /// What happened to a session, oldest first (at most `limit` events): the events of its
    /// stream, and its part of the sweeper's batch events that changed it, told as the
    /// single-session event (`SessionExpired`, `SessionPurged`) at the batch's seq.
    pub async fn history(&self, session: &Session, limit: usize) -> Result<Vec<crate::event::Envelope>, SessionError> {
        let storage = |e: crate::log::LogError| SessionError::storage(e);
        let stream = crate::event::StreamId::session(&session.id);
        let mut events = self.ctx.log.read_stream(&stream, 0, limit).await.map_err(storage)?;
        for &seq in &session.sweeps {
            for mut envelope in
                self.ctx.log.read_range(seq, 1).await.map_err(storage)?.into_iter().filter(|e| e.seq == seq)
            {
                envelope.event = match &envelope.event {
                    Event::SessionsExpired(batch) => match batch.for_session(&session.id) {
                        Some(one) => Event::SessionExpired(one),
                        None => continue,
                    },
                    Event::SessionsPurged(batch) => match batch.for_session(&session.id) {
                        Some(one) => Event::SessionPurged(one),
                        None => continue,
                    },
                    _ => continue,
                };
                envelope.stream = stream.clone();
                events.push(envelope);
            }
        }
        events.sort_by_key(|e| e.seq);
        events.truncate(limit);
        Ok(events)
    }

    /// Now, by the sessions' clock.
    pub fn now_ms(&self) -> u64 {
        self.ctx.clock.now_ms()
    }

    /// Waits until the sessions projection has everything acknowledged.
    pub async fn caught_up(&self) {
        self.ctx.caught_up().await;
    }

    /// How many session actors run.
    pub async fn live_actors(&self) -> usize {
        match self.supervisor.call(|reply| SessionsMsg::Count { reply }, None).await {
            Ok(ractor::rpc::CallResult::Success(n)) => n,
            _ => 0,
        }
    }

    /// Stops every session actor and the supervisor.
    pub async fn stop(&self) {
        self.supervisor.drain_children_and_wait(Some(Duration::from_secs(5))).await;
        let _ = self.supervisor.stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5))).await;
    }

    async fn actor(&self, id: &SessionId) -> Result<ActorRef<SessionMsg>, SessionError> {
        let id = id.clone();
        match self.supervisor.call(|reply| SessionsMsg::Get { id, reply }, None).await {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            _ => Err(SessionError::ShuttingDown),
        }
    }

    /// The purges due at `now` (at most `limit`): the janitor's view of the sessions it owes a
    /// purge. The sweeper applies them within a second of their time; a list that is not empty
    /// means it fell behind or the server was down.
    pub fn purges_due(&self, now: u64, limit: usize) -> Result<Vec<(u64, SessionId)>, SessionError> {
        let due = self.ctx.sessions.due(now, limit).map_err(SessionError::storage)?;
        Ok(due.into_iter().filter(|(_, kind, _)| *kind == Due::Purge).map(|(at, _, id)| (at, id)).collect())
    }

    /// Applies one session's purge due at `at` through its actor, as the sweeper does.
    pub async fn apply_purge(&self, id: &SessionId, at: u64) -> Result<(), SessionError> {
        let actor = self.actor(id).await?;
        match actor.call(|reply| SessionMsg::Due { due: Due::Purge, at, reply: Some(reply) }, None).await {
            Ok(ractor::rpc::CallResult::Success(())) => {
                self.ctx.caught_up().await;
                Ok(())
            }
            _ => Err(SessionError::storage_because(format!("session {id} did not apply its purge"))),
        }
    }

    /// Hands due times to running sessions' actors, many at once; false if stopping.
    async fn hand_out(&self, due: Vec<(u64, Due, ActorRef<SessionMsg>)>, stopping: &watch::Receiver<bool>) -> bool {
        let mut waiting = FuturesUnordered::new();
        for (at, kind, actor) in due {
            if *stopping.borrow() {
                return false;
            }
            waiting.push(async move {
                actor.call(|reply| SessionMsg::Due { due: kind, at, reply: Some(reply) }, None).await.ok()
            });
            if waiting.len() >= SWEEP_CONCURRENCY {
                waiting.next().await;
            }
        }
        while waiting.next().await.is_some() {}
        true
    }

    /// Applies due times from the deadline index: sleeps until the earliest, then walks what is
    /// due in pages, each applied by the supervisor (or handed to the session's running actor),
    /// without waiting for the projection between pages: a pass remembers where it is. Once a
    /// pass finds nothing more, it waits for the projection to apply what it appended and
    /// starts again from the earliest, so that anything not applied is tried again.
    ///
    /// On a cluster's log, only the node holding the `sessions.sweeper` lease sweeps.
    async fn sweep(self, mut stopping: watch::Receiver<bool>, mut lease: Option<watch::Receiver<bool>>) {
        let mut cursor: Option<(u64, Due, SessionId)> = None;
        let mut pass_first: Option<(u64, Due, SessionId)> = None;
        loop {
            if let Some(lease) = lease.as_mut().filter(|lease| !*lease.borrow()) {
                tokio::select! {
                    _ = lease.wait_for(|held| *held) => {}
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
                cursor = None;
                continue;
            }
            if cursor.is_none() {
                self.ctx.caught_up().await;
            }
            let now = self.ctx.clock.now_ms();
            let due = match self.ctx.sessions.due_after(now, cursor.as_ref(), SWEEP_BATCH_MAX) {
                Ok(due) => due,
                Err(error) => {
                    tracing::error!(error = %error, "session sweeper cannot read the deadline index");
                    Vec::new()
                }
            };
            if due.is_empty() {
                if cursor.take().is_some() {
                    // The pass is over: once what it appended is durable and applied, look again.
                    if self.supervisor.call(|reply| SessionsMsg::Settle { reply }, None).await.is_err() {
                        return;
                    }
                    continue;
                }
                let next = self.ctx.sessions.next_due().ok().flatten();
                // Wake at the next due time, or within a second to notice new ones.
                let wake = next.unwrap_or(u64::MAX).min(now.saturating_add(1000));
                tokio::select! {
                    _ = self.ctx.clock.sleep_until(wake) => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
                continue;
            }
            if cursor.is_none() {
                // A new pass starting where the last one did could not apply its first entry
                // (a failing log): do not spin on it.
                if pass_first.as_ref() == due.first() {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                        _ = stopping.wait_for(|stop| *stop) => return,
                    }
                }
                pass_first = due.first().cloned();
            }
            if lease.is_some() && !self.ctx.log.confirm_lease("sessions.sweeper").await {
                // Lost meanwhile (paused past the lease?): the new holder sweeps.
                cursor = None;
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let applied = due.len();
            cursor = due.last().cloned();
            let live = match self.supervisor.call(|reply| SessionsMsg::ApplyDue { due, reply }, None).await {
                Ok(ractor::rpc::CallResult::Success(live)) => live,
                _ => return, // the supervisor stopped: shutting down
            };
            if !self.hand_out(live, &stopping).await {
                return;
            }
            metrics::counter!(crate::metrics::SESSION_DUE_APPLIED_TOTAL).increment(applied as u64);
        }
    }
}

#[cfg(test)]
mod tests;
