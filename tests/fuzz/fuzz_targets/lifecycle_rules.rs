//! Any lifecycle configuration an operator writes: rules or a clear error, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(json) = std::str::from_utf8(data) {
        if let Err(error) = roomlog::blob::lifecycle::Rules::parse(json) {
            assert!(!error.0.is_empty(), "an error says what is wrong");
        }
    }
});
