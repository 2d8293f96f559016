//! The send half: opening streams (client), heads, DATA within the windows, trailers,
//! resets, GOAWAY (immediate or the two-step graceful one) and PING.

use super::conn::{Connection, GRACEFUL_PING};
use super::frame;
use super::stream::Stream;
use super::{ConnError, ErrorCode, SendError, StreamId, MAX_WINDOW};

type Fields<'a> = &'a [(&'a [u8], &'a [u8])];

impl Connection {
    /// Client side: a new stream id, if the peer's MAX_CONCURRENT_STREAMS, a GOAWAY and
    /// the id space allow. Send its head with [`Connection::send_headers`] right away.
    pub fn open_stream(&mut self) -> Option<StreamId> {
        if self.server
            || self.is_closing()
            || self.active_local >= self.peer.max_concurrent_streams
            || self.next_local_id > MAX_WINDOW
        {
            return None;
        }
        let id = self.next_local_id;
        self.next_local_id += 2;
        let s = Stream::new(
            id,
            true,
            self.peer.initial_window_size,
            self.settings.initial_window_size,
        );
        self.streams.insert(id, s);
        self.active_local += 1;
        self.counters.streams_opened += 1;
        Some(id)
    }

    /// Whether [`Connection::open_stream`] would succeed now.
    pub fn can_open_stream(&self) -> bool {
        !self.server
            && !self.is_closing()
            && self.active_local < self.peer.max_concurrent_streams
            && self.next_local_id <= MAX_WINDOW
    }

    /// Sends a head: a request (client) or a response (server; 1xx heads may precede the
    /// final one). Pseudo-headers come first; names must be lowercase. The fields are not
    /// validated here: the caller builds them.
    pub fn send_headers(
        &mut self,
        id: StreamId,
        fields: Fields<'_>,
        end_stream: bool,
    ) -> Result<(), SendError> {
        self.check_send(id)?;
        let s = self.streams.get_mut(&id).expect("checked");
        if s.head_sent {
            return Err(SendError::BadOrder);
        }
        let status = fields
            .iter()
            .find(|(n, _)| *n == b":status")
            .map(|(_, v)| *v);
        let informational = status.is_some_and(|v| v.first() == Some(&b'1'));
        if informational && end_stream {
            return Err(SendError::BadOrder);
        }
        if !informational {
            s.head_sent = true;
        }
        if s.local {
            s.head_request = fields
                .iter()
                .any(|(n, v)| *n == b":method" && *v == b"HEAD");
        }
        self.write_block(id, fields, end_stream);
        Ok(())
    }

    /// Sends trailers; they end our half of the stream.
    pub fn send_trailers(&mut self, id: StreamId, fields: Fields<'_>) -> Result<(), SendError> {
        self.check_send(id)?;
        if !self.streams[&id].head_sent {
            return Err(SendError::BadOrder);
        }
        self.write_block(id, fields, true);
        Ok(())
    }

    fn write_block(&mut self, id: StreamId, fields: Fields<'_>, end_stream: bool) {
        let mut block = std::mem::take(&mut self.scratch);
        block.clear();
        self.hpack.encode(fields, &mut block);
        let max = self.peer.max_frame_size as usize;
        frame::put_header_block(&mut self.out, id, &block, end_stream, max);
        self.scratch = block;
        if end_stream {
            self.end_half(id, false);
        }
    }

    /// Sends as much of `data` as both send windows allow, in frames of at most the peer's
    /// MAX_FRAME_SIZE; returns the bytes taken. END_STREAM goes out only with the last
    /// byte (or alone when `data` is empty). 0 means wait for `Event::WindowOpened`.
    pub fn send_data(
        &mut self,
        id: StreamId,
        data: &[u8],
        end_stream: bool,
    ) -> Result<usize, SendError> {
        self.check_send(id)?;
        let s = self.streams.get_mut(&id).expect("checked");
        if !s.head_sent {
            return Err(SendError::BadOrder);
        }
        let room = s.send_window.min(self.send_window).max(0) as usize;
        let n = data.len().min(room);
        if n == 0 && !(data.is_empty() && end_stream) {
            return Ok(0);
        }
        s.send_window -= n as i64;
        self.send_window -= n as i64;
        let end = end_stream && n == data.len();
        let max = self.peer.max_frame_size as usize;
        frame::put_data(&mut self.out, id, &data[..n], end, max);
        if end {
            self.end_half(id, false);
        }
        Ok(n)
    }

    fn check_send(&self, id: StreamId) -> Result<(), SendError> {
        if self.failed.is_some() {
            return Err(SendError::ConnectionClosed);
        }
        match self.streams.get(&id) {
            None => Err(SendError::UnknownStream),
            Some(s) if !s.state.local_open() => Err(SendError::Closed),
            Some(_) => Ok(()),
        }
    }

    /// Resets a stream (RST_STREAM with `code`); no-op for streams already gone.
    pub fn reset(&mut self, id: StreamId, code: ErrorCode) {
        if self.failed.is_none() && self.drop_stream(id).is_some() {
            frame::put_rst(&mut self.out, id, code);
            Connection::remember(&mut self.recent_resets, id);
        }
    }

    /// Resets a stream the application refuses for what the peer sent (a request it
    /// cannot forward): as [`Connection::reset`], and it counts toward the reset limit
    /// like the codec's own stream errors. Returns the error if the limit tripped (the
    /// connection is then failed, with GOAWAY ENHANCE_YOUR_CALM queued).
    pub fn refuse_stream(&mut self, id: StreamId, code: ErrorCode) -> Result<(), ConnError> {
        if self.failed.is_none() && self.drop_stream(id).is_some() {
            return self.stream_error(id, code);
        }
        Ok(())
    }

    /// Immediate GOAWAY with the last peer stream we process; new peer streams are
    /// refused. With an error code the connection is finished.
    pub fn go_away(&mut self, code: ErrorCode) {
        if self.failed.is_some() {
            return;
        }
        if code != ErrorCode::NO_ERROR {
            self.conn_error(code, "GOAWAY sent by the application");
            return;
        }
        self.graceful_pending = false;
        frame::put_goaway(&mut self.out, self.max_remote_id, code);
        self.goaway_sent = Some(self.max_remote_id);
    }

    /// Graceful shutdown (§6.8): GOAWAY with 2^31-1 and a PING; when the PING is acked,
    /// the real GOAWAY with the last stream id follows by itself. Streams in flight run to
    /// completion; [`Connection::is_finished`] says when to close.
    pub fn go_away_graceful(&mut self) {
        if self.failed.is_some() || self.goaway_sent.is_some() {
            return;
        }
        frame::put_goaway(&mut self.out, MAX_WINDOW, ErrorCode::NO_ERROR);
        frame::put_ping(&mut self.out, GRACEFUL_PING, false);
        self.goaway_sent = Some(MAX_WINDOW);
        self.graceful_pending = true;
    }

    /// Sends a PING; its ACK comes back as `Event::PingAck`.
    pub fn ping(&mut self, payload: [u8; 8]) {
        if self.failed.is_none() {
            frame::put_ping(&mut self.out, payload, false);
        }
    }
}
