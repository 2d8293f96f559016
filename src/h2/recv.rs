//! The receive half: frame parsing and validation, stream-state checks, flow-control
//! accounting and abuse limits. Each frame either queues events, or is answered with a
//! stream error (RST_STREAM) or a connection error (GOAWAY).

use std::time::Instant;

use super::conn::{Connection, Continuation, Flood, GRACEFUL_PING};
use super::fields::{validate, Fields, Kind};
use super::frame::{self, FrameType, Head, HEADER_LEN};
use super::hpack::Decoded;
use super::stream::Stream;
use super::{ConnError, ErrorCode, Queued, StreamId, DEFAULT_MAX_FRAME, MAX_MAX_FRAME, MAX_WINDOW};

type R = Result<(), ConnError>;

impl Connection {
    /// Parses whole frames from `input`; returns the bytes consumed. Unconsumed bytes (a
    /// partial frame) must be presented again with more appended. `now` feeds the
    /// time-windowed limits.
    pub fn recv(&mut self, input: &[u8], now: Instant) -> Result<usize, ConnError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        self.last_recv = now;
        let mut pos = 0;
        if self.preface_left > 0 {
            let want = &frame::PREFACE[frame::PREFACE.len() - self.preface_left..];
            let n = want.len().min(input.len());
            if input[..n] != want[..n] {
                return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "bad connection preface"));
            }
            self.preface_left -= n;
            pos = n;
            if self.preface_left > 0 {
                return Ok(pos);
            }
        }
        while input.len() - pos >= HEADER_LEN {
            let head = Head::parse(input[pos..pos + HEADER_LEN].try_into().expect("9 bytes"));
            if head.len > self.settings.max_frame_size as usize {
                return Err(
                    self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "frame over MAX_FRAME_SIZE")
                );
            }
            if !self.got_settings && !Connection::frame_type_allowed_first(head.kind, head.flags) {
                return Err(
                    self.conn_error(ErrorCode::PROTOCOL_ERROR, "first frame is not SETTINGS")
                );
            }
            let end = pos + HEADER_LEN + head.len;
            if input.len() < end {
                break;
            }
            self.frame(head, &input[pos + HEADER_LEN..end], now)?;
            pos = end;
        }
        Ok(pos)
    }

    fn frame(&mut self, head: Head, payload: &[u8], now: Instant) -> R {
        if let Some(cont) = self.cont {
            if head.kind != FrameType::Continuation || head.stream != cont.stream {
                return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "expected CONTINUATION"));
            }
        }
        match head.kind {
            FrameType::Data => self.on_data(head, payload),
            FrameType::Headers => self.on_headers(head, payload),
            FrameType::Priority => self.on_priority(head, payload),
            FrameType::RstStream => self.on_rst(head, payload, now),
            FrameType::Settings => self.on_settings(head, payload, now),
            FrameType::PushPromise => {
                Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "PUSH_PROMISE with push disabled"))
            }
            FrameType::Ping => self.on_ping(head, payload, now),
            FrameType::GoAway => self.on_goaway(head, payload),
            FrameType::WindowUpdate => self.on_window_update(head, payload),
            FrameType::Continuation => self.on_continuation(head, payload),
            FrameType::Unknown(_) => Ok(()),
        }
    }

    /// The payload without its padding (§6.1), or a connection error.
    fn unpad<'p>(&mut self, head: &Head, payload: &'p [u8]) -> Result<&'p [u8], ConnError> {
        if !head.has(frame::FLAG_PADDED) {
            return Ok(payload);
        }
        let Some((&pad, rest)) = payload.split_first() else {
            return Err(self.conn_error(
                ErrorCode::FRAME_SIZE_ERROR,
                "padded frame without pad length",
            ));
        };
        if pad as usize >= payload.len() {
            return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "padding exceeds payload"));
        }
        Ok(&rest[..rest.len() - pad as usize])
    }

    fn on_data(&mut self, head: Head, payload: &[u8]) -> R {
        let id = head.stream;
        if id == 0 {
            return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "DATA on stream 0"));
        }
        let body = self.unpad(&head, payload)?;
        let flow = payload.len() as i64;
        if flow > self.recv_window {
            return Err(
                self.conn_error(ErrorCode::FLOW_CONTROL_ERROR, "connection window exceeded")
            );
        }
        self.recv_window -= flow;
        let padding = (payload.len() - body.len()) as u64;
        let end_stream = head.has(frame::FLAG_END_STREAM);
        let Some(s) = self.streams.get_mut(&id) else {
            if self.is_idle(id) {
                return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "DATA on an idle stream"));
            }
            self.release_pending += flow as u64;
            self.flush_conn_window();
            if self.recent_resets.contains(&id) && !self.peer_resets.contains(&id) {
                return Ok(());
            }
            return self.stream_error(id, ErrorCode::STREAM_CLOSED);
        };
        let problem = if !s.state.remote_open() {
            Some(ErrorCode::STREAM_CLOSED)
        } else if !s.head_received {
            Some(ErrorCode::PROTOCOL_ERROR)
        } else if flow > s.recv_window {
            Some(ErrorCode::FLOW_CONTROL_ERROR)
        } else {
            s.received += body.len() as u64;
            match s.content_length {
                Some(cl) if s.received > cl || (end_stream && s.received != cl) => {
                    Some(ErrorCode::PROTOCOL_ERROR)
                }
                _ => None,
            }
        };
        if let Some(code) = problem {
            self.release_pending += flow as u64;
            self.flush_conn_window();
            return self.stream_error(id, code);
        }
        s.recv_window -= flow;
        s.unreleased += body.len() as u64;
        s.release_pending += padding;
        self.unreleased += body.len() as u64;
        self.release_pending += padding;
        if !body.is_empty() || end_stream {
            self.data.extend_from_slice(body);
            self.events.push_back(Queued::Data {
                stream: id,
                len: body.len(),
                end_stream,
            });
        }
        if end_stream {
            self.end_half(id, true);
        }
        self.flush_conn_window();
        Ok(())
    }

    fn on_headers(&mut self, head: Head, payload: &[u8]) -> R {
        let id = head.stream;
        if id == 0 {
            return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "HEADERS on stream 0"));
        }
        let mut fragment = self.unpad(&head, payload)?;
        let mut bad_priority = false;
        if head.has(frame::FLAG_PRIORITY) {
            if fragment.len() < 5 {
                return Err(
                    self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "HEADERS priority truncated")
                );
            }
            bad_priority = frame::u32_at(fragment) & 0x7fff_ffff == id;
            fragment = &fragment[5..];
        }
        let cont = Continuation {
            stream: id,
            end_stream: head.has(frame::FLAG_END_STREAM),
            bad_priority,
            frames: 0,
        };
        if head.has(frame::FLAG_END_HEADERS) {
            return self.on_block(cont, fragment);
        }
        if fragment.len() > self.limits.max_header_block {
            self.counters.continuation_floods += 1;
            return Err(self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "header block too large"));
        }
        self.block.clear();
        self.block.extend_from_slice(fragment);
        self.cont = Some(cont);
        Ok(())
    }

    fn on_continuation(&mut self, head: Head, payload: &[u8]) -> R {
        let Some(mut cont) = self.cont else {
            return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "CONTINUATION without HEADERS"));
        };
        cont.frames += 1;
        if cont.frames > self.limits.max_continuations
            || self.block.len() + payload.len() > self.limits.max_header_block
        {
            self.counters.continuation_floods += 1;
            return Err(self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "CONTINUATION flood"));
        }
        self.block.extend_from_slice(payload);
        if !head.has(frame::FLAG_END_HEADERS) {
            self.cont = Some(cont);
            return Ok(());
        }
        self.cont = None;
        let block = std::mem::take(&mut self.block);
        let r = self.on_block(cont, &block);
        self.block = block;
        r
    }

    /// A complete header block: decode (always, to keep HPACK in step), then route it.
    fn on_block(&mut self, cont: Continuation, block: &[u8]) -> R {
        let id = cont.stream;
        let max_list = self.settings.max_header_list_size as usize;
        // A block decodes to a few times its size (Huffman, indexed fields).
        let mut fields = self.fresh_fields(block.len() * 3 + 64);
        let too_large = match self.hpack.decode(block, max_list, &mut fields) {
            Err(()) => {
                return Err(self.conn_error(ErrorCode::COMPRESSION_ERROR, "HPACK decoding failed"))
            }
            Ok(Decoded::Ok) => false,
            Ok(Decoded::TooLarge(size)) => {
                if size / self.limits.header_bomb_factor.max(1) as usize > max_list {
                    self.counters.hpack_bombs += 1;
                    return Err(self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "HPACK bomb"));
                }
                self.counters.header_lists_too_large += 1;
                true
            }
        };
        if !self.streams.contains_key(&id) {
            return self.on_new_stream(cont, fields, too_large);
        }
        if cont.bad_priority || too_large {
            return self.stream_error(id, ErrorCode::PROTOCOL_ERROR);
        }
        let s = self.streams.get_mut(&id).expect("checked");
        if !s.state.remote_open() {
            return self.stream_error(id, ErrorCode::STREAM_CLOSED);
        }
        if s.local && !s.head_received {
            // A response head (client side), possibly informational.
            let Ok(info) = validate(&fields, Kind::Response) else {
                return self.stream_error(id, ErrorCode::PROTOCOL_ERROR);
            };
            let status = info.status.unwrap_or(0);
            if status < 200 {
                if cont.end_stream || status == 101 {
                    return self.stream_error(id, ErrorCode::PROTOCOL_ERROR);
                }
            } else {
                s.head_received = true;
                if !s.head_request && status != 204 && status != 304 {
                    s.content_length = info.content_length;
                }
                if cont.end_stream && s.content_length.is_some_and(|n| n != 0) {
                    return self.stream_error(id, ErrorCode::PROTOCOL_ERROR);
                }
            }
            self.events.push_back(Queued::Headers {
                stream: id,
                fields,
                end_stream: cont.end_stream,
            });
        } else {
            // Trailers: they must end the stream and carry no pseudo-header.
            let bad = !cont.end_stream
                || validate(&fields, Kind::Trailers).is_err()
                || s.content_length.is_some_and(|n| n != s.received);
            if bad {
                return self.stream_error(id, ErrorCode::PROTOCOL_ERROR);
            }
            self.events
                .push_back(Queued::Trailers { stream: id, fields });
        }
        if cont.end_stream {
            self.end_half(id, true);
        }
        Ok(())
    }

    /// HEADERS on a stream we do not hold: a new request (server), or a late frame.
    fn on_new_stream(&mut self, cont: Continuation, fields: Fields, too_large: bool) -> R {
        let id = cont.stream;
        if !self.peer_initiated(id) {
            if self.is_idle(id) {
                return Err(self.conn_error(
                    ErrorCode::PROTOCOL_ERROR,
                    "HEADERS on an idle stream of ours",
                ));
            }
            if self.recent_resets.contains(&id) {
                return Ok(());
            }
            return Err(self.conn_error(ErrorCode::STREAM_CLOSED, "HEADERS on a closed stream"));
        }
        if !self.server {
            return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "server-initiated stream"));
        }
        if id <= self.max_remote_id {
            if self.peer_resets.contains(&id) {
                // RFC 9113 §5.1: after its own RST_STREAM, a stream error.
                return self.stream_error(id, ErrorCode::STREAM_CLOSED);
            }
            if self.recent_resets.contains(&id) {
                return Ok(());
            }
            return Err(self.conn_error(ErrorCode::STREAM_CLOSED, "HEADERS on a closed stream"));
        }
        self.max_remote_id = id;
        self.counters.streams_opened += 1;
        let after_goaway = self.goaway_sent.is_some_and(|last| id > last);
        if after_goaway || self.active_remote >= self.settings.max_concurrent_streams {
            self.counters.refused_streams += 1;
            return self.stream_error(id, ErrorCode::REFUSED_STREAM);
        }
        if cont.bad_priority || too_large {
            return self.stream_error(id, ErrorCode::PROTOCOL_ERROR);
        }
        let info = match validate(&fields, Kind::Request) {
            Ok(info) if !(cont.end_stream && info.content_length.is_some_and(|n| n != 0)) => info,
            _ => return self.stream_error(id, ErrorCode::PROTOCOL_ERROR),
        };
        if info.extended_connect && !self.settings.enable_connect_protocol {
            // RFC 8441 §3: :protocol only once the server announced it.
            return self.stream_error(id, ErrorCode::PROTOCOL_ERROR);
        }
        let mut s = Stream::new(
            id,
            false,
            self.peer.initial_window_size,
            self.settings.initial_window_size,
        );
        s.head_received = true;
        s.content_length = info.content_length;
        self.streams.insert(id, s);
        self.active_remote += 1;
        self.events.push_back(Queued::Headers {
            stream: id,
            fields,
            end_stream: cont.end_stream,
        });
        if cont.end_stream {
            self.end_half(id, true);
        }
        let max = self.limits.max_streams;
        if max > 0 && self.counters.streams_opened >= max as u64 && self.goaway_sent.is_none() {
            // Stream churn: this one is served, the next go to a new connection.
            self.counters.stream_limit_goaways += 1;
            self.go_away_graceful();
        }
        Ok(())
    }

    fn on_priority(&mut self, head: Head, payload: &[u8]) -> R {
        if head.stream == 0 {
            return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "PRIORITY on stream 0"));
        }
        if payload.len() != 5 {
            return self.stream_error(head.stream, ErrorCode::FRAME_SIZE_ERROR);
        }
        if frame::u32_at(payload) & 0x7fff_ffff == head.stream {
            return self.stream_error(head.stream, ErrorCode::PROTOCOL_ERROR);
        }
        Ok(())
    }

    fn on_rst(&mut self, head: Head, payload: &[u8], now: Instant) -> R {
        let id = head.stream;
        if id == 0 {
            return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "RST_STREAM on stream 0"));
        }
        if payload.len() != 4 {
            return Err(self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "RST_STREAM length"));
        }
        if self.is_idle(id) {
            return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "RST_STREAM on an idle stream"));
        }
        let code = ErrorCode(frame::u32_at(payload));
        if let Some(s) = self.drop_stream(id) {
            self.counters.resets_received += 1;
            Connection::remember(&mut self.peer_resets, id);
            // Only a request the application has not seen is taken back; a response
            // head (our stream) is still delivered.
            if s.local || !self.unqueue(id) {
                self.events.push_back(Queued::Reset {
                    stream: id,
                    code,
                    remote: true,
                });
            }
            if s.active() && !s.local {
                self.note_reset(now)?;
            }
        }
        // A RST_STREAM on a closed stream is never answered with one (RFC 9113 §5.4.2).
        Ok(())
    }

    /// A stream reset (by the peer, or by us for a stream error) while its head is still
    /// queued is taken back: the application never sees it, so nothing is forwarded or
    /// connected for it. True if so.
    pub(super) fn unqueue(&mut self, id: StreamId) -> bool {
        let queued = |q: &Queued| matches!(q, Queued::Headers { stream, .. } if *stream == id);
        if !self.events.iter().any(queued) {
            return false;
        }
        for q in self.events.iter_mut() {
            match q {
                Queued::Data { stream, len, .. } if *stream == id => {
                    *q = Queued::Skip { len: *len };
                }
                _ => {}
            }
        }
        self.events.retain(|q| {
            !matches!(q, Queued::Headers { stream, .. } | Queued::Trailers { stream, .. }
                if *stream == id)
        });
        self.counters.resets_unforwarded += 1;
        true
    }

    fn on_settings(&mut self, head: Head, payload: &[u8], now: Instant) -> R {
        if head.stream != 0 {
            return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "SETTINGS on a stream"));
        }
        if head.has(frame::FLAG_ACK) {
            if !payload.is_empty() {
                return Err(
                    self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "SETTINGS ACK with payload")
                );
            }
            self.unacked_settings = self.unacked_settings.saturating_sub(1);
            return Ok(());
        }
        if !payload.len().is_multiple_of(6) {
            return Err(self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "SETTINGS length"));
        }
        self.roll_window(now);
        self.window_settings += 1;
        if self.window_settings > self.limits.max_settings {
            self.counters.settings_floods += 1;
            return Err(self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "SETTINGS flood"));
        }
        let mut window_grew = false;
        for p in payload.chunks_exact(6) {
            let v = frame::u32_at(&p[2..]);
            match u16::from_be_bytes([p[0], p[1]]) {
                frame::SETTINGS_HEADER_TABLE_SIZE => {
                    self.peer.header_table_size = v;
                    self.hpack.set_peer_table_size(v);
                }
                frame::SETTINGS_ENABLE_PUSH => {
                    if v > 1 || (v == 1 && !self.server) {
                        return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "bad ENABLE_PUSH"));
                    }
                    self.peer.enable_push = v == 1;
                }
                frame::SETTINGS_MAX_CONCURRENT_STREAMS => self.peer.max_concurrent_streams = v,
                frame::SETTINGS_INITIAL_WINDOW_SIZE => {
                    if v > MAX_WINDOW {
                        return Err(self.conn_error(
                            ErrorCode::FLOW_CONTROL_ERROR,
                            "INITIAL_WINDOW_SIZE over 2^31-1",
                        ));
                    }
                    let delta = v as i64 - self.peer.initial_window_size as i64;
                    self.peer.initial_window_size = v;
                    let mut overflow = false;
                    for s in self.streams.values_mut() {
                        s.send_window += delta;
                        overflow |= s.send_window > MAX_WINDOW as i64;
                    }
                    if overflow {
                        return Err(self
                            .conn_error(ErrorCode::FLOW_CONTROL_ERROR, "stream window overflow"));
                    }
                    window_grew |= delta > 0;
                }
                frame::SETTINGS_MAX_FRAME_SIZE => {
                    if !(DEFAULT_MAX_FRAME..=MAX_MAX_FRAME).contains(&v) {
                        return Err(
                            self.conn_error(ErrorCode::PROTOCOL_ERROR, "bad MAX_FRAME_SIZE")
                        );
                    }
                    self.peer.max_frame_size = v;
                }
                frame::SETTINGS_MAX_HEADER_LIST_SIZE => self.peer.max_header_list_size = v,
                _ => {}
            }
        }
        self.got_settings = true;
        frame::put_settings(&mut self.out, &[], true);
        self.queue_control(Flood::Settings)?;
        self.events.push_back(Queued::Settings);
        if window_grew {
            self.events.push_back(Queued::WindowOpened { stream: 0 });
        }
        Ok(())
    }

    fn on_ping(&mut self, head: Head, payload: &[u8], now: Instant) -> R {
        if head.stream != 0 {
            return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "PING on a stream"));
        }
        let Ok(data) = <[u8; 8]>::try_from(payload) else {
            return Err(self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "PING length"));
        };
        if head.has(frame::FLAG_ACK) {
            if data == GRACEFUL_PING && self.graceful_pending {
                self.graceful_pending = false;
                frame::put_goaway(&mut self.out, self.max_remote_id, ErrorCode::NO_ERROR);
                self.goaway_sent = Some(self.max_remote_id);
            } else {
                self.events.push_back(Queued::PingAck { payload: data });
            }
            return Ok(());
        }
        self.roll_window(now);
        self.window_pings += 1;
        if self.window_pings > self.limits.max_pings {
            self.counters.ping_floods += 1;
            return Err(self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "PING flood"));
        }
        frame::put_ping(&mut self.out, data, true);
        self.queue_control(Flood::Ping)
    }

    fn on_goaway(&mut self, head: Head, payload: &[u8]) -> R {
        if head.stream != 0 {
            return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "GOAWAY on a stream"));
        }
        if payload.len() < 8 {
            return Err(self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "GOAWAY length"));
        }
        let last = frame::u32_at(payload) & 0x7fff_ffff;
        let code = ErrorCode(frame::u32_at(&payload[4..]));
        let last = self.goaway_recv.map_or(last, |prev| prev.min(last));
        self.goaway_recv = Some(last);
        let mut refused: Vec<StreamId> = self
            .streams
            .values()
            .filter(|s| s.local && s.id > last)
            .map(|s| s.id)
            .collect();
        refused.sort_unstable();
        for id in refused {
            self.drop_stream(id);
            self.events.push_back(Queued::Reset {
                stream: id,
                code: ErrorCode::REFUSED_STREAM,
                remote: true,
            });
        }
        self.events.push_back(Queued::GoAway {
            last_stream_id: last,
            code,
        });
        Ok(())
    }

    fn on_window_update(&mut self, head: Head, payload: &[u8]) -> R {
        if payload.len() != 4 {
            return Err(self.conn_error(ErrorCode::FRAME_SIZE_ERROR, "WINDOW_UPDATE length"));
        }
        let inc = (frame::u32_at(payload) & 0x7fff_ffff) as i64;
        let id = head.stream;
        if id == 0 {
            if inc == 0 {
                return Err(self.conn_error(ErrorCode::PROTOCOL_ERROR, "WINDOW_UPDATE of 0"));
            }
            if self.send_window + inc > MAX_WINDOW as i64 {
                return Err(
                    self.conn_error(ErrorCode::FLOW_CONTROL_ERROR, "connection window overflow")
                );
            }
            self.send_window += inc;
            self.events.push_back(Queued::WindowOpened { stream: 0 });
            return Ok(());
        }
        if self.is_idle(id) {
            return Err(
                self.conn_error(ErrorCode::PROTOCOL_ERROR, "WINDOW_UPDATE on an idle stream")
            );
        }
        let Some(s) = self.streams.get_mut(&id) else {
            if self.peer_resets.contains(&id) {
                return self.stream_error(id, ErrorCode::STREAM_CLOSED);
            }
            return Ok(());
        };
        if inc == 0 {
            return self.stream_error(id, ErrorCode::PROTOCOL_ERROR);
        }
        if s.send_window + inc > MAX_WINDOW as i64 {
            return self.stream_error(id, ErrorCode::FLOW_CONTROL_ERROR);
        }
        s.send_window += inc;
        if s.state.local_open() {
            self.events.push_back(Queued::WindowOpened { stream: id });
        }
        Ok(())
    }
}
