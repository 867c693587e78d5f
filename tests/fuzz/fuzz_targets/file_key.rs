//! Any file key in a request path: refused, or a key that cannot leave the store's folder.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(key) = roomlog::blob::FileKey::parse(text) {
            let key = key.as_str();
            assert!(!key.starts_with('/') && !key.contains('\0') && !key.contains('\\'), "{key:?}");
            assert!(key.split('/').all(|s| !s.is_empty() && s != "." && s != ".."), "{key:?}");
        }
    }
});
