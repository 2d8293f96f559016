//! Upgraded connections of the test backend. `/ws` is a WebSocket echo (RFC 6455): the
//! handshake's `Sec-WebSocket-Accept`, masked client frames, text, binary and
//! continuation frames echoed as they come, ping answered with pong, a close echoed and
//! the connection closed; a text message `/close` makes the server close first (and the
//! client's close reply ends it). `/upgrade-echo` answers 101 whether or not it was asked
//! to (so a proxy's refusal of an unrequested 101 can be tested) and then echoes bytes
//! until EOF, which it passes on as its own half-close.

use std::net::Shutdown;

use super::{Conn, Fill, Flush, Phase, Step};
use crate::route::Route;

const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// A client text message that makes the server start the closing handshake.
const CLOSE_REQUEST: &[u8] = b"/close";

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub(super) fn accept_key(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key.trim_ascii());
    h.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// What one frame at the front of the input led to.
enum Frame {
    /// Not all of it has arrived.
    Partial,
    /// `used` bytes handled; `close`: the closing handshake is over.
    Done { used: usize, close: bool },
    /// Unmasked, unknown opcode: the connection closes.
    Bad,
}

fn frame_head(out: &mut Vec<u8>, b0: u8, len: usize) {
    out.push(b0);
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Handles the frame at the front of `input`, answering into `out`.
fn ws_frame(input: &[u8], out: &mut Vec<u8>, sent_close: &mut bool) -> Frame {
    if input.len() < 2 {
        return Frame::Partial;
    }
    let (b0, b1) = (input[0], input[1]);
    if b1 & 0x80 == 0 {
        return Frame::Bad;
    }
    let (len, mut i) = match b1 & 0x7f {
        126 if input.len() >= 4 => (u16::from_be_bytes([input[2], input[3]]) as u64, 4),
        127 if input.len() >= 10 => (u64::from_be_bytes(input[2..10].try_into().unwrap()), 10),
        126 | 127 => return Frame::Partial,
        n => (n as u64, 2),
    };
    if ((input.len() - i) as u64) < 4 + len {
        return Frame::Partial;
    }
    let mask = [input[i], input[i + 1], input[i + 2], input[i + 3]];
    i += 4;
    let len = len as usize;
    let payload = &input[i..i + len];
    let used = i + len;
    let unmasked = |out: &mut Vec<u8>| {
        let start = out.len();
        out.extend_from_slice(payload);
        for (k, b) in out[start..].iter_mut().enumerate() {
            *b ^= mask[k % 4];
        }
    };
    let mut close = false;
    match b0 & 0x0f {
        // Text, binary, continuation: echoed as framed (FIN and opcode kept).
        0..=2 => {
            let text = b0 == 0x81 && payload.len() == CLOSE_REQUEST.len();
            let mut plain = Vec::new();
            if text {
                unmasked(&mut plain);
            }
            if text && plain == CLOSE_REQUEST {
                frame_head(out, 0x88, 5);
                out.extend_from_slice(&1000u16.to_be_bytes());
                out.extend_from_slice(b"bye");
                *sent_close = true;
            } else {
                frame_head(out, b0, len);
                unmasked(out);
            }
        }
        // Close: the reply to ours ends it; a client's close is echoed, then we close.
        8 => {
            if !*sent_close {
                frame_head(out, 0x88, len);
                unmasked(out);
            }
            close = true;
        }
        9 => {
            frame_head(out, 0x8a, len);
            unmasked(out);
        }
        10 => {}
        _ => return Frame::Bad,
    }
    Frame::Done { used, close }
}

impl Conn {
    /// Answers 101 for `route` (`accept`: the WebSocket accept key) and switches.
    pub(super) fn start_upgrade(&mut self, id: &str, route: Route, accept: Option<String>) {
        let out = &mut self.wbuf;
        out.extend_from_slice(b"HTTP/1.1 101 Switching Protocols\r\n");
        match (route, accept) {
            (Route::Ws, Some(key)) => {
                out.extend_from_slice(b"Upgrade: websocket\r\nConnection: Upgrade\r\n");
                out.extend_from_slice(b"Sec-WebSocket-Accept: ");
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            _ => out.extend_from_slice(b"Upgrade: echo\r\nConnection: Upgrade\r\n"),
        }
        out.extend_from_slice(b"X-Backend: ");
        out.extend_from_slice(id.as_bytes());
        out.extend_from_slice(b"\r\n\r\n");
        self.phase = Phase::Upgraded {
            ws: route == Route::Ws,
            sent_close: false,
            closing: false,
        };
    }

    /// Output first (an echo reads no faster than its peer takes the answers), then the
    /// frames or bytes that arrived, then more input.
    pub(super) fn step_upgraded(&mut self) -> Step {
        match self.flush() {
            Flush::Done => {}
            Flush::Blocked => return Step::Wait,
            Flush::Failed => return Step::Close,
        }
        let Phase::Upgraded {
            ws,
            mut sent_close,
            closing,
        } = self.phase
        else {
            unreachable!("step_upgraded outside the upgraded phase");
        };
        if closing {
            let _ = self.sock.shutdown(Shutdown::Write);
            return Step::Close;
        }
        if self.rstart < self.rend {
            let input = &self.rbuf[self.rstart..self.rend];
            if !ws {
                self.wbuf.extend_from_slice(input);
                self.rstart = self.rend;
                return Step::Again;
            }
            match ws_frame(input, &mut self.wbuf, &mut sent_close) {
                Frame::Partial => {}
                Frame::Done { used, close } => {
                    self.rstart += used;
                    self.phase = Phase::Upgraded {
                        ws,
                        sent_close,
                        closing: close,
                    };
                    return Step::Again;
                }
                Frame::Bad => return Step::Close,
            }
        }
        match self.fill() {
            Fill::Read => Step::Again,
            Fill::Blocked => Step::Wait,
            Fill::Eof => {
                self.phase = Phase::Upgraded {
                    ws,
                    sent_close,
                    closing: true,
                };
                Step::Again
            }
            Fill::Full | Fill::Failed => Step::Close,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_key_of_rfc_6455() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frames_are_unmasked_and_answered() {
        // RFC 6455 §5.7: a masked "Hello".
        let hello = [
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let mut out = Vec::new();
        let mut sent = false;
        assert!(matches!(
            ws_frame(&hello[..5], &mut out, &mut sent),
            Frame::Partial
        ));
        let Frame::Done { used, close } = ws_frame(&hello, &mut out, &mut sent) else {
            panic!("frame");
        };
        assert_eq!((used, close), (11, false));
        assert_eq!(out, b"\x81\x05Hello");
        // A ping is answered with a pong carrying its payload.
        out.clear();
        let mut ping = hello;
        ping[0] = 0x89;
        ws_frame(&ping, &mut out, &mut sent);
        assert_eq!(out, b"\x8a\x05Hello");
        // Unmasked frames are refused.
        assert!(matches!(
            ws_frame(b"\x81\x00", &mut out, &mut sent),
            Frame::Bad
        ));
    }
}
