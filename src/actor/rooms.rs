//! `RoomSupervisor`: finds or starts the actor of a room, restarts failed ones within a
//! restart-intensity limit, and stops idle ones.
//!
//! A restarted room rebuilds its state from the history projection. Its members notice that
//! their queue ended and join again from the last seq they delivered, so a failure costs
//! them nothing (DESIGN.md invariant 2).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ractor::{Actor, ActorCell, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tokio::time::Instant;

use super::room::{RoomActor, RoomArgs, RoomMsg};
use super::{ChatContext, ChatError};
use crate::event::{Envelope, Event, RoomId};
use crate::log::EventLog;
use crate::presence::NodeMembers;

/// Messages the supervisor handles.
#[derive(Debug)]
pub enum RoomsMsg {
    /// The actor of a room, started if needed.
    Get { room: RoomId, reply: RpcReplyPort<Result<ActorRef<RoomMsg>, ChatError>> },
    /// A room found itself idle: stop it unless it was replaced meanwhile.
    IdleStop { room: RoomId, actor: ActorId },
    /// How many room actors are running.
    Count { reply: RpcReplyPort<usize> },
    /// The actor of a room if it runs; a read that must not start one (presence).
    Find { room: RoomId, reply: RpcReplyPort<Option<ActorRef<RoomMsg>>> },
    /// On a shared log: the rooms' events with `after` < seq ≤ `through`, by room, for the
    /// running rooms to show (see [`follow_log`]).
    Follow { after: u64, through: u64, by_room: HashMap<RoomId, Vec<Envelope>> },
}

/// The supervisor actor.
#[derive(Debug)]
pub struct RoomSupervisor;

/// The supervisor's state.
#[derive(Debug)]
pub struct SupervisorState {
    ctx: ChatContext,
    rooms: HashMap<RoomId, ActorRef<RoomMsg>>,
    by_actor: HashMap<ActorId, RoomId>,
    /// Recent failure times per room, for the restart-intensity limit.
    failures: HashMap<RoomId, VecDeque<Instant>>,
}

impl Actor for RoomSupervisor {
    type Msg = RoomsMsg;
    type State = SupervisorState;
    type Arguments = ChatContext;

    async fn pre_start(
        &self,
        _myself: ActorRef<RoomsMsg>,
        ctx: ChatContext,
    ) -> Result<SupervisorState, ActorProcessingErr> {
        Ok(SupervisorState { ctx, rooms: HashMap::new(), by_actor: HashMap::new(), failures: HashMap::new() })
    }

    async fn handle(
        &self,
        myself: ActorRef<RoomsMsg>,
        msg: RoomsMsg,
        s: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RoomsMsg::Get { room, reply } => {
                let result = match s.rooms.get(&room) {
                    Some(actor) => Ok(actor.clone()),
                    None => s.start(&myself, room).await,
                };
                let _ = reply.send(result);
            }
            RoomsMsg::IdleStop { room, actor } => {
                if s.rooms.get(&room).is_some_and(|a| a.get_id() == actor) {
                    if let Some(actor) = s.rooms.remove(&room) {
                        s.by_actor.remove(&actor.get_id());
                        tracing::debug!(room = %room, "room idle, stopping");
                        actor.stop(Some("idle".into()));
                    }
                }
            }
            RoomsMsg::Count { reply } => {
                let _ = reply.send(s.rooms.len());
            }
            RoomsMsg::Find { room, reply } => {
                let _ = reply.send(s.rooms.get(&room).cloned());
            }
            RoomsMsg::Follow { after, through, mut by_room } => {
                // Every running room hears of the span, with or without events of its own, so
                // that it can tell a span it missed from one without its events.
                for (room, actor) in &s.rooms {
                    let envelopes = by_room.remove(room).unwrap_or_default();
                    let _ = actor.cast(RoomMsg::Follow { after, through, envelopes });
                }
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<RoomsMsg>,
        event: SupervisionEvent,
        s: &mut SupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(room) = s.forget(&cell) else { return Ok(()) };
                s.failures.entry(room.clone()).or_default().push_back(Instant::now());
                metrics::counter!(crate::metrics::ROOM_RESTARTS_TOTAL).increment(1);
                tracing::warn!(room = %room, error = %error, "room actor failed, restarting");
                if let Err(error) = s.start(&myself, room.clone()).await {
                    tracing::error!(room = %room, error = %error, "room actor not restarted");
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

impl SupervisorState {
    fn forget(&mut self, cell: &ActorCell) -> Option<RoomId> {
        let room = self.by_actor.remove(&cell.get_id())?;
        if self.rooms.get(&room).is_some_and(|a| a.get_id() == cell.get_id()) {
            self.rooms.remove(&room);
        }
        Some(room)
    }

    /// Starts a room's actor unless it failed too often within the restart window.
    async fn start(&mut self, myself: &ActorRef<RoomsMsg>, room: RoomId) -> Result<ActorRef<RoomMsg>, ChatError> {
        let window = self.ctx.chat.restart_window;
        if let Some(failures) = self.failures.get_mut(&room) {
            failures.retain(|t| t.elapsed() < window);
            if failures.len() > self.ctx.chat.restarts_max {
                let retry_in = failures.front().map_or(Duration::ZERO, |t| window.saturating_sub(t.elapsed()));
                return Err(ChatError::RoomUnavailable {
                    room: room.to_string(),
                    reason: format!(
                        "it failed {} times within {}; retry in {}",
                        failures.len(),
                        humantime::format_duration(window),
                        humantime::format_duration(Duration::from_secs(retry_in.as_secs().saturating_add(1)))
                    ),
                });
            }
        }
        let args = RoomArgs { room: room.clone(), ctx: self.ctx.clone(), supervisor: myself.clone() };
        let (actor, _) = Actor::spawn_linked(None, RoomActor, args, myself.get_cell())
            .await
            .map_err(|e| ChatError::RoomUnavailable { room: room.to_string(), reason: e.to_string() })?;
        self.by_actor.insert(actor.get_id(), room.clone());
        self.rooms.insert(room, actor.clone());
        Ok(actor)
    }
}

/// A handle to the rooms, used by connections and the HTTP API.
#[derive(Debug, Clone)]
pub struct Rooms {
    supervisor: ActorRef<RoomsMsg>,
    /// This node's id in presence answers (`chat.node_id`).
    node_id: String,
    /// On a cluster's log: the NATS connection on which nodes ask each other who is in a room.
    nats: Option<async_nats::Client>,
    /// This process, so that it does not answer its own question.
    instance: String,
}

impl Rooms {
    /// Starts the supervisor.
    pub async fn start(ctx: ChatContext) -> Result<Self, ActorProcessingErr> {
        let node_id = ctx.chat.node_id.clone();
        let log = ctx.log.clone();
        let (supervisor, _) = Actor::spawn(None, RoomSupervisor, ctx).await?;
        let nats = log.nats();
        let instance = uuid::Uuid::new_v4().simple().to_string();
        let rooms = Self { supervisor, node_id, nats: nats.clone(), instance };
        if log.is_shared() {
            tokio::spawn(follow_log(log.clone(), rooms.supervisor.clone()));
        }
        if let Some(nats) = nats {
            tokio::spawn(answer_presence(nats, rooms.clone()));
        }
        Ok(rooms)
    }

    /// The actor of `room`, started if needed.
    pub async fn get(&self, room: &RoomId) -> Result<ActorRef<RoomMsg>, ChatError> {
        let room = room.clone();
        match self.supervisor.call(|reply| RoomsMsg::Get { room, reply }, None).await {
            Ok(ractor::rpc::CallResult::Success(result)) => result,
            _ => Err(ChatError::ShuttingDown),
        }
    }

    /// This node's members of `room`. A room without a running actor has nobody in it (its
    /// actor runs while anyone is joined), so none is started to answer: a read of presence
    /// costs no history load, whatever room name a caller tries.
    pub async fn members(&self, room: &RoomId) -> Result<NodeMembers, ChatError> {
        let node = || NodeMembers { node: self.node_id.clone(), ..NodeMembers::default() };
        let room = room.clone();
        let actor = match self.supervisor.call(|reply| RoomsMsg::Find { room, reply }, None).await {
            Ok(ractor::rpc::CallResult::Success(Some(actor))) => actor,
            Ok(ractor::rpc::CallResult::Success(None)) => return Ok(node()),
            _ => return Err(ChatError::ShuttingDown),
        };
        match actor.call(|reply| RoomMsg::Members { reply }, None).await {
            Ok(ractor::rpc::CallResult::Success(members)) => Ok(members),
            // The actor stopped meanwhile: idle, so nobody was in it; or failed, and its
            // members are joining its successor, which would answer a moment later.
            _ => Ok(node()),
        }
    }

    /// Every node's members of `room`: this node's, and on a cluster's log those the other
    /// nodes answer within a moment (a node that does not answer in time is left out).
    pub async fn members_everywhere(&self, room: &RoomId) -> Result<Vec<NodeMembers>, ChatError> {
        let mut all = vec![self.members(room).await?];
        let Some(nats) = &self.nats else { return Ok(all) };
        let question = PresenceQuestion { room: room.clone(), asker: self.instance.clone() };
        let answers = crate::log::jetstream::ask_all(
            nats,
            PRESENCE_SUBJECT.into(),
            serde_json::to_vec(&question).unwrap_or_default().into(),
            Duration::from_millis(250),
            Duration::from_millis(500),
        )
        .await;
        all.extend(answers.iter().filter_map(|a| serde_json::from_slice::<NodeMembers>(a).ok()));
        Ok(all)
    }

    /// How many room actors are running.
    pub async fn active(&self) -> usize {
        match self.supervisor.call(|reply| RoomsMsg::Count { reply }, None).await {
            Ok(ractor::rpc::CallResult::Success(n)) => n,
            _ => 0,
        }
    }

    /// Makes a room's actor fail, to test supervision.
    #[doc(hidden)]
    pub async fn inject_failure(&self, room: &RoomId) -> Result<(), ChatError> {
        let actor = self.get(room).await?;
        actor.cast(RoomMsg::Fail).map_err(|_| ChatError::ShuttingDown)
    }

    /// Stops every room, then the supervisor, waiting for them to finish what they hold.
    pub async fn stop(&self) {
        self.supervisor.drain_children_and_wait(Some(Duration::from_secs(5))).await;
        let _ = self.supervisor.stop_and_wait(Some("shutdown".into()), Some(Duration::from_secs(5))).await;
    }
}

/// Records the room follower reads at a time.
const FOLLOW_BATCH: usize = 4096;

/// On a shared log (several nodes append to it), rooms show what the log committed, in seq
/// order, whichever node appended it: this reads the log behind this node's head and hands
/// each span's room events to the running rooms. Ends when the log or the rooms stop.
pub async fn follow_log(log: EventLog, supervisor: ActorRef<RoomsMsg>) {
    let mut after = log.head();
    let mut head = log.watch_head();
    loop {
        let through = *head.borrow_and_update();
        while after < through {
            let batch = match log.read_range(after + 1, FOLLOW_BATCH).await {
                Ok(batch) => batch,
                Err(error) => {
                    tracing::warn!(error = %error, after, "rooms could not read the log; trying again");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            // A short batch holds everything through the head it was read at.
            let span_end = match batch.last() {
                Some(last) if batch.len() == FOLLOW_BATCH => last.seq,
                Some(last) => last.seq.max(through),
                None => through,
            };
            let mut by_room: HashMap<RoomId, Vec<Envelope>> = HashMap::new();
            for envelope in batch {
                let room = match &envelope.event {
                    Event::MessagePosted(e) => e.room.clone(),
                    Event::MessageEdited(e) => e.room.clone(),
                    Event::MessageDeleted(e) => e.room.clone(),
                    _ => continue,
                };
                by_room.entry(room).or_default().push(envelope);
            }
            if supervisor.cast(RoomsMsg::Follow { after, through: span_end, by_room }).is_err() {
                return;
            }
            after = span_end;
        }
        if head.changed().await.is_err() {
            return;
        }
    }
}

/// The subject on which nodes of a cluster ask each other who is in a room: plain NATS, not
/// under the log's `rl.>` (presence is asked and answered, never stored).
const PRESENCE_SUBJECT: &str = "roomlog-presence";

/// A node asking the others who is in `room`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct PresenceQuestion {
    room: RoomId,
    asker: String,
}

/// Answers the other nodes' questions of who is in a room with this node's members of it.
async fn answer_presence(nats: async_nats::Client, rooms: Rooms) {
    crate::log::jetstream::answer_all(nats, PRESENCE_SUBJECT.into(), move |question: bytes::Bytes| {
        let rooms = rooms.clone();
        async move {
            let question: PresenceQuestion = serde_json::from_slice(&question).ok()?;
            if question.asker == rooms.instance {
                return None;
            }
            let members = rooms.members(&question.room).await.ok()?;
            serde_json::to_vec(&members).ok().map(bytes::Bytes::from)
        }
    })
    .await;
}
