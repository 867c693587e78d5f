//! `SessionActor`: one per live session. It serialises the session's commands (touch, pay,
//! end), holds the timer of its next due time, and appends the events; the sessions projection
//! keeps the deadline index that the supervisor's sweeper uses when no actor runs.
//!
//! A session is live while it is active; once it expires, is paid, ends or is purged, its actor
//! stops. An active session's actor also stops after `sessions.actor_idle_stop` without a
//! command, and comes back when one arrives or a due time needs it.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::SessionsConfig;
use crate::event::{Event, SessionEnded, SessionId, SessionPaid, SessionTouched};
use crate::log::EventLog;
use crate::projection::sessions::Sessions;
use crate::projection::Runner;
use crate::session::{Due, Session, SessionState};

/// What every session actor needs, shared.
#[derive(Debug, Clone)]
pub struct SessionContext {
    pub log: EventLog,
    pub sessions: Sessions,
    pub runner: Runner,
    pub config: SessionsConfig,
    pub clock: Arc<dyn Clock>,
}

impl SessionContext {
    /// Waits until the projection has everything durable now, so reads see every command
    /// acknowledged before.
    pub async fn caught_up(&self) {
        self.runner.wait_applied(self.log.head()).await;
    }

    /// A session as this node's projection has it, after every acknowledged command, and on a
    /// cluster's log the newest record of its stream that this state includes (0 otherwise):
    /// what a conditional append of its next change expects.
    ///
    /// The projection's checkpoint is read before the session, so the state is at least as new
    /// as the seq returned: a record in between makes the next append conflict and be decided
    /// again, never go through on a state that lacks it.
    pub async fn read(&self, id: &SessionId) -> Result<(Session, u64), SessionError> {
        self.caught_up().await;
        self.read_held(id).await
    }

    /// [`SessionContext::read`] without waiting for the projection.
    pub async fn read_held(&self, id: &SessionId) -> Result<(Session, u64), SessionError> {
        let through = self.sessions.checkpoint().map_err(SessionError::storage)?;
        let session = self
            .sessions
            .get(id)
            .map_err(SessionError::storage)?
            .ok_or_else(|| SessionError::NotFound(id.to_string()))?;
        if !self.log.is_shared() {
            return Ok((session, 0));
        }
        let stream = crate::event::StreamId::session(id);
        let last_seq = self.log.newest_held(&stream, through).await.map_err(SessionError::storage)?;
        Ok((session, last_seq))
    }

    /// After a conditional append of session `id` was refused: waits until this node holds
    /// what the cluster has of it, then reads it again.
    pub async fn reread(&self, id: &SessionId) -> Result<(Session, u64), SessionError> {
        let stream = crate::event::StreamId::session(id);
        self.log.newest_of(&stream).await.map_err(SessionError::storage)?;
        self.read(id).await
    }

    /// Appends a change of one session: on a cluster's log, only if `last_seq` is still the
    /// newest record of its stream; `Ok(None)` if it was not (another node changed the session
    /// first, nothing was stored).
    pub async fn append(&self, event: Event, last_seq: u64) -> Result<Option<crate::event::Envelope>, SessionError> {
        let stored = if self.log.is_shared() {
            match self.log.submit_if_last(event, last_seq).await {
                Ok(pending) => pending.durable().await,
                Err(error) => Err(Arc::new(error)),
            }
        } else {
            self.log.append(event).await
        };
        match stored {
            Ok(envelope) => Ok(Some(envelope)),
            Err(error) => match error.as_ref() {
                crate::log::LogError::Conflict(_) => Ok(None),
                crate::log::LogError::Closed => Err(SessionError::ShuttingDown),
                _ => Err(SessionError::storage(Arc::clone(&error))),
            },
        }
    }
}

/// Why a session command was refused; each has a stable code.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SessionError {
    #[error("no session {0}")]
    NotFound(String),
    /// The session is not in a state that allows the command.
    #[error("session {id} is {state}: it cannot be {verb}")]
    Conflict { id: String, state: &'static str, verb: &'static str },
    /// The log or the sessions projection failed under the command; the cause is kept.
    #[error("the session could not be stored: {0}")]
    Storage(#[source] Arc<dyn std::error::Error + Send + Sync>),
    #[error("the server is shutting down")]
    ShuttingDown,
    /// On a cluster's log: another node changed the session while this one decided, again
    /// after it caught up once (HTTP 409, code `conflict`); nothing was stored, retry.
    #[error("session {0} was changed meanwhile by another node; nothing was stored, retry")]
    Raced(String),
}

impl SessionError {
    /// A store failed under the command (clonable: an actor's reply may be cloned).
    pub fn storage(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        SessionError::Storage(Arc::new(error))
    }

    /// The command could not be carried out, for a reason with no error value behind it.
    pub fn storage_because(reason: impl Into<String>) -> Self {
        SessionError::Storage(Arc::from(Box::<dyn std::error::Error + Send + Sync>::from(reason.into())))
    }

    /// How the edges report this error (its HTTP status is the code's).
    pub fn code(&self) -> crate::error_code::ErrorCode {
        use crate::error_code::ErrorCode;
        match self {
            SessionError::NotFound(_) => ErrorCode::NotFound,
            SessionError::Conflict { .. } => ErrorCode::SessionConflict,
            SessionError::Storage(_) => ErrorCode::StorageUnavailable,
            SessionError::ShuttingDown => ErrorCode::ShuttingDown,
            SessionError::Raced(_) => ErrorCode::Conflict,
        }
    }
}

/// A command from the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Touch,
    Pay,
    End,
}

/// Messages a session actor handles.
#[derive(Debug)]
pub enum SessionMsg {
    Command {
        command: Command,
        reply: RpcReplyPort<Result<Session, SessionError>>,
    },
    /// A due time (`at`) of kind `due` may have come: apply it if the session still has it.
    Due {
        due: Due,
        at: u64,
        reply: Option<RpcReplyPort<()>>,
    },
    IdleCheck,
}

/// The actor.
#[derive(Debug)]
pub struct SessionActor;

/// The actor's state.
#[derive(Debug)]
pub struct SessionActorState {
    session: Session,
    /// On a cluster's log: the newest record of the session's stream that `session` includes,
    /// what its next append expects (another node may change the session too); 0 otherwise.
    last_seq: u64,
    ctx: SessionContext,
    timer: Option<JoinHandle<()>>,
    last_active: tokio::time::Instant,
}

impl Drop for SessionActorState {
    fn drop(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
    }
}

impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionActorState;
    type Arguments = (SessionId, SessionContext);

    async fn pre_start(
        &self,
        myself: ActorRef<SessionMsg>,
        (id, ctx): (SessionId, SessionContext),
    ) -> Result<SessionActorState, ActorProcessingErr> {
        let (session, last_seq) = ctx.read(&id).await?;
        let check_every = (ctx.config.actor_idle_stop / 2).max(std::time::Duration::from_millis(10));
        myself.send_interval(check_every, || SessionMsg::IdleCheck);
        let mut state =
            SessionActorState { session, last_seq, ctx, timer: None, last_active: tokio::time::Instant::now() };
        state.arm(&myself);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        s: &mut SessionActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::Command { command, reply } => {
                s.last_active = tokio::time::Instant::now();
                let result = s.command(command).await;
                let _ = reply.send(result);
            }
            SessionMsg::Due { due, at, reply } => {
                s.due(due, at).await;
                if let Some(reply) = reply {
                    let _ = reply.send(());
                }
            }
            SessionMsg::IdleCheck => {
                if s.last_active.elapsed() >= s.ctx.config.actor_idle_stop {
                    // Only once the projection has its events: the sweeper reads a session
                    // without an actor from the projection, and must not read it stale.
                    s.ctx.caught_up().await;
                    myself.stop(Some("idle".into()));
                    return Ok(());
                }
            }
        }
        if s.session.state == SessionState::Active {
            s.arm(&myself);
        } else {
            s.ctx.caught_up().await;
            myself.stop(Some("no longer live".into()));
        }
        Ok(())
    }
}

impl SessionActorState {
    /// Sets the timer for the session's next due time. On a cluster's log, due times are
    /// applied by the one node holding the sweeper's lease instead, so that two nodes never
    /// both expire a session.
    fn arm(&mut self, myself: &ActorRef<SessionMsg>) {
        if let Some(timer) = self.timer.take() {
            timer.abort();
        }
        if self.ctx.log.is_shared() {
            return;
        }
        let Some(&(at, due)) = self.session.deadlines().iter().min_by_key(|(at, _)| *at) else { return };
        let sleep = self.ctx.clock.sleep_until(at);
        let myself = myself.clone();
        self.timer = Some(tokio::spawn(async move {
            sleep.await;
            let _ = myself.cast(SessionMsg::Due { due, at, reply: None });
        }));
    }

    /// Runs a command. On a cluster's log another node may change the session meanwhile: a
    /// refused append makes the actor catch up with the cluster and decide again (every
    /// command decides on the session's state alone, so deciding again is right), and append
    /// once more. Refused twice, it decides a last time on what the other node wrote: a
    /// command that needs nothing more (paying a session paid meanwhile) or that the state
    /// now refuses answers as such, else the caller gets `conflict`.
    async fn command(&mut self, command: Command) -> Result<Session, SessionError> {
        for attempt in 0.. {
            let Some(event) = self.decide(command)? else { return Ok(self.session.clone()) };
            if attempt == 2 {
                break;
            }
            if self.append(event).await? {
                return Ok(self.session.clone());
            }
            tracing::debug!(session = %self.session.id, attempt, "session changed by another node; deciding again");
            self.reread().await?;
        }
        Err(SessionError::Raced(self.session.id.to_string()))
    }

    /// What `command` appends, given the session as the actor has it (`None`: nothing to store).
    fn decide(&self, command: Command) -> Result<Option<Event>, SessionError> {
        let now = self.ctx.clock.now_ms();
        let id = self.session.id.clone();
        let refuse =
            |state: SessionState, verb| Err(SessionError::Conflict { id: id.to_string(), state: state.as_str(), verb });
        let event = match (command, self.session.state) {
            (Command::Touch, SessionState::Active) => {
                let expires = if self.session.sliding {
                    now.saturating_add(crate::clock::millis(self.ctx.config.expire_after))
                } else {
                    self.session.expires_at_unix_ms
                };
                Event::SessionTouched(SessionTouched { id: id.clone(), at_unix_ms: now, expires_at_unix_ms: expires })
            }
            (Command::Touch, state) => return refuse(state, "touched"),
            (Command::Pay, SessionState::Paid) => return Ok(None), // paying twice is paying
            (Command::Pay, SessionState::Purged) => return refuse(SessionState::Purged, "paid"),
            (Command::Pay, _) => Event::SessionPaid(SessionPaid { id: id.clone(), at_unix_ms: now }),
            (Command::End, SessionState::Active | SessionState::Expired) => {
                Event::SessionEnded(SessionEnded { id: id.clone(), at_unix_ms: now, reason: "ended by the app".into() })
            }
            (Command::End, state) => return refuse(state, "ended"),
        };
        Ok(Some(event))
    }

    /// Applies a due time if the session still has it and it has come. On a cluster's log, if
    /// another node changed the session first, decides again on what it wrote (an expiry that
    /// node applied is not applied twice).
    async fn due(&mut self, due: Due, at: u64) {
        for _ in 0..2 {
            let now = self.ctx.clock.now_ms();
            let Some(event) = self.session.due_event(due, at, now, due.age(&self.ctx.config)) else { return };
            match self.append(event).await {
                Ok(true) => return,
                Ok(false) => {
                    if let Err(error) = self.reread().await {
                        tracing::warn!(session = %self.session.id, error = %error, "due time not applied; the sweeper retries");
                        return;
                    }
                }
                Err(error) => {
                    tracing::warn!(session = %self.session.id, error = %error, "due time not applied; the sweeper retries");
                    return;
                }
            }
        }
        tracing::warn!(session = %self.session.id, "due time not applied: the session keeps changing on another node; the sweeper retries");
    }

    /// Appends an event of this session and applies it to the actor's own copy; `Ok(false)`
    /// if another node changed the session first (nothing stored).
    async fn append(&mut self, event: Event) -> Result<bool, SessionError> {
        match self.ctx.append(event, self.last_seq).await? {
            Some(envelope) => {
                self.session.apply(&envelope.event);
                self.last_seq = envelope.seq;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Catches up with what another node wrote of this session, and takes it as the actor's.
    async fn reread(&mut self) -> Result<(), SessionError> {
        (self.session, self.last_seq) = self.ctx.reread(&self.session.id).await?;
        Ok(())
    }
}
