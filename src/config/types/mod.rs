//! The configuration's vocabulary: routing modes, upstream modes, backend specs, timeouts,
//! routing parameters and availability settings (retries and their policies: `retry.rs`), each with its `DEFAULT_*` constants and
//! `Default`. This is the bottom layer: it imports nothing from the crate, so the balancer,
//! health checks and workers can use these types without depending on how a configuration
//! is read.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

mod grpc_status;
mod retry;

pub use grpc_status::{grpc_status_name, GrpcStatusSet, GRPC_STATUS_MAX, GRPC_STATUS_NAMES};
pub use retry::*;

/// The seed's proxy port.
pub const DEFAULT_PORT: u16 = 9090;
/// The seed's dashboard port.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:5002";
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(15);
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// An upgraded connection (WebSocket and the like) with no byte either way for this long is closed.
pub const DEFAULT_TUNNEL_TIMEOUT: Duration = Duration::from_secs(3600);
/// A response the client takes no byte of for this long is abandoned (NGINX's
/// `send_timeout`, HAProxy's `timeout client` on a blocked send).
pub const DEFAULT_SEND_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_IDLE_PER_BACKEND: usize = 128;
/// HTTP/2 stream resets a client may cause in 10 s (NGINX ends such connections after
/// 200-1,000 streams).
pub const DEFAULT_H2_MAX_RESETS: u32 = 200;
/// HTTP/2 streams per client connection: no limit, as HAProxy's default (h2load and gRPC
/// channels carry millions of calls on one connection).
pub const DEFAULT_H2_MAX_STREAMS: u32 = 0;
/// CSV records the log channel holds before workers start dropping them.
pub const DEFAULT_LOG_QUEUE: usize = 16 * 1024;
/// Bodies (and chunks of chunked bodies) with at least this many bytes left are relayed
/// with splice(2); 0 turns splicing off.
pub const DEFAULT_SPLICE_MIN: u64 = 64 * 1024;
/// Default `TCP_NOTSENT_LOWAT` of a socket a body is spliced into (`notsentLowat`).
pub const DEFAULT_NOTSENT_LOWAT: u64 = 128 * 1024;

pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;
pub const DEFAULT_EJECT_AFTER: u32 = 5;
pub const DEFAULT_BASE_EJECTION: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_EJECTION: Duration = Duration::from_secs(300);

/// Responses in the `adaptive-sma` window. Latency estimates must be smooth over the time
/// a burst of requests takes to come back: after a herd of requests lands on a server, its
/// fast answers return first and its slow ones together later, so a short window swings
/// low then high and traffic swings with it (measured on the seed's A, B, C at wrk -c100:
/// window 32 oscillated between 20 and 400 ms on A and served 613 req/s; 512 holds A near
/// its 143 ms mean and served 646). 512 responses are about a second of a busy server.
pub const DEFAULT_SMA_WINDOW: usize = 512;
/// Least weight of each new response in the `adaptive-ewma` average (the seed used 0.2,
/// which let A's average reach 232 ms, past B): 1/250 averages a busy server over its last
/// few hundred responses, for the reason given at [`DEFAULT_SMA_WINDOW`].
pub const DEFAULT_EWMA_ALPHA: f64 = 0.004;
/// How much time the `adaptive-sma`/`adaptive-ewma` averages span at most: a quiet
/// server's responses weigh by the time between them, so its average covers about half a
/// second rather than hundreds of responses (at 10 req/s, alpha alone would take 25 s to
/// notice a change).
pub const DEFAULT_AVG_SPAN: Duration = Duration::from_millis(500);
/// `peak-ewma` time constant (Finagle's and Linkerd's default): a peak fades over ~10 s.
pub const DEFAULT_PEAK_EWMA_TAU: Duration = Duration::from_secs(10);
/// How fast SMA and EWMA estimates decay while a server sends no responses, and how long
/// without a response makes an estimate stale (re-seeded by the next response; the server
/// is probed one request at a time until then).
pub const DEFAULT_IDLE_DECAY: Duration = Duration::from_secs(10);
/// Estimate of a server that has not answered yet (Linkerd's default RTT).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// A failed exchange counts as a response at least this slow.
pub const DEFAULT_ERROR_LATENCY: Duration = Duration::from_secs(1);
/// Servers compared per pick by `least-request` and `peak-ewma`: power of two choices, as
/// in Envoy, Finagle and Linkerd.
pub const DEFAULT_CHOICES: usize = 2;
/// Servers compared per pick by `adaptive-sma` and `adaptive-ewma`. In-flight counts are
/// shared and exact, so the load term alone keeps a best-of-3 from herding; against the
/// seed's A, B, C (all three compared) it measured 600 req/s at wrk -c100, against 545 for
/// power of two choices, which never compares A with both others.
pub const DEFAULT_ADAPTIVE_CHOICES: usize = 3;
/// `adaptive-sma`/`adaptive-ewma`: exponent on the load factor `1 + in_flight / weight`
/// (Envoy's `active_request_bias`). The latency estimate already contains queueing, so the
/// load term is there to break up herds before answers come back, not to rank servers.
/// With the load term alone deciding, servers settle where `estimate * (1 + n)^bias` is
/// equal, so request shares go as `estimate^-(1 + 1/bias)`: bias 1 sends a server twice as
/// slow 1/4 of the traffic, bias 0.2 sends it 1/64. Seed scenario (wrk -c100, smooth
/// estimates): bias 0.5 served 611 req/s (75/16/9 % to A/B/C), 0.25 633, 0.2 648
/// (85/12/4); unequal-capacity queues were served as well (p99 513 ms at 0.2).
pub const DEFAULT_ADAPTIVE_BIAS: f64 = 0.2;
/// Most servers compared per pick (the sampling policies keep their candidates in arrays
/// of this size).
pub const MAX_CHOICES: usize = 4;

/// Routing policy, as named on the command line and in `make run MODE=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Each server of the best tier in turn.
    RoundRobin,
    /// Smooth weighted round robin by `load`.
    Weighted,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Power of two choices on a moving average of response times times the load.
    AdaptiveSma,
    /// Power of two choices on an EWMA of response times times the load.
    AdaptiveEwma,
    /// Power of two choices on a peak-sensitive EWMA times the load (Finagle's).
    PeakEwma,
}

impl Mode {
    pub const ALL: [Mode; 6] = [
        Mode::RoundRobin,
        Mode::Weighted,
        Mode::LeastRequest,
        Mode::AdaptiveSma,
        Mode::AdaptiveEwma,
        Mode::PeakEwma,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Mode::RoundRobin => "round-robin",
            Mode::Weighted => "weighted",
            Mode::LeastRequest => "least-request",
            Mode::AdaptiveSma => "adaptive-sma",
            Mode::AdaptiveEwma => "adaptive-ewma",
            Mode::PeakEwma => "peak-ewma",
        }
    }

    /// The name in file names: the seed's spelling (`adaptive_sma`, `adaptive_ewma`,
    /// `round-robin`), so the logs are named as the seed named them.
    pub fn file_name(self) -> &'static str {
        match self {
            Mode::AdaptiveSma => "adaptive_sma",
            Mode::AdaptiveEwma => "adaptive_ewma",
            m => m.name(),
        }
    }

    /// Case-insensitive; `_` and `-` are interchangeable (the seed wrote `adaptive_sma`).
    pub fn parse(s: &str) -> Option<Mode> {
        let s = s.trim().to_ascii_lowercase().replace('_', "-");
        match s.as_str() {
            "round-robin" | "roundrobin" | "rr" => Some(Mode::RoundRobin),
            "weighted" | "weighted-round-robin" | "wrr" | "swrr" => Some(Mode::Weighted),
            "least-request" | "least-requests" | "leastrequest" => Some(Mode::LeastRequest),
            "adaptive-sma" | "sma" => Some(Mode::AdaptiveSma),
            "adaptive-ewma" | "ewma" => Some(Mode::AdaptiveEwma),
            "peak-ewma" | "peakewma" => Some(Mode::PeakEwma),
            _ => None,
        }
    }

    /// Every mode's name, comma-separated (for error messages).
    pub fn names() -> String {
        Mode::ALL.map(Mode::name).join(", ")
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How upstream connections are used: the seed's persistent and non-persistent proxies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamMode {
    /// Keep-alive connections in per-worker idle pools.
    Persistent,
    /// A new connection per request, closed after it.
    PerRequest,
}

impl UpstreamMode {
    pub fn name(self) -> &'static str {
        match self {
            UpstreamMode::Persistent => "persistent",
            UpstreamMode::PerRequest => "per-request",
        }
    }

    pub fn parse(s: &str) -> Option<UpstreamMode> {
        match s.trim().to_ascii_lowercase().replace('_', "-").as_str() {
            "persistent" | "keep-alive" => Some(UpstreamMode::Persistent),
            "per-request" | "non-persistent" => Some(UpstreamMode::PerRequest),
            _ => None,
        }
    }
}

impl fmt::Display for UpstreamMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The protocol corelb speaks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protocol {
    /// HTTP/1.1: one exchange at a time per connection.
    #[default]
    Http1,
    /// HTTP/2 cleartext with prior knowledge: many streams per connection (gRPC servers).
    H2c,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
        }
    }

    pub fn parse(s: &str) -> Option<Protocol> {
        match s.trim().to_ascii_lowercase().as_str() {
            "http1" | "http/1.1" | "http1.1" => Some(Protocol::Http1),
            "h2c" | "h2" | "http2" | "grpc" => Some(Protocol::H2c),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One backend server, as configured.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSpec {
    pub name: String,
    /// As written in the config (host name or IP).
    pub address: String,
    pub port: u16,
    /// Lower is preferred; traffic spills to the next tier only when a tier is down.
    pub priority: u32,
    /// Relative share of traffic within its tier.
    pub load: f64,
    /// The resolved socket address.
    pub addr: SocketAddr,
    /// What corelb speaks to it (`"protocol"`, or `--upstream-protocol` for all).
    pub protocol: Protocol,
    /// TLS to this server (`"tls"`); `None`: cleartext.
    pub tls: Option<UpstreamTls>,
}

/// TLS to one backend (`servers[i].tls`): whom to trust, the name to send and verify, and
/// a client certificate for mutual TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTls {
    /// PEM CA bundle; `None`: the system's trust store.
    pub ca: Option<String>,
    /// Server name sent (SNI) and verified; `None`: the server's address as written.
    pub sni: Option<String>,
    /// Verify the server's certificate (on unless `"verify": false`).
    pub verify: bool,
    /// Client certificate chain and key (PEM) for mutual TLS.
    pub cert: Option<String>,
    pub key: Option<String>,
    /// Where it was given, for errors: the file and `servers[i].tls`.
    pub origin: String,
    pub field: String,
}

/// Timeouts, each with a `DEFAULT_*` constant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Establishing an upstream TCP connection (504 on expiry).
    pub connect: Duration,
    /// Receiving a complete request head once its first byte arrived (408 on expiry).
    pub client: Duration,
    /// Upstream inactivity while a response is awaited or read (504 on expiry).
    pub upstream: Duration,
    /// An idle keep-alive client connection is closed after this.
    pub idle: Duration,
    /// An idle pooled upstream connection is closed after this.
    pub pool_idle: Duration,
    /// Graceful shutdown waits at most this long for in-flight requests.
    pub drain: Duration,
    /// An upgraded connection (a tunnel after a 101) idle both ways is closed after this.
    pub tunnel: Duration,
    /// A response blocked on the client (a socket that takes no bytes, an HTTP/2 stream
    /// or connection window kept shut) this long is abandoned and counted.
    pub send: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: DEFAULT_CONNECT_TIMEOUT,
            client: DEFAULT_CLIENT_TIMEOUT,
            upstream: DEFAULT_UPSTREAM_TIMEOUT,
            idle: DEFAULT_IDLE_TIMEOUT,
            pool_idle: DEFAULT_POOL_IDLE_TIMEOUT,
            drain: DEFAULT_DRAIN_TIMEOUT,
            tunnel: DEFAULT_TUNNEL_TIMEOUT,
            send: DEFAULT_SEND_TIMEOUT,
        }
    }
}

/// Tuning of the routing modes; `Default` gives the `DEFAULT_*` constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingParams {
    /// `adaptive-sma`: responses in the moving window (>= 1).
    pub sma_window: usize,
    /// `adaptive-ewma`: least weight of each new response, in (0, 1].
    pub ewma_alpha: f64,
    /// `adaptive-sma`/`adaptive-ewma`: the averages span about this much time at most: a
    /// response `dt` after the previous one weighs at least `1 - exp(-dt / avg_span)` in
    /// the EWMA and replaces that share of the SMA window (> 0).
    pub avg_span: Duration,
    /// `peak-ewma`: time constant of the decay of a peak (> 0).
    pub peak_ewma_tau: Duration,
    /// `adaptive-sma`/`adaptive-ewma`: time constant of the decay while idle, and the
    /// staleness limit (> 0).
    pub idle_decay: Duration,
    /// Estimate before the first response (> 0).
    pub default_rtt: Duration,
    /// Floor of the sample recorded for a failed exchange.
    pub error_latency: Duration,
    /// Servers compared per pick by `least-request` and `peak-ewma`, 1..=4.
    pub choices: usize,
    /// Servers compared per pick by `adaptive-sma` and `adaptive-ewma`, 1..=4.
    pub adaptive_choices: usize,
    /// Exponent on the load factor for `adaptive-sma` and `adaptive-ewma`, in (0, 1].
    pub adaptive_bias: f64,
}

impl Default for RoutingParams {
    fn default() -> Self {
        RoutingParams {
            sma_window: DEFAULT_SMA_WINDOW,
            ewma_alpha: DEFAULT_EWMA_ALPHA,
            avg_span: DEFAULT_AVG_SPAN,
            peak_ewma_tau: DEFAULT_PEAK_EWMA_TAU,
            idle_decay: DEFAULT_IDLE_DECAY,
            default_rtt: DEFAULT_RTT,
            error_latency: DEFAULT_ERROR_LATENCY,
            choices: DEFAULT_CHOICES,
            adaptive_choices: DEFAULT_ADAPTIVE_CHOICES,
            adaptive_bias: DEFAULT_ADAPTIVE_BIAS,
        }
    }
}

impl RoutingParams {
    /// Checks the ranges above; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        match self.invalid() {
            Some((field, problem)) => Err(format!("{field}: {problem}")),
            None => Ok(()),
        }
    }

    /// The first field out of its range (by its Rust name) and what is wrong with it.
    pub fn invalid(&self) -> Option<(&'static str, String)> {
        if self.sma_window == 0 || self.sma_window > 1 << 16 {
            return Some((
                "sma_window",
                format!("expected 1..65536, got {}", self.sma_window),
            ));
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return Some((
                "ewma_alpha",
                format!("expected a number in (0, 1], got {}", self.ewma_alpha),
            ));
        }
        for (name, n) in [
            ("choices", self.choices),
            ("adaptive_choices", self.adaptive_choices),
        ] {
            if !(1..=MAX_CHOICES).contains(&n) {
                return Some((name, format!("expected 1..={MAX_CHOICES}, got {n}")));
            }
        }
        if !(self.adaptive_bias > 0.0 && self.adaptive_bias <= 1.0) {
            return Some((
                "adaptive_bias",
                format!("expected a number in (0, 1], got {}", self.adaptive_bias),
            ));
        }
        [
            ("peak_ewma_tau", self.peak_ewma_tau),
            ("avg_span", self.avg_span),
            ("idle_decay", self.idle_decay),
            ("default_rtt", self.default_rtt),
        ]
        .into_iter()
        .find(|(_, d)| d.is_zero())
        .map(|(name, _)| (name, "must be greater than 0".to_string()))
    }
}

/// What an active health check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// A TCP connect that completes within the timeout.
    Tcp,
    /// `GET path` answered with `expect` within the timeout.
    Http { path: String, expect: u16 },
    /// `grpc.health.v1.Health/Check` for `service` ("" is the whole server) over h2c with
    /// prior knowledge, answered SERVING with grpc-status 0 within the timeout.
    Grpc { service: String },
}

/// The path an HTTP check requests when none is given.
pub const DEFAULT_CHECK_PATH: &str = "/health";
/// The status an HTTP check expects when none is given.
pub const DEFAULT_CHECK_STATUS: u16 = 200;

impl Check {
    /// Splits a spec (`tcp`, `http`, `http:/path`, `http:/path:204`, `grpc`,
    /// `grpc:SERVICE`) into its type (`tcp` in any case is `tcp`) and, for `http`, the path
    /// and status as written; for `grpc`, the service as written (second).
    pub fn split_spec(s: &str) -> (&str, Option<&str>, Option<&str>) {
        let s = s.trim();
        if s.eq_ignore_ascii_case("tcp") {
            return ("tcp", None, None);
        }
        if let Some(rest) = s.strip_prefix("grpc") {
            match rest.strip_prefix(':') {
                Some(service) => return ("grpc", Some(service), None),
                None if rest.is_empty() => return ("grpc", None, None),
                None => return (s, None, None),
            }
        }
        let Some(rest) = s.strip_prefix("http") else {
            return (s, None, None);
        };
        let rest = rest.strip_prefix(':').unwrap_or(rest);
        if rest.is_empty() {
            return ("http", None, None);
        }
        match rest.rsplit_once(':') {
            Some((p, code)) if code.chars().all(|c| c.is_ascii_digit()) => {
                ("http", Some(p), Some(code))
            }
            _ => ("http", Some(rest), None),
        }
    }

    /// Parses `tcp`, `http`, `http:/path`, `http:/path:204`, `grpc` or `grpc:SERVICE`.
    pub fn parse(s: &str) -> Option<Check> {
        match Check::split_spec(s) {
            ("tcp", ..) => Some(Check::Tcp),
            ("grpc", service, _) => {
                let service = service.unwrap_or("");
                check_grpc_service(service).ok()?;
                Some(Check::Grpc {
                    service: service.into(),
                })
            }
            ("http", path, status) => {
                let expect = match status {
                    Some(code) => code.parse().ok()?,
                    None => DEFAULT_CHECK_STATUS,
                };
                let path = path.unwrap_or(DEFAULT_CHECK_PATH);
                if !path.starts_with('/') || !(100..=599).contains(&expect) {
                    return None;
                }
                Some(Check::Http {
                    path: path.into(),
                    expect,
                })
            }
            _ => None,
        }
    }

    /// The check's kind as the `-d` table and `/stats` show it: `tcp`, `http` or `grpc`.
    pub fn kind(&self) -> &'static str {
        match self {
            Check::Tcp => "tcp",
            Check::Http { .. } => "http",
            Check::Grpc { .. } => "grpc",
        }
    }
}

/// Longest gRPC health service name accepted.
pub const MAX_GRPC_SERVICE: usize = 200;

/// A gRPC health check's service name: printable ASCII without spaces, at most
/// [`MAX_GRPC_SERVICE`] bytes ("" asks about the whole server).
pub fn check_grpc_service(s: &str) -> Result<(), String> {
    if s.len() <= MAX_GRPC_SERVICE && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(format!(
            "expected a gRPC service name (printable ASCII, no spaces, at most {MAX_GRPC_SERVICE} bytes), got {s:?}"
        ))
    }
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Check::Tcp => f.write_str("tcp"),
            Check::Http { path, expect } => write!(f, "http:{path}:{expect}"),
            Check::Grpc { service } if service.is_empty() => f.write_str("grpc"),
            Check::Grpc { service } => write!(f, "grpc:{service}"),
        }
    }
}

/// Active-check settings; `interval` and `timeout` are the seed's heartbeat fields.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthSettings {
    pub interval: Duration,
    pub timeout: Duration,
    pub rise: u32,
    pub fall: u32,
    /// The check chosen for every server; `None` when none was chosen: each server then
    /// gets its protocol's default ([`HealthSettings::check_for`]).
    pub check: Option<Check>,
    /// A recovered server's share ramps up linearly over this long (0: at once).
    pub slow_start: Duration,
    /// `false` turns active checks off (servers are then only ejected passively).
    pub enabled: bool,
}

impl Default for HealthSettings {
    fn default() -> Self {
        HealthSettings {
            interval: DEFAULT_HEARTBEAT_INTERVAL,
            timeout: DEFAULT_HEARTBEAT_TIMEOUT,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            check: None,
            slow_start: Duration::ZERO,
            enabled: true,
        }
    }
}

impl HealthSettings {
    /// The check a server speaking `protocol` gets: the one chosen, else a TCP connect
    /// for HTTP/1.1 servers and the standard gRPC health check (whole server) for h2c.
    pub fn check_for(&self, protocol: Protocol) -> Check {
        match (&self.check, protocol) {
            (Some(c), _) => c.clone(),
            (None, Protocol::Http1) => Check::Tcp,
            (None, Protocol::H2c) => Check::Grpc {
                service: String::new(),
            },
        }
    }
}

/// gRPC statuses that count as a backend failure for passive ejection when none are
/// configured: UNAVAILABLE (14), RESOURCE_EXHAUSTED (8) and INTERNAL (13).
pub const DEFAULT_EJECT_GRPC_STATUSES: GrpcStatusSet = GrpcStatusSet(1 << 14 | 1 << 8 | 1 << 13);

/// Passive ejection settings (Envoy's outlier detection, simplified).
#[derive(Debug, Clone, PartialEq)]
pub struct OutlierSettings {
    /// Consecutive failed exchanges that eject a server (0: never).
    pub consecutive: u32,
    /// First ejection time; the n-th ejection lasts n times this, up to `max`.
    pub base: Duration,
    pub max: Duration,
    /// Count 5xx answers as failures too.
    pub on_5xx: bool,
    /// gRPC calls that end with one of these statuses count as failed exchanges.
    pub grpc_statuses: GrpcStatusSet,
}

impl OutlierSettings {
    /// Whether a gRPC call that ended with `code` (its grpc-status) counts as a failure
    /// of its backend for passive ejection.
    #[inline]
    pub fn grpc_status_is_failure(&self, code: u32) -> bool {
        self.grpc_statuses.contains(code)
    }
}

impl Default for OutlierSettings {
    fn default() -> Self {
        OutlierSettings {
            consecutive: DEFAULT_EJECT_AFTER,
            base: DEFAULT_BASE_EJECTION,
            max: DEFAULT_MAX_EJECTION,
            on_5xx: false,
            grpc_statuses: DEFAULT_EJECT_GRPC_STATUSES,
        }
    }
}

/// A TLS handshake not complete this long after the connection was accepted is dropped
/// (a ClientHello trickled byte by byte is the slowloris of TLS).
pub const DEFAULT_TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress per worker; connections beyond are closed at once.
pub const DEFAULT_TLS_MAX_HANDSHAKES: u32 = 1000;

/// The lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsVersion {
    V12,
    V13,
}

/// One certificate chain and its key, as files, with where each was named (for errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    pub cert: String,
    pub key: String,
    /// The file or `command line` that named them.
    pub origin: String,
    /// `tls.certificates[0].cert`, `--tls-cert`.
    pub cert_field: String,
    pub key_field: String,
}

/// TLS to clients: listeners, certificates (the first is the default), ALPN, limits.
#[derive(Debug, Clone, PartialEq)]
pub struct TlsSettings {
    pub listen: Vec<SocketAddr>,
    pub certificates: Vec<CertFiles>,
    /// ALPN protocols offered, in preference order: `h2`, `http/1.1`.
    pub alpn: Vec<String>,
    pub min_version: TlsVersion,
    pub handshake_timeout: Duration,
    /// Per worker.
    pub max_handshakes: u32,
}
