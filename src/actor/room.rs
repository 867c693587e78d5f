//! `RoomActor`: one per active room, a thin shell around [`RoomState`].
//!
//! Guarantees (see also ARCHITECTURE.md, "Runtime guarantees"):
//! - appends are pipelined: the actor hands each message to the log writer and moves on; a
//!   forwarder task awaits the durable acknowledgements in submission order and sends them
//!   back, so the room fans out in seq order and never waits one flush per message;
//! - a message is sent to members only once it is durable (DESIGN.md invariant 1);
//! - a join registers the member in the same step that computes its replay, so replay and
//!   live messages meet with no gap and no overlap (invariant 2).

use std::collections::HashMap;
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::rooms::RoomsMsg;
use super::{ChatContext, ChatError, Member, Outbound};
use crate::event::{Envelope, Event, MessagePosted, RoomId};
use crate::log::{LogError, PendingAppend};
use crate::projection::history::StoredMessage;
use crate::room::{ChatMessage, DedupKey, MemberId, PostDecision, RoomState};
use crate::wire::{error_frame, render, ErrorCode, ServerFrame};

/// What a join answers.
#[derive(Debug)]
pub struct JoinReply {
    /// Messages to send before live ones, oldest first.
    pub replay: Vec<Arc<ChatMessage>>,
    /// True when the member is registered and live messages follow. False when the gap was
    /// longer than one replay step: the caller sends `replay` and joins again after its last.
    pub registered: bool,
    /// Set when the caller asked for history that retention removed.
    pub removed_through_seq: Option<u64>,
}

/// Messages a room handles.
#[derive(Debug)]
pub enum RoomMsg {
    /// Join (or resume after `since`).
    Join { member: Member, since: Option<u64>, reply: RpcReplyPort<Result<JoinReply, ChatError>> },
    /// Leave; also sent when a connection closes.
    Leave { member: MemberId },
    /// Post a message; the acknowledgement goes to the member's queue.
    Post { member: MemberId, author: String, client_id: String, body: String },
    /// From the forwarder, in submission order: an append is durable, or failed. `posted_at`
    /// is when the post reached the room, for the delivery latency.
    Committed { key: DedupKey, result: Result<Envelope, Arc<LogError>>, posted_at: Instant },
    /// Periodic check for idleness.
    IdleCheck,
    /// Makes the actor fail, for tests of supervision.
    #[doc(hidden)]
    Fail,
}

/// Arguments a room starts with.
#[derive(Debug)]
pub struct RoomArgs {
    pub room: RoomId,
    pub ctx: ChatContext,
    pub supervisor: ActorRef<RoomsMsg>,
}

/// The actor.
#[derive(Debug)]
pub struct RoomActor;

/// The actor's state.
#[derive(Debug)]
pub struct RoomActorState {
    state: RoomState,
    members: HashMap<MemberId, Member>,
    ctx: ChatContext,
    supervisor: ActorRef<RoomsMsg>,
    forwarder: mpsc::Sender<(DedupKey, PendingAppend, Instant)>,
    last_active: Instant,
}

impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomActorState;
    type Arguments = RoomArgs;

    async fn pre_start(&self, myself: ActorRef<RoomMsg>, args: RoomArgs) -> Result<RoomActorState, ActorProcessingErr> {
        let RoomArgs { room, ctx, supervisor } = args;
        // Everything this room committed before is in the log; wait until the history has it.
        ctx.history_runner.wait_applied(ctx.log.head()).await;
        let loaded = ctx.history.recent(&room, ctx.chat.dedup_window.max(ctx.chat.ring_capacity))?;
        let removed = ctx.history.summary(&room)?.map_or(0, |s| s.removed_through_seq);
        let state = RoomState::new(room, ctx.chat.ring_capacity, ctx.chat.dedup_window, &loaded, removed);

        let (forwarder, pending) = mpsc::channel(ctx.chat.room_inflight_max);
        tokio::spawn(forward_acknowledgements(pending, myself.clone()));
        let check_every = (ctx.chat.room_idle_stop / 2).max(std::time::Duration::from_millis(10));
        myself.send_interval(check_every, || RoomMsg::IdleCheck);
        Ok(RoomActorState { state, members: HashMap::new(), ctx, supervisor, forwarder, last_active: Instant::now() })
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMsg>,
        msg: RoomMsg,
        s: &mut RoomActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RoomMsg::Join { member, since, reply } => {
                s.last_active = Instant::now();
                let result = s.join(member, since).await;
                let _ = reply.send(result);
            }
            RoomMsg::Leave { member } => {
                s.last_active = Instant::now();
                s.members.remove(&member);
            }
            RoomMsg::Post { member, author, client_id, body } => {
                s.last_active = Instant::now();
                s.post(member, author, client_id, body).await?;
            }
            RoomMsg::Committed { key, result, posted_at } => s.committed(key, result, posted_at),
            RoomMsg::IdleCheck => {
                let idle = s.members.is_empty()
                    && !s.state.has_inflight()
                    && s.last_active.elapsed() >= s.ctx.chat.room_idle_stop;
                if idle {
                    let _ =
                        s.supervisor.cast(RoomsMsg::IdleStop { room: s.state.room().clone(), actor: myself.get_id() });
                }
            }
            RoomMsg::Fail => return Err("failure injected by a test".into()),
        }
        Ok(())
    }
}

/// Awaits durable acknowledgements in the order appends were submitted and hands them back to
/// the room: this is what keeps fan-out in seq order while appends are pipelined.
async fn forward_acknowledgements(
    mut pending: mpsc::Receiver<(DedupKey, PendingAppend, Instant)>,
    room: ActorRef<RoomMsg>,
) {
    while let Some((key, append, posted_at)) = pending.recv().await {
        let result = append.durable().await;
        if room.cast(RoomMsg::Committed { key, result, posted_at }).is_err() {
            // The room stopped; its members resume from their last seq and clients retry
            // unacknowledged sends with the same client id.
            return;
        }
    }
}

impl RoomActorState {
    async fn join(&mut self, member: Member, since: Option<u64>) -> Result<JoinReply, ChatError> {
        let unavailable = |e: &dyn std::fmt::Display| ChatError::RoomUnavailable {
            room: self.state.room().to_string(),
            reason: e.to_string(),
        };
        let removed = self
            .ctx
            .history
            .summary(self.state.room())
            .map_err(|e| unavailable(&e))?
            .map_or(0, |s| s.removed_through_seq);
        let (replay, removed_through_seq) = match since {
            None => {
                let recent = self.state.recent(self.ctx.chat.recent_count);
                let told = removed > 0 && recent.len() < self.ctx.chat.recent_count;
                (recent, told.then_some(removed))
            }
            Some(since) => {
                let from = since.max(removed);
                let told = (since < removed).then_some(removed);
                match self.state.after(from) {
                    Some(replay) => (replay, told),
                    None => {
                        // Older than memory: read the gap from the history, one step at a time.
                        let floor = self.state.floor_seq();
                        self.ctx.history_runner.wait_applied(floor).await;
                        let step = self.ctx.chat.replay_batch_max;
                        let older: Vec<StoredMessage> = self
                            .ctx
                            .history
                            .after(self.state.room(), from, step)
                            .map_err(|e| unavailable(&e))?
                            .into_iter()
                            .filter(|m| m.seq <= floor)
                            .collect();
                        let mut replay: Vec<_> =
                            older.iter().map(|m| Arc::new(ChatMessage::new(self.state.room(), m))).collect();
                        let reaches_memory = older.len() < step || older.last().is_some_and(|m| m.seq == floor);
                        if !reaches_memory {
                            return Ok(JoinReply { replay, registered: false, removed_through_seq: told });
                        }
                        replay.extend(self.state.after(floor).unwrap_or_default());
                        (replay, told)
                    }
                }
            }
        };
        self.members.insert(member.id, member);
        Ok(JoinReply { replay, registered: true, removed_through_seq })
    }

    async fn post(
        &mut self,
        member: MemberId,
        author: String,
        client_id: String,
        body: String,
    ) -> Result<(), ActorProcessingErr> {
        let key: DedupKey = (author, client_id);
        let posted_at = Instant::now();
        match self.state.decide_post(member, key.clone()) {
            PostDecision::AlreadyStored(seq) => self.ack(member, &key.1, seq),
            PostDecision::AlreadyInFlight => {}
            PostDecision::Append => {
                let event = Event::MessagePosted(MessagePosted {
                    room: self.state.room().clone(),
                    author: key.0.clone(),
                    client_id: key.1.clone(),
                    body,
                });
                match self.ctx.log.submit(event).await {
                    Ok(pending) => {
                        if self.forwarder.send((key.clone(), pending, posted_at)).await.is_err() {
                            return Err("acknowledgement forwarder stopped".into());
                        }
                    }
                    Err(error) => self.committed(key, Err(Arc::new(error)), posted_at),
                }
            }
        }
        Ok(())
    }

    fn committed(&mut self, key: DedupKey, result: Result<Envelope, Arc<LogError>>, posted_at: Instant) {
        match result {
            Ok(envelope) => {
                let Event::MessagePosted(posted) = envelope.event else { return };
                let stored = StoredMessage {
                    seq: envelope.seq,
                    at_unix_ms: envelope.at_unix_ms,
                    author: posted.author,
                    client_id: posted.client_id,
                    body: posted.body,
                };
                let (message, ackers) = self.state.committed(&stored);
                for member in ackers {
                    self.ack(member, &message.client_id, message.seq);
                }
                let outbound = Outbound { seq: Some(message.seq), frame: message.frame.clone() };
                self.members.retain(|_, member| deliver(member, outbound.clone()));
                metrics::counter!(crate::metrics::MESSAGES_APPENDED_TOTAL).increment(1);
                metrics::counter!(crate::metrics::MESSAGES_DELIVERED_TOTAL).increment(self.members.len() as u64);
                metrics::histogram!(crate::metrics::DELIVERY_SECONDS).record(posted_at.elapsed().as_secs_f64());
            }
            Err(error) => {
                tracing::warn!(room = %self.state.room(), error = %error, "append failed; senders told to retry");
                let (code, text) = match error.as_ref() {
                    LogError::Closed => (
                        ErrorCode::ShuttingDown,
                        "the server is shutting down; retry with the same client_id".to_owned(),
                    ),
                    other => (
                        ErrorCode::StorageUnavailable,
                        format!("message not stored ({other}); retry with the same client_id"),
                    ),
                };
                let frame: Arc<str> = error_frame(code, &text, Some(self.state.room().as_str()), Some(&key.1)).into();
                for member in self.state.failed(&key) {
                    self.send_to(member, Outbound { seq: None, frame: frame.clone() });
                }
            }
        }
    }

    fn ack(&mut self, member: MemberId, client_id: &str, seq: u64) {
        let frame = render(&ServerFrame::Ack { room: self.state.room().as_str(), client_id, seq });
        self.send_to(member, Outbound { seq: None, frame: frame.into() });
    }

    fn send_to(&mut self, id: MemberId, outbound: Outbound) {
        if let Some(member) = self.members.get(&id) {
            if !deliver(member, outbound) {
                self.members.remove(&id);
            }
        }
    }
}

/// Queues a frame for a member; false when the member must be dropped (gone, or too slow, in
/// which case it is kicked rather than allowed to grow the queue).
fn deliver(member: &Member, outbound: Outbound) -> bool {
    match member.tx.try_send(outbound) {
        Ok(()) => true,
        Err(mpsc::error::TrySendError::Full(_)) => {
            member.kick.notify_one();
            metrics::counter!(crate::metrics::SLOW_CONSUMERS_TOTAL).increment(1);
            false
        }
        Err(mpsc::error::TrySendError::Closed(_)) => false,
    }
}
