//! Values as given and the rules they must follow. A value is kept as written (a JSON value
//! from the file, the text of a flag or an environment variable) together with where it
//! came from, until `Config::validate` checks it against its setting's rule. Each rule is
//! written once here and words its problems the same whatever the value's origin, so a bad
//! value reads the same from the file and from a flag.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::types::{GrpcStatusSet, GRPC_STATUS_MAX, MAX_CHOICES};
use super::ConfigError;

/// A value as written, before any check.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Raw {
    /// From the file: serde has checked the file's shape, not its values.
    Json(Value),
    /// From a flag or an environment variable: the text as typed.
    Text(String),
}

impl Raw {
    /// The value as a problem quotes it: a number bare, anything else as a JSON string.
    pub fn shown(&self) -> String {
        match self {
            Raw::Json(v) => v.to_string(),
            Raw::Text(s) if parse_number(s).is_some() => s.trim().to_string(),
            Raw::Text(s) => Value::String(s.clone()).to_string(),
        }
    }

    fn integer(&self) -> Option<i64> {
        match self {
            Raw::Json(Value::Number(n)) => n.as_i64(),
            Raw::Json(_) => None,
            Raw::Text(s) => s.trim().parse().ok(),
        }
    }

    fn number(&self) -> Option<f64> {
        match self {
            Raw::Json(Value::Number(n)) => n.as_f64(),
            Raw::Json(_) => None,
            Raw::Text(s) => parse_number(s),
        }
    }
}

fn parse_number(s: &str) -> Option<f64> {
    s.trim().parse::<f64>().ok().filter(|v| v.is_finite())
}

/// Parses a number of seconds with an optional unit: `250ms`, `5s`, `2m`, `0.5`. Negative
/// values parse (so that they are refused by range, as in the file); `None` when it is not
/// a number.
pub(crate) fn parse_seconds(s: &str) -> Option<f64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    parse_number(num).map(|v| v * scale)
}

/// Durations above this many seconds are refused (`Duration::from_secs_f64` panics on
/// overflow; nothing here needs 30 years).
pub(crate) const MAX_SECONDS: f64 = 1e9;

/// What one setting accepts: turns a [`Raw`] value into a checked one, or says what is
/// wrong with it (the problem names neither the origin nor the field).
pub(crate) trait Rule {
    type Value;
    fn check(&self, raw: &Raw) -> Result<Self::Value, String>;
}

/// An integer in `min..=max`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Int {
    pub min: i64,
    pub max: i64,
}

impl Rule for Int {
    type Value = i64;
    fn check(&self, raw: &Raw) -> Result<i64, String> {
        match raw.integer() {
            Some(n) if (self.min..=self.max).contains(&n) => Ok(n),
            _ if self.max == i64::MAX => Err(format!(
                "expected an integer >= {}, got {}",
                self.min,
                raw.shown()
            )),
            _ => Err(format!(
                "expected an integer {}..{}, got {}",
                self.min,
                self.max,
                raw.shown()
            )),
        }
    }
}

/// A finite number in `min..=max`, or greater than `min` when `above` (with no `max`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Number {
    pub min: f64,
    pub max: f64,
    pub above: bool,
}

impl Rule for Number {
    type Value = f64;
    fn check(&self, raw: &Raw) -> Result<f64, String> {
        let v = raw
            .number()
            .ok_or_else(|| format!("expected a number, got {}", raw.shown()))?;
        if self.above && v <= self.min {
            Err(format!(
                "must be a number greater than {}, got {v}",
                self.min
            ))
        } else if !self.above && !(self.min..=self.max).contains(&v) {
            Err(format!("expected {}..{}, got {v}", self.min, self.max))
        } else {
            Ok(v)
        }
    }
}

/// A duration: seconds as a JSON number in the file, `250ms`, `5s`, `2m` or bare seconds
/// on the command line. `positive` refuses 0.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Seconds {
    pub positive: bool,
}

impl Rule for Seconds {
    type Value = Duration;
    fn check(&self, raw: &Raw) -> Result<Duration, String> {
        let s = match raw {
            Raw::Json(Value::Number(n)) => n.as_f64().unwrap_or(f64::NAN),
            Raw::Json(v) => return Err(format!("expected a number, got {v}")),
            Raw::Text(t) => parse_seconds(t).ok_or_else(|| {
                format!(
                    "expected a duration like 500ms, 5s or 2m, got {}",
                    raw.shown()
                )
            })?,
        };
        if s.is_nan() || s < 0.0 {
            Err(format!("expected seconds >= 0, got {s}"))
        } else if s >= MAX_SECONDS {
            Err(format!("expected less than {MAX_SECONDS} seconds, got {s}"))
        } else if self.positive && s == 0.0 {
            Err("must be greater than 0".into())
        } else {
            Ok(Duration::from_secs_f64(s))
        }
    }
}

/// A number of bytes: an integer in `0..=max`, in the file a number or a string, on the
/// command line with an optional `K`, `KiB`, `M` or `MiB` suffix (powers of 1024); `off`
/// is 0.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BytesOrOff {
    pub max: u64,
}

impl BytesOrOff {
    fn parse(s: &str) -> Option<u64> {
        let s = s.trim();
        if s == "off" {
            return Some(0);
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "K" | "k" | "KiB" => 1 << 10,
            "M" | "m" | "MiB" => 1 << 20,
            _ => return None,
        };
        num.parse::<u64>().ok()?.checked_mul(scale)
    }
}

impl Rule for BytesOrOff {
    type Value = u64;
    fn check(&self, raw: &Raw) -> Result<u64, String> {
        let n = match raw {
            Raw::Json(Value::Number(n)) => n.as_u64(),
            Raw::Json(Value::String(s)) | Raw::Text(s) => Self::parse(s),
            Raw::Json(_) => None,
        };
        match n {
            Some(n) if n <= self.max => Ok(n),
            _ => Err(format!(
                "expected bytes 0..{} (e.g. 65536, 64KiB) or off, got {}",
                self.max,
                raw.shown()
            )),
        }
    }
}

/// A string (any text from the command line).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Text;

impl Rule for Text {
    type Value = String;
    fn check(&self, raw: &Raw) -> Result<String, String> {
        match raw {
            Raw::Json(Value::String(s)) | Raw::Text(s) => Ok(s.clone()),
            Raw::Json(v) => Err(format!("expected a string, got {v}")),
        }
    }
}

/// `true` or `false`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bool;

impl Rule for Bool {
    type Value = bool;
    fn check(&self, raw: &Raw) -> Result<bool, String> {
        match raw {
            Raw::Json(Value::Bool(b)) => Ok(*b),
            Raw::Text(s) if s.trim() == "true" => Ok(true),
            Raw::Text(s) if s.trim() == "false" => Ok(false),
            _ => Err(format!("expected true or false, got {}", raw.shown())),
        }
    }
}

/// A set of gRPC status codes 1..16: a JSON list in the file (`[14, 8, 13]`), a
/// comma-separated list on the command line (`14,8,13`; empty or `none` for no code).
#[derive(Debug, Clone, Copy)]
pub(crate) struct GrpcCodes;

impl Rule for GrpcCodes {
    type Value = GrpcStatusSet;
    fn check(&self, raw: &Raw) -> Result<GrpcStatusSet, String> {
        let items: Vec<Raw> = match raw {
            Raw::Json(Value::Array(list)) => list.iter().cloned().map(Raw::Json).collect(),
            Raw::Json(v) => {
                return Err(format!(
                    "expected a list of gRPC status codes like [14, 8, 13], got {v}"
                ))
            }
            Raw::Text(t) if matches!(t.trim(), "" | "none") => Vec::new(),
            Raw::Text(t) => t.split(',').map(|c| Raw::Text(c.to_string())).collect(),
        };
        let mut codes = Vec::with_capacity(items.len());
        for item in &items {
            match item.integer() {
                Some(c) if (1..=GRPC_STATUS_MAX as i64).contains(&c) => codes.push(c as u32),
                _ => {
                    return Err(format!(
                        "expected gRPC status codes 1..{GRPC_STATUS_MAX}, got {}",
                        item.shown()
                    ))
                }
            }
        }
        Ok(GrpcStatusSet::of(&codes).expect("codes checked"))
    }
}

// The rules of the bounded settings, shared by the file, the flags and the environment.
pub(crate) const PORT: Int = Int { min: 1, max: 65535 };
pub(crate) const PRIORITY: Int = Int {
    min: 0,
    max: u32::MAX as i64,
};
pub(crate) const LOAD: Number = Number {
    min: 0.0,
    max: f64::INFINITY,
    above: true,
};
pub(crate) const WORKERS: Int = Int { min: 1, max: 1024 };
pub(crate) const MAX_IDLE_PER_BACKEND: Int = Int {
    min: 0,
    max: 1 << 20,
};
/// Streams an HTTP/2 client may have reset (by it, or by corelb for what it sent) within
/// 10 s before its connection is closed: at least 1.
pub(crate) const H2_MAX_RESETS: Int = Int {
    min: 1,
    max: u32::MAX as i64,
};
/// Streams an HTTP/2 client may open on one connection (0: no limit).
pub(crate) const H2_MAX_STREAMS: Int = Int {
    min: 0,
    max: u32::MAX as i64,
};
/// Splicing thresholds above 1 GiB would never splice anything worth it: refused.
pub(crate) const SPLICE_MIN: BytesOrOff = BytesOrOff { max: 1 << 30 };
/// A send queue's unsent bytes are bounded at 64 MiB at most (past the kernel's own
/// send buffer maximum, the bound would mean nothing).
pub(crate) const NOTSENT_LOWAT: BytesOrOff = BytesOrOff { max: 64 << 20 };
/// Backend slots in all (`maxServers`): the CSV log names a backend by a 16-bit index.
pub(crate) const MAX_SERVERS: Int = Int { min: 1, max: 4096 };
pub(crate) const LOG_QUEUE: Int = Int {
    min: 1,
    max: i64::MAX,
};
pub(crate) const RISE_FALL: Int = Int { min: 1, max: 1000 };
pub(crate) const STATUS: Int = Int { min: 100, max: 599 };
pub(crate) const CONSECUTIVE_FAILURES: Int = Int {
    min: 0,
    max: 1_000_000,
};
pub(crate) const RETRIES: Int = Int { min: 0, max: 10 };
pub(crate) const PERCENT: Number = Number {
    min: 0.0,
    max: 100.0,
    above: false,
};
pub(crate) const SMA_WINDOW: Int = Int {
    min: 1,
    max: 1 << 16,
};
pub(crate) const CHOICES: Int = Int {
    min: 1,
    max: MAX_CHOICES as i64,
};
/// Any finite number: `RoutingParams::invalid` checks the routing block's numbers and
/// zero durations as a whole.
pub(crate) const ANY_NUMBER: Number = Number {
    min: f64::NEG_INFINITY,
    max: f64::INFINITY,
    above: false,
};
pub(crate) const SECONDS: Seconds = Seconds { positive: false };
pub(crate) const POSITIVE_SECONDS: Seconds = Seconds { positive: true };
pub(crate) const GRPC_CODES: GrpcCodes = GrpcCodes;

/// A value and where it came from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Given {
    pub raw: Raw,
    /// The file, `environment` or `command line`.
    pub origin: String,
    /// The field within the origin: `servers[0].port`, `--rise`, `PROXY_SERVER_PORT`.
    pub field: String,
}

impl Given {
    pub fn new(raw: Raw, origin: &str, field: impl Into<String>) -> Given {
        Given {
            raw,
            origin: origin.to_string(),
            field: field.into(),
        }
    }

    pub fn error(&self, problem: impl Into<String>) -> ConfigError {
        ConfigError::new(&self.origin, self.field.clone(), problem)
    }

    pub fn check<R: Rule>(&self, rule: &R) -> Result<R::Value, ConfigError> {
        rule.check(&self.raw).map_err(|p| self.error(p))
    }
}

/// Every setting with one value (the servers aside), by what it sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Key {
    HeartbeatInterval,
    HeartbeatTimeout,
    Listen,
    Workers,
    Mode,
    Upstream,
    Debug,
    ConnectTimeout,
    ClientTimeout,
    UpstreamTimeout,
    IdleTimeout,
    PoolIdleTimeout,
    DrainTimeout,
    TunnelTimeout,
    SendTimeout,
    MaxIdlePerBackend,
    H2MaxResets,
    H2MaxStreams,
    LogCsv,
    LogQueue,
    SpliceMin,
    NotsentLowat,
    HdrDir,
    HdrInterval,
    CheckType,
    CheckPath,
    CheckStatus,
    /// `healthCheck.service`: the gRPC check's service.
    CheckService,
    CheckEnabled,
    Rise,
    Fall,
    SlowStart,
    EjectAfter,
    EjectTime,
    MaxEjectionTime,
    On5xx,
    /// `outlierDetection.grpcStatuses`, `--eject-grpc-statuses`.
    EjectGrpcStatuses,
    Retries,
    RetryBudget,
    /// `retryPolicy`: the whole object, checked by `config/policy.rs`.
    RetryPolicy,
    /// `--retry-on`: the policy's conditions.
    RetryOn,
    /// `hedgingPolicy`: the whole object, checked by `config/policy.rs`.
    HedgingPolicy,
    /// `--hedge-delay`: the hedging policy's delay.
    HedgeDelay,
    Admin,
    SmaWindow,
    EwmaAlpha,
    AvgSpan,
    PeakEwmaTau,
    IdleDecay,
    LoadBias,
    Choices,
    AdaptiveChoices,
    Pin,
    /// `--upstream-protocol`: every server's protocol.
    UpstreamProtocol,
    MaxServers,
    DnsRefresh,
    Resolver,
    TlsListen,
    TlsCertificates,
    TlsAlpn,
    TlsMinVersion,
    TlsHandshakeTimeout,
    TlsMaxHandshakes,
}

/// One backend as the file lists it; `None` for a missing key.
#[derive(Debug, Clone)]
pub(crate) struct ServerGiven {
    /// `servers[i]`.
    pub path: String,
    pub name: Option<Given>,
    pub address: Option<Given>,
    pub port: Option<Given>,
    pub priority: Option<Given>,
    pub load: Option<Given>,
    pub protocol: Option<Given>,
    pub tls: Option<Given>,
}

/// The backend list and the file it came from.
#[derive(Debug, Clone)]
pub(crate) struct ServersGiven {
    pub origin: String,
    pub list: Vec<ServerGiven>,
}

/// What one source (the file, the environment, the command line) sets.
#[derive(Debug, Clone, Default)]
pub(crate) struct Layer {
    pub values: BTreeMap<Key, Given>,
    /// Only a file lists servers.
    pub servers: Option<ServersGiven>,
}

impl Layer {
    pub fn set(&mut self, key: Key, given: Given) {
        self.values.insert(key, given);
    }

    /// Lays `over` on top: each setting it gives replaces this layer's.
    pub fn merge(&mut self, over: Layer) {
        self.values.extend(over.values);
        if over.servers.is_some() {
            self.servers = over.servers;
        }
    }

    /// The value given for `key`, checked by `rule`; `None` when no source gave one.
    pub fn get<R: Rule>(&self, key: Key, rule: &R) -> Result<Option<R::Value>, ConfigError> {
        self.values.get(&key).map(|g| g.check(rule)).transpose()
    }

    /// The text given for `key`, turned into a value by `parse` (whose error is the
    /// problem).
    pub fn parse<T>(
        &self,
        key: Key,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ConfigError> {
        match self.values.get(&key) {
            None => Ok(None),
            Some(g) => parse(&g.check(&Text)?).map(Some).map_err(|p| g.error(p)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(s: &str) -> Raw {
        Raw::Text(s.into())
    }

    #[test]
    fn a_value_reads_the_same_from_json_and_from_text() {
        for (json, txt) in [
            (Value::from(0), "0"),
            (Value::from(1.5), "1.5"),
            (Value::from("abc"), "abc"),
            (Value::from(1001), "1001"),
        ] {
            assert_eq!(
                RISE_FALL.check(&Raw::Json(json)),
                RISE_FALL.check(&text(txt))
            );
        }
        assert_eq!(
            RISE_FALL.check(&text("abc")).unwrap_err(),
            "expected an integer 1..1000, got \"abc\""
        );
        assert_eq!(
            SECONDS.check(&Raw::Json(Value::from(-1))),
            SECONDS.check(&text("-1s"))
        );
        assert_eq!(
            POSITIVE_SECONDS.check(&text("0ms")).unwrap_err(),
            "must be greater than 0"
        );
        assert_eq!(
            LOAD.check(&text("0")).unwrap_err(),
            "must be a number greater than 0, got 0"
        );
        assert_eq!(
            LOG_QUEUE.check(&text("0")).unwrap_err(),
            "expected an integer >= 1, got 0"
        );
        assert_eq!(SPLICE_MIN.check(&text("off")), Ok(0));
        assert_eq!(SPLICE_MIN.check(&text("64KiB")), Ok(65536));
        assert_eq!(SPLICE_MIN.check(&text("1M")), Ok(1 << 20));
        assert_eq!(
            SPLICE_MIN.check(&Raw::Json(Value::from(4096))),
            SPLICE_MIN.check(&text("4096"))
        );
        assert_eq!(
            SPLICE_MIN.check(&Raw::Json(Value::from("off"))),
            Ok(0),
            "the file takes off too"
        );
        assert_eq!(
            SPLICE_MIN.check(&text("-1")).unwrap_err(),
            "expected bytes 0..1073741824 (e.g. 65536, 64KiB) or off, got -1"
        );
        assert_eq!(
            SPLICE_MIN.check(&Raw::Json(Value::from(1.5))),
            SPLICE_MIN.check(&text("1.5"))
        );
        assert!(SPLICE_MIN.check(&text("2G")).is_err());
        assert!(SPLICE_MIN.check(&text("2048MiB")).is_err());
        assert_eq!(Bool.check(&text("true")), Ok(true));
        assert_eq!(
            Text.check(&Raw::Json(Value::from(5))).unwrap_err(),
            "expected a string, got 5"
        );
        assert_eq!(
            GrpcCodes.check(&Raw::Json(serde_json::json!([14, 8]))),
            GrpcCodes.check(&text("8, 14"))
        );
        assert_eq!(
            GrpcCodes.check(&text("14,17")).unwrap_err(),
            "expected gRPC status codes 1..16, got 17"
        );
        assert_eq!(
            GrpcCodes.check(&Raw::Json(serde_json::json!([0]))),
            GrpcCodes.check(&text("0"))
        );
        assert_eq!(GrpcCodes.check(&text("none")), Ok(GrpcStatusSet::NONE));
        assert_eq!(
            GrpcCodes.check(&Raw::Json(Value::from("14"))).unwrap_err(),
            "expected a list of gRPC status codes like [14, 8, 13], got \"14\""
        );
        assert_eq!(parse_seconds("2m"), Some(120.0));
        assert_eq!(parse_seconds("-500ms"), Some(-0.5));
        assert_eq!(parse_seconds("inf"), None);
    }
}
