//! Fuzz target: `lanes_core::fuzz::client_frame` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanes_core::fuzz::client_frame(data));
