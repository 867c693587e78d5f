//! A real server for the request-level targets: started once per fuzzing process on a loopback
//! port, in a temporary data folder, and asked after every input whether it still serves.

#![allow(dead_code)] // each target uses part of it

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Fixture {
    pub runtime: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    _data: tempfile::TempDir,
    _server: roomlog::Server,
}

/// How long one exchange may take before the target gives up on it (a bound, not a check).
pub const EXCHANGE_WAIT: Duration = Duration::from_secs(2);

pub fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
        let data = tempfile::tempdir().expect("data folder");
        let mut config = roomlog::Config { data: data.path().to_path_buf(), ..roomlog::Config::default() };
        // Every route reachable: anyone may write, the host is admin, no rate or failure limit
        // hides a handler behind a 429.
        config.auth.anonymous = roomlog::auth::Anonymous::Write;
        config.auth.admin_from_host = true;
        config.limits.frames_per_second = 0;
        config.limits.auth_failures_per_minute = u32::MAX;
        config.limits.connections_per_address_max = 100_000;
        config.normalise();
        let server = runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
            roomlog::Server::start(config, listener).await.expect("server starts")
        });
        let addr = server.addr();
        Fixture { runtime, addr, _data: data, _server: server }
    })
}

/// How long the target waits for the server's answer to an input: an incomplete request is
/// left waiting by the server, so this bounds each input (a bound, not a check).
pub const ANSWER_WAIT: Duration = Duration::from_millis(250);

/// Sends raw bytes on a new connection and reads until the answer's head is complete, the
/// server closes the connection, or `wait` passes; the bytes read. The write side stays open:
/// hyper drops a request whose connection was half-closed without answering it.
pub async fn exchange(addr: SocketAddr, request: &[u8], wait: Duration) -> Vec<u8> {
    let mut answer = Vec::new();
    let Ok(Ok(mut stream)) = tokio::time::timeout(EXCHANGE_WAIT, tokio::net::TcpStream::connect(addr)).await else {
        panic!("the server no longer accepts connections");
    };
    let _ = tokio::time::timeout(wait, async {
        stream.write_all(request).await?;
        let mut buffer = [0u8; 4096];
        while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
        }
        Ok::<_, std::io::Error>(())
    })
    .await;
    answer
}

/// Panics unless the server still answers `/healthz` with 200.
pub async fn still_serving(addr: SocketAddr) {
    let answer = exchange(addr, b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n", EXCHANGE_WAIT).await;
    assert!(answer.starts_with(b"HTTP/1.1 200"), "the server stopped serving: {:?}", String::from_utf8_lossy(&answer));
}
