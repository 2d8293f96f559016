//! A sans-IO HTTP/2 codec (RFC 9113) for both sides of the proxy: no sockets, no threads,
//! no clock reads, no async runtime. It imports nothing else from this crate.
//!
//! # Shape
//!
//! A [`Connection`] is a state machine fed with bytes and drained of bytes:
//!
//! * [`Connection::server`] expects the 24-byte client preface (prior-knowledge h2c) and
//!   queues its SETTINGS; [`Connection::client`] queues the preface and its SETTINGS.
//! * [`Connection::recv`]`(input, now)` parses whole frames from `input` and returns how many
//!   bytes it consumed. A partial frame at the end is left unconsumed: the caller keeps
//!   those bytes and presents them again with more appended, so its read buffer must hold
//!   at least `max_frame_size + 9` bytes ([`Settings::max_frame_size`], 16 KiB by default).
//!   A connection error queues GOAWAY, returns [`ConnError`] and every later `recv` fails
//!   again: flush [`Connection::pending_output`], then close.
//! * [`Connection::poll_event`] hands out the parsed [`Event`]s in order. DATA payloads are
//!   kept in one reused buffer and lent out as `&[u8]`, so no allocation happens per frame.
//! * Outgoing: [`Connection::send_headers`], [`Connection::send_data`] (accepts at most what
//!   both send windows allow, framed by the peer's MAX_FRAME_SIZE), [`Connection::send_trailers`],
//!   [`Connection::reset`], [`Connection::go_away`], [`Connection::go_away_graceful`] (the
//!   two-step shutdown of §6.8), [`Connection::ping`], and on the client side
//!   [`Connection::open_stream`] (respects the peer's MAX_CONCURRENT_STREAMS and GOAWAY).
//! * Every frame is written into one growing buffer: [`Connection::pending_output`] shows the
//!   unsent bytes, [`Connection::advance_output`] drops the ones written to the socket.
//!
//! # Flow control and backpressure
//!
//! Received DATA counts against the stream and connection windows until the application
//! calls [`Connection::release`]`(stream, n)` for bytes it really consumed; only then is a
//! WINDOW_UPDATE queued (batched: once half a window is released). A slow reader on one
//! leg of the proxy thus holds back the window of the other. Padding, and data of streams
//! that were reset, are released by the codec itself. A stream whose both halves are
//! closed stays known (not counted as active) until its received data is all released.
//!
//! # Limits
//!
//! [`Limits`] bounds the abuse a peer can do; each trip increments a field of
//! [`Counters`] (read with [`Connection::counters`]): rapid reset (CVE-2023-44487),
//! CONTINUATION floods (CVE-2024-27316), HPACK bombs and oversized header lists, SETTINGS
//! and PING floods, streams above our MAX_CONCURRENT_STREAMS (REFUSED_STREAM).

mod conn;
mod fields;
mod frame;
mod hpack;
mod huffman;
mod recv;
mod send;
mod stream;

#[cfg(test)]
mod tests;

pub use conn::Connection;
pub use fields::{is_connection_specific, Fields, Kind};
pub use frame::{FrameType, PREFACE};

use std::fmt;
use std::time::Duration;

/// A stream identifier (31 bits; 0 is the connection).
pub type StreamId = u32;

/// Largest stream id and window size (2^31 - 1).
pub const MAX_WINDOW: u32 = (1 << 31) - 1;
/// The initial window of every stream and of the connection (RFC 9113 §6.9.2).
pub const DEFAULT_WINDOW: u32 = 65_535;
/// Smallest MAX_FRAME_SIZE, also the default.
pub const DEFAULT_MAX_FRAME: u32 = 16_384;
/// Largest MAX_FRAME_SIZE a peer may announce.
pub const MAX_MAX_FRAME: u32 = (1 << 24) - 1;

/// HTTP/2 error codes (RFC 9113 §7). Unknown codes received are kept as they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    pub const NO_ERROR: ErrorCode = ErrorCode(0x0);
    pub const PROTOCOL_ERROR: ErrorCode = ErrorCode(0x1);
    pub const INTERNAL_ERROR: ErrorCode = ErrorCode(0x2);
    pub const FLOW_CONTROL_ERROR: ErrorCode = ErrorCode(0x3);
    pub const SETTINGS_TIMEOUT: ErrorCode = ErrorCode(0x4);
    pub const STREAM_CLOSED: ErrorCode = ErrorCode(0x5);
    pub const FRAME_SIZE_ERROR: ErrorCode = ErrorCode(0x6);
    pub const REFUSED_STREAM: ErrorCode = ErrorCode(0x7);
    pub const CANCEL: ErrorCode = ErrorCode(0x8);
    pub const COMPRESSION_ERROR: ErrorCode = ErrorCode(0x9);
    pub const CONNECT_ERROR: ErrorCode = ErrorCode(0xa);
    pub const ENHANCE_YOUR_CALM: ErrorCode = ErrorCode(0xb);
    pub const INADEQUATE_SECURITY: ErrorCode = ErrorCode(0xc);
    pub const HTTP_1_1_REQUIRED: ErrorCode = ErrorCode(0xd);

    pub fn name(self) -> &'static str {
        const NAMES: [&str; 14] = [
            "NO_ERROR",
            "PROTOCOL_ERROR",
            "INTERNAL_ERROR",
            "FLOW_CONTROL_ERROR",
            "SETTINGS_TIMEOUT",
            "STREAM_CLOSED",
            "FRAME_SIZE_ERROR",
            "REFUSED_STREAM",
            "CANCEL",
            "COMPRESSION_ERROR",
            "CONNECT_ERROR",
            "ENHANCE_YOUR_CALM",
            "INADEQUATE_SECURITY",
            "HTTP_1_1_REQUIRED",
        ];
        NAMES.get(self.0 as usize).copied().unwrap_or("UNKNOWN")
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:x})", self.name(), self.0)
    }
}

/// A connection error: GOAWAY with `code` has been queued and the connection is finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnError {
    pub code: ErrorCode,
    /// What went wrong, for logs.
    pub reason: &'static str,
}

impl fmt::Display for ConnError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP/2 connection error {}: {}", self.code, self.reason)
    }
}

impl std::error::Error for ConnError {}

/// Why an outgoing call was refused; nothing was queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// No such stream (never opened, or closed and forgotten).
    UnknownStream,
    /// Our half of the stream is already closed (END_STREAM or reset sent).
    Closed,
    /// Headers were not sent yet (DATA or trailers need them), or were sent twice.
    BadOrder,
    /// The connection has failed or is shutting down.
    ConnectionClosed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

impl std::error::Error for SendError {}

/// The SETTINGS one endpoint announces (RFC 9113 §6.5.2). ENABLE_PUSH is always 0 here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settings {
    /// Largest HPACK dynamic table the peer's encoder may use.
    pub header_table_size: u32,
    /// Peer-initiated streams open at once; more are refused with REFUSED_STREAM.
    /// `u32::MAX` means unlimited (not announced).
    pub max_concurrent_streams: u32,
    /// Each stream's receive window. Values below 65 535 are raised to it, so frames sent
    /// before the peer saw our SETTINGS never look like a flow-control violation.
    pub initial_window_size: u32,
    /// Largest frame payload we accept.
    pub max_frame_size: u32,
    /// Largest decoded header list (RFC size: names + values + 32 per field).
    pub max_header_list_size: u32,
    /// Connection receive window, raised from 65 535 by a WINDOW_UPDATE at start (not a
    /// SETTINGS parameter).
    pub connection_window: u32,
    /// Server: announce SETTINGS_ENABLE_CONNECT_PROTOCOL and accept extended CONNECT
    /// requests (RFC 8441, WebSocket over HTTP/2).
    pub enable_connect_protocol: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            header_table_size: 4096,
            max_concurrent_streams: 128,
            initial_window_size: 256 * 1024,
            max_frame_size: DEFAULT_MAX_FRAME,
            max_header_list_size: 64 * 1024,
            connection_window: 1024 * 1024,
            enable_connect_protocol: false,
        }
    }
}

/// What the peer announced (defaults until its first SETTINGS arrives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerSettings {
    pub header_table_size: u32,
    pub enable_push: bool,
    /// `u32::MAX` when not announced.
    pub max_concurrent_streams: u32,
    pub initial_window_size: u32,
    pub max_frame_size: u32,
    /// `u32::MAX` when not announced.
    pub max_header_list_size: u32,
}

impl Default for PeerSettings {
    fn default() -> Self {
        PeerSettings {
            header_table_size: 4096,
            enable_push: true,
            max_concurrent_streams: u32::MAX,
            initial_window_size: DEFAULT_WINDOW,
            max_frame_size: DEFAULT_MAX_FRAME,
            max_header_list_size: u32::MAX,
        }
    }
}

/// Abuse limits; each trip is counted in [`Counters`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rapid reset: at most this many streams reset within `reset_window`, by the peer
    /// (CVE-2023-44487) or by us for what the peer sent (refused streams, stream errors:
    /// MadeYouReset, CVE-2025-8671); one more is answered with GOAWAY ENHANCE_YOUR_CALM.
    pub max_resets: u32,
    pub reset_window: Duration,
    /// CONTINUATION flood: largest encoded header block (HEADERS plus CONTINUATIONs) ...
    pub max_header_block: usize,
    /// ... and most CONTINUATION frames in one block; beyond either, ENHANCE_YOUR_CALM.
    pub max_continuations: u32,
    /// HPACK bomb: a decoded header list this many times over `max_header_list_size`
    /// is a connection error (ENHANCE_YOUR_CALM) rather than a stream reset.
    pub header_bomb_factor: u32,
    /// SETTINGS/PING floods: most ACKs (and RST_STREAMs we answer with) queued while the
    /// output is not drained; beyond, ENHANCE_YOUR_CALM.
    pub max_queued_control: u32,
    /// SETTINGS flood: most SETTINGS frames received within `reset_window`.
    pub max_settings: u32,
    /// Stream churn: most streams the peer may open on one connection; the one that
    /// reaches it starts a graceful GOAWAY, so the client goes on on a new connection (as
    /// NGINX's `keepalive_requests` and HAProxy's `tune.h2.fe.max-total-streams`). 0: no
    /// limit.
    pub max_streams: u32,
    /// PING flood: most PINGs received within `reset_window`.
    pub max_pings: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_resets: 200,
            reset_window: Duration::from_secs(10),
            max_header_block: 256 * 1024,
            max_continuations: 32,
            header_bomb_factor: 4,
            max_queued_control: 1024,
            max_settings: 1000,
            max_pings: 1000,
            max_streams: 0,
        }
    }
}

/// Per-connection counters, for `/stats` and `/metrics`. Limit trips first, then totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// GOAWAY ENHANCE_YOUR_CALM for too many resets (CVE-2023-44487).
    pub rapid_resets: u64,
    /// Header blocks over `max_header_block` or `max_continuations` (CVE-2024-27316).
    pub continuation_floods: u64,
    /// Decoded header lists over MAX_HEADER_LIST_SIZE (stream reset) ...
    pub header_lists_too_large: u64,
    /// ... and HPACK bombs (`header_bomb_factor` times over: connection error).
    pub hpack_bombs: u64,
    /// SETTINGS floods.
    pub settings_floods: u64,
    /// PING floods.
    pub ping_floods: u64,
    /// Streams refused with REFUSED_STREAM above MAX_CONCURRENT_STREAMS or after GOAWAY.
    pub refused_streams: u64,
    /// Streams reset by the peer.
    pub resets_received: u64,
    /// Stream errors we answered with RST_STREAM (malformed messages included).
    pub stream_errors: u64,
    /// Connection errors (GOAWAY with an error code sent).
    pub connection_errors: u64,
    /// Streams opened by the peer and by us.
    pub streams_opened: u64,
    /// Streams that ended with both halves closed cleanly.
    pub streams_completed: u64,
    /// Graceful GOAWAYs sent because the peer reached `max_streams` on the connection.
    pub stream_limit_goaways: u64,
    /// Streams reset (by the peer, or by us for a stream error) before the application saw
    /// their head: never forwarded.
    pub resets_unforwarded: u64,
}

/// Something the peer did, in arrival order. `Data` borrows the connection's buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A request or response head (1xx responses included), decoded and validated.
    Headers {
        stream: StreamId,
        fields: Fields,
        end_stream: bool,
    },
    /// DATA payload without padding. Call [`Connection::release`] once it is consumed.
    Data {
        stream: StreamId,
        data: &'a [u8],
        end_stream: bool,
    },
    /// A trailer section; it ends the stream.
    Trailers { stream: StreamId, fields: Fields },
    /// The stream is gone: reset by the peer (`remote`), or by this codec for a stream
    /// error after its head was delivered, or refused by a GOAWAY.
    Reset {
        stream: StreamId,
        code: ErrorCode,
        remote: bool,
    },
    /// The peer will process no stream above `last_stream_id`.
    GoAway {
        last_stream_id: StreamId,
        code: ErrorCode,
    },
    /// The send window of `stream` (0: the connection, so possibly every stream) grew.
    WindowOpened { stream: StreamId },
    /// The peer's SETTINGS were applied (see [`Connection::peer_settings`]).
    Settings,
    /// Our PING was answered.
    PingAck { payload: [u8; 8] },
}

/// Raw events as queued; `Data` points into the data buffer by length.
#[derive(Debug)]
enum Queued {
    Headers {
        stream: StreamId,
        fields: Fields,
        end_stream: bool,
    },
    Data {
        stream: StreamId,
        len: usize,
        end_stream: bool,
    },
    Trailers {
        stream: StreamId,
        fields: Fields,
    },
    Reset {
        stream: StreamId,
        code: ErrorCode,
        remote: bool,
    },
    GoAway {
        last_stream_id: StreamId,
        code: ErrorCode,
    },
    WindowOpened {
        stream: StreamId,
    },
    Settings,
    PingAck {
        payload: [u8; 8],
    },
    /// DATA of a stream the peer reset before its head was delivered: its bytes are
    /// skipped, never shown.
    Skip {
        len: usize,
    },
}
