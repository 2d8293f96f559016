//! The proxy's pure decisions, kept apart from sockets so tests can state them directly:
//! may a request be replayed and where, may an upstream connection go back to the pool,
//! and which deadlines apply to an exchange now.

use crate::config::types::RetryOn;
use crate::http::{self, Canned, Method};

/// Why an exchange failed on the upstream side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    Connect,
    ConnectTimeout,
    Reset,
    Timeout,
    BadResponse(&'static str),
    /// The backend did not process the request (an HTTP/2 REFUSED_STREAM, a stream above
    /// its GOAWAY's last stream id, a gRPC UNAVAILABLE before any response).
    Refused,
    /// No response head within the retry policy's per-try timeout.
    PerTryTimeout,
    /// A 502, 503 or 504 head a retry policy replays (the response is dropped).
    Status(u16),
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Connect => "connect failed",
            Failure::ConnectTimeout => "connect timed out",
            Failure::Reset => "connection reset or closed",
            Failure::Timeout => "timed out",
            Failure::BadResponse(why) => why,
            Failure::Refused => "refused by the backend (not processed)",
            Failure::PerTryTimeout => "no response within the per-try timeout",
            Failure::Status(502) => "answered 502",
            Failure::Status(503) => "answered 503",
            Failure::Status(_) => "answered 504",
        }
    }

    /// Its index in [`crate::shared::RETRY_REASONS`] (how retries after it are counted).
    pub fn label(self) -> usize {
        match self {
            Failure::Connect => 0,
            Failure::ConnectTimeout => 1,
            Failure::Reset => 2,
            Failure::Timeout => 3,
            Failure::BadResponse(_) => 4,
            Failure::Refused => 5,
            Failure::PerTryTimeout => 6,
            Failure::Status(502) => 7,
            Failure::Status(503) => 8,
            Failure::Status(_) => 9,
        }
    }

    /// The answer a client gets when nothing else can be done.
    pub fn canned(self) -> Canned {
        match self {
            Failure::Timeout | Failure::ConnectTimeout | Failure::PerTryTimeout => {
                http::GATEWAY_TIMEOUT
            }
            _ => http::BAD_GATEWAY,
        }
    }
}

/// What is known of an attempt when it fails, for [`replay`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    pub method: Method,
    /// The rewritten request head is still held (it is dropped once a response starts).
    pub head_kept: bool,
    /// The whole head was written to the backend.
    pub head_written: bool,
    /// Request body bytes already sent (a body, once sent, cannot be replayed).
    pub body_sent: u64,
    /// Some response bytes are queued for, or reached, the client.
    pub answered: bool,
    /// Any response byte arrived from the backend.
    pub got_bytes: bool,
    /// The attempt ran on a pooled keep-alive connection.
    pub reused: bool,
    /// The one free replay after a stale pooled connection was already used.
    pub stale_retried: bool,
    /// Retries made so far.
    pub retries: u8,
    /// The failures a retry policy covering this request replays it after.
    pub opted: RetryOn,
}

/// Where a failed attempt may go next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replay {
    /// Nowhere: answer the client.
    No,
    /// The keep-alive race: a pooled connection the backend had closed. Same server, a
    /// fresh connection, outside the retry budget, once.
    Fresh,
    /// Another server, if the retry budget allows.
    Elsewhere,
    /// Another server, as [`Replay::Elsewhere`], only because the user's retry policy
    /// says so (the request may have been processed).
    Policy,
}

/// May the request be tried again after `why`? Only what is safe: nothing reached the
/// client, no body byte was consumed, and either the connect failed, the connection broke
/// before any response byte, or the method is idempotent (then a timeout or a break
/// mid-head is retried too). A non-idempotent request that was written whole may have been
/// processed: it is replayed only if the connection never came up or broke before it was
/// all sent.
///
/// A retry policy the user opted in to (`a.opted`) adds what may have been processed: a
/// request whose connection or stream broke after it went out (`reset`), that had no
/// response head within the per-try timeout (`per-try-timeout`), or that was answered
/// 502, 503 or 504 (the answer not yet forwarded), up to `policy_retries` retries. Its
/// body must still be held whole all the same.
pub(crate) fn replay(a: &Attempt, why: Failure, max_retries: u32, policy_retries: u32) -> Replay {
    if !a.head_kept || a.body_sent > 0 || a.answered {
        return Replay::No;
    }
    let safe = match why {
        Failure::Connect | Failure::ConnectTimeout | Failure::Refused => true,
        Failure::Reset if !a.got_bytes => a.method.idempotent() || !a.head_written,
        Failure::Reset | Failure::Timeout | Failure::PerTryTimeout => a.method.idempotent(),
        // A server's own answer, which it may have acted on: only a policy replays it.
        Failure::BadResponse(_) | Failure::Status(_) => false,
    };
    let opted = match why {
        Failure::Reset => a.opted.has(RetryOn::RESET),
        Failure::PerTryTimeout => a.opted.has(RetryOn::PER_TRY_TIMEOUT),
        Failure::Status(s) => a.opted.has_status(s),
        _ => false,
    };
    if !safe && !opted {
        return Replay::No;
    }
    let max_retries = if safe { max_retries } else { policy_retries };
    // Only a safe replay takes the keep-alive race for what it is (a replay the policy
    // allowed goes elsewhere: the connection may have died with its server).
    if safe && a.reused && !a.got_bytes && why == Failure::Reset {
        return if a.stale_retried {
            Replay::No
        } else {
            Replay::Fresh
        };
    }
    if u32::from(a.retries) >= max_retries {
        return Replay::No;
    }
    if safe {
        Replay::Elsewhere
    } else {
        Replay::Policy
    }
}

/// Backends a request already failed on; a retry never returns there. Retries are bounded
/// (at most 10), so a small inline set holds every index, whatever the number of backends.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Tried {
    ids: [u32; 12],
    n: u8,
}

impl Tried {
    pub fn insert(&mut self, backend: usize) {
        if self.contains(backend) {
            return;
        }
        if let Some(slot) = self.ids.get_mut(self.n as usize) {
            *slot = backend as u32;
            self.n += 1;
        }
    }

    pub fn contains(&self, backend: usize) -> bool {
        self.ids[..self.n as usize].contains(&(backend as u32))
    }
}

/// What decides whether an upstream connection may serve another request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PoolCheck {
    /// `--upstream persistent`.
    pub persistent: bool,
    /// The response was cleanly framed and the backend did not ask to close.
    pub keep: bool,
    /// The whole request was sent (the connection is in step with the backend).
    pub request_done: bool,
    /// Bytes may be queued past the response, or the backend shut its side.
    pub unread: bool,
    pub draining: bool,
    pub pooled: usize,
    pub max_idle: usize,
}

/// Reuse only after a cleanly framed, complete exchange the backend did not close.
pub(crate) fn may_pool(p: &PoolCheck) -> bool {
    p.persistent && p.keep && p.request_done && !p.unread && !p.draining && p.pooled < p.max_idle
}

/// Where an exchange stands, for [`deadlines`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Waits {
    /// Response bytes are queued for the client, which cannot take them now.
    pub client_slow: bool,
    /// The request body must come from the client before anything more can be sent.
    pub need_client_body: bool,
    /// The request head or body bytes still have to be written to the backend.
    pub request_pending: bool,
    /// The whole response has arrived.
    pub response_done: bool,
    /// Response head bytes have arrived: the backend is sending, not waiting on the request.
    pub response_started: bool,
}

/// Timeouts in milliseconds, as the deadlines use them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub client: u64,
    pub upstream: u64,
    pub idle: u64,
    pub send: u64,
}

/// The deadlines (client, upstream) of an exchange after progress, in worker ms (0: none).
/// The side we now wait on gets one; some side always has one while the exchange lives.
pub(crate) fn deadlines(w: &Waits, now: u64, t: &Limits) -> (u64, u64) {
    let (client_at, up_at) = if w.client_slow {
        // Blocked on a slow reader: the client's send timeout, not the backend's.
        (now + t.send, 0)
    } else if w.need_client_body && !w.response_started {
        // The backend waits for the body as corelb does: only the client is late. (Both
        // deadlines, of equal length, made the outcome of a stalled upload a race between
        // a 504 and a close.)
        (now + t.client, 0)
    } else if w.need_client_body {
        // Both sides stream at once: either one stalling ends the exchange.
        (now + t.client, now + t.upstream)
    } else {
        (0, now + t.upstream)
    };
    // A complete response needs no more from the backend, unless request bytes are still
    // to be written to it (it may have stopped reading: the write must time out).
    let up_at = if w.response_done && !w.request_pending {
        0
    } else {
        up_at
    };
    if client_at == 0 && up_at == 0 {
        // Nothing to wait for on either side would leave the exchange without a deadline.
        return (now + t.idle, 0);
    }
    (client_at, up_at)
}

/// Where a retry goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Again {
    /// Another server, newly picked.
    Elsewhere,
    /// The same server on a fresh connection, after a pooled one it had already closed
    /// (the keep-alive race): the one transparent replay, outside the retry budget.
    StaleConnection,
    /// The same server on another connection: it refused the stream unprocessed and no
    /// other server could take it.
    Refused,
}

impl Again {
    /// The attempt goes back to the server it failed on, under the same pick.
    pub fn same_server(self) -> bool {
        self != Again::Elsewhere
    }
}

/// Whose fault an exchange's early end was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Blame {
    /// Connect failure, reset, timeout or a malformed response.
    Backend,
    /// The client left, stalled or sent a bad body.
    Client,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(method: Method) -> Attempt {
        Attempt {
            method,
            head_kept: true,
            head_written: true,
            body_sent: 0,
            answered: false,
            got_bytes: false,
            reused: false,
            stale_retried: false,
            retries: 0,
            opted: RetryOn::default(),
        }
    }

    #[test]
    fn connect_failures_are_retried_for_every_method() {
        for m in [Method::Get, Method::Post] {
            for why in [Failure::Connect, Failure::ConnectTimeout] {
                assert_eq!(replay(&attempt(m), why, 2, 0), Replay::Elsewhere);
            }
        }
    }

    #[test]
    fn a_refused_request_was_not_processed_and_goes_elsewhere_whatever_its_method() {
        let post = Attempt {
            got_bytes: true,
            ..attempt(Method::Post)
        };
        assert_eq!(replay(&post, Failure::Refused, 2, 0), Replay::Elsewhere);
        // Still never once the client saw bytes, nor past the retry count.
        let answered = Attempt {
            answered: true,
            ..post
        };
        assert_eq!(replay(&answered, Failure::Refused, 2, 0), Replay::No);
        let spent = Attempt { retries: 2, ..post };
        assert_eq!(replay(&spent, Failure::Refused, 2, 0), Replay::No);
    }

    #[test]
    fn a_post_written_whole_is_not_replayed_after_a_reset_or_timeout() {
        let a = attempt(Method::Post);
        assert_eq!(replay(&a, Failure::Reset, 2, 0), Replay::No);
        assert_eq!(replay(&a, Failure::Timeout, 2, 0), Replay::No);
        let partly = Attempt {
            head_written: false,
            ..a
        };
        assert_eq!(replay(&partly, Failure::Reset, 2, 0), Replay::Elsewhere);
    }

    #[test]
    fn idempotent_requests_survive_timeouts_and_mid_head_breaks() {
        let a = Attempt {
            got_bytes: true,
            ..attempt(Method::Get)
        };
        assert_eq!(replay(&a, Failure::Timeout, 2, 0), Replay::Elsewhere);
        assert_eq!(replay(&a, Failure::Reset, 2, 0), Replay::Elsewhere);
        assert_eq!(replay(&a, Failure::BadResponse("x"), 2, 0), Replay::No);
    }

    #[test]
    fn nothing_is_replayed_once_the_client_saw_bytes_or_a_body_was_sent() {
        let answered = Attempt {
            answered: true,
            ..attempt(Method::Get)
        };
        assert_eq!(replay(&answered, Failure::Connect, 2, 0), Replay::No);
        let body = Attempt {
            body_sent: 1,
            ..attempt(Method::Put)
        };
        assert_eq!(replay(&body, Failure::Connect, 2, 0), Replay::No);
        let no_head = Attempt {
            head_kept: false,
            ..attempt(Method::Get)
        };
        assert_eq!(replay(&no_head, Failure::Connect, 2, 0), Replay::No);
    }

    #[test]
    fn the_retry_count_bounds_replays_elsewhere() {
        let a = Attempt {
            retries: 2,
            ..attempt(Method::Get)
        };
        assert_eq!(replay(&a, Failure::Connect, 2, 0), Replay::No);
        assert_eq!(replay(&a, Failure::Connect, 3, 0), Replay::Elsewhere);
        assert_eq!(
            replay(&attempt(Method::Get), Failure::Connect, 0, 0),
            Replay::No
        );
    }

    #[test]
    fn a_stale_pooled_connection_is_replayed_once_on_a_fresh_one() {
        let a = Attempt {
            reused: true,
            retries: 5,
            ..attempt(Method::Post)
        };
        // Even a written POST: the backend closed the idle connection before reading it.
        assert_eq!(replay(&a, Failure::Reset, 2, 0), Replay::No);
        let get = Attempt {
            method: Method::Get,
            ..a
        };
        assert_eq!(replay(&get, Failure::Reset, 2, 0), Replay::Fresh);
        let again = Attempt {
            stale_retried: true,
            ..get
        };
        assert_eq!(replay(&again, Failure::Reset, 2, 0), Replay::No);
    }

    #[test]
    fn tried_holds_backends_past_64() {
        let mut t = Tried::default();
        for b in [0, 63, 64, 200, 70_000] {
            assert!(!t.contains(b));
            t.insert(b);
            assert!(t.contains(b));
        }
        t.insert(64);
        assert!(!t.contains(65));
    }

    fn pool() -> PoolCheck {
        PoolCheck {
            persistent: true,
            keep: true,
            request_done: true,
            unread: false,
            draining: false,
            pooled: 0,
            max_idle: 4,
        }
    }

    #[test]
    fn only_a_clean_complete_exchange_is_pooled() {
        assert!(may_pool(&pool()));
        let no = [
            PoolCheck {
                persistent: false,
                ..pool()
            },
            PoolCheck {
                keep: false,
                ..pool()
            },
            PoolCheck {
                request_done: false,
                ..pool()
            },
            PoolCheck {
                unread: true,
                ..pool()
            },
            PoolCheck {
                draining: true,
                ..pool()
            },
            PoolCheck {
                pooled: 4,
                ..pool()
            },
        ];
        for p in no {
            assert!(!may_pool(&p), "{p:?}");
        }
    }

    const T: Limits = Limits {
        client: 10,
        upstream: 60,
        idle: 30,
        send: 20,
    };

    fn waits() -> Waits {
        Waits {
            client_slow: false,
            need_client_body: false,
            request_pending: false,
            response_done: false,
            response_started: false,
        }
    }

    #[test]
    fn deadlines_follow_the_side_we_wait_on() {
        assert_eq!(deadlines(&waits(), 100, &T), (0, 160));
        let slow = Waits {
            client_slow: true,
            ..waits()
        };
        assert_eq!(deadlines(&slow, 100, &T), (120, 0));
        let body = Waits {
            need_client_body: true,
            ..waits()
        };
        assert_eq!(deadlines(&body, 100, &T), (110, 0));
        let duplex = Waits {
            need_client_body: true,
            response_started: true,
            ..waits()
        };
        assert_eq!(deadlines(&duplex, 100, &T), (110, 160));
    }

    #[test]
    fn a_complete_response_with_request_bytes_unsent_keeps_a_deadline() {
        // The backend answered and stopped reading while body bytes wait to be written.
        let w = Waits {
            response_done: true,
            response_started: true,
            request_pending: true,
            ..waits()
        };
        assert_eq!(deadlines(&w, 100, &T), (0, 160));
        let done = Waits {
            response_done: true,
            ..waits()
        };
        let (c, u) = deadlines(&done, 100, &T);
        assert!(c != 0 || u != 0, "an exchange always keeps a deadline");
    }

    #[test]
    fn a_policy_replays_a_reset_request_that_may_have_been_processed_within_its_bounds() {
        let post = Attempt {
            opted: RetryOn::RESET,
            ..attempt(Method::Post)
        };
        assert_eq!(replay(&post, Failure::Reset, 2, 2), Replay::Policy);
        // Only the conditions it names, within its attempts, with the body still held.
        assert_eq!(replay(&post, Failure::Timeout, 2, 2), Replay::No);
        let spent = Attempt { retries: 2, ..post };
        assert_eq!(replay(&spent, Failure::Reset, 5, 2), Replay::No);
        let body_gone = Attempt {
            body_sent: 10,
            ..post
        };
        assert_eq!(replay(&body_gone, Failure::Reset, 2, 2), Replay::No);
        let answered = Attempt {
            answered: true,
            ..post
        };
        assert_eq!(replay(&answered, Failure::Reset, 2, 2), Replay::No);
        // A pooled connection's break is not taken for the keep-alive race: elsewhere.
        let pooled = Attempt {
            reused: true,
            ..post
        };
        assert_eq!(replay(&pooled, Failure::Reset, 2, 2), Replay::Policy);
        // Without the policy, never.
        let plain = attempt(Method::Post);
        assert_eq!(replay(&plain, Failure::Reset, 2, 2), Replay::No);
    }

    #[test]
    fn a_policy_replays_the_statuses_and_per_try_timeouts_it_names_and_nothing_else() {
        let got = |opted| Attempt {
            opted,
            got_bytes: true,
            head_written: true,
            ..attempt(Method::Post)
        };
        let on_503 = got(RetryOn::STATUS_503);
        assert_eq!(replay(&on_503, Failure::Status(503), 2, 2), Replay::Policy);
        assert_eq!(replay(&on_503, Failure::Status(502), 2, 2), Replay::No);
        // Never without a policy, whatever the method: the server answered.
        let get = Attempt {
            got_bytes: true,
            ..attempt(Method::Get)
        };
        assert_eq!(replay(&get, Failure::Status(503), 2, 2), Replay::No);
        // A per-try timeout is a timeout: safe for a GET, a policy's call for a POST.
        let post = attempt(Method::Post);
        assert_eq!(replay(&post, Failure::PerTryTimeout, 2, 2), Replay::No);
        let opted = Attempt {
            opted: RetryOn::PER_TRY_TIMEOUT,
            ..post
        };
        assert_eq!(replay(&opted, Failure::PerTryTimeout, 2, 2), Replay::Policy);
        let get = attempt(Method::Get);
        assert_eq!(
            replay(&get, Failure::PerTryTimeout, 2, 2),
            Replay::Elsewhere
        );
    }
}
