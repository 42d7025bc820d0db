//! Request validation and evaluation on arbitrary request sequences, then replay and
//! snapshot round trips (see `netsy::fuzz::requests`).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| netsy::fuzz::requests(data));
