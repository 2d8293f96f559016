//! Arbitrary bytes as HPACK header blocks (two in a row, sharing the dynamic table) in
//! HEADERS frames to a server `Connection`: decoding and field validation must not panic.
#![no_main]

use std::time::Instant;

use corelb::h2::{Connection, Limits, Settings, PREFACE};
use libfuzzer_sys::fuzz_target;

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let l = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&[l[1], l[2], l[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

fuzz_target!(|data: &[u8]| {
    let data = &data[..data.len().min(16_000)];
    let half = data.len() / 2;
    let mut input = PREFACE.to_vec();
    frame(&mut input, 4, 0, 0, &[]);
    frame(&mut input, 1, 0x5, 1, &data[..half]);
    frame(&mut input, 1, 0x5, 3, &data[half..]);
    let mut conn = Connection::server(Settings::default(), Limits::default());
    let _ = conn.recv(&input, Instant::now());
    while conn.poll_event().is_some() {}
});
