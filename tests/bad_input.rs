//! Bad input over real sockets, byte for byte as a broken or hostile client sends it: broken
//! WebSocket frames, invalid UTF-8, absurd numbers, path traversal in file keys, invalid
//! ranges, oversized and garbled request heads. Each gets a clear error with a stable code
//! (or the close code RFC 6455 names), the connection stays when it safely can, nothing is
//! stored, and the server keeps serving.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{config, start, Client};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const BOUND: Duration = Duration::from_secs(20);

/// A WebSocket opened by hand, so that any bytes at all can be sent on it.
struct Raw {
    stream: TcpStream,
}

impl Raw {
    async fn open(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let request = format!(
            "GET /ws?name=raw HTTP/1.1\r\nHost: {addr}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            tokio::time::timeout(BOUND, stream.read_exact(&mut byte)).await.expect("answer in time").expect("read");
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        Self { stream }
    }

    /// Sends a frame with this first byte (FIN, RSV, opcode), masked with a zero key unless
    /// `masked` is false.
    async fn send(&mut self, first: u8, payload: &[u8], masked: bool) {
        let mask_bit = if masked { 0x80 } else { 0 };
        let mut frame = vec![first];
        match payload.len() {
            n if n < 126 => frame.push(mask_bit | n as u8),
            n if n < 65536 => {
                frame.push(mask_bit | 126);
                frame.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                frame.push(mask_bit | 127);
                frame.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            frame.extend_from_slice(&[0, 0, 0, 0]);
        }
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).await.expect("write frame");
    }

    async fn text(&mut self, text: &str) {
        self.send(0x81, text.as_bytes(), true).await;
    }

    /// The next data or close frame from the server: (opcode, payload). Pings are skipped.
    async fn recv(&mut self) -> (u8, Vec<u8>) {
        loop {
            let mut head = [0u8; 2];
            tokio::time::timeout(BOUND, self.stream.read_exact(&mut head))
                .await
                .expect("a frame in time")
                .expect("read");
            let len = match head[1] & 0x7f {
                126 => {
                    let mut n = [0u8; 2];
                    self.stream.read_exact(&mut n).await.expect("len");
                    u16::from_be_bytes(n) as usize
                }
                127 => {
                    let mut n = [0u8; 8];
                    self.stream.read_exact(&mut n).await.expect("len");
                    u64::from_be_bytes(n) as usize
                }
                n => n as usize,
            };
            let mut payload = vec![0u8; len];
            self.stream.read_exact(&mut payload).await.expect("payload");
            if head[0] & 0x0f != 0x9 {
                return (head[0] & 0x0f, payload);
            }
        }
    }

    /// The next JSON frame.
    async fn json(&mut self) -> Value {
        let (opcode, payload) = self.recv().await;
        assert_eq!(opcode, 1, "a text frame, got opcode {opcode}: {payload:?}");
        serde_json::from_slice(&payload).expect("JSON")
    }

    /// The close code the server sends next.
    async fn close_code(&mut self) -> u16 {
        let (opcode, payload) = self.recv().await;
        assert_eq!(opcode, 8, "a close frame, got opcode {opcode}: {}", String::from_utf8_lossy(&payload));
        u16::from_be_bytes([payload[0], payload[1]])
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frames_and_absurd_values_get_stable_codes_and_store_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    let mut bob = Client::connect(addr, "bob").await;
    bob.join("lobby", None).await;
    let head_before = server.log().head();

    // Values a frame may carry but must not: each answered with an error frame; the
    // connection stays and answers a ping after each.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let cases: Vec<(String, &str)> = vec![
        (json!({"type": "join", "room": "lobby", "since": 1e300}).to_string(), "invalid_field"),
        (r#"{"type":"join","room":"lobby","since":18446744073709551616}"#.into(), "invalid_field"),
        (json!({"type": "history", "room": "lobby", "limit": -1}).to_string(), "invalid_field"),
        (json!({"type": "history", "room": "lobby", "before": "yesterday"}).to_string(), "invalid_field"),
        (json!({"type": "join", "room": "x".repeat(10_000)}).to_string(), "invalid_room"),
        (json!({"type": "join", "room": "lob\u{0}by"}).to_string(), "invalid_room"),
        (json!({"type": "join", "room": "../../etc"}).to_string(), "invalid_room"),
        (json!({"type": "search", "q": "x", "limit": 1e9}).to_string(), "invalid_field"),
        (json!({"type": "ping", "extra": true}).to_string(), "unknown_field"),
        (json!({"type": 7}).to_string(), "unknown_type"),
        (deep, "malformed_json"),
        ("\u{feff}{}".into(), "malformed_json"),
        ("null".into(), "malformed_json"),
    ];
    let mut raw = Raw::open(addr).await;
    for (n, (text, code)) in cases.iter().enumerate() {
        raw.text(text).await;
        let error = raw.json().await;
        let shown: String = text.chars().take(60).collect();
        assert_eq!((error["type"].as_str(), error["code"].as_str()), (Some("error"), Some(*code)), "{shown}: {error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{shown}: a readable message");
        raw.text(&json!({"type": "ping", "id": n}).to_string()).await;
        assert_eq!(raw.json().await["type"], "pong", "{shown}: the connection stays");
    }

    // Frames that break the protocol itself close that connection with RFC 6455's code.
    let fatal: Vec<(u8, Vec<u8>, bool, u16, &str)> = vec![
        (0x81, vec![0xff, 0xfe, 0xfd], true, 1007, "text that is not UTF-8"),
        (0x81, br#"{"type":"ping"}"#.to_vec(), false, 1002, "an unmasked client frame"),
        (0x83, b"?".to_vec(), true, 1002, "a reserved opcode"),
        (0xC1, b"{}".to_vec(), true, 1002, "a reserved bit set"),
        (0x80, b"{}".to_vec(), true, 1002, "a continuation with nothing to continue"),
        (0x89, vec![b'p'; 200], true, 1002, "a control frame over 125 bytes"),
    ];
    for (first, payload, masked, code, what) in fatal {
        let mut raw = Raw::open(addr).await;
        raw.send(first, &payload, masked).await;
        assert_eq!(raw.close_code().await, code, "{what}");
    }

    // Nothing was stored, bob noticed nothing, and the server serves on.
    assert_eq!(server.log().head(), head_before, "no bad input reached the log");
    let mut ann = Client::connect(addr, "ann").await;
    ann.join("lobby", None).await;
    let seq = ann.say("lobby", "still serving", "1").await;
    assert_eq!(bob.recv().await["seq"].as_u64(), Some(seq), "bob sees only the good message");
    server.shutdown().await;
}

/// Sends raw bytes as an HTTP request; the status and the body (JSON when it parses).
async fn raw_http(addr: SocketAddr, request: &[u8]) -> (u16, Value) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(BOUND, stream.read_to_end(&mut answer)).await.expect("answer in time");
    let text = String::from_utf8_lossy(&answer);
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_http_requests_get_clear_errors_and_touch_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let addr = server.addr();
    let put = reqwest::Client::new().put(format!("http://{addr}/api/files/tts/a.mp3")).body("hello").send().await;
    assert_eq!(put.expect("put").status().as_u16(), 201);
    let head_before = server.log().head();

    let big_header =
        format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\nConnection: close\r\n\r\n", "a".repeat(20_000));
    let cases: Vec<(String, u16, Option<&str>, &str)> = vec![
        ("PUT /api/files/tts/../../etc/passwd HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx".into(), 400, Some("invalid_key"), "../ in a key"),
        ("PUT /api/files/tts/%2e%2e/x HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx".into(), 400, Some("invalid_key"), "%2e%2e in a key"),
        ("GET /api/files/..%2f..%2fetc%2fpasswd HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), 400, Some("invalid_key"), "escaped ../ in a key"),
        ("GET /api/files/tts/a.mp3 HTTP/1.1\r\nHost: x\r\nRange: bytes=9-1\r\nConnection: close\r\n\r\n".into(), 416, Some("invalid_range"), "a backwards range"),
        ("GET /api/files/tts/a.mp3 HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1,2-3\r\nConnection: close\r\n\r\n".into(), 416, Some("invalid_range"), "several ranges"),
        ("GET /api/files/tts/a.mp3 HTTP/1.1\r\nHost: x\r\nRange: lines=1-2\r\nConnection: close\r\n\r\n".into(), 416, Some("invalid_range"), "a range in another unit"),
        ("GET /api/files/tts/a.mp3 HTTP/1.1\r\nHost: x\r\nRange: bytes=99999999999999999999-\r\nConnection: close\r\n\r\n".into(), 416, Some("invalid_range"), "an absurd range"),
        ("POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 9\r\nConnection: close\r\n\r\n{not json".into(), 400, Some("invalid_body"), "a body that is not JSON"),
        ("POST /api/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 14\r\nConnection: close\r\n\r\n{\"colour\":\"r\"}".into(), 400, Some("invalid_body"), "an unknown field"),
        ("GET /api/search?q=x&limit=99999999999999999999 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), 400, Some("invalid_query"), "an absurd number"),
        ("GET /api/rooms/lobby/messages?before=-1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), 400, Some("invalid_query"), "a negative seq"),
        ("GET /api/sessions/..%2f HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), 400, Some("invalid_session_id"), "a bad session id"),
        ("GET /ws?name=plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".into(), 400, Some("not_a_websocket_upgrade"), "a plain GET of /ws"),
        (big_header, 431, None, "a 20 KiB header (hyper answers 431 with no body)"),
        ("HELLO THERE\r\n\r\n".into(), 400, None, "a garbled request line (hyper answers 400 with no body)"),
    ];
    for (request, status, code, what) in cases {
        let (got, body) = raw_http(addr, request.as_bytes()).await;
        assert_eq!(got, status, "{what}: {body}");
        if let Some(code) = code {
            assert_eq!(body["error"]["code"].as_str(), Some(code), "{what}: {body}");
        }
    }
    assert_eq!(server.log().head(), head_before, "no bad request stored anything");
    let file = reqwest::get(format!("http://{addr}/api/files/tts/a.mp3")).await.expect("get");
    assert_eq!(file.status().as_u16(), 200);
    assert_eq!(file.text().await.expect("body"), "hello", "the file is as it was");
    let mut ann = Client::connect(addr, "ann").await;
    ann.join("lobby", None).await;
    assert!(ann.say("lobby", "the server serves on", "1").await > 0);
    server.shutdown().await;
}
