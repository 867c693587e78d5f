//! Any bytes where the log reader expects a stored event: an error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = roomlog::event::decode(1, data);
});
