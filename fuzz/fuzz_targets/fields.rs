//! Fuzz target: `lanes_core::fuzz::fields` (what it checks is documented there).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lanes_core::fuzz::fields(data));
