//! The retry settings: the count and budget of safe retries, and the retry and hedging
//! policies a user opts in to (what they replay after, for which requests, with what
//! per-try timeout, backoff and replay buffer; when a hedge goes out).

use std::time::Duration;

use super::grpc_status::GrpcStatusSet;

pub const DEFAULT_RETRIES: u32 = 2;
pub const DEFAULT_RETRY_BUDGET: f64 = 0.2;
/// Retries a worker may always make per second, whatever the budget says.
pub const DEFAULT_RETRY_MIN_PER_SEC: f64 = 10.0;

/// Retry settings.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySettings {
    /// Most retries per request.
    pub count: u32,
    /// Retries may add at most this fraction of requests (0.2 = 20%).
    pub budget: f64,
    pub min_per_sec: f64,
    /// Replays the user opted in to (`retryPolicy`, `--retry-on`): none by default.
    pub policy: Option<RetryPolicy>,
    /// Hedged requests the user opted in to (`hedgingPolicy`, `--hedge-delay`).
    pub hedging: Option<HedgingPolicy>,
}

impl RetrySettings {
    /// Request body bytes kept for a replay: the policy's, else 64 KiB.
    #[inline]
    pub fn replay_max(&self) -> usize {
        self.policy
            .as_ref()
            .map_or(DEFAULT_REPLAY_MAX, |p| p.replay_max)
    }
}

impl Default for RetrySettings {
    fn default() -> Self {
        RetrySettings {
            count: DEFAULT_RETRIES,
            budget: DEFAULT_RETRY_BUDGET,
            min_per_sec: DEFAULT_RETRY_MIN_PER_SEC,
            policy: None,
            hedging: None,
        }
    }
}

/// When a hedge (a second copy of a request, to another server) goes out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HedgeDelay {
    /// A fixed delay after the request went out.
    Fixed(Duration),
    /// The first server's 95th percentile latency over its recent responses.
    P95,
}

/// A hedging policy: a request it covers that has no answer after `delay` is sent once
/// more, to another server; the first response head wins and the other is cancelled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HedgingPolicy {
    pub delay: HedgeDelay,
    /// Attempts in all, the first included (2..=5): at most two run at once; at each
    /// further delay without an answer the older gives way to a new one.
    pub max_attempts: u32,
    /// Methods and paths it covers, as [`RetryPolicy::methods`]; empty: GET and HEAD.
    pub methods: Vec<String>,
    /// gRPC statuses of a Trailers-Only answer that do not end a hedged call: another
    /// attempt may still win (UNAVAILABLE always does not).
    pub non_fatal: GrpcStatusSet,
}

impl HedgingPolicy {
    pub fn covers(&self, method: &[u8], path: &[u8]) -> bool {
        if self.methods.is_empty() {
            return method == b"GET" || method == b"HEAD";
        }
        covers(&self.methods, method, path)
    }
}

/// Whether `methods` (names, exact paths, `/prefix*`) names this request.
fn covers(methods: &[String], method: &[u8], path: &[u8]) -> bool {
    methods.iter().any(|m| {
        let m = m.as_bytes();
        match m.strip_suffix(b"*") {
            Some(prefix) if m.first() == Some(&b'/') => path.starts_with(prefix),
            _ if m.first() == Some(&b'/') => path == m,
            _ => method == m,
        }
    })
}

/// The failures a retry policy replays a request after, beyond the safe ones corelb always
/// retries (a bit set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetryOn(u16);

impl RetryOn {
    /// The connection to the backend could not be made (always retried anyway).
    pub const CONNECT: RetryOn = RetryOn(1);
    /// The backend refused the stream unprocessed (always retried anyway).
    pub const REFUSED: RetryOn = RetryOn(2);
    /// The connection or stream broke after the request went out: it may have been
    /// processed.
    pub const RESET: RetryOn = RetryOn(4);
    /// gRPC UNAVAILABLE: a Trailers-Only answer, or a call whose connection broke (what a
    /// gRPC client sees as UNAVAILABLE).
    pub const UNAVAILABLE: RetryOn = RetryOn(8);
    /// gRPC RESOURCE_EXHAUSTED as a Trailers-Only answer.
    pub const RESOURCE_EXHAUSTED: RetryOn = RetryOn(16);
    /// A 502, 503 or 504 response head (the response is dropped, its connection closed).
    pub const STATUS_502: RetryOn = RetryOn(32);
    pub const STATUS_503: RetryOn = RetryOn(64);
    pub const STATUS_504: RetryOn = RetryOn(128);
    /// No response head within the policy's `perTryTimeout`.
    pub const PER_TRY_TIMEOUT: RetryOn = RetryOn(256);

    pub fn with(self, other: RetryOn) -> RetryOn {
        RetryOn(self.0 | other.0)
    }

    pub fn has(self, c: RetryOn) -> bool {
        self.0 & c.0 != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether a response head with `status` is replayed.
    pub fn has_status(self, status: u16) -> bool {
        match status {
            502 => self.has(RetryOn::STATUS_502),
            503 => self.has(RetryOn::STATUS_503),
            504 => self.has(RetryOn::STATUS_504),
            _ => false,
        }
    }
}

/// Exponential backoff with full jitter between the retries of a policy (gRPC's): the
/// n-th retry waits a random time up to `min(initial * multiplier^(n-1), max)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
}

impl Backoff {
    /// The longest wait before retry `n` (1 for the first).
    pub fn ceiling(&self, n: u32) -> Duration {
        let grown = self.initial.as_secs_f64() * self.multiplier.powi(n.saturating_sub(1) as i32);
        Duration::from_secs_f64(grown.min(self.max.as_secs_f64()))
    }
}

/// A retry policy: requests it covers may be replayed after its conditions, even when
/// they may have been processed (a POST whose connection broke after it went out).
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in all, the first one included (2..=5).
    pub max_attempts: u32,
    pub on: RetryOn,
    /// Methods (`GET`) and paths (`/pkg.Service/Method`, `/pkg.Service/*`) it covers;
    /// empty: every request.
    pub methods: Vec<String>,
    /// How long each attempt waits for its response head (`None`: the upstream timeout).
    pub per_try: Option<Duration>,
    /// The wait between retries (`None`: none, the next server is tried at once).
    pub backoff: Option<Backoff>,
    /// Request body bytes kept for a replay (`replayBufferBytes`): a request whose body
    /// outgrows them is not replayed.
    pub replay_max: usize,
}

/// Request body bytes a request keeps for a replay unless the retry policy says.
pub const DEFAULT_REPLAY_MAX: usize = 64 * 1024;
/// The most `replayBufferBytes` may ask for.
pub const MAX_REPLAY_MAX: usize = 16 * 1024 * 1024;

impl RetryPolicy {
    /// Does the policy cover a request with this method and path?
    pub fn covers(&self, method: &[u8], path: &[u8]) -> bool {
        self.methods.is_empty() || covers(&self.methods, method, path)
    }
}
