//! Any bytes a client sends to the HTTP port, as a whole request: the real accept loop, the
//! router and every handler behind it. No input may panic the server, answer with an internal
//! error, or leave it unable to serve the next request. Seeds: `tests/fuzz/seeds/http_request/`.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let fixture = common::fixture();
    fixture.runtime.block_on(async {
        let answer = common::exchange(fixture.addr, data, common::ANSWER_WAIT).await;
        assert!(
            !answer.starts_with(b"HTTP/1.1 500"),
            "an internal error for {:?}: {:?}",
            String::from_utf8_lossy(data),
            String::from_utf8_lossy(&answer)
        );
        common::still_serving(fixture.addr).await;
    });
});
