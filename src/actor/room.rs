//! `RoomActor`: one per active room, a thin shell around [`RoomState`].
//!
//! Guarantees (see also ARCHITECTURE.md, "Runtime guarantees"):
//! - appends are pipelined: the actor hands each message to the log writer and moves on; a
//!   forwarder task awaits the durable acknowledgements in submission order and sends them
//!   back, so the room fans out in seq order and never waits one flush per message;
//! - a message is sent to members only once it is durable (DESIGN.md invariant 1);
//! - a join registers the member in the same step that computes its replay, so replay and
//!   live messages meet with no gap and no overlap (invariant 2);
//! - presence follows the members map: every way a member leaves it (a `Leave`, a dead or too
//!   slow queue) counts its connection out, in one place ([`RoomActorState::forget`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::rooms::RoomsMsg;
use super::{ChatContext, ChatError, Member, Outbound};
use crate::event::{Envelope, Event, MessageDeleted, MessageEdited, MessagePosted, RoomId};
use crate::log::{LogError, PendingAppend};
use crate::message::{Amendment, StoredMessage};
use crate::presence::{NodeMembers, PresenceChange, RoomPresence};
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
    /// Join (or resume after `since`). `quiet`: a connection coming back after the room's
    /// actor restarted, whose user nobody saw leave, so no `member_joined` is announced.
    Join { member: Member, since: Option<u64>, quiet: bool, reply: RpcReplyPort<Result<JoinReply, ChatError>> },
    /// Leave; also sent when a connection closes.
    Leave { member: MemberId },
    /// Post a message; the acknowledgement goes to the member's queue.
    Post { member: MemberId, author: String, client_id: String, body: String },
    /// Edit (`body` set) or delete (`body` None) message `seq`; acknowledged like a post.
    /// `admin` lets the caller amend others' messages (the permission decided at the edge).
    Amend { member: MemberId, by: String, admin: bool, client_id: String, seq: u64, body: Option<String> },
    /// From the forwarder, in submission order: an append is durable, or failed. `posted_at`
    /// is when the post reached the room, for the delivery latency.
    Committed { waiter: Waiter, result: Result<Envelope, Arc<LogError>>, posted_at: Instant },
    /// On a shared log: the room's committed events with `after` < seq ≤ `through`, from
    /// this node's copy of the log, in seq order (see [`super::rooms::follow_log`]).
    Follow { after: u64, through: u64, envelopes: Vec<Envelope> },
    /// This node's members of the room.
    Members { reply: RpcReplyPort<NodeMembers> },
    /// Periodic check for idleness.
    IdleCheck,
    /// Makes the actor fail, for tests of supervision.
    #[doc(hidden)]
    Fail,
}

/// Who waits for an append's acknowledgement.
#[derive(Debug)]
pub enum Waiter {
    /// A posted message: every member that sent this client id.
    Post(DedupKey),
    /// An edit or deletion: the member that asked.
    Amend { member: MemberId, client_id: String },
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
    /// Who the members are, by user: kept in step with `members` (ephemeral, never logged).
    presence: RoomPresence,
    ctx: ChatContext,
    supervisor: ActorRef<RoomsMsg>,
    forwarder: mpsc::Sender<(Waiter, PendingAppend, Instant)>,
    last_active: Instant,
    /// Messages whose deletion is being appended: no further edit or deletion of them.
    deleting: std::collections::HashSet<u64>,
    /// On a shared log, the seq through which the room has applied the log's events.
    followed_through: u64,
}

impl Actor for RoomActor {
    type Msg = RoomMsg;
    type State = RoomActorState;
    type Arguments = RoomArgs;

    async fn pre_start(&self, myself: ActorRef<RoomMsg>, args: RoomArgs) -> Result<RoomActorState, ActorProcessingErr> {
        let RoomArgs { room, ctx, supervisor } = args;
        // Everything this room committed before is in the log; wait until the history has it.
        ctx.history_runner.wait_applied(ctx.log.head()).await;
        // Everything through here is in what the room loads next (on a shared log, the room
        // follows the log from here).
        let followed_through = ctx.history_runner.applied();
        // The deduplication window needs no texts; only the ring's messages are read whole.
        let (capacity, window) = (ctx.chat.ring_capacity, ctx.chat.dedup_window);
        let reading = room.clone();
        let (known, in_ring, amendments, removed) = ctx
            .history
            .off_async(move |history| {
                let known = history.recent_kept(&reading, window.max(capacity))?;
                let removed = history.summary(&reading)?.map_or(0, |s| s.removed_through_seq);
                let first = known.len().saturating_sub(capacity);
                let after = known.get(first).map_or(removed, |m| m.seq.saturating_sub(1));
                let in_ring = history.with_texts(&reading, known[first..].to_vec())?;
                let amendments = history.amendments(&reading, after, u64::MAX)?;
                Ok((known, in_ring, amendments, removed))
            })
            .await?;
        let state = RoomState::new(room, capacity, window, &known, &in_ring, &amendments, removed);

        let (forwarder, pending) = mpsc::channel(ctx.chat.room_inflight_max);
        tokio::spawn(forward_acknowledgements(pending, myself.clone()));
        let check_every = (ctx.chat.room_idle_stop / 2).max(std::time::Duration::from_millis(10));
        myself.send_interval(check_every, || RoomMsg::IdleCheck);
        Ok(RoomActorState {
            state,
            members: HashMap::new(),
            presence: RoomPresence::default(),
            ctx,
            supervisor,
            forwarder,
            last_active: Instant::now(),
            deleting: Default::default(),
            followed_through,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomMsg>,
        msg: RoomMsg,
        s: &mut RoomActorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RoomMsg::Join { member, since, quiet, reply } => {
                s.last_active = Instant::now();
                let (id, user) = (member.id, member.user.clone());
                let result = s.join(member, since).await;
                let registered = matches!(result, Ok(JoinReply { registered: true, .. }));
                let answered = reply.send(result).is_ok();
                // After the reply: the joiner does not wait for the others' notices. A joiner
                // that is gone (its task ended while it asked) never learns it joined and so
                // never leaves: it is forgotten now rather than listed until a send fails.
                match (registered, answered) {
                    (true, true) => s.arrived(id, &user, quiet),
                    (true, false) => s.forget(id),
                    _ => {}
                }
            }
            RoomMsg::Leave { member } => {
                s.last_active = Instant::now();
                s.forget(member);
            }
            RoomMsg::Members { reply } => {
                let _ = reply.send(s.presence.snapshot(&s.ctx.chat.node_id));
            }
            RoomMsg::Post { member, author, client_id, body } => {
                s.last_active = Instant::now();
                s.post(member, author, client_id, body).await?;
            }
            RoomMsg::Amend { member, by, admin, client_id, seq, body } => {
                s.last_active = Instant::now();
                s.amend(member, by, admin, client_id, seq, body).await?;
            }
            RoomMsg::Committed { waiter: Waiter::Post(key), result: Ok(envelope), .. } if s.ctx.log.is_shared() => {
                s.post_stored(key, &envelope)
            }
            RoomMsg::Committed { waiter: Waiter::Amend { member, client_id }, result: Ok(envelope), .. }
                if s.ctx.log.is_shared() =>
            {
                s.ack(member, &client_id, envelope.seq)
            }
            RoomMsg::Committed { waiter: Waiter::Post(key), result, posted_at } => s.committed(key, result, posted_at),
            RoomMsg::Committed { waiter: Waiter::Amend { member, client_id }, result, .. } => {
                s.amendment_committed(member, &client_id, result)
            }
            RoomMsg::Follow { after, through, envelopes } => s.follow(after, through, envelopes).await?,
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
    mut pending: mpsc::Receiver<(Waiter, PendingAppend, Instant)>,
    room: ActorRef<RoomMsg>,
) {
    while let Some((waiter, append, posted_at)) = pending.recv().await {
        let result = append.durable().await;
        if room.cast(RoomMsg::Committed { waiter, result, posted_at }).is_err() {
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
                // Memory may still hold messages a retention cut removed since it was filled.
                let mut recent = self.state.recent(self.ctx.chat.recent_count);
                recent.retain(|m| m.seq > removed);
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
                        // Edits and deletions in the same stretch, so the client hears of them.
                        let through = if reaches_memory { floor } else { older.last().map_or(floor, |m| m.seq) };
                        let amendments = self
                            .ctx
                            .history
                            .amendments(self.state.room(), from, through)
                            .map_err(|e| unavailable(&e))?;
                        if !amendments.is_empty() {
                            replay
                                .extend(amendments.iter().map(|a| Arc::new(ChatMessage::notice(self.state.room(), a))));
                            replay.sort_by_key(|item| item.seq);
                        }
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
                        if self.forwarder.send((Waiter::Post(key.clone()), pending, posted_at)).await.is_err() {
                            return Err("acknowledgement forwarder stopped".into());
                        }
                    }
                    Err(error) => self.committed(key, Err(Arc::new(error)), posted_at),
                }
            }
        }
        Ok(())
    }

    /// On a shared log, this node's post is stored: the room shows it (and acknowledges it)
    /// when it follows the log to its seq, unless it did already, or the post turned out
    /// stored before (a retry through another node), when its senders are acknowledged now.
    fn post_stored(&mut self, key: DedupKey, envelope: &Envelope) {
        if envelope.seq <= self.followed_through.max(self.state.newest_seq()) {
            let client_id = key.1.clone();
            for member in self.state.stored_before(key, envelope.seq) {
                self.ack(member, &client_id, envelope.seq);
            }
        }
    }

    /// On a shared log, applies the room's committed events after `after` through `through`,
    /// in seq order, whichever node appended them: acknowledgements to this node's senders,
    /// then the message or notice to every member. A span the room missed (it started after
    /// the follower read it) is read from the log first.
    async fn follow(&mut self, after: u64, through: u64, envelopes: Vec<Envelope>) -> Result<(), ActorProcessingErr> {
        if through <= self.followed_through {
            return Ok(());
        }
        let mut events = Vec::new();
        if after > self.followed_through {
            let stream = crate::event::StreamId::room(self.state.room());
            let mut from = self.followed_through;
            loop {
                let chunk = self.ctx.log.read_stream(&stream, from, 4096).await?;
                let Some(last) = chunk.last().map(|e| e.seq) else { break };
                events.extend(chunk.into_iter().filter(|e| e.seq <= after));
                if last >= after {
                    break;
                }
                from = last;
            }
        }
        events.extend(envelopes);
        for envelope in events {
            if envelope.seq <= self.followed_through.max(self.state.newest_seq()) {
                continue;
            }
            match &envelope.event {
                Event::MessagePosted(posted) => {
                    let key = (posted.author.clone(), posted.client_id.clone());
                    self.committed(key, Ok(envelope), Instant::now());
                }
                Event::MessageEdited(_) | Event::MessageDeleted(_) => self.amendment_followed(&envelope),
                _ => {}
            }
        }
        self.followed_through = through;
        Ok(())
    }

    fn committed(&mut self, key: DedupKey, result: Result<Envelope, Arc<LogError>>, posted_at: Instant) {
        match result {
            Ok(envelope) => {
                let Event::MessagePosted(posted) = envelope.event else { return };
                let stored = StoredMessage::posted(envelope.seq, envelope.at_unix_ms, &posted);
                let (message, ackers) = self.state.committed(&stored);
                for member in ackers {
                    self.ack(member, &message.client_id, message.seq);
                }
                let outbound = Outbound { seq: Some(message.seq), frame: message.frame.clone() };
                self.broadcast(outbound, None);
                metrics::counter!(crate::metrics::MESSAGES_APPENDED_TOTAL).increment(1);
                metrics::counter!(crate::metrics::MESSAGES_DELIVERED_TOTAL).increment(self.members.len() as u64);
                metrics::histogram!(crate::metrics::DELIVERY_SECONDS).record(posted_at.elapsed().as_secs_f64());
            }
            Err(error) => {
                tracing::warn!(room = %self.state.room(), error = %error, "append failed; senders told to retry");
                let code = error.code();
                let text = match code {
                    ErrorCode::ShuttingDown => "the server is shutting down; retry with the same client_id".to_owned(),
                    _ => format!(
                        "message not acknowledged ({error}); it may have been stored: retry with the same client_id, which is never stored twice"
                    ),
                };
                let frame: Arc<str> = error_frame(code, &text, Some(self.state.room().as_str()), Some(&key.1)).into();
                for member in self.state.failed(&key) {
                    self.send_to(member, Outbound { seq: None, frame: frame.clone() });
                }
            }
        }
    }

    /// Checks and appends an edit or deletion of message `seq`.
    async fn amend(
        &mut self,
        member: MemberId,
        by: String,
        admin: bool,
        client_id: String,
        seq: u64,
        body: Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        let room = self.state.room().clone();
        let target = match self.state.find(seq) {
            Some(m) => Some((m.author.clone(), m.client_id.clone(), m.at_unix_ms)),
            None => {
                // Older than memory: the history has it once it has applied what the room did.
                self.ctx.history_runner.wait_applied(self.ctx.log.head()).await;
                let reading = room.clone();
                let message = self.ctx.history.off_async(move |history| history.get(&reading, seq)).await?;
                message.map(|m| (m.author, m.client_id, m.at_unix_ms))
            }
        };
        let checked = match target {
            _ if self.deleting.contains(&seq) => Err((ErrorCode::NotFound, "this message is being deleted")),
            None => Err((ErrorCode::NotFound, "no such message in this room (deleted, removed, or never posted)")),
            Some((author, ..)) if !admin && author != by => {
                Err((ErrorCode::Forbidden, "only its author or an admin may change a message"))
            }
            Some(found) => Ok(found),
        };
        let (author, message_client_id, posted_at_unix_ms) = match checked {
            Ok(found) => found,
            Err((code, text)) => {
                let frame = error_frame(code, text, Some(room.as_str()), Some(&client_id));
                self.send_to(member, Outbound { seq: None, frame: frame.into() });
                return Ok(());
            }
        };
        let event = match body {
            Some(body) => Event::MessageEdited(MessageEdited {
                room,
                seq,
                author,
                client_id: message_client_id,
                posted_at_unix_ms,
                edited_by: by,
                body,
            }),
            None => {
                self.deleting.insert(seq);
                let reason = if author == by { "deleted by its author" } else { "deleted by an admin" };
                Event::MessageDeleted(MessageDeleted { room, seq, deleted_by: by, reason: reason.into() })
            }
        };
        let submitted = if self.ctx.log.is_shared() {
            // Another node may amend the same message: store this one only if the newest
            // amendment of it is still the one this node knows (else `conflict`).
            self.ctx.history_runner.wait_applied(self.ctx.log.head()).await;
            let known = self.ctx.history.amendments(self.state.room(), seq, u64::MAX)?;
            let last = known.iter().filter(|a| a.target == seq).map(|a| a.seq).max().unwrap_or(0);
            self.ctx.log.submit_if_last(event, last).await
        } else {
            self.ctx.log.submit(event).await
        };
        match submitted {
            Ok(pending) => {
                let waiter = Waiter::Amend { member, client_id };
                if self.forwarder.send((waiter, pending, Instant::now())).await.is_err() {
                    return Err("acknowledgement forwarder stopped".into());
                }
            }
            Err(error) => {
                self.deleting.remove(&seq);
                self.amendment_committed(member, &client_id, Err(Arc::new(error)));
            }
        }
        Ok(())
    }

    /// An edit or deletion is durable (or failed): tell the member that asked, then everyone.
    fn amendment_committed(&mut self, member: MemberId, client_id: &str, result: Result<Envelope, Arc<LogError>>) {
        let envelope = match result {
            Ok(envelope) => envelope,
            Err(error) => {
                tracing::warn!(room = %self.state.room(), error = %error, "amendment not stored");
                let text = format!("not acknowledged ({error}); retry");
                let frame = error_frame(error.code(), &text, Some(self.state.room().as_str()), Some(client_id));
                self.send_to(member, Outbound { seq: None, frame: frame.into() });
                return;
            }
        };
        self.ack(member, client_id, envelope.seq);
        self.amendment_followed(&envelope);
    }

    /// Shows an edit or deletion to every member.
    fn amendment_followed(&mut self, envelope: &Envelope) {
        let Some(amendment) = Amendment::of(envelope) else { return };
        let edited = match &envelope.event {
            Event::MessageEdited(e) => Some(StoredMessage::edited(e, envelope.at_unix_ms)),
            _ => {
                self.deleting.remove(&amendment.target);
                None
            }
        };
        let notice = self.state.amended(&amendment, edited.as_ref());
        let outbound = Outbound { seq: Some(notice.seq), frame: notice.frame.clone() };
        self.broadcast(outbound, None);
    }

    fn ack(&mut self, member: MemberId, client_id: &str, seq: u64) {
        let frame = render(&ServerFrame::Ack { room: self.state.room().as_str(), client_id, seq });
        self.send_to(member, Outbound { seq: None, frame: frame.into() });
    }

    fn send_to(&mut self, id: MemberId, outbound: Outbound) {
        if let Some(member) = self.members.get(&id) {
            if !deliver(member, outbound) {
                self.forget(id);
            }
        }
    }

    /// Counts a registered member's connection in, and announces its user to the others when
    /// this is the user's first connection here (and `chat.join_leave` is on, and the join is
    /// not a `quiet` return after a restart).
    fn arrived(&mut self, id: MemberId, user: &str, quiet: bool) {
        let Some(change) = self.presence.arrive(id, user) else { return };
        if let Some(notice) = self.notice(&change).filter(|_| !quiet) {
            self.broadcast(notice, Some(id));
        }
    }

    /// Removes a member, however it goes (a `Leave`, the connection's drop guard, a dead or too
    /// slow queue): its connection is counted out of presence and, when it was its user's
    /// last, the user's departure announced. Idempotent.
    fn forget(&mut self, id: MemberId) {
        self.members.remove(&id);
        if let Some(notice) = self.presence.depart(id).and_then(|change| self.notice(&change)) {
            self.broadcast(notice, None);
        }
    }

    /// The `member_joined` or `member_left` frame of a change, when `chat.join_leave` is on.
    fn notice(&self, change: &PresenceChange) -> Option<Outbound> {
        if !self.ctx.chat.join_leave {
            return None;
        }
        let room = self.state.room().as_str();
        let frame = match change {
            PresenceChange::Arrived(user) => render(&ServerFrame::MemberJoined { room, user }),
            PresenceChange::Departed(user) => render(&ServerFrame::MemberLeft { room, user }),
        };
        Some(Outbound { seq: None, frame: frame.into() })
    }

    /// Queues a frame for every member but `except`. A member that cannot take it is dropped
    /// (and [`deliver`] kicks a slow one); its user's departure, if that was its last
    /// connection, is announced in turn, iteratively, to those who remain.
    fn broadcast(&mut self, outbound: Outbound, mut except: Option<MemberId>) {
        let mut pending = VecDeque::from([outbound]);
        while let Some(outbound) = pending.pop_front() {
            let mut gone = Vec::new();
            self.members.retain(|id, member| {
                let kept = except == Some(*id) || deliver(member, outbound.clone());
                if !kept {
                    gone.push(*id);
                }
                kept
            });
            except = None;
            for id in gone {
                if let Some(notice) = self.presence.depart(id).and_then(|change| self.notice(&change)) {
                    pending.push_back(notice);
                }
            }
        }
    }
}

/// Queues a frame for a member; false when the member must be dropped (gone, or too slow, in
/// which case it is kicked rather than allowed to grow its queue past its frames or bytes).
fn deliver(member: &Member, outbound: Outbound) -> bool {
    let len = outbound.frame.len();
    let full = if member.queued.add(len) {
        match member.tx.try_send(outbound) {
            Ok(()) => return true,
            Err(error) => {
                member.queued.remove(len);
                matches!(error, mpsc::error::TrySendError::Full(_))
            }
        }
    } else {
        true
    };
    if full {
        member.kick.notify_one();
        metrics::counter!(crate::metrics::SLOW_CONSUMERS_TOTAL).increment(1);
    }
    false
}

#[cfg(test)]
mod tests;
