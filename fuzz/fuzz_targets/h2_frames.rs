//! Arbitrary bytes after the preface into a server `Connection`, split at a fuzzer-chosen
//! point as a socket would: it must never panic, and events are drained as a worker does.
#![no_main]

use std::time::Instant;

use corelb::h2::{Connection, Event, Limits, Settings, PREFACE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut conn = Connection::server(Settings::default(), Limits::default());
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    let mut input = PREFACE.to_vec();
    let mut buf = Vec::new();
    for part in [&data[..split], &data[split..]] {
        input.extend_from_slice(part);
        buf.extend_from_slice(&input);
        input.clear();
        match conn.recv(&buf, now) {
            Ok(n) => {
                buf.drain(..n);
            }
            Err(_) => return,
        }
        while let Some(ev) = conn.poll_event() {
            match ev {
                Event::Data { stream, data, .. } => {
                    let n = data.len();
                    conn.release(stream, n);
                }
                Event::Headers { stream, .. } => {
                    let _ = conn.send_headers(stream, &[(b":status", b"200")], false);
                    let _ = conn.send_data(stream, b"hello", true);
                }
                _ => {}
            }
        }
        let n = conn.pending_output().len();
        conn.advance_output(n);
    }
});
