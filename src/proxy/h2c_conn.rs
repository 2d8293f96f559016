//! One HTTP/2 connection to an h2c backend, as data: the codec's client side and an inbox
//! per stream (the response head, DATA not yet taken, trailers, why the stream is gone),
//! and the settings corelb announces. `h2c_pool.rs` opens, drives and shares them.

use crate::buffer::{Buf, BufPool, BUF_SIZE};
use crate::h2::{self as codec, Connection, ErrorCode, Fields, StreamId};

use super::decide::Failure;

/// Streams one connection takes before the backend's SETTINGS say how many it allows
/// (and at most, when it allows "unlimited").
pub(super) const STREAMS_PER_CONNECTION: u32 = 100;
/// The read buffer: a whole frame of the default MAX_FRAME_SIZE fits.
pub(super) const READ_BUF: usize = 2 * BUF_SIZE;

/// Why a stream's upstream leg ended without a complete response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gone {
    /// The backend did not process it (REFUSED_STREAM, or above the last stream id of
    /// its GOAWAY): safe to try elsewhere.
    Refused,
    /// The backend reset it with this code.
    Reset(ErrorCode),
    /// The connection broke.
    Lost,
    /// The connection never came up (refused, or timed out when `timeout`).
    Connect { timeout: bool },
}

impl Gone {
    /// The failure of the attempt a stream carried: a refused stream is safe to replay
    /// anywhere; a reset or a lost connection is a reset.
    pub fn failure(self) -> Failure {
        match self {
            Gone::Refused => Failure::Refused,
            Gone::Reset(_) | Gone::Lost => Failure::Reset,
            Gone::Connect { timeout: false } => Failure::Connect,
            Gone::Connect { timeout: true } => Failure::ConnectTimeout,
        }
    }
}

/// One stream's inbox on an upstream connection, keyed by its owner (client, front stream).
pub(crate) struct MuxStream {
    /// 0 until the stream is opened (HEADERS sent).
    pub sid: StreamId,
    pub client: usize,
    /// The owner's HTTP/2 stream id (0: the owner is an HTTP/1.1 exchange).
    pub front: StreamId,
    /// The response head, until the owner takes it.
    pub head: Option<Fields>,
    /// Response DATA the owner has not taken (and not released to the codec).
    pub data: Option<Buf>,
    /// END_STREAM arrived (with the head, DATA or trailers).
    pub end: bool,
    pub trailers: Option<Fields>,
    pub gone: Option<Gone>,
}

/// What a stream's inbox holds at the start of its response, for its owner (either front
/// end).
pub(crate) enum InboxHead {
    /// Nothing yet.
    Wait,
    /// The stream ended without a head.
    Gone(Gone),
    /// A 502/503/504 head the owner's retry policy replays: it stays in the inbox.
    Replay(u16),
    /// The response head, taken from the inbox.
    Head(Fields),
}

impl MuxStream {
    /// The response head once it came (its status is checked by `replay` first), else
    /// the loss that ended the stream, if any.
    pub fn take_head(&mut self, replay: impl FnOnce(u16) -> bool) -> InboxHead {
        let Some(head) = self.head.take() else {
            return self.gone.map_or(InboxHead::Wait, InboxHead::Gone);
        };
        match head.status() {
            Some(s) if replay(s) => {
                self.head = Some(head);
                InboxHead::Replay(s)
            }
            _ => InboxHead::Head(head),
        }
    }

    /// A drained DATA buffer goes back to the pool until more DATA comes.
    pub fn release_drained(&mut self, bufs: &mut BufPool) {
        if self.data.as_ref().is_some_and(|d| d.is_empty()) {
            bufs.release(&mut self.data);
        }
    }

    /// The whole response body is in the inbox: END_STREAM came and no DATA waits.
    pub fn drained_to_end(&self) -> bool {
        self.end && self.data.as_ref().is_none_or(|d| d.is_empty())
    }
}

/// An HTTP/2 connection to one backend.
pub(crate) struct Mux {
    pub conn: Connection,
    pub streams: Vec<MuxStream>,
    /// Each of `streams`' (owner, owner's stream id, stream id), at the same index: the
    /// lookups scan these 16 bytes per stream, not the whole streams.
    pub(super) keys: Vec<(usize, StreamId, StreamId)>,
    pub(super) buf: Option<Buf>,
    /// Takes no new streams: GOAWAY received, broken, or draining.
    pub closed: bool,
    /// Per request: one stream, then close.
    pub single: bool,
}

impl Mux {
    /// Can take one more stream.
    pub(super) fn has_room(&self) -> bool {
        let peer = self.conn.peer_settings().max_concurrent_streams;
        let limit = peer.min(STREAMS_PER_CONNECTION);
        !self.closed && !self.conn.is_closing() && (self.streams.len() as u32) < limit
    }

    /// As [`Mux::stream`], trying index `hint` first (where the stream was last found;
    /// it moves only when a stream before it leaves), and updating it.
    pub fn stream_at(&self, client: usize, front: StreamId, hint: &mut usize) -> Option<usize> {
        if self
            .keys
            .get(*hint)
            .is_some_and(|k| k.0 == client && k.1 == front)
        {
            return Some(*hint);
        }
        let k = self.stream(client, front)?;
        *hint = k;
        Some(k)
    }

    pub fn stream(&self, client: usize, front: StreamId) -> Option<usize> {
        self.keys.iter().position(|k| k.0 == client && k.1 == front)
    }

    pub(super) fn add(&mut self, s: MuxStream) {
        self.keys.push((s.client, s.front, s.sid));
        self.streams.push(s);
    }

    pub(super) fn opened(&mut self, k: usize, sid: StreamId) {
        self.streams[k].sid = sid;
        self.keys[k].2 = sid;
    }

    pub(super) fn remove(&mut self, k: usize) -> MuxStream {
        self.keys.swap_remove(k);
        self.streams.swap_remove(k)
    }
}

/// The opened stream `sid` among a connection's `streams`, by its `keys`.
pub(super) fn by_sid<'a>(
    keys: &[(usize, StreamId, StreamId)],
    streams: &'a mut [MuxStream],
    sid: StreamId,
) -> Option<&'a mut MuxStream> {
    let k = keys.iter().position(|k| k.2 == sid && sid != 0)?;
    Some(&mut streams[k])
}

/// The settings corelb announces to h2c backends.
pub(super) fn client_settings() -> codec::Settings {
    let d = codec::Settings::default();
    codec::Settings {
        // corelb never accepts pushed streams.
        max_concurrent_streams: 0,
        // Room for every stream's window at once: a client that stops reading holds back
        // its own stream only, never the others sharing the connection (a stream buffers
        // at most its window either way).
        connection_window: d.initial_window_size * STREAMS_PER_CONNECTION,
        ..d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(head: Option<&[(&str, &str)]>, gone: Option<Gone>) -> MuxStream {
        MuxStream {
            sid: 1,
            client: 0,
            front: 0,
            head: head.map(Fields::of),
            data: None,
            end: false,
            trailers: None,
            gone,
        }
    }

    #[test]
    fn a_head_is_taken_once_a_status_to_replay_stays_and_a_loss_shows_without_one() {
        let mut s = stream(Some(&[(":status", "503")]), Some(Gone::Lost));
        assert!(matches!(
            s.take_head(|st| st == 503),
            InboxHead::Replay(503)
        ));
        assert!(s.head.is_some(), "kept for the answer if no replay happens");
        assert!(matches!(s.take_head(|_| false), InboxHead::Head(_)));
        assert!(matches!(
            s.take_head(|_| false),
            InboxHead::Gone(Gone::Lost)
        ));
        assert!(matches!(
            stream(None, None).take_head(|_| true),
            InboxHead::Wait
        ));
        let mut ended = stream(Some(&[(":status", "200")]), None);
        ended.end = true;
        assert!(ended.drained_to_end());
    }
}
