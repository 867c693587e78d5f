//! A WebSocket session of any frames: the input, split at newlines, is sent frame by frame (text
//! where it is UTF-8, binary where not) on one connection, then a ping. No input may panic the
//! server or stop it serving: the connection answers the ping, or was closed with a code, and a
//! new connection is served either way. Seeds: `tests/fuzz/seeds/ws_session/`.
#![no_main]
use futures_util::{SinkExt, StreamExt};
use libfuzzer_sys::fuzz_target;
use tokio_tungstenite::tungstenite::Message;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let fixture = common::fixture();
    fixture.runtime.block_on(async {
        let url = format!("ws://{}/ws?name=fuzz", fixture.addr);
        let (mut ws, _) = tokio_tungstenite::connect_async(&url).await.expect("the server accepts a WebSocket");
        for frame in data.split(|&b| b == b'\n') {
            let message = match std::str::from_utf8(frame) {
                Ok(text) => Message::text(text),
                Err(_) => Message::binary(frame.to_vec()),
            };
            if ws.send(message).await.is_err() {
                break; // closed by the server, with a code: a frame it refuses to read
            }
        }
        let _ = ws.send(Message::Ping(b"alive".to_vec().into())).await;
        let _ = tokio::time::timeout(common::EXCHANGE_WAIT, async {
            while let Some(Ok(message)) = ws.next().await {
                if matches!(message, Message::Pong(_) | Message::Close(_)) {
                    return;
                }
            }
        })
        .await;
        drop(ws);
        common::still_serving(fixture.addr).await;
    });
});
