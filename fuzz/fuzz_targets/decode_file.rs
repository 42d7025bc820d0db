//! The `.netsy` decoder on arbitrary bytes (see `netsy::fuzz::decode_file`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netsy::fuzz::decode_file(data));
