//! Configuration: the seed's JSON file format, command-line flags and environment merged
//! into one validated [`Config`]. Owns defaults and validation; it starts nothing.
//!
//! Precedence: command-line flags, then the environment (`PROXY_SERVER_PORT`,
//! `PROXY_SERVER_CONFIG`), then the file, then the `DEFAULT_*` constants. Every error names
//! where the value came from, the field and the problem, on one line.
//!
//! The vocabulary the balancer and health checks share lives in [`types`], which imports
//! nothing from the crate, so `config` depends on neither of them.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value};

pub mod types;

pub use types::*;

/// The configuration used when neither `--config` nor `PROXY_SERVER_CONFIG` is given: the
/// seed's three backends A, B and C on 127.0.0.1:8081-8083, all in tier 0.
pub const DEFAULT_CONFIG: &str = r#"{
  "_comment": "corelb embedded default: backends A, B, C as started by `make backends`",
  "heartbeatInterval": 2,
  "heartbeatTimeout": 1,
  "servers": [
    { "priority": 0, "name": "A", "address": "127.0.0.1", "port": 8081, "load": 1 },
    { "priority": 0, "name": "B", "address": "127.0.0.1", "port": 8082, "load": 1 },
    { "priority": 0, "name": "C", "address": "127.0.0.1", "port": 8083, "load": 1 }
  ]
}"#;

/// A configuration problem: where, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, the environment variable or "command line".
    pub origin: String,
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(origin: &str, field: impl Into<String>, problem: impl Into<String>) -> Self {
        ConfigError {
            origin: origin.to_string(),
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.origin, self.field, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where the servers came from: a file path or "<embedded default>".
    pub source: String,
    pub listen: SocketAddr,
    pub workers: usize,
    pub mode: Mode,
    pub upstream: UpstreamMode,
    pub debug: bool,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub servers: Vec<BackendSpec>,
    pub timeouts: Timeouts,
    pub max_idle_per_backend: usize,
    /// Per-request CSV log file; `None` when logging is off.
    pub log_csv: Option<String>,
    /// `log_csv` was named by the file, not derived from mode and upstream.
    pub log_csv_named: bool,
    /// Records the log channel holds before records are dropped.
    pub log_queue: usize,
    /// Directory for HDR histogram dumps; `None` for no dumps.
    pub hdr_dir: Option<String>,
    /// Also dump every this often.
    pub hdr_interval: Option<Duration>,
    /// Active health checks (interval and timeout are the seed's heartbeat fields).
    pub health: HealthSettings,
    /// Passive ejection of failing servers.
    pub outlier: OutlierSettings,
    pub retry: RetrySettings,
    /// Admin and dashboard listener; `None` when off.
    pub admin: Option<SocketAddr>,
    /// Tuning of the latency-aware routing modes.
    pub routing: RoutingParams,
    /// Pin each worker to a core (off: let the scheduler place them).
    pub pin: bool,
}

/// Settings that may come from the command line or the environment (already merged by
/// clap, flags first); `None` means "not given".
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<String>,
    pub listen: Option<String>,
    pub workers: Option<usize>,
    pub mode: Option<String>,
    pub upstream: Option<String>,
    pub debug: bool,
    pub connect_timeout: Option<String>,
    pub client_timeout: Option<String>,
    pub upstream_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub pool_idle_timeout: Option<String>,
    pub drain_timeout: Option<String>,
    pub max_idle_per_backend: Option<usize>,
    pub log_csv: Option<String>,
    pub log_queue: Option<usize>,
    pub hdr_dir: Option<String>,
    pub hdr_interval: Option<String>,
    pub health_check: Option<String>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub slow_start: Option<String>,
    pub eject_after: Option<u32>,
    pub eject_time: Option<String>,
    pub retries: Option<u32>,
    pub retry_budget: Option<f64>,
    pub admin: Option<String>,
    pub sma_window: Option<usize>,
    pub ewma_alpha: Option<f64>,
    pub avg_span: Option<String>,
    pub peak_ewma_tau: Option<String>,
    pub no_pin: bool,
}

const CLI: &str = "command line";

/// Parses a duration: `250ms`, `5s`, `2m`, or a bare number of seconds (`0.5`).
pub fn parse_duration(s: &str) -> Option<Duration> {
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
    let v: f64 = num.trim().parse().ok()?;
    (v.is_finite() && v >= 0.0 && v * scale < 1e9).then(|| Duration::from_secs_f64(v * scale))
}

/// Parses a listen address: `PORT`, `HOST:PORT` or `[V6]:PORT`. A bare port binds loopback.
pub fn parse_listen(s: &str) -> Option<SocketAddr> {
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Some(port) = s.strip_prefix(':') {
        return parse_listen(port);
    }
    s.to_socket_addrs().ok()?.next()
}

impl Config {
    /// Builds the configuration from overrides, reading the file they name (or the
    /// embedded default).
    pub fn load(o: &Overrides) -> Result<Config, ConfigError> {
        let (source, text) = match &o.config {
            Some(path) => {
                let text = std::fs::read_to_string(Path::new(path))
                    .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read: {e}")))?;
                (path.clone(), text)
            }
            None => ("<embedded default>".to_string(), DEFAULT_CONFIG.to_string()),
        };
        let mut cfg = Config::from_json(&source, &text)?;
        cfg.apply(o)?;
        Ok(cfg)
    }

    /// Parses and validates the JSON configuration text; `source` names it in errors.
    pub fn from_json(source: &str, text: &str) -> Result<Config, ConfigError> {
        let err = |field: &str, problem: String| ConfigError::new(source, field, problem);
        let root: Value = serde_json::from_str(text).map_err(|e| {
            err(
                "(json)",
                format!(
                    "invalid JSON at line {} column {}: {e}",
                    e.line(),
                    e.column()
                ),
            )
        })?;
        let obj = root
            .as_object()
            .ok_or_else(|| err("(root)", "expected a JSON object".into()))?;
        let f = Fields {
            source,
            obj,
            path: String::new(),
        };
        f.only(&[
            "heartbeatInterval",
            "heartbeatTimeout",
            "servers",
            "listen",
            "workers",
            "mode",
            "upstream",
            "timeouts",
            "maxIdlePerBackend",
            "logCsv",
            "hdrDir",
            "hdrInterval",
            "healthCheck",
            "outlierDetection",
            "retries",
            "admin",
            "routing",
        ])?;

        let heartbeat_interval = f
            .seconds("heartbeatInterval")?
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let heartbeat_timeout = f
            .seconds("heartbeatTimeout")?
            .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT);
        if heartbeat_interval.is_zero() {
            return Err(err("heartbeatInterval", "must be greater than 0".into()));
        }
        if heartbeat_timeout.is_zero() {
            return Err(err("heartbeatTimeout", "must be greater than 0".into()));
        }

        let servers_v = obj
            .get("servers")
            .ok_or_else(|| err("servers", "missing: list at least one server".into()))?;
        let list = servers_v
            .as_array()
            .ok_or_else(|| err("servers", "expected a list of servers".into()))?;
        if list.is_empty() {
            return Err(err("servers", "empty: list at least one server".into()));
        }
        let mut servers: Vec<BackendSpec> = Vec::with_capacity(list.len());
        for (i, v) in list.iter().enumerate() {
            let path = format!("servers[{i}]");
            let s = v
                .as_object()
                .ok_or_else(|| err(&path, "expected an object".into()))?;
            let sf = Fields {
                source,
                obj: s,
                path: format!("{path}."),
            };
            sf.only(&["priority", "name", "address", "port", "load"])?;
            let name = sf.string("name")?.ok_or_else(|| sf.missing("name"))?;
            if name.is_empty() {
                return Err(sf.bad("name", "must not be empty"));
            }
            if let Some(j) = servers.iter().position(|o| o.name == name) {
                return Err(sf.bad(
                    "name",
                    &format!("\"{name}\" is already used by servers[{j}]"),
                ));
            }
            let address = sf.string("address")?.ok_or_else(|| sf.missing("address"))?;
            let port = sf
                .int("port", 1, 65535)?
                .ok_or_else(|| sf.missing("port"))? as u16;
            let priority = sf.int("priority", 0, u32::MAX as i64)?.unwrap_or(0) as u32;
            let load = sf.number("load")?.unwrap_or(1.0);
            if !(load > 0.0 && load.is_finite()) {
                return Err(sf.bad(
                    "load",
                    &format!("must be a number greater than 0, got {load}"),
                ));
            }
            let addr = resolve(&address, port)
                .ok_or_else(|| sf.bad("address", &format!("cannot resolve \"{address}\"")))?;
            servers.push(BackendSpec {
                name,
                address,
                port,
                priority,
                load,
                addr,
            });
        }

        let mut timeouts = Timeouts::default();
        if let Some(t) = obj.get("timeouts") {
            let t = t
                .as_object()
                .ok_or_else(|| err("timeouts", "expected an object".into()))?;
            let tf = Fields {
                source,
                obj: t,
                path: "timeouts.".into(),
            };
            tf.only(&["connect", "client", "upstream", "idle", "poolIdle", "drain"])?;
            let set = |d: &mut Duration, k: &str| -> Result<(), ConfigError> {
                if let Some(v) = tf.seconds(k)? {
                    *d = v;
                }
                Ok(())
            };
            set(&mut timeouts.connect, "connect")?;
            set(&mut timeouts.client, "client")?;
            set(&mut timeouts.upstream, "upstream")?;
            set(&mut timeouts.idle, "idle")?;
            set(&mut timeouts.pool_idle, "poolIdle")?;
            set(&mut timeouts.drain, "drain")?;
        }

        let listen = match f.string("listen")? {
            Some(s) => parse_listen(&s)
                .ok_or_else(|| err("listen", format!("expected PORT or HOST:PORT, got \"{s}\"")))?,
            None => SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), DEFAULT_PORT),
        };
        let mode = match f.string("mode")? {
            Some(s) => Mode::parse(&s).ok_or_else(|| {
                err(
                    "mode",
                    format!("unknown mode \"{s}\"; known: {}", Mode::names()),
                )
            })?,
            None => Mode::RoundRobin,
        };
        let upstream = match f.string("upstream")? {
            Some(s) => UpstreamMode::parse(&s).ok_or_else(|| {
                err(
                    "upstream",
                    format!("expected persistent or per-request, got \"{s}\""),
                )
            })?,
            None => UpstreamMode::Persistent,
        };
        let workers = f.int("workers", 1, 1024)?.map(|n| n as usize).unwrap_or(0);
        let max_idle = f
            .int("maxIdlePerBackend", 0, 1 << 20)?
            .map(|n| n as usize)
            .unwrap_or(DEFAULT_MAX_IDLE_PER_BACKEND);

        let hdr_interval = match f.seconds("hdrInterval")? {
            Some(d) if d.is_zero() => {
                return Err(err("hdrInterval", "must be greater than 0".into()))
            }
            d => d,
        };
        let named_log = f.string("logCsv")?;
        let mut health = HealthSettings {
            interval: heartbeat_interval,
            timeout: heartbeat_timeout,
            rise: DEFAULT_RISE,
            fall: DEFAULT_FALL,
            check: Check::Tcp,
            slow_start: Duration::ZERO,
            enabled: true,
        };
        if let Some(v) = obj.get("healthCheck") {
            let o = v
                .as_object()
                .ok_or_else(|| err("healthCheck", "expected an object".into()))?;
            let hf = Fields {
                source,
                obj: o,
                path: "healthCheck.".into(),
            };
            hf.only(&[
                "type",
                "path",
                "expectStatus",
                "rise",
                "fall",
                "slowStart",
                "enabled",
            ])?;
            let path = hf.string("path")?.unwrap_or_else(|| "/health".into());
            let expect = hf.int("expectStatus", 100, 599)?.unwrap_or(200) as u16;
            health.check = match hf.string("type")?.as_deref() {
                None | Some("tcp") => Check::Tcp,
                Some("http") => {
                    if !path.starts_with('/') {
                        return Err(hf.bad("path", &format!("must start with /, got \"{path}\"")));
                    }
                    Check::Http { path, expect }
                }
                Some(t) => {
                    return Err(hf.bad("type", &format!("expected tcp or http, got \"{t}\"")))
                }
            };
            health.rise = hf.int("rise", 1, 1000)?.map_or(health.rise, |n| n as u32);
            health.fall = hf.int("fall", 1, 1000)?.map_or(health.fall, |n| n as u32);
            health.slow_start = hf.seconds("slowStart")?.unwrap_or_default();
            if let Some(v) = o.get("enabled") {
                health.enabled = v
                    .as_bool()
                    .ok_or_else(|| hf.bad("enabled", "expected true or false"))?;
            }
        }
        let mut outlier = OutlierSettings::default();
        if let Some(v) = obj.get("outlierDetection") {
            let o = v
                .as_object()
                .ok_or_else(|| err("outlierDetection", "expected an object".into()))?;
            let of = Fields {
                source,
                obj: o,
                path: "outlierDetection.".into(),
            };
            of.only(&[
                "consecutiveFailures",
                "baseEjectionTime",
                "maxEjectionTime",
                "on5xx",
            ])?;
            outlier.consecutive = of
                .int("consecutiveFailures", 0, 1_000_000)?
                .map_or(outlier.consecutive, |n| n as u32);
            outlier.base = of.seconds("baseEjectionTime")?.unwrap_or(outlier.base);
            outlier.max = of.seconds("maxEjectionTime")?.unwrap_or(outlier.max);
            if let Some(v) = o.get("on5xx") {
                outlier.on_5xx = v
                    .as_bool()
                    .ok_or_else(|| of.bad("on5xx", "expected true or false"))?;
            }
        }
        let mut routing = RoutingParams::default();
        if let Some(v) = obj.get("routing") {
            let o = v
                .as_object()
                .ok_or_else(|| err("routing", "expected an object".into()))?;
            let rf = Fields {
                source,
                obj: o,
                path: "routing.".into(),
            };
            rf.only(&[
                "smaWindow",
                "ewmaAlpha",
                "avgSpan",
                "peakEwmaTau",
                "idleDecay",
                "loadBias",
                "choices",
                "adaptiveChoices",
            ])?;
            routing.sma_window = rf
                .int("smaWindow", 1, 65536)?
                .map_or(routing.sma_window, |n| n as usize);
            routing.ewma_alpha = rf.number("ewmaAlpha")?.unwrap_or(routing.ewma_alpha);
            routing.avg_span = rf.seconds("avgSpan")?.unwrap_or(routing.avg_span);
            routing.peak_ewma_tau = rf.seconds("peakEwmaTau")?.unwrap_or(routing.peak_ewma_tau);
            routing.idle_decay = rf.seconds("idleDecay")?.unwrap_or(routing.idle_decay);
            routing.adaptive_bias = rf.number("loadBias")?.unwrap_or(routing.adaptive_bias);
            routing.choices = rf
                .int("choices", 1, 4)?
                .map_or(routing.choices, |n| n as usize);
            routing.adaptive_choices = rf
                .int("adaptiveChoices", 1, 4)?
                .map_or(routing.adaptive_choices, |n| n as usize);
            routing.validate().map_err(|e| err("routing", e))?;
        }
        let mut retry = RetrySettings::default();
        if let Some(v) = obj.get("retries") {
            let o = v
                .as_object()
                .ok_or_else(|| err("retries", "expected an object".into()))?;
            let rf = Fields {
                source,
                obj: o,
                path: "retries.".into(),
            };
            rf.only(&["count", "budgetPercent"])?;
            retry.count = rf.int("count", 0, 10)?.map_or(retry.count, |n| n as u32);
            if let Some(p) = rf.number("budgetPercent")? {
                if !(0.0..=100.0).contains(&p) {
                    return Err(rf.bad("budgetPercent", &format!("expected 0..100, got {p}")));
                }
                retry.budget = p / 100.0;
            }
        }
        Ok(Config {
            log_csv_named: named_log.is_some(),
            log_csv: match named_log.as_deref() {
                Some("off") | Some("none") | Some("") => None,
                Some(path) => Some(path.to_string()),
                None => Some(default_log_name(mode, upstream)),
            },
            log_queue: crate::access_log::DEFAULT_QUEUE,
            hdr_dir: f.string("hdrDir")?,
            hdr_interval,
            health,
            outlier,
            retry,
            routing,
            pin: true,
            admin: match f.string("admin")?.as_deref() {
                Some("off") => None,
                Some(a) => Some(parse_listen(a).ok_or_else(|| {
                    err(
                        "admin",
                        format!("expected off, PORT or HOST:PORT, got \"{a}\""),
                    )
                })?),
                None => parse_listen(DEFAULT_ADMIN),
            },
            source: source.to_string(),
            listen,
            workers: if workers == 0 {
                default_workers()
            } else {
                workers
            },
            mode,
            upstream,
            debug: false,
            heartbeat_interval,
            heartbeat_timeout,
            servers,
            timeouts,
            max_idle_per_backend: max_idle,
        })
    }

    /// Applies command-line and environment overrides on top of the file's values.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(l) = &o.listen {
            self.listen = parse_listen(l).ok_or_else(|| {
                ConfigError::new(
                    CLI,
                    "--listen",
                    format!("expected PORT or HOST:PORT, got \"{l}\""),
                )
            })?;
        }
        if let Some(w) = o.workers {
            if w == 0 || w > 1024 {
                return Err(ConfigError::new(
                    CLI,
                    "--workers",
                    format!("must be 1..1024, got {w}"),
                ));
            }
            self.workers = w;
        }
        if let Some(m) = &o.mode {
            self.mode = Mode::parse(m).ok_or_else(|| {
                ConfigError::new(
                    CLI,
                    "--mode",
                    format!("unknown mode \"{m}\"; known: {}", Mode::names()),
                )
            })?;
        }
        if let Some(u) = &o.upstream {
            self.upstream = UpstreamMode::parse(u).ok_or_else(|| {
                ConfigError::new(
                    CLI,
                    "--upstream",
                    format!("expected persistent or per-request, got \"{u}\""),
                )
            })?;
        }
        self.debug |= o.debug;
        let t = &mut self.timeouts;
        for (flag, val, slot) in [
            ("--connect-timeout", &o.connect_timeout, &mut t.connect),
            ("--client-timeout", &o.client_timeout, &mut t.client),
            ("--upstream-timeout", &o.upstream_timeout, &mut t.upstream),
            ("--idle-timeout", &o.idle_timeout, &mut t.idle),
            (
                "--pool-idle-timeout",
                &o.pool_idle_timeout,
                &mut t.pool_idle,
            ),
            ("--drain-timeout", &o.drain_timeout, &mut t.drain),
        ] {
            if let Some(v) = val {
                *slot = parse_duration(v).ok_or_else(|| {
                    ConfigError::new(
                        CLI,
                        flag,
                        format!("expected a duration like 500ms, 5s or 2m, got \"{v}\""),
                    )
                })?;
            }
        }
        if let Some(n) = o.max_idle_per_backend {
            self.max_idle_per_backend = n;
        }
        // The default log name follows the mode and upstream finally chosen.
        if self.log_csv.is_some() && !self.log_csv_named && o.log_csv.is_none() {
            self.log_csv = Some(default_log_name(self.mode, self.upstream));
        }
        match o.log_csv.as_deref() {
            Some("off") | Some("none") | Some("") => self.log_csv = None,
            Some(path) => self.log_csv = Some(path.to_string()),
            None => {}
        }
        if let Some(n) = o.log_queue {
            if n == 0 {
                return Err(ConfigError::new(CLI, "--log-queue", "must be at least 1"));
            }
            self.log_queue = n;
        }
        if let Some(d) = &o.hdr_dir {
            self.hdr_dir = Some(d.clone());
        }
        if let Some(v) = &o.hdr_interval {
            match parse_duration(v) {
                Some(d) if !d.is_zero() => self.hdr_interval = Some(d),
                _ => {
                    return Err(ConfigError::new(
                        CLI,
                        "--hdr-interval",
                        format!("expected a duration greater than 0 like 10s, got \"{v}\""),
                    ))
                }
            }
        }
        if let Some(v) = &o.health_check {
            if v == "off" {
                self.health.enabled = false;
            } else {
                self.health.check = Check::parse(v).ok_or_else(|| {
                    ConfigError::new(CLI, "--health-check", format!("expected tcp, http, http:/PATH or http:/PATH:STATUS or off, got \"{v}\""))
                })?;
                self.health.enabled = true;
            }
        }
        for (flag, val, slot) in [
            ("--rise", o.rise, &mut self.health.rise),
            ("--fall", o.fall, &mut self.health.fall),
        ] {
            if let Some(n) = val {
                if n == 0 {
                    return Err(ConfigError::new(CLI, flag, "must be at least 1"));
                }
                *slot = n;
            }
        }
        if let Some(v) = &o.slow_start {
            self.health.slow_start = parse_duration(v).ok_or_else(|| {
                ConfigError::new(
                    CLI,
                    "--slow-start",
                    format!("expected a duration like 30s, got \"{v}\""),
                )
            })?;
        }
        if let Some(n) = o.eject_after {
            self.outlier.consecutive = n;
        }
        if let Some(v) = &o.eject_time {
            self.outlier.base = parse_duration(v).ok_or_else(|| {
                ConfigError::new(
                    CLI,
                    "--eject-time",
                    format!("expected a duration like 10s, got \"{v}\""),
                )
            })?;
        }
        if let Some(n) = o.retries {
            if n > 10 {
                return Err(ConfigError::new(
                    CLI,
                    "--retries",
                    format!("must be 0..10, got {n}"),
                ));
            }
            self.retry.count = n;
        }
        if let Some(a) = &o.admin {
            self.admin = if a == "off" {
                None
            } else {
                Some(parse_listen(a).ok_or_else(|| {
                    ConfigError::new(
                        CLI,
                        "--admin",
                        format!("expected off, PORT or HOST:PORT, got \"{a}\""),
                    )
                })?)
            };
        }
        if o.no_pin {
            self.pin = false;
        }
        if let Some(n) = o.sma_window {
            self.routing.sma_window = n;
        }
        if let Some(a) = o.ewma_alpha {
            self.routing.ewma_alpha = a;
        }
        for (flag, v, field) in [
            (
                "--peak-ewma-tau",
                &o.peak_ewma_tau,
                &mut self.routing.peak_ewma_tau,
            ),
            ("--avg-span", &o.avg_span, &mut self.routing.avg_span),
        ] {
            if let Some(v) = v {
                *field = parse_duration(v).ok_or_else(|| {
                    ConfigError::new(
                        CLI,
                        flag,
                        format!("expected a duration like 10s, got \"{v}\""),
                    )
                })?;
            }
        }
        self.routing
            .validate()
            .map_err(|e| ConfigError::new(CLI, "routing", e))?;
        if let Some(p) = o.retry_budget {
            if !(0.0..=100.0).contains(&p) {
                return Err(ConfigError::new(
                    CLI,
                    "--retry-budget",
                    format!("expected a percentage 0..100, got {p}"),
                ));
            }
            self.retry.budget = p / 100.0;
        }
        Ok(())
    }

    /// `<mode>_<upstream>`: the prefix of log and dump file names.
    pub fn run_name(&self) -> String {
        format!("{}_{}", self.mode.file_name(), self.upstream)
    }
}

/// The seed's CSV naming: `<mode>_<upstream>.csv`, e.g. `adaptive_ewma_persistent.csv`.
fn default_log_name(mode: Mode, upstream: UpstreamMode) -> String {
    format!("{}_{upstream}.csv", mode.file_name())
}

/// Number of workers when none is configured: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn resolve(address: &str, port: u16) -> Option<SocketAddr> {
    let addrs: Vec<SocketAddr> = (address, port).to_socket_addrs().ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
}

/// Typed access to one JSON object's fields, with errors that name the field path.
struct Fields<'a> {
    source: &'a str,
    obj: &'a Map<String, Value>,
    /// Prefix for field names, e.g. `servers[2].`.
    path: String,
}

impl Fields<'_> {
    fn bad(&self, key: &str, problem: &str) -> ConfigError {
        ConfigError::new(self.source, format!("{}{key}", self.path), problem)
    }

    fn missing(&self, key: &str) -> ConfigError {
        self.bad(key, "missing (required)")
    }

    /// Refuses keys that are not listed; keys starting with `_` are comments.
    fn only(&self, known: &[&str]) -> Result<(), ConfigError> {
        for k in self.obj.keys() {
            if !k.starts_with('_') && !known.contains(&k.as_str()) {
                return Err(self.bad(
                    k,
                    &format!("unknown field; known fields: {}", known.join(", ")),
                ));
            }
        }
        Ok(())
    }

    fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => Err(self.bad(key, &format!("expected a string, got {v}"))),
        }
    }

    fn number(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => Ok(n.as_f64()),
            Some(v) => Err(self.bad(key, &format!("expected a number, got {v}"))),
        }
    }

    fn int(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ConfigError> {
        match self.obj.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(i) if (min..=max).contains(&i) => Ok(Some(i)),
                _ => Err(self.bad(key, &format!("expected an integer {min}..{max}, got {n}"))),
            },
            Some(v) => Err(self.bad(key, &format!("expected an integer {min}..{max}, got {v}"))),
        }
    }

    fn seconds(&self, key: &str) -> Result<Option<Duration>, ConfigError> {
        match self.number(key)? {
            None => Ok(None),
            Some(s) if s.is_finite() && (0.0..1e9).contains(&s) => {
                Ok(Some(Duration::from_secs_f64(s)))
            }
            Some(s) => Err(self.bad(key, &format!("expected seconds >= 0, got {s}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_json("c.json", text).unwrap_err().to_string()
    }

    #[test]
    fn embedded_default_is_valid() {
        let c = Config::from_json("d", DEFAULT_CONFIG).unwrap();
        assert_eq!(c.servers.len(), 3);
        assert_eq!(c.servers[1].name, "B");
        assert_eq!(c.servers[2].addr, "127.0.0.1:8083".parse().unwrap());
        assert_eq!(c.listen.port(), DEFAULT_PORT);
        assert_eq!(c.mode, Mode::RoundRobin);
        assert_eq!(c.upstream, UpstreamMode::Persistent);
    }

    #[test]
    fn seed_file_format_is_read_as_is() {
        let seed = r#"{"heartbeatInterval": 10, "heartbeatTimeout": 5, "_note": "x",
          "servers": [
            {"priority": 0, "name": "tts@container1", "address": "localhost", "port": 50051, "load": 0.5},
            {"priority": 1, "name": "tts@container2", "address": "127.0.0.1", "port": 50052, "load": 0.3}
          ]}"#;
        let c = Config::from_json("seed.json", seed).unwrap();
        assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(5));
        assert_eq!(c.servers[0].load, 0.5);
        assert_eq!(c.servers[1].priority, 1);
        assert_eq!(c.servers[0].addr.port(), 50051);
    }

    #[test]
    fn default_log_name_is_the_seeds() {
        let name = |m, u| default_log_name(m, u);
        assert_eq!(
            name(Mode::AdaptiveEwma, UpstreamMode::Persistent),
            "adaptive_ewma_persistent.csv"
        );
        assert_eq!(
            name(Mode::AdaptiveSma, UpstreamMode::PerRequest),
            "adaptive_sma_per-request.csv"
        );
        assert_eq!(
            name(Mode::RoundRobin, UpstreamMode::Persistent),
            "round-robin_persistent.csv"
        );
    }

    #[test]
    fn routing_block_sets_every_tuning_knob() {
        let c = Config::from_json(
            "r.json",
            r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1}],
                "routing": {"smaWindow": 64, "ewmaAlpha": 0.01, "avgSpan": 0.25,
                            "idleDecay": 3, "peakEwmaTau": 5, "loadBias": 0.3,
                            "choices": 3, "adaptiveChoices": 2}}"#,
        )
        .unwrap();
        let r = c.routing;
        assert_eq!(
            (r.sma_window, r.ewma_alpha, r.adaptive_bias),
            (64, 0.01, 0.3)
        );
        assert_eq!(r.avg_span, Duration::from_millis(250));
        assert_eq!(r.idle_decay, Duration::from_secs(3));
        assert_eq!(r.peak_ewma_tau, Duration::from_secs(5));
        assert_eq!((r.choices, r.adaptive_choices), (3, 2));
        assert_eq!(
            err(
                r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1}],
                    "routing": {"avgSpan": 0}}"#
            ),
            "c.json: routing: avg_span: must be greater than 0"
        );
    }

    #[test]
    fn errors_name_file_field_and_problem() {
        assert_eq!(
            err(r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 70000}]}"#),
            "c.json: servers[0].port: expected an integer 1..65535, got 70000"
        );
        assert_eq!(
            err(r#"{"servers": [{"name": "A", "address": "127.0.0.1"}]}"#),
            "c.json: servers[0].port: missing (required)"
        );
        assert_eq!(
            err(r#"{"servers": []}"#),
            "c.json: servers: empty: list at least one server"
        );
        assert!(err(r#"{"heartbeatIntervall": 1, "servers": []}"#)
            .starts_with("c.json: heartbeatIntervall: unknown field"));
        assert!(err("{").starts_with("c.json: (json): invalid JSON at line 1"));
        assert_eq!(
            err(r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1, "load": 0}]}"#),
            "c.json: servers[0].load: must be a number greater than 0, got 0"
        );
        assert_eq!(
            err(
                r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1},
                                {"name": "A", "address": "127.0.0.1", "port": 2}]}"#
            ),
            "c.json: servers[1].name: \"A\" is already used by servers[0]"
        );
        assert_eq!(
            err(r#"{"servers": [{"name": "A", "address": "no.such.host.invalid", "port": 1}]}"#),
            "c.json: servers[0].address: cannot resolve \"no.such.host.invalid\""
        );
        assert_eq!(
            err(
                r#"{"mode": "fastest", "servers": [{"name": "A", "address": "127.0.0.1", "port": 1}]}"#
            ),
            "c.json: mode: unknown mode \"fastest\"; known: round-robin, weighted, least-request, adaptive-sma, adaptive-ewma, peak-ewma"
        );
        assert_eq!(
            err(r#"{"heartbeatInterval": "2", "servers": []}"#),
            "c.json: heartbeatInterval: expected a number, got \"2\""
        );
    }

    #[test]
    fn overrides_win_over_the_file() {
        let mut c = Config::from_json("d", DEFAULT_CONFIG).unwrap();
        c.apply(&Overrides {
            listen: Some("0".into()),
            workers: Some(3),
            mode: Some("round_robin".into()),
            upstream: Some("per-request".into()),
            connect_timeout: Some("250ms".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(c.listen, "127.0.0.1:0".parse().unwrap());
        assert_eq!(c.workers, 3);
        assert_eq!(c.upstream, UpstreamMode::PerRequest);
        assert_eq!(c.timeouts.connect, Duration::from_millis(250));
        let e = c
            .apply(&Overrides {
                upstream: Some("sometimes".into()),
                ..Default::default()
            })
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "command line: --upstream: expected persistent or per-request, got \"sometimes\""
        );
    }

    #[test]
    fn durations_and_listen_addresses() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("-1"), None);
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(
            parse_listen("9090"),
            Some("127.0.0.1:9090".parse().unwrap())
        );
        assert_eq!(parse_listen(":80"), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(
            parse_listen("0.0.0.0:80"),
            Some("0.0.0.0:80".parse().unwrap())
        );
        assert_eq!(parse_listen("[::1]:80"), Some("[::1]:80".parse().unwrap()));
        assert_eq!(parse_listen("nope"), None);
    }
}
