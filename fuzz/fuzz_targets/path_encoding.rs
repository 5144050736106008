//! The lossless path encoding: every byte string round-trips, and valid
//! UTF-8 is written unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roar_node::fuzzing::{decode_path as decode, encode_path as encode};

fuzz_target!(|data: &[u8]| {
    let (text, encoded) = encode(data);
    match std::str::from_utf8(data) {
        Ok(s) => {
            assert!(!encoded);
            assert_eq!(text, s);
        }
        Err(_) => {
            assert!(encoded);
            assert_eq!(decode(&text).as_deref(), Some(data));
        }
    }
});
