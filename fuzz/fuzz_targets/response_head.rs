//! Fuzz target: the properties in `corelb::http::fuzzing::response_head` hold for any input.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| corelb::http::fuzzing::response_head(data));
