//! A 100 MB file up and down with bounded memory. Alone in its own test binary: it measures
//! the resident memory of the whole process, which other tests running beside it would grow
//! (in `tests/files.rs` it failed about one run in three at 47–50 MiB, 7 MiB when alone).

mod common;

use common::{config, start};

/// Resident memory of this process (server and client both), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_upload_and_download_stream_with_bounded_memory() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    const SIZE: usize = 100 << 20;
    const CHUNK: usize = 1 << 20;
    let dir = tempfile::tempdir().expect("tempdir");
    let server = start(config(dir.path())).await;
    let before = rss_kib();
    let chunk = |i: usize| -> Vec<u8> { (0..CHUNK).map(|j| ((i * 31 + j * 7) % 251) as u8).collect() };

    // Upload over a raw socket, one MiB at a time, hashing as we go: nothing holds 100 MB.
    let mut hasher = blake3::Hasher::new();
    let mut socket = tokio::net::TcpStream::connect(server.addr()).await.expect("connect");
    let head = format!(
        "PUT /api/files/tts/big.bin HTTP/1.1\r\nhost: x\r\ncontent-length: {SIZE}\r\nconnection: close\r\n\r\n"
    );
    socket.write_all(head.as_bytes()).await.expect("head");
    let mut peak = before;
    for i in 0..SIZE / CHUNK {
        let part = chunk(i);
        hasher.update(&part);
        socket.write_all(&part).await.expect("body");
        peak = peak.max(rss_kib());
    }
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 201"), "{answer}");
    let hash = hasher.finalize().to_hex().to_string();
    assert!(answer.contains(&hash), "the server hashed the same bytes: {answer}");

    // Download, hashing the stream.
    let mut response = reqwest::get(format!("http://{}/api/files/tts/big.bin", server.addr())).await.expect("get");
    assert_eq!(response.content_length(), Some(SIZE as u64));
    let mut downloaded = blake3::Hasher::new();
    let mut got = 0usize;
    while let Some(part) = response.chunk().await.expect("chunk") {
        downloaded.update(&part);
        got += part.len();
        peak = peak.max(rss_kib());
    }
    assert_eq!(got, SIZE);
    assert_eq!(downloaded.finalize().to_hex().to_string(), hash);
    let grew_mib = peak.saturating_sub(before) / 1024;
    eprintln!("100 MiB up and down: resident memory grew by at most {grew_mib} MiB");
    assert!(grew_mib < 40, "memory grew by {grew_mib} MiB: the file was held in memory");
    server.shutdown().await;
}
