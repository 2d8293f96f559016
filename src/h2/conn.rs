//! The [`Connection`] state: settings, streams, windows, the event queue and the output
//! buffer, plus the bookkeeping shared by the receive (`recv.rs`) and send (`send.rs`)
//! halves.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use std::time::Instant;

use super::fields::Fields;
use super::frame::{self, FrameType};
use super::hpack::Hpack;
use super::stream::{State, Stream};
use super::{
    ConnError, Counters, ErrorCode, Event, Limits, PeerSettings, Queued, Settings, StreamId,
    DEFAULT_MAX_FRAME, DEFAULT_WINDOW, MAX_MAX_FRAME, MAX_WINDOW,
};

/// Streams we reset recently: frames still in flight for them are ignored, not errors.
const RECENT_RESETS: usize = 64;
/// Payload of the PING that closes step one of a graceful shutdown.
pub(super) const GRACEFUL_PING: [u8; 8] = *b"corelb\x00g";

/// A header block being reassembled from HEADERS and CONTINUATION frames.
#[derive(Debug, Clone, Copy)]
pub(super) struct Continuation {
    pub stream: StreamId,
    pub end_stream: bool,
    /// HEADERS carried a self-dependent priority (a stream error once decoded).
    pub bad_priority: bool,
    pub frames: u32,
}

/// One HTTP/2 connection, either side. See the module documentation.
/// Decoded sections a connection keeps for reuse, and the largest buffer it keeps.
const SPARE_FIELDS: usize = 64;
const SPARE_BYTES: usize = 8 * 1024;

pub struct Connection {
    pub(super) server: bool,
    pub(super) settings: Settings,
    pub(super) limits: Limits,
    pub(super) peer: PeerSettings,
    pub(super) hpack: Hpack,
    /// By id; Fx hashing: the ids are the peer's, but a stream map of at most
    /// `max_concurrent_streams` live entries bounds what colliding ids could cost.
    pub(super) streams: FxHashMap<StreamId, Stream>,
    /// Active (open or half-closed) streams opened by the peer, and by us.
    pub(super) active_remote: u32,
    pub(super) active_local: u32,
    /// Highest stream id the peer opened.
    pub(super) max_remote_id: StreamId,
    pub(super) next_local_id: StreamId,
    /// Streams we reset lately: frames the peer sent before it saw our RST_STREAM are
    /// ignored on them.
    pub(super) recent_resets: VecDeque<StreamId>,
    /// Streams the peer reset lately: any frame but PRIORITY on them is a stream error
    /// STREAM_CLOSED (RFC 9113 §5.1).
    pub(super) peer_resets: VecDeque<StreamId>,
    /// The `now` of the latest `recv`, for limits counted outside it.
    pub(super) last_recv: Instant,

    /// Preface bytes still expected (server side).
    pub(super) preface_left: usize,
    pub(super) got_settings: bool,
    pub(super) cont: Option<Continuation>,
    pub(super) block: Vec<u8>,

    /// What the peer may still send on the connection.
    pub(super) recv_window: i64,
    /// Delivered DATA not yet released, over all streams.
    pub(super) unreleased: u64,
    pub(super) release_pending: u64,
    pub(super) send_window: i64,

    pub(super) out: Vec<u8>,
    pub(super) out_pos: usize,
    /// Frames we queued in answer to the peer (ACKs, RST_STREAMs) since the output was
    /// last drained.
    pub(super) queued_control: u32,
    pub(super) scratch: Vec<u8>,
    /// Decoded sections given back by the user ([`Connection::recycle`]), decoded into
    /// again: a stream's head costs no allocation once the connection is warm.
    pub(super) spare: Vec<Fields>,

    pub(super) events: VecDeque<Queued>,
    pub(super) data: Vec<u8>,
    pub(super) data_pos: usize,

    pub(super) failed: Option<ConnError>,
    /// Last stream id of the GOAWAY we sent (2^31-1 during a graceful shutdown's step 1).
    pub(super) goaway_sent: Option<StreamId>,
    pub(super) goaway_recv: Option<StreamId>,
    pub(super) graceful_pending: bool,
    pub(super) unacked_settings: u32,

    /// Start of the current abuse-accounting window, and what it saw.
    pub(super) window_start: Option<Instant>,
    pub(super) window_resets: u32,
    pub(super) window_settings: u32,
    pub(super) window_pings: u32,
    pub(super) counters: Counters,
}

impl Connection {
    /// A server connection for prior-knowledge h2c: expects the client preface; our
    /// SETTINGS are queued at once.
    pub fn server(settings: Settings, limits: Limits) -> Self {
        Connection::new(true, settings, limits)
    }

    /// A client connection: the preface and our SETTINGS are queued at once.
    pub fn client(settings: Settings, limits: Limits) -> Self {
        Connection::new(false, settings, limits)
    }

    fn new(server: bool, mut settings: Settings, limits: Limits) -> Self {
        settings.initial_window_size = settings
            .initial_window_size
            .clamp(DEFAULT_WINDOW, MAX_WINDOW);
        settings.connection_window = settings.connection_window.clamp(DEFAULT_WINDOW, MAX_WINDOW);
        settings.max_frame_size = settings
            .max_frame_size
            .clamp(DEFAULT_MAX_FRAME, MAX_MAX_FRAME);
        let mut c = Connection {
            server,
            settings,
            limits,
            peer: PeerSettings::default(),
            hpack: Hpack::new(settings.header_table_size as usize),
            streams: FxHashMap::default(),
            active_remote: 0,
            active_local: 0,
            max_remote_id: 0,
            next_local_id: if server { 2 } else { 1 },
            recent_resets: VecDeque::new(),
            peer_resets: VecDeque::new(),
            last_recv: Instant::now(),
            preface_left: if server { frame::PREFACE.len() } else { 0 },
            got_settings: false,
            cont: None,
            block: Vec::new(),
            recv_window: DEFAULT_WINDOW as i64,
            unreleased: 0,
            release_pending: 0,
            send_window: DEFAULT_WINDOW as i64,
            out: Vec::new(),
            out_pos: 0,
            queued_control: 0,
            scratch: Vec::new(),
            spare: Vec::new(),
            events: VecDeque::new(),
            data: Vec::new(),
            data_pos: 0,
            failed: None,
            goaway_sent: None,
            goaway_recv: None,
            graceful_pending: false,
            unacked_settings: 1,
            window_start: None,
            window_resets: 0,
            window_settings: 0,
            window_pings: 0,
            counters: Counters::default(),
        };
        if !server {
            c.out.extend_from_slice(frame::PREFACE);
        }
        let s = c.settings;
        let mut params = [(0u16, 0u32); 6];
        let mut n = 0;
        let mut add = |id, v| {
            params[n] = (id, v);
            n += 1;
        };
        if s.header_table_size != 4096 {
            add(frame::SETTINGS_HEADER_TABLE_SIZE, s.header_table_size);
        }
        add(frame::SETTINGS_ENABLE_PUSH, 0);
        if s.max_concurrent_streams != u32::MAX {
            add(
                frame::SETTINGS_MAX_CONCURRENT_STREAMS,
                s.max_concurrent_streams,
            );
        }
        add(frame::SETTINGS_INITIAL_WINDOW_SIZE, s.initial_window_size);
        if s.max_frame_size != DEFAULT_MAX_FRAME {
            add(frame::SETTINGS_MAX_FRAME_SIZE, s.max_frame_size);
        }
        add(frame::SETTINGS_MAX_HEADER_LIST_SIZE, s.max_header_list_size);
        if server && s.enable_connect_protocol {
            add(frame::SETTINGS_ENABLE_CONNECT_PROTOCOL, 1);
        }
        frame::put_settings(&mut c.out, &params[..n], false);
        let extra = s.connection_window - DEFAULT_WINDOW;
        if extra > 0 {
            frame::put_window_update(&mut c.out, 0, extra);
            c.recv_window += extra as i64;
        }
        c
    }

    /// Whether this is the server side.
    pub fn is_server(&self) -> bool {
        self.server
    }

    /// The next queued event, in arrival order. A `Data` event's bytes stay valid until
    /// the next call on the connection.
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        let q = loop {
            match self.events.pop_front() {
                None => {
                    self.data.clear();
                    self.data_pos = 0;
                    return None;
                }
                Some(Queued::Skip { len }) => self.data_pos += len,
                Some(q) => break q,
            }
        };
        Some(match q {
            Queued::Headers {
                stream,
                fields,
                end_stream,
            } => Event::Headers {
                stream,
                fields,
                end_stream,
            },
            Queued::Data {
                stream,
                len,
                end_stream,
            } => {
                let start = self.data_pos;
                self.data_pos += len;
                Event::Data {
                    stream,
                    data: &self.data[start..start + len],
                    end_stream,
                }
            }
            Queued::Trailers { stream, fields } => Event::Trailers { stream, fields },
            Queued::Reset {
                stream,
                code,
                remote,
            } => Event::Reset {
                stream,
                code,
                remote,
            },
            Queued::GoAway {
                last_stream_id,
                code,
            } => Event::GoAway {
                last_stream_id,
                code,
            },
            Queued::WindowOpened { stream } => Event::WindowOpened { stream },
            Queued::Settings => Event::Settings,
            Queued::PingAck { payload } => Event::PingAck { payload },
            Queued::Skip { .. } => unreachable!("skipped above"),
        })
    }

    /// Bytes to write to the peer.
    pub fn pending_output(&self) -> &[u8] {
        &self.out[self.out_pos..]
    }

    /// `n` bytes of [`Connection::pending_output`] were written.
    pub fn advance_output(&mut self, n: usize) {
        self.out_pos = (self.out_pos + n).min(self.out.len());
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            self.queued_control = 0;
        } else if self.out_pos > 64 * 1024 && self.out_pos * 2 > self.out.len() {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
    }

    /// Whether output is waiting.
    pub fn wants_write(&self) -> bool {
        self.out_pos < self.out.len()
    }

    /// Gives back the memory of the connection's buffers while it has no stream, no
    /// header block half received and nothing queued either way (an idle keep-alive
    /// connection); they grow again when the connection is next used.
    /// Takes back a section this connection decoded (a head or trailers the user is done
    /// with), to decode a later one into. Kept: a few, of modest size.
    pub fn recycle(&mut self, mut fields: Fields) {
        if self.spare.len() < SPARE_FIELDS && fields.capacity() <= SPARE_BYTES {
            fields.clear();
            self.spare.push(fields);
        }
    }

    /// A section to decode into, with room for about `bytes` bytes.
    pub(super) fn fresh_fields(&mut self, bytes: usize) -> Fields {
        match self.spare.pop() {
            Some(mut f) => {
                f.reserve(bytes, 16);
                f
            }
            None => Fields::with_capacity(bytes, 16),
        }
    }

    /// Gives the buffers back while the connection is idle (no stream, nothing queued
    /// either way); false if it is not.
    pub fn trim(&mut self) -> bool {
        if !self.streams.is_empty()
            || self.wants_write()
            || !self.events.is_empty()
            || self.cont.is_some()
        {
            return false;
        }
        self.out = Vec::new();
        self.out_pos = 0;
        self.data = Vec::new();
        self.data_pos = 0;
        self.block = Vec::new();
        self.scratch = Vec::new();
        self.spare = Vec::new();
        self.events = VecDeque::new();
        self.streams.shrink_to_fit();
        true
    }

    /// The application consumed `n` bytes of DATA received on `stream` (the stream may be
    /// gone already). Queues WINDOW_UPDATEs once half a window is released.
    pub fn release(&mut self, stream: StreamId, n: usize) {
        let mut n = (n as u64).min(self.unreleased);
        if let Some(s) = self.streams.get_mut(&stream) {
            n = n.min(s.unreleased);
            s.unreleased -= n;
            if s.state.remote_open() {
                s.release_pending += n;
                if s.release_pending >= self.settings.initial_window_size as u64 / 2 {
                    let inc = s.release_pending as u32;
                    s.release_pending = 0;
                    s.recv_window += inc as i64;
                    frame::put_window_update(&mut self.out, stream, inc);
                }
            } else if s.state == State::Closed && s.unreleased == 0 {
                self.streams.remove(&stream);
            }
        }
        self.unreleased -= n;
        self.release_pending += n;
        self.flush_conn_window();
    }

    /// Queues a connection WINDOW_UPDATE once half the connection window is released.
    pub(super) fn flush_conn_window(&mut self) {
        if self.release_pending >= self.settings.connection_window as u64 / 2 {
            let inc = self.release_pending as u32;
            self.release_pending = 0;
            self.recv_window += inc as i64;
            frame::put_window_update(&mut self.out, 0, inc);
        }
    }

    /// Counters of this connection.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// What the peer announced.
    pub fn peer_settings_known(&self) -> bool {
        self.got_settings
    }

    pub fn peer_settings(&self) -> &PeerSettings {
        &self.peer
    }

    /// Our settings (after clamping).
    pub fn local_settings(&self) -> &Settings {
        &self.settings
    }

    /// Open or half-closed streams, both directions.
    pub fn active_streams(&self) -> usize {
        (self.active_remote + self.active_local) as usize
    }

    /// The connection failed (a GOAWAY with an error was queued or received).
    pub fn error(&self) -> Option<ConnError> {
        self.failed
    }

    /// Nothing more can happen: failed, or a GOAWAY was exchanged (ours final) and no
    /// stream is active. Flush the output, then close the socket.
    pub fn is_finished(&self) -> bool {
        self.failed.is_some()
            || ((self.goaway_recv.is_some()
                || (self.goaway_sent.is_some() && !self.graceful_pending))
                && self.active_streams() == 0)
    }

    /// A GOAWAY was sent or received: no new streams.
    pub fn is_closing(&self) -> bool {
        self.failed.is_some() || self.goaway_sent.is_some() || self.goaway_recv.is_some()
    }

    /// Bytes we may send on `stream` now (both windows), 0 for unknown streams.
    pub fn send_capacity(&self, stream: StreamId) -> usize {
        match self.streams.get(&stream) {
            Some(s) if s.state.local_open() => s.send_window.min(self.send_window).max(0) as usize,
            _ => 0,
        }
    }

    /// What the peer's window for `stream` alone still allows (0 if we cannot send on it).
    pub fn stream_window(&self, stream: StreamId) -> usize {
        match self.streams.get(&stream) {
            Some(s) if s.state.local_open() => s.send_window.max(0) as usize,
            _ => 0,
        }
    }

    /// What the peer's connection window still allows.
    pub fn connection_window(&self) -> usize {
        self.send_window.max(0) as usize
    }

    /// The stream is known and we may still send on it.
    pub fn can_send(&self, stream: StreamId) -> bool {
        self.streams
            .get(&stream)
            .is_some_and(|s| s.state.local_open())
    }

    /// Whether `id` belongs to the peer's id space (odd ids are the client's).
    pub(super) fn peer_initiated(&self, id: StreamId) -> bool {
        (id % 2 == 1) == self.server
    }

    /// §5.1.1: ids above the highest used in their space are idle.
    pub(super) fn is_idle(&self, id: StreamId) -> bool {
        if self.peer_initiated(id) {
            id > self.max_remote_id
        } else {
            id >= self.next_local_id
        }
    }

    /// Queues GOAWAY and fails the connection.
    pub(super) fn conn_error(&mut self, code: ErrorCode, reason: &'static str) -> ConnError {
        let e = ConnError { code, reason };
        if self.failed.is_none() {
            frame::put_goaway(&mut self.out, self.max_remote_id, code);
            self.goaway_sent = Some(self.max_remote_id);
            self.counters.connection_errors += 1;
            self.failed = Some(e);
        }
        e
    }

    /// Forgets a stream (reset), releasing its undelivered credit at connection level.
    pub(super) fn drop_stream(&mut self, id: StreamId) -> Option<Stream> {
        let s = self.streams.remove(&id)?;
        if s.active() {
            if s.local {
                self.active_local -= 1;
            } else {
                self.active_remote -= 1;
            }
        }
        self.unreleased -= s.unreleased;
        self.release_pending += s.unreleased;
        self.flush_conn_window();
        Some(s)
    }

    /// Remembers `id` in one of the bounded rings of recently reset streams.
    pub(super) fn remember(ring: &mut VecDeque<StreamId>, id: StreamId) {
        if ring.len() == RECENT_RESETS {
            ring.pop_front();
        }
        ring.push_back(id);
    }

    /// Applies an end of one half; a stream closed both ways stops being active and is
    /// forgotten once its data is released.
    pub(super) fn end_half(&mut self, id: StreamId, remote: bool) {
        let Some(s) = self.streams.get_mut(&id) else {
            return;
        };
        let closed = if remote {
            s.end_remote()
        } else {
            s.end_local()
        };
        if closed {
            let (local, unreleased) = (s.local, s.unreleased);
            if local {
                self.active_local -= 1;
            } else {
                self.active_remote -= 1;
            }
            self.counters.streams_completed += 1;
            if unreleased == 0 {
                self.streams.remove(&id);
            }
        }
    }

    /// Resets `id` with `code` after a stream error we detected. On a server, the client
    /// caused it, so it counts toward the reset limit (MadeYouReset, CVE-2025-8671); a
    /// client (corelb's upstream connections) leaves its backends that budget alone.
    pub(super) fn stream_error(&mut self, id: StreamId, code: ErrorCode) -> Result<(), ConnError> {
        frame::put_rst(&mut self.out, id, code);
        self.counters.stream_errors += 1;
        Connection::remember(&mut self.recent_resets, id);
        if self.server {
            self.note_reset(self.last_recv)?;
        }
        if let Some(s) = self.drop_stream(id) {
            if s.local || (s.head_received && !self.unqueue(id)) {
                self.events.push_back(Queued::Reset {
                    stream: id,
                    code,
                    remote: false,
                });
            }
        }
        self.queue_control(Flood::Reset)
    }

    /// Counts one frame queued in answer to the peer.
    pub(super) fn queue_control(&mut self, kind: Flood) -> Result<(), ConnError> {
        self.queued_control += 1;
        if self.queued_control > self.limits.max_queued_control {
            match kind {
                Flood::Settings => self.counters.settings_floods += 1,
                Flood::Ping => self.counters.ping_floods += 1,
                Flood::Reset => self.counters.rapid_resets += 1,
            }
            return Err(self.conn_error(
                ErrorCode::ENHANCE_YOUR_CALM,
                "too many queued control frames",
            ));
        }
        Ok(())
    }

    /// Opens a new accounting window when the current one is over.
    pub(super) fn roll_window(&mut self, now: Instant) {
        let fresh = self
            .window_start
            .is_none_or(|t| now.saturating_duration_since(t) >= self.limits.reset_window);
        if fresh {
            self.window_start = Some(now);
            self.window_resets = 0;
            self.window_settings = 0;
            self.window_pings = 0;
        }
    }

    /// One more stream reset by the peer, or by us for what the peer sent: rapid-reset
    /// accounting.
    pub(super) fn note_reset(&mut self, now: Instant) -> Result<(), ConnError> {
        self.roll_window(now);
        self.window_resets += 1;
        if self.window_resets > self.limits.max_resets {
            self.counters.rapid_resets += 1;
            return Err(self.conn_error(ErrorCode::ENHANCE_YOUR_CALM, "rapid reset"));
        }
        Ok(())
    }

    pub(super) fn frame_type_allowed_first(kind: FrameType, flags: u8) -> bool {
        kind == FrameType::Settings && flags & frame::FLAG_ACK == 0
    }
}

/// Which flood a queued answer counts toward.
#[derive(Debug, Clone, Copy)]
pub(super) enum Flood {
    Settings,
    Ping,
    Reset,
}
