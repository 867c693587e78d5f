//! Helpers shared by the integration tests: a server on a loopback port and a WebSocket client.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use roomlog::{Config, Server};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long a test waits for a frame before it fails: a bound against hanging, not a measure.
pub const FRAME_WAIT: Duration = Duration::from_secs(20);

/// Every file under `dir`, at any depth, with its size, sorted by path; none when `dir` does
/// not exist.
pub fn files_under(dir: &Path) -> Vec<(std::path::PathBuf, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push((path, entry.metadata().map_or(0, |m| m.len())));
        }
    }
    out.sort();
    out
}

/// A configuration for tests: data in `dir`, port chosen by the OS, callers trusted by the
/// name they give and the test's host trusted as admin (`auth.anonymous = "write"`,
/// `auth.admin_from_host`; `tests/tokens.rs` tests tokens), and no per-connection frame rate
/// (tests send in bursts; `tests/limits.rs` tests the rate).
pub fn config(dir: &Path) -> Config {
    let mut config = Config { data: dir.to_path_buf(), ..Config::default() };
    config.auth.anonymous = roomlog::auth::Anonymous::Write;
    config.limits.frames_per_second = 0;
    config.auth.admin_from_host = true;
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    host_disk_independent(&mut config.disk);
    config.normalise();
    config
}

/// Disk thresholds no disk reaches: how full the test machine's disk is must not decide a test
/// (a shared CI disk may well be past the default 85 % danger line). Tests of the thresholds set
/// their own.
pub fn host_disk_independent(disk: &mut roomlog::disk::DiskConfig) {
    (disk.warning, disk.critical, disk.danger) = (1.0, 1.0, 1.0);
}

/// [`host_disk_independent`] as environment for a spawned server.
pub const HOST_DISK_INDEPENDENT: [(&str, &str); 3] =
    [("ROOMLOG_DISK__WARNING", "1.0"), ("ROOMLOG_DISK__CRITICAL", "1.0"), ("ROOMLOG_DISK__DANGER", "1.0")];

/// Starts a server in this process.
pub async fn start(config: Config) -> Server {
    std::fs::create_dir_all(&config.data).expect("data folder");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
    Server::start(config, listener).await.expect("server starts")
}

/// A server with two clients, ann and bob, both joined to `lobby`.
pub async fn lobby_pair(config: Config) -> (Server, Client, Client) {
    let server = start(config).await;
    let mut ann = Client::connect(server.addr(), "ann").await;
    let mut bob = Client::connect(server.addr(), "bob").await;
    ann.join("lobby", None).await;
    bob.join("lobby", None).await;
    (server, ann, bob)
}

/// A WebSocket chat client.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub name: String,
}

impl Client {
    pub async fn connect(addr: SocketAddr, name: &str) -> Self {
        let (ws, _) =
            tokio_tungstenite::connect_async(format!("ws://{addr}/ws?name={name}")).await.expect("ws connects");
        Self { ws, name: name.to_owned() }
    }

    /// A client over a WebSocket opened by the caller (from a chosen source address, say).
    pub fn from_stream(ws: WebSocketStream<MaybeTlsStream<TcpStream>>, name: &str) -> Self {
        Self { ws, name: name.to_owned() }
    }

    /// Connects with the query string `query` (`token=...`); the refusal's HTTP status if the
    /// server does not upgrade.
    pub async fn connect_query(addr: SocketAddr, query: &str, name: &str) -> Result<Self, u16> {
        match tokio_tungstenite::connect_async(format!("ws://{addr}/ws?{query}")).await {
            Ok((ws, _)) => Ok(Self { ws, name: name.to_owned() }),
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => Err(response.status().as_u16()),
            Err(error) => panic!("{name}: ws connect failed: {error}"),
        }
    }

    pub async fn send(&mut self, frame: Value) {
        self.send_text(frame.to_string()).await;
    }

    /// Sends a frame; false when the connection is gone.
    pub async fn try_send(&mut self, frame: Value) -> bool {
        self.ws.send(Message::text(frame.to_string())).await.is_ok()
    }

    pub async fn send_text(&mut self, text: String) {
        self.ws.send(Message::text(text)).await.expect("ws send");
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("ws send");
    }

    /// The next text frame as JSON.
    pub async fn recv(&mut self) -> Value {
        match self.try_recv().await {
            Some(value) => value,
            None => panic!("{}: connection closed while a frame was expected", self.name),
        }
    }

    /// The next text frame, or `None` when the server closed the connection.
    pub async fn try_recv(&mut self) -> Option<Value> {
        loop {
            let next = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: no frame within {FRAME_WAIT:?}", self.name));
            match next {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(text.as_str()).expect("server frames are JSON"))
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// The close code the server sent, reading past any other frames.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let next = tokio::time::timeout(FRAME_WAIT, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("{}: not closed within {FRAME_WAIT:?}", self.name));
            match next {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                None | Some(Err(_)) => return None,
                Some(Ok(_)) => continue,
            }
        }
    }

    /// Joins a room and returns the `joined` frame.
    pub async fn join(&mut self, room: &str, since: Option<u64>) -> Value {
        let mut frame = json!({"type": "join", "room": room});
        if let Some(since) = since {
            frame["since"] = json!(since);
        }
        self.send(frame).await;
        let joined = self.recv().await;
        assert_eq!(joined["type"], "joined", "{}: expected joined, got {joined}", self.name);
        joined
    }

    /// Sends a message and returns its seq from the ack; the client's own copy follows.
    pub async fn say(&mut self, room: &str, body: &str, client_id: &str) -> u64 {
        self.send(json!({"type": "send", "room": room, "body": body, "client_id": client_id})).await;
        let ack = self.recv().await;
        assert_eq!(ack["type"], "ack", "{}: expected ack, got {ack}", self.name);
        assert_eq!(ack["client_id"], client_id);
        let echo = self.recv().await;
        assert_eq!(
            (echo["type"].as_str(), echo["seq"].as_u64()),
            (Some("message"), ack["seq"].as_u64()),
            "own copy follows the ack"
        );
        ack["seq"].as_u64().expect("ack has a seq")
    }

    /// Reads `message` frames until one with body `last_body`; returns them all, in order.
    /// Fails on any other frame type.
    pub async fn messages_until(&mut self, last_body: &str) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let frame = self.recv().await;
            assert_eq!(frame["type"], "message", "{}: expected a message, got {frame}", self.name);
            let done = frame["body"] == last_body;
            out.push(frame);
            if done {
                return out;
            }
        }
    }

    /// Reads until it has `messages` message frames and `acks` acks, failing on anything else;
    /// returns the messages in order and the acks' seqs in order.
    pub async fn messages_and_acks(&mut self, messages: usize, acks: usize) -> (Vec<Value>, Vec<u64>) {
        let (mut got, mut acked) = (Vec::new(), Vec::new());
        while got.len() < messages || acked.len() < acks {
            let frame = self.recv().await;
            match frame["type"].as_str() {
                Some("message") => got.push(frame),
                Some("ack") => acked.push(frame["seq"].as_u64().expect("ack has a seq")),
                _ => panic!("{}: unexpected {frame}", self.name),
            }
        }
        (got, acked)
    }

    /// Reads exactly `n` `message` frames.
    pub async fn messages(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let frame = self.recv().await;
            assert_eq!(frame["type"], "message", "{}: expected a message, got {frame}", self.name);
            out.push(frame);
        }
        out
    }

    /// Sends a ping and waits for its pong, failing on anything else first.
    pub async fn ping(&mut self, id: u64) {
        self.send(json!({"type": "ping", "id": id})).await;
        let pong = self.recv().await;
        assert_eq!(pong, json!({"type": "pong", "id": id}), "{}: expected pong", self.name);
    }
}

/// The seqs of message frames.
pub fn seqs(frames: &[Value]) -> Vec<u64> {
    frames.iter().map(|f| f["seq"].as_u64().expect("message has a seq")).collect()
}

/// The bodies of message frames.
pub fn bodies(frames: &[Value]) -> Vec<String> {
    frames.iter().map(|f| f["body"].as_str().expect("message has a body").to_owned()).collect()
}

/// GET a JSON document; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.expect("http get");
    let status = response.status().as_u16();
    (status, response.json().await.expect("json body"))
}

/// Uploads `body` under the file key `key`: the status and the JSON answer.
pub async fn put_file(addr: SocketAddr, key: &str, body: Vec<u8>, content_type: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .put(format!("http://{addr}/api/files/{key}"))
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("put");
    (response.status().as_u16(), response.json().await.expect("json"))
}

/// The real `roomlog` binary serving a data folder on a loopback port.
pub struct Binary {
    pub child: Child,
    pub addr: SocketAddr,
}

/// A failing test must not leave a server running.
impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the binary on `data` and waits for the address it writes.
pub fn spawn(data: &Path) -> Binary {
    spawn_with(data, &[], Stdio::inherit())
}

/// [`spawn`] with more environment, and stderr where the caller wants it.
pub fn spawn_with(data: &Path, env: &[(&str, &str)], stderr: Stdio) -> Binary {
    let addr_file = data.join("roomlog.addr");
    let _ = std::fs::remove_file(&addr_file);
    let child = Command::new(env!("CARGO_BIN_EXE_roomlog"))
        .args(["serve", "--listen", "127.0.0.1:0", "--data"])
        .arg(data)
        .env("ROOMLOG_LOG", "warn")
        .env("ROOMLOG_AUTH__ANONYMOUS", "write")
        .env("ROOMLOG_LIMITS__FRAMES_PER_SECOND", "0")
        .env("ROOMLOG_AUTH__ADMIN_FROM_HOST", "true")
        .envs(HOST_DISK_INDEPENDENT)
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn();
    let mut binary =
        Binary { child: child.expect("the roomlog binary starts"), addr: SocketAddr::from(([127, 0, 0, 1], 0)) };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(addr) = std::fs::read_to_string(&addr_file).ok().and_then(|s| s.trim().parse().ok()) {
            binary.addr = addr;
            return binary;
        }
        assert!(Instant::now() < deadline, "the server did not write its address");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every message of a room, through the HTTP history, oldest first.
pub async fn whole_history(addr: SocketAddr, room: &str) -> Vec<Value> {
    let mut all = Vec::new();
    let mut after = 0;
    loop {
        let (status, page) = get(addr, &format!("/api/rooms/{room}/messages?after={after}&limit=200")).await;
        if status == 404 {
            return all;
        }
        let messages = page["messages"].as_array().expect("messages").clone();
        if let Some(last) = messages.last() {
            after = last["seq"].as_u64().expect("seq");
        }
        all.extend(messages);
        if page["more"] != true {
            return all;
        }
    }
}

/// Waits until every projection, the search index included, has the whole log.
pub async fn projections_caught_up(addr: SocketAddr) {
    for _ in 0..3000 {
        let (_, ready) = get(addr, "/readyz").await;
        let projections = ready["projections"].as_object().expect("projections");
        if projections.values().all(|p| p["lag_events"] == 0) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("projections never caught up");
}

/// Every hit of a search (`query`: the query string without `limit`/`cursor`), page by page
/// through its cursors; returns the total the server reported and the hits in order.
pub async fn search_all(addr: SocketAddr, query: &str) -> (u64, Vec<Value>) {
    let mut hits = Vec::new();
    let mut cursor = String::new();
    loop {
        let (status, page) = get(addr, &format!("/api/search?{query}&limit=100{cursor}")).await;
        assert_eq!(status, 200, "search {query}: {page}");
        hits.extend(page["hits"].as_array().expect("hits").iter().cloned());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = format!("&cursor={next}"),
            None => return (page["total"].as_u64().expect("total"), hits),
        }
    }
}
