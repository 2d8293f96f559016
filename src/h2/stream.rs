//! Per-stream state (RFC 9113 §5.1) and flow-control windows. Idle streams are not stored
//! (an id above the highest seen is idle); a closed stream is dropped once its received
//! data is released, and any id below the highest seen that is not stored is closed.

use super::StreamId;

/// Stored states; `idle` and `reserved` never are (push is disabled).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Open,
    /// We sent END_STREAM.
    HalfClosedLocal,
    /// The peer sent END_STREAM.
    HalfClosedRemote,
    /// Both sides ended; kept only while received data is not released.
    Closed,
}

impl State {
    /// The peer may still send on it.
    pub fn remote_open(self) -> bool {
        matches!(self, State::Open | State::HalfClosedLocal)
    }

    /// We may still send on it.
    pub fn local_open(self) -> bool {
        matches!(self, State::Open | State::HalfClosedRemote)
    }
}

#[derive(Debug, Clone)]
pub struct Stream {
    pub id: StreamId,
    pub state: State,
    /// Opened by us (client side).
    pub local: bool,
    /// What we may still send (may go negative after a SETTINGS decrease).
    pub send_window: i64,
    /// What the peer may still send.
    pub recv_window: i64,
    /// DATA bytes handed to the application and not yet released.
    pub unreleased: u64,
    /// Released bytes not yet announced by a WINDOW_UPDATE.
    pub release_pending: u64,
    /// Announced content-length of the received message.
    pub content_length: Option<u64>,
    /// DATA bytes received (payload, without padding).
    pub received: u64,
    /// We sent a final (non-1xx) head.
    pub head_sent: bool,
    /// We received a final (non-1xx) head (a request on the server side).
    pub head_received: bool,
    /// Client side: the request was HEAD, so the response has no body.
    pub head_request: bool,
}

impl Stream {
    pub fn new(id: StreamId, local: bool, send_window: u32, recv_window: u32) -> Self {
        Stream {
            id,
            state: State::Open,
            local,
            send_window: send_window as i64,
            recv_window: recv_window as i64,
            unreleased: 0,
            release_pending: 0,
            content_length: None,
            received: 0,
            head_sent: false,
            head_received: false,
            head_request: false,
        }
    }

    /// Counts toward MAX_CONCURRENT_STREAMS (§5.1.2: open or half-closed).
    pub fn active(&self) -> bool {
        self.state != State::Closed
    }

    /// The peer ended its half; returns whether the stream is now closed.
    pub fn end_remote(&mut self) -> bool {
        self.state = match self.state {
            State::Open => State::HalfClosedRemote,
            _ => State::Closed,
        };
        self.state == State::Closed
    }

    /// We ended our half; returns whether the stream is now closed.
    pub fn end_local(&mut self) -> bool {
        self.state = match self.state {
            State::Open => State::HalfClosedLocal,
            _ => State::Closed,
        };
        self.state == State::Closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transitions() {
        let mut s = Stream::new(1, false, 10, 10);
        assert!(s.state.remote_open() && s.state.local_open() && s.active());
        assert!(!s.end_remote());
        assert_eq!(s.state, State::HalfClosedRemote);
        assert!(!s.state.remote_open() && s.state.local_open());
        assert!(s.end_local());
        assert!(!s.active());

        let mut s = Stream::new(3, true, 10, 10);
        assert!(!s.end_local());
        assert_eq!(s.state, State::HalfClosedLocal);
        assert!(s.state.remote_open() && !s.state.local_open());
        assert!(s.end_remote());
        assert_eq!(s.state, State::Closed);
    }
}
