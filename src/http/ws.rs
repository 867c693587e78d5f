//! One WebSocket connection: reads client frames, forwards them to room actors, and writes
//! what rooms send back.
//!
//! Each joined room feeds a bounded queue; the connection reads them all through one
//! `StreamMap`. When a room's queue ends without the client having left (the room actor
//! failed or stopped), the connection joins again from the last seq it delivered: the client
//! sees no gap and no duplicate (DESIGN.md invariant 2).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::{FutureExt, SinkExt, Stream, StreamExt};
use ractor::rpc::CallResult;
use ractor::ActorRef;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamMap;
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::Message;

use super::upgrade::Socket;
use super::App;
use crate::actor::room::RoomMsg;
use crate::actor::{ChatError, Member, Outbound, QueuedBytes};
use crate::auth::Identity;
use crate::event::RoomId;
use crate::projection::search::SearchParams;
use crate::room::MemberId;
use crate::wire::{error_frame, parse_client_frame, render, ClientFrame, ErrorCode, ServerFrame, WireMessage};

/// Close code for a client that fell too far behind; it may reconnect and resume.
pub const CLOSE_SLOW_CONSUMER: u16 = 4008;
/// Close code when the server shuts down ("going away").
pub const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a client that sent nothing (not even a pong) within `limits.idle_timeout`.
pub const CLOSE_IDLE: u16 = 4009;
/// How long a connection the server closes waits for the client's close frame.
const CLOSE_LINGER: std::time::Duration = std::time::Duration::from_secs(2);
/// Frames written before one flush when several are ready at once.
const WRITE_BATCH_MAX: usize = 64;
/// Attempts to reach a room whose actor keeps disappearing under us.
const JOIN_ATTEMPTS_MAX: usize = 3;

type RoomStream = Pin<Box<dyn Stream<Item = Option<Outbound>> + Send>>;

struct Joined {
    actor: ActorRef<RoomMsg>,
    /// Seq of the last message written to the client: where a resume starts.
    last_seq: u64,
}

struct Connection {
    id: MemberId,
    identity: Identity,
    app: Arc<App>,
    sink: futures_util::stream::SplitSink<Socket, Message>,
    joined: HashMap<RoomId, Joined>,
    queues: StreamMap<RoomId, RoomStream>,
    kick: Arc<Notify>,
    /// Bytes waiting in this connection's room queues.
    queued: Arc<QueuedBytes>,
    /// Frames the client may still send now.
    bucket: TokenBucket,
}

/// A token bucket: `rate` tokens a second, at most `burst` saved up; a rate of 0 is no limit.
#[derive(Debug)]
struct TokenBucket {
    tokens: f64,
    rate: f64,
    burst: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self { tokens: burst, rate: f64::from(rate), burst, at: now }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        if self.rate == 0.0 {
            return true;
        }
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Why the write side stopped.
struct Gone;

/// What a client asks to change in a room.
enum Change {
    Post {
        body: String,
    },
    /// An edit (`body` set) or deletion of message `seq`.
    Amend {
        seq: u64,
        body: Option<String>,
    },
}

/// Serves one upgraded connection until either side closes it. Holds its connection permit.
pub async fn serve(socket: Socket, identity: Identity, app: Arc<App>, _permit: OwnedSemaphorePermit) {
    let (sink, mut stream) = socket.split();
    let id = app.next_member_id();
    let mut shutdown = app.shutdown.clone();
    let limits = &app.config.limits;
    let idle = limits.idle_timeout.max(std::time::Duration::from_millis(30));
    let bucket = TokenBucket::new(limits.frames_per_second, limits.frames_burst, Instant::now());
    let queued = Arc::new(QueuedBytes::new(limits.outbound_queue_bytes_max));
    let mut conn = Connection {
        id,
        identity,
        app,
        sink,
        joined: HashMap::new(),
        queues: StreamMap::new(),
        kick: Arc::new(Notify::new()),
        queued,
        bucket,
    };
    // The server pings at a third of the idle timeout; a client that answers is not idle.
    let mut pings = tokio::time::interval_at(Instant::now() + idle / 3, idle / 3);
    let mut heard = Instant::now();
    let kick = conn.kick.clone();
    tracing::debug!(conn = id, user = %conn.identity.user, "connection opened");
    metrics::counter!(crate::metrics::CONNECTIONS_TOTAL).increment(1);
    metrics::gauge!(crate::metrics::CONNECTIONS_OPEN).increment(1.0);
    // The close frame the server sends, when it is the one ending the connection.
    let mut farewell: Option<(u16, &'static str)> = None;
    // Whether the client closed first: its close frame is answered (RFC 6455 §5.5.1).
    let mut closed_by_client = false;
    // The work of a frame (`on_message`, `on_room_item`) runs boxed: inline, its futures (a
    // join's replay and actor calls) made every connection's task 10,000 bytes even while idle;
    // boxed, 2,096 bytes, and 10,000 idle connections take about 75 MiB less (README, "The
    // server under load").
    loop {
        let step = tokio::select! {
            biased;
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                farewell = Some((CLOSE_GOING_AWAY, "server shutting down"));
                break;
            }
            _ = kick.notified() => {
                tracing::info!(conn = id, user = %conn.identity.user, "slow consumer disconnected");
                farewell = Some((CLOSE_SLOW_CONSUMER, "slow_consumer"));
                break;
            }
            _ = pings.tick() => {
                if heard.elapsed() >= idle {
                    tracing::debug!(conn = id, "idle connection closed");
                    metrics::counter!(crate::metrics::IDLE_CLOSED_TOTAL).increment(1);
                    farewell = Some((CLOSE_IDLE, "idle_timeout"));
                    break;
                }
                conn.sink.send(Message::Ping(Default::default())).await.map_err(|_| Gone)
            }
            incoming = stream.next() => match incoming {
                Some(Ok(Message::Close(_))) => {
                    closed_by_client = true;
                    break;
                }
                Some(Ok(message)) => {
                    heard = Instant::now();
                    Box::pin(conn.on_message(message)).await
                }
                Some(Err(error)) => {
                    tracing::debug!(conn = id, error = %error, "connection read failed");
                    farewell = close_for(&error);
                    break;
                }
                None => break,
            },
            Some((room, item)) = conn.queues.next(), if !conn.queues.is_empty() => Box::pin(conn.on_room_item(room, item)).await,
        };
        if step.is_err() {
            break;
        }
    }
    // Out of every room first, so that presence does not wait for the closing handshake (the
    // drop guard below covers the paths that never reach this line).
    conn.leave_all();
    // The closing handshake (RFC 6455 §7): send the close frame, then read until the client's
    // own close, so that its unread frames and the close code are not lost to a TCP reset;
    // bounded, since a client that stopped reading never answers.
    if let Some((code, reason)) = farewell {
        let _ = tokio::time::timeout(CLOSE_LINGER, async {
            if conn.sink.send(close(code, reason)).await.is_ok() {
                while let Some(Ok(message)) = stream.next().await {
                    if message.is_close() {
                        break;
                    }
                }
            }
        })
        .await;
    } else if closed_by_client {
        // tungstenite has queued the echo of the client's close frame (same code); flushing
        // sends it. Bounded, like the linger above: a client that stopped reading gets a reset.
        let _ = tokio::time::timeout(CLOSE_LINGER, conn.sink.close()).await;
    }
    metrics::gauge!(crate::metrics::CONNECTIONS_OPEN).decrement(1.0);
    tracing::debug!(conn = id, "connection closed");
}

/// A close frame.
fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame { code: CloseCode::from(code), reason: reason.into() }))
}

/// The close code that tells a client why its input ended the connection, when it was the
/// input's fault: a frame over the limit (1009), text that is not UTF-8 (1007), or a broken
/// frame (1002). Other read errors (a reset connection) get no close frame.
fn close_for(error: &tungstenite::Error) -> Option<(u16, &'static str)> {
    match error {
        tungstenite::Error::Capacity(_) => Some((1009, "frame_too_large")),
        tungstenite::Error::Utf8(_) => Some((1007, "invalid_utf8")),
        tungstenite::Error::Protocol(_) => Some((1002, "protocol_error")),
        _ => None,
    }
}

/// The drop guard of presence: however the connection's task ends (a close frame, a read error,
/// the idle timeout, a client killed without a close, a slow consumer kicked, the shutdown, a
/// panic, or the task dropped), its rooms are told it left, so no user stays listed.
impl Drop for Connection {
    fn drop(&mut self) {
        self.leave_all();
    }
}

impl Connection {
    /// Leaves every joined room (each room counts this connection out of its presence).
    /// Idempotent: the rooms are forgotten as they are left.
    fn leave_all(&mut self) {
        for (room, joined) in self.joined.drain() {
            let _ = joined.actor.cast(RoomMsg::Leave { member: self.id });
            tracing::trace!(conn = self.id, room = %room, "left on close");
        }
    }

    async fn on_message(&mut self, message: Message) -> Result<(), Gone> {
        if matches!(message, Message::Text(_) | Message::Binary(_)) && !self.bucket.take(Instant::now()) {
            metrics::counter!(crate::metrics::RATE_LIMITED_TOTAL).increment(1);
            let limits = &self.app.config.limits;
            let text = format!(
                "more than {} frames a second (bursts of {}); this frame was dropped unread, slow down",
                limits.frames_per_second, limits.frames_burst
            );
            return self.error(ErrorCode::RateLimited, &text, None, None).await;
        }
        let text = match &message {
            Message::Text(text) => text.as_str(),
            Message::Binary(_) => {
                let text = "binary frames are not part of the protocol; send JSON text";
                return self.error(ErrorCode::BinaryFrame, text, None, None).await;
            }
            Message::Close(_) => return Err(Gone),
            // Pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return Ok(()),
        };
        match parse_client_frame(text) {
            Ok(frame) => self.on_frame(frame).await,
            Err(error) => self.error(error.code, &error.message, None, None).await,
        }
    }

    async fn on_frame(&mut self, frame: ClientFrame) -> Result<(), Gone> {
        match frame {
            ClientFrame::Ping { id } => self.write(render(&ServerFrame::Pong { id: id.as_ref() })).await,
            ClientFrame::Search { id, q, room, author, since, until, limit, cursor, sort } => {
                let params = SearchParams { q, room, author, since, until, limit, cursor, sort };
                match self.app.search(&self.identity, &params).await {
                    Ok(results) => {
                        self.write(render(&ServerFrame::SearchResults { id: id.as_ref(), results: &results })).await
                    }
                    // The same code as `GET /api/search` answers: the registry's, not a local choice.
                    Err(error) => self.error(error.code(), &error.to_string(), None, None).await,
                }
            }
            ClientFrame::Join { room, since } => {
                let Some(room) = self.room(&room).await? else { return Ok(()) };
                if !self.identity.may_read(&room) {
                    return self
                        .error(ErrorCode::Forbidden, "you may not read this room", Some(room.as_str()), None)
                        .await;
                }
                if let Some(old) = self.joined.remove(&room) {
                    self.drop_queue(&room);
                    let _ = old.actor.cast(RoomMsg::Leave { member: self.id });
                } else if self.joined.len() >= self.app.config.limits.rooms_per_connection_max {
                    let text = format!(
                        "a connection may join at most {} rooms",
                        self.app.config.limits.rooms_per_connection_max
                    );
                    return self.error(ErrorCode::TooManyRooms, &text, Some(room.as_str()), None).await;
                }
                self.join(room, since, true).await
            }
            ClientFrame::Leave { room } => {
                let Some(room) = self.room(&room).await? else { return Ok(()) };
                self.drop_queue(&room);
                match self.joined.remove(&room) {
                    Some(joined) => {
                        let _ = joined.actor.cast(RoomMsg::Leave { member: self.id });
                        self.write(render(&ServerFrame::Left { room: room.as_str() })).await
                    }
                    None => {
                        self.error(ErrorCode::NotJoined, "this room is not joined", Some(room.as_str()), None).await
                    }
                }
            }
            ClientFrame::Send { room, body, client_id } => self.send(room, Change::Post { body }, client_id).await,
            ClientFrame::Edit { room, seq, body, client_id } => {
                self.send(room, Change::Amend { seq, body: Some(body) }, client_id).await
            }
            ClientFrame::Delete { room, seq, client_id } => {
                self.send(room, Change::Amend { seq, body: None }, client_id).await
            }
            ClientFrame::Members { room } => {
                let Some(room) = self.room(&room).await? else { return Ok(()) };
                // The same check as reading the room's history.
                if !self.identity.may_read(&room) {
                    return self
                        .error(ErrorCode::Forbidden, "you may not read this room", Some(room.as_str()), None)
                        .await;
                }
                match self.app.members(&room).await {
                    Ok(members) => {
                        self.write(render(&ServerFrame::Members { room: room.as_str(), members: &members })).await
                    }
                    Err(error) => self.error(error.code(), &error.to_string(), Some(room.as_str()), None).await,
                }
            }
            ClientFrame::History { room, before, limit } => {
                let Some(room) = self.room(&room).await? else { return Ok(()) };
                if !self.identity.may_read(&room) {
                    return self
                        .error(ErrorCode::Forbidden, "you may not read this room", Some(room.as_str()), None)
                        .await;
                }
                let limit =
                    limit.unwrap_or(self.app.config.chat.recent_count).clamp(1, self.app.config.chat.history_page_max);
                self.app.history_barrier().await;
                match self.app.history_page(&room, before.unwrap_or(u64::MAX), limit).await {
                    Ok((messages, more, removed)) => {
                        let messages = messages.iter().map(|m| WireMessage::of(room.as_str(), m)).collect();
                        self.write(render(&ServerFrame::History {
                            room: room.as_str(),
                            messages,
                            more,
                            removed_through_seq: removed,
                        }))
                        .await
                    }
                    Err(error) => {
                        self.error(ErrorCode::RoomUnavailable, &error.to_string(), Some(room.as_str()), None).await
                    }
                }
            }
        }
    }

    /// Sends a change (a post, an edit, a deletion) to its room, which acknowledges it.
    async fn send(&mut self, room: String, change: Change, client_id: String) -> Result<(), Gone> {
        let Some(room) = self.room(&room).await? else { return Ok(()) };
        let limits = &self.app.config.limits;
        let body_len = match &change {
            Change::Post { body } | Change::Amend { body: Some(body), .. } => body.len(),
            Change::Amend { body: None, .. } => 0,
        };
        // An edit or deletion of another's message is for admins; the room checks authorship.
        let allowed = match &change {
            Change::Post { .. } => self.identity.may_write(&room),
            Change::Amend { .. } => self.identity.admin || self.identity.may_write(&room),
        };
        let refusal = if !self.joined.contains_key(&room) {
            Some((ErrorCode::NotJoined, "join the room before sending to it".to_owned()))
        } else if !allowed {
            Some((ErrorCode::Forbidden, "you may not write to this room".to_owned()))
        } else if body_len > limits.body_bytes_max {
            Some((ErrorCode::BodyTooLarge, format!("body is {body_len} bytes; the limit is {}", limits.body_bytes_max)))
        } else if client_id.is_empty() || client_id.len() > limits.client_id_bytes_max {
            Some((ErrorCode::InvalidClientId, format!("client_id must be 1 to {} bytes", limits.client_id_bytes_max)))
        } else {
            None
        };
        if let Some((code, text)) = refusal {
            return self.error(code, &text, Some(room.as_str()), Some(&client_id)).await;
        }
        let Some(joined) = self.joined.get(&room) else { return Ok(()) };
        let by = self.identity.user.clone();
        let post = match change {
            Change::Post { body } => RoomMsg::Post { member: self.id, author: by, client_id, body },
            Change::Amend { seq, body } => {
                RoomMsg::Amend { member: self.id, by, admin: self.identity.admin, client_id, seq, body }
            }
        };
        let Err(ractor::MessagingErr::SendErr(post)) = joined.actor.cast(post) else { return Ok(()) };
        // The room actor is gone; its successor takes the message. The queue of the old one
        // has ended, so the connection joins the new one as soon as it reads that.
        match self.app.rooms.get(&room).await {
            Ok(actor) => {
                let _ = actor.cast(post);
                Ok(())
            }
            Err(error) => {
                let client_id = match &post {
                    RoomMsg::Post { client_id, .. } | RoomMsg::Amend { client_id, .. } => client_id.as_str(),
                    _ => "",
                };
                self.error(error.code(), &error.to_string(), Some(room.as_str()), Some(client_id)).await
            }
        }
    }

    /// Joins (or re-joins) a room: replays what the client is owed, then listens live.
    /// `announce` sends the `joined` frame; a silent re-join after a room restart does not.
    async fn join(&mut self, room: RoomId, since: Option<u64>, announce: bool) -> Result<(), Gone> {
        let (tx, rx) = mpsc::channel(self.app.config.limits.outbound_queue_max);
        // On a cluster's log, a client may have seen the room further on another node: this
        // node's copy first gets as far as the cluster holds the room, so that what the client
        // saw there is not sent again as live here.
        if since.is_some_and(|s| s > self.app.log.head()) && self.app.log.is_shared() {
            if let Err(error) = self.app.log.newest_of(&crate::event::StreamId::room(&room)).await {
                let reason = format!("this node cannot catch up with the cluster: {error}");
                return self.join_failed(&room, ChatError::RoomUnavailable { room: room.to_string(), reason }).await;
            }
        }
        // A `since` beyond the head (a client that saw a newer server's data, or asks to skip
        // history) means "nothing to replay": live messages all have greater seqs than the head.
        let mut since = since.map(|s| s.min(self.app.log.head()));
        let mut last_seq = since.unwrap_or(0);
        let mut attempts = 0;
        let mut announced = !announce;
        let actor = loop {
            let outcome = match self.app.rooms.get(&room).await {
                Ok(actor) => {
                    let member = Member {
                        id: self.id,
                        user: self.identity.user.clone(),
                        tx: tx.clone(),
                        kick: self.kick.clone(),
                        queued: self.queued.clone(),
                    };
                    let quiet = !announce;
                    match actor.call(|reply| RoomMsg::Join { member, since, quiet, reply }, None).await {
                        Ok(CallResult::Success(result)) => result.map(|reply| Some((actor, reply))),
                        _ => Ok(None), // the actor stopped while we asked: ask its successor
                    }
                }
                Err(error) => Err(error),
            };
            let (actor, reply) = match outcome {
                Ok(Some(pair)) => pair,
                Ok(None) if attempts + 1 < JOIN_ATTEMPTS_MAX => {
                    attempts += 1;
                    continue;
                }
                Ok(None) => {
                    return self
                        .join_failed(
                            &room,
                            ChatError::RoomUnavailable {
                                room: room.to_string(),
                                reason: "its actor keeps stopping".into(),
                            },
                        )
                        .await
                }
                Err(error) => return self.join_failed(&room, error).await,
            };
            if !announced {
                announced = true;
                self.write(render(&ServerFrame::Joined {
                    room: room.as_str(),
                    removed_through_seq: reply.removed_through_seq,
                }))
                .await?;
            }
            for message in &reply.replay {
                self.sink.feed(Message::text(&*message.frame)).await.map_err(|_| Gone)?;
                last_seq = message.seq;
            }
            self.sink.flush().await.map_err(|_| Gone)?;
            if reply.registered {
                break actor;
            }
            since = Some(last_seq);
        };
        metrics::counter!(crate::metrics::JOINS_TOTAL).increment(1);
        let queue: RoomStream = Box::pin(ReceiverStream::new(rx).map(Some).chain(futures_util::stream::iter([None])));
        self.queues.insert(room.clone(), queue);
        self.joined.insert(room, Joined { actor, last_seq });
        Ok(())
    }

    async fn join_failed(&mut self, room: &RoomId, error: ChatError) -> Result<(), Gone> {
        self.joined.remove(room);
        self.error(error.code(), &error.to_string(), Some(room.as_str()), None).await
    }

    async fn on_room_item(&mut self, room: RoomId, item: Option<Outbound>) -> Result<(), Gone> {
        let Some(outbound) = item else {
            // The room's queue ended while joined: its actor stopped. Resume from where we are.
            if let Some(joined) = self.joined.remove(&room) {
                tracing::debug!(conn = self.id, room = %room, last_seq = joined.last_seq, "room restarted; resuming");
                return self.join(room, Some(joined.last_seq), false).await;
            }
            return Ok(());
        };
        self.feed(&room, outbound).await?;
        // Write whatever else is ready before one flush: one syscall for many frames.
        for _ in 1..WRITE_BATCH_MAX {
            match self.queues.next().now_or_never() {
                Some(Some((room, Some(outbound)))) => self.feed(&room, outbound).await?,
                Some(Some((room, None))) => {
                    self.sink.flush().await.map_err(|_| Gone)?;
                    return Box::pin(self.on_room_item(room, None)).await;
                }
                _ => break,
            }
        }
        self.sink.flush().await.map_err(|_| Gone)
    }

    /// Stops reading a room's queue, counting out what it still held.
    fn drop_queue(&mut self, room: &RoomId) {
        if let Some(mut queue) = self.queues.remove(room) {
            while let Some(Some(Some(outbound))) = queue.next().now_or_never() {
                self.queued.remove(outbound.frame.len());
            }
        }
    }

    async fn feed(&mut self, room: &RoomId, outbound: Outbound) -> Result<(), Gone> {
        self.queued.remove(outbound.frame.len());
        if let (Some(seq), Some(joined)) = (outbound.seq, self.joined.get_mut(room)) {
            if seq <= joined.last_seq {
                return Ok(()); // already delivered by a replay
            }
            joined.last_seq = seq;
        }
        self.sink.feed(Message::text(&*outbound.frame)).await.map_err(|_| Gone)
    }

    /// Parses a room name, answering `invalid_room` when it is not one.
    async fn room(&mut self, name: &str) -> Result<Option<RoomId>, Gone> {
        match RoomId::parse(name) {
            Ok(room) => Ok(Some(room)),
            Err(error) => {
                self.error(ErrorCode::InvalidRoom, &error.to_string(), None, None).await?;
                Ok(None)
            }
        }
    }

    async fn error(
        &mut self,
        code: ErrorCode,
        text: &str,
        room: Option<&str>,
        client_id: Option<&str>,
    ) -> Result<(), Gone> {
        metrics::counter!(crate::metrics::FRAME_ERRORS_TOTAL, "code" => code.as_str()).increment(1);
        self.write(error_frame(code, text, room, client_id)).await
    }

    async fn write(&mut self, frame: String) -> Result<(), Gone> {
        self.sink.send(Message::text(frame)).await.map_err(|_| Gone)
    }
}

#[cfg(test)]
mod tests {
    use super::TokenBucket;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10, 3, start);
        assert_eq!((0..5).filter(|_| bucket.take(start)).count(), 3, "the burst, then nothing");
        assert!(!bucket.take(start + Duration::from_millis(50)), "half a token is not one");
        assert!(bucket.take(start + Duration::from_millis(100)), "a tenth of a second earns one at 10/s");
        let later = start + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| bucket.take(later)).count(), 3, "savings stop at the burst");
        let mut unlimited = TokenBucket::new(0, 1, start);
        assert!((0..1000).all(|_| unlimited.take(start)), "a rate of 0 is no limit");
    }
}
