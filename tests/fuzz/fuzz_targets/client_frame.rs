//! Any text a client sends over the WebSocket: the frame parser answers a frame or an error
//! with a code, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(error) = roomlog::wire::parse_client_frame(text) {
            assert!(!error.message.is_empty(), "an error says what is wrong");
        }
    }
});
