//! Configuration: the seed's JSON file format, command-line flags and environment merged
//! into one validated [`Config`]. Owns defaults, precedence and validation; it starts
//! nothing.
//!
//! Precedence: command-line flags, then the environment (`PROXY_SERVER_PORT`,
//! `PROXY_SERVER_CONFIG`), then the file, then the `DEFAULT_*` constants. Every source gives
//! values as written (`file`, [`flags`]); they are merged setting by setting, and one
//! `Config::validate` checks whatever won with that setting's one rule (`value`), so a
//! bad value gets the same words from the file and from a flag. Every error names where
//! the value came from, the field and the problem, on one line.
//!
//! Layers: [`types`] imports nothing from the crate; the rest of `config` imports only
//! `types` and `access_log`'s queue default, never the balancer or health checks.

mod file;
pub mod flags;
mod policy;
mod restart;
mod tls;
pub mod types;
mod value;

#[cfg(test)]
mod tests;

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

pub use flags::Args;
pub use types::*;

use value::{Key, Layer, ServersGiven, Text};

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

/// Where the servers come from when no file is named.
const EMBEDDED: &str = "<embedded default>";

/// A configuration problem: where, which field, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file, `environment` or `command line`.
    pub origin: String,
    /// The field within the origin: `servers[0].port`, `PROXY_SERVER_PORT`, `--rise`.
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
    /// The cleartext listener; `None` with `--listen off` (TLS only).
    pub listen: Option<SocketAddr>,
    /// TLS to clients; `None` when no TLS listener is given.
    pub tls: Option<TlsSettings>,
    pub workers: usize,
    pub mode: Mode,
    pub upstream: UpstreamMode,
    pub debug: bool,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    pub servers: Vec<BackendSpec>,
    pub timeouts: Timeouts,
    pub max_idle_per_backend: usize,
    /// HTTP/2 clients' stream resets allowed per 10 s (theirs and those they cause).
    pub h2_max_resets: u32,
    /// HTTP/2 clients' streams per connection before a graceful GOAWAY; 0: no limit.
    pub h2_max_streams: u32,
    /// Bodies and chunks with at least this many bytes left are spliced; 0: never.
    pub splice_min: u64,
    /// `TCP_NOTSENT_LOWAT` of a socket once a body is spliced into it; 0: left alone.
    pub notsent_lowat: u64,
    /// Backend slots in all (`maxServers`); `None`: max(64, 4 x servers).
    pub max_servers: Option<usize>,
    /// Re-resolve servers given by DNS name this often (`dnsRefresh`); `None`: resolved
    /// once, at start and on each reload.
    pub dns_refresh: Option<Duration>,
    /// DNS server asked directly over UDP (`--resolver`); `None`: the system resolver.
    pub resolver: Option<SocketAddr>,
    /// Bearer token for the admin API's mutating calls (`--admin-token`,
    /// `CORELB_ADMIN_TOKEN`).
    pub admin_token: Option<String>,
    /// Per-request CSV log file; `None` when logging is off.
    pub log_csv: Option<String>,
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

/// Parses a duration: `250ms`, `5s`, `2m`, or a bare number of seconds (`0.5`).
pub fn parse_duration(s: &str) -> Option<Duration> {
    value::parse_seconds(s)
        .filter(|v| (0.0..value::MAX_SECONDS).contains(v))
        .map(Duration::from_secs_f64)
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

/// Number of workers when none is configured: one per core.
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The seed's CSV naming: `<mode>_<upstream>.csv`, e.g. `adaptive_ewma_persistent.csv`.
fn default_log_name(mode: Mode, upstream: UpstreamMode) -> String {
    format!("{}_{upstream}.csv", mode.file_name())
}

impl Config {
    /// Parses a command line (the program name first) and builds the configuration from
    /// it, the environment and the file it names (or the embedded default). Help, version
    /// and malformed command lines exit the process as clap does.
    pub fn from_args<I, T>(argv: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        Config::load(&Args::parse_argv(argv)?)
    }

    /// Builds the configuration from parsed flags (and the environment they were read
    /// with), reading the file they name or the embedded default.
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let (env, cli) = args.layers()?;
        let (source, text) = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(Path::new(path))
                    .map_err(|e| ConfigError::new(path, "(file)", format!("cannot read: {e}")))?;
                (path.clone(), text)
            }
            None => (EMBEDDED.to_string(), DEFAULT_CONFIG.to_string()),
        };
        let mut layer = file::read(&source, &text)?;
        layer.merge(env);
        layer.merge(cli);
        let mut cfg = Config::validate(source, &layer)?;
        cfg.admin_token = args.admin_token.clone().filter(|t| !t.is_empty());
        Ok(cfg)
    }

    /// One line saying what a valid configuration will run (`corelb --check`).
    pub fn summary(&self) -> String {
        let admin = self.admin.map_or("off".to_string(), |a| a.to_string());
        format!(
            "configuration OK: {}: {} server(s), listen {}{}, mode {}, upstream {}, {} worker(s), admin {}",
            self.source,
            self.servers.len(),
            self.listen.map_or("off".to_string(), |a| a.to_string()),
            self.tls.as_ref().map_or(String::new(), |t| {
                let l: Vec<String> = t.listen.iter().map(|a| a.to_string()).collect();
                format!(", tls {} ({} certificate(s))", l.join(" "), t.certificates.len())
            }),
            self.mode,
            self.upstream,
            self.workers,
            admin
        )
    }

    /// Parses and validates the JSON configuration text; `source` names it in errors.
    pub fn from_json(source: &str, text: &str) -> Result<Config, ConfigError> {
        Config::validate(source.to_string(), &file::read(source, text)?)
    }

    /// Checks every value the sources gave, each by its setting's rule whatever its
    /// origin, fills in the defaults and builds the configuration.
    fn validate(source: String, v: &Layer) -> Result<Config, ConfigError> {
        let heartbeat_interval = v
            .get(Key::HeartbeatInterval, &value::POSITIVE_SECONDS)?
            .unwrap_or(DEFAULT_HEARTBEAT_INTERVAL);
        let heartbeat_timeout = v
            .get(Key::HeartbeatTimeout, &value::POSITIVE_SECONDS)?
            .unwrap_or(DEFAULT_HEARTBEAT_TIMEOUT);
        let dns_refresh = v.get(Key::DnsRefresh, &value::POSITIVE_SECONDS)?;
        let resolver = v.parse(Key::Resolver, |s| {
            s.trim()
                .parse::<SocketAddr>()
                .map_err(|_| format!("expected IP:PORT of a DNS server, got \"{s}\""))
        })?;
        let all_protocol = v.parse(Key::UpstreamProtocol, parse_protocol)?;
        // With discovery on, a server named by DNS is resolved by the discovery thread
        // (maybe with --resolver), not here.
        let discover = dns_refresh.is_some() || resolver.is_some();
        let mut servers = backends(v.servers.as_ref(), &source, discover)?;
        if let Some(p) = all_protocol {
            servers.iter_mut().for_each(|s| s.protocol = p);
        }
        let seconds = |key, default| -> Result<Duration, ConfigError> {
            Ok(v.get(key, &value::SECONDS)?.unwrap_or(default))
        };
        let timeouts = Timeouts {
            connect: seconds(Key::ConnectTimeout, DEFAULT_CONNECT_TIMEOUT)?,
            client: seconds(Key::ClientTimeout, DEFAULT_CLIENT_TIMEOUT)?,
            upstream: seconds(Key::UpstreamTimeout, DEFAULT_UPSTREAM_TIMEOUT)?,
            idle: seconds(Key::IdleTimeout, DEFAULT_IDLE_TIMEOUT)?,
            pool_idle: seconds(Key::PoolIdleTimeout, DEFAULT_POOL_IDLE_TIMEOUT)?,
            drain: seconds(Key::DrainTimeout, DEFAULT_DRAIN_TIMEOUT)?,
            tunnel: seconds(Key::TunnelTimeout, DEFAULT_TUNNEL_TIMEOUT)?,
            send: seconds(Key::SendTimeout, DEFAULT_SEND_TIMEOUT)?,
        };
        let listen = v
            .parse(Key::Listen, |s| match s.trim() {
                "off" => Ok(None),
                s => parse_listen(s)
                    .map(Some)
                    .ok_or_else(|| format!("expected off, PORT or HOST:PORT, got \"{s}\"")),
            })?
            .unwrap_or(Some(SocketAddr::new(
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                DEFAULT_PORT,
            )));
        let tls = tls::tls(v)?;
        if listen.is_none() && tls.is_none() {
            return Err(v.values[&Key::Listen]
                .error("off, and no TLS listener (tls.listen or --tls-listen): nothing to serve"));
        }
        let mode = v
            .parse(Key::Mode, |s| {
                Mode::parse(s)
                    .ok_or_else(|| format!("unknown mode \"{s}\"; known: {}", Mode::names()))
            })?
            .unwrap_or(Mode::RoundRobin);
        let upstream = v
            .parse(Key::Upstream, |s| {
                UpstreamMode::parse(s)
                    .ok_or_else(|| format!("expected persistent or per-request, got \"{s}\""))
            })?
            .unwrap_or(UpstreamMode::Persistent);
        let workers = v.get(Key::Workers, &value::WORKERS)?;
        let max_idle = v.get(Key::MaxIdlePerBackend, &value::MAX_IDLE_PER_BACKEND)?;
        let h2_max_resets = v.get(Key::H2MaxResets, &value::H2_MAX_RESETS)?;
        let h2_max_streams = v.get(Key::H2MaxStreams, &value::H2_MAX_STREAMS)?;
        let hdr_interval = v.get(Key::HdrInterval, &value::POSITIVE_SECONDS)?;
        // The default log name follows the mode and upstream finally chosen.
        let log_csv = match v.get(Key::LogCsv, &Text)?.as_deref() {
            Some("off") | Some("none") | Some("") => None,
            Some(path) => Some(path.to_string()),
            None => Some(default_log_name(mode, upstream)),
        };
        let log_queue = v.get(Key::LogQueue, &value::LOG_QUEUE)?;
        let splice_min = v.get(Key::SpliceMin, &value::SPLICE_MIN)?;
        let notsent_lowat = v.get(Key::NotsentLowat, &value::NOTSENT_LOWAT)?;
        let max_servers = v.get(Key::MaxServers, &value::MAX_SERVERS)?;
        if let Some(m) = max_servers {
            if (m as usize) < servers.len() {
                let problem = format!("{m} is fewer than the {} servers listed", servers.len());
                return Err(match v.values.get(&Key::MaxServers) {
                    Some(g) => g.error(problem),
                    None => ConfigError::new(&source, "maxServers", problem),
                });
            }
        }
        Ok(Config {
            splice_min: splice_min.unwrap_or(DEFAULT_SPLICE_MIN),
            notsent_lowat: notsent_lowat.unwrap_or(DEFAULT_NOTSENT_LOWAT),
            log_csv,
            log_queue: log_queue.map_or(DEFAULT_LOG_QUEUE, |n| n as usize),
            health: health(v, heartbeat_interval, heartbeat_timeout)?,
            outlier: outlier(v)?,
            routing: routing(v)?,
            retry: retry(v)?,
            hdr_dir: v.get(Key::HdrDir, &Text)?,
            hdr_interval,
            admin: match v.parse(Key::Admin, |a| match a {
                "off" => Ok(None),
                a => parse_listen(a)
                    .map(Some)
                    .ok_or_else(|| format!("expected off, PORT or HOST:PORT, got \"{a}\"")),
            })? {
                Some(admin) => admin,
                None => parse_listen(DEFAULT_ADMIN),
            },
            pin: v.get(Key::Pin, &value::Bool)?.unwrap_or(true),
            debug: v.get(Key::Debug, &value::Bool)?.unwrap_or(false),
            source,
            listen,
            tls,
            workers: workers.map_or_else(default_workers, |n| n as usize),
            mode,
            upstream,
            heartbeat_interval,
            heartbeat_timeout,
            servers,
            timeouts,
            max_idle_per_backend: max_idle.map_or(DEFAULT_MAX_IDLE_PER_BACKEND, |n| n as usize),
            h2_max_resets: h2_max_resets.map_or(DEFAULT_H2_MAX_RESETS, |n| n as u32),
            h2_max_streams: h2_max_streams.map_or(DEFAULT_H2_MAX_STREAMS, |n| n as u32),
            max_servers: max_servers.map(|n| n as usize),
            dns_refresh,
            resolver,
            admin_token: None,
        })
    }

    /// `<mode>_<upstream>`: the prefix of log and dump file names.
    pub fn run_name(&self) -> String {
        format!("{}_{}", self.mode.file_name(), self.upstream)
    }
}

/// The backend list: at least one, names unique, addresses resolved (with `discover`,
/// DNS names are left to the discovery thread: their `addr` is unspecified).
fn backends(
    given: Option<&ServersGiven>,
    source: &str,
    discover: bool,
) -> Result<Vec<BackendSpec>, ConfigError> {
    let given = given
        .ok_or_else(|| ConfigError::new(source, "servers", "missing: list at least one server"))?;
    if given.list.is_empty() {
        return Err(ConfigError::new(
            &given.origin,
            "servers",
            "empty: list at least one server",
        ));
    }
    let mut servers: Vec<BackendSpec> = Vec::with_capacity(given.list.len());
    for s in &given.list {
        let required = |g: &Option<value::Given>, name: &str| {
            g.clone().ok_or_else(|| {
                ConfigError::new(
                    &given.origin,
                    format!("{}.{name}", s.path),
                    "missing (required)",
                )
            })
        };
        let name_given = required(&s.name, "name")?;
        let name = name_given.check(&Text)?;
        if name.is_empty() {
            return Err(name_given.error("must not be empty"));
        }
        if let Some(j) = servers.iter().position(|o| o.name == name) {
            return Err(name_given.error(format!("\"{name}\" is already used by servers[{j}]")));
        }
        let address_given = required(&s.address, "address")?;
        let address = address_given.check(&Text)?;
        let port = required(&s.port, "port")?.check(&value::PORT)? as u16;
        let priority = match &s.priority {
            Some(g) => g.check(&value::PRIORITY)? as u32,
            None => 0,
        };
        let load = match &s.load {
            Some(g) => g.check(&value::LOAD)?,
            None => 1.0,
        };
        let protocol = match &s.protocol {
            Some(g) => parse_protocol(&g.check(&Text)?).map_err(|p| g.error(p))?,
            None => Protocol::Http1,
        };
        let addr = if discover && address.parse::<IpAddr>().is_err() {
            // Discovered: each address the name has becomes an instance NAME#k.
            SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port)
        } else {
            resolve(&address, port)
                .ok_or_else(|| address_given.error(format!("cannot resolve \"{address}\"")))?
        };
        let tls = s.tls.as_ref().map(tls::upstream).transpose()?;
        servers.push(BackendSpec {
            name,
            address,
            port,
            priority,
            load,
            addr,
            protocol,
            tls,
        });
    }
    Ok(servers)
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::parse(s).ok_or_else(|| format!("expected http1 or h2c, got \"{s}\""))
}

fn resolve(address: &str, port: u16) -> Option<SocketAddr> {
    let addrs: Vec<SocketAddr> = (address, port).to_socket_addrs().ok()?.collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
}

fn health(v: &Layer, interval: Duration, timeout: Duration) -> Result<HealthSettings, ConfigError> {
    let d = HealthSettings::default();
    let path = v.get(Key::CheckPath, &Text)?;
    let expect = v.get(Key::CheckStatus, &value::STATUS)?;
    let kind = v.parse(Key::CheckType, |t| match t {
        "tcp" | "http" | "grpc" => Ok(t.to_string()),
        t => Err(format!("expected tcp, http or grpc, got \"{t}\"")),
    })?;
    let check = match kind.as_deref() {
        Some("http") => {
            let path = path.unwrap_or_else(|| DEFAULT_CHECK_PATH.to_string());
            if !path.starts_with('/') {
                let at = &v.values[&Key::CheckPath];
                return Err(at.error(format!("must start with /, got \"{path}\"")));
            }
            Some(Check::Http {
                path,
                expect: expect.map_or(DEFAULT_CHECK_STATUS, |n| n as u16),
            })
        }
        Some("grpc") => {
            let service = v.get(Key::CheckService, &Text)?.unwrap_or_default();
            if let Err(problem) = check_grpc_service(&service) {
                return Err(v.values[&Key::CheckService].error(problem));
            }
            Some(Check::Grpc { service })
        }
        Some(_) => Some(Check::Tcp),
        // None chosen: each server gets its protocol's default (`check_for`).
        None => None,
    };
    Ok(HealthSettings {
        interval,
        timeout,
        rise: v
            .get(Key::Rise, &value::RISE_FALL)?
            .map_or(d.rise, |n| n as u32),
        fall: v
            .get(Key::Fall, &value::RISE_FALL)?
            .map_or(d.fall, |n| n as u32),
        check,
        slow_start: v
            .get(Key::SlowStart, &value::SECONDS)?
            .unwrap_or(d.slow_start),
        enabled: v.get(Key::CheckEnabled, &value::Bool)?.unwrap_or(d.enabled),
    })
}

fn outlier(v: &Layer) -> Result<OutlierSettings, ConfigError> {
    let d = OutlierSettings::default();
    Ok(OutlierSettings {
        consecutive: v
            .get(Key::EjectAfter, &value::CONSECUTIVE_FAILURES)?
            .map_or(d.consecutive, |n| n as u32),
        base: v.get(Key::EjectTime, &value::SECONDS)?.unwrap_or(d.base),
        max: v
            .get(Key::MaxEjectionTime, &value::SECONDS)?
            .unwrap_or(d.max),
        on_5xx: v.get(Key::On5xx, &value::Bool)?.unwrap_or(d.on_5xx),
        grpc_statuses: v
            .get(Key::EjectGrpcStatuses, &value::GRPC_CODES)?
            .unwrap_or(d.grpc_statuses),
    })
}

/// The routing block: each value by its own rule, then the whole by
/// [`RoutingParams::invalid`], which names the field (`routing: avg_span: ...`).
fn routing(v: &Layer) -> Result<RoutingParams, ConfigError> {
    let d = RoutingParams::default();
    let r = RoutingParams {
        sma_window: v
            .get(Key::SmaWindow, &value::SMA_WINDOW)?
            .map_or(d.sma_window, |n| n as usize),
        ewma_alpha: v
            .get(Key::EwmaAlpha, &value::ANY_NUMBER)?
            .unwrap_or(d.ewma_alpha),
        avg_span: v.get(Key::AvgSpan, &value::SECONDS)?.unwrap_or(d.avg_span),
        peak_ewma_tau: v
            .get(Key::PeakEwmaTau, &value::SECONDS)?
            .unwrap_or(d.peak_ewma_tau),
        idle_decay: v
            .get(Key::IdleDecay, &value::SECONDS)?
            .unwrap_or(d.idle_decay),
        adaptive_bias: v
            .get(Key::LoadBias, &value::ANY_NUMBER)?
            .unwrap_or(d.adaptive_bias),
        choices: v
            .get(Key::Choices, &value::CHOICES)?
            .map_or(d.choices, |n| n as usize),
        adaptive_choices: v
            .get(Key::AdaptiveChoices, &value::CHOICES)?
            .map_or(d.adaptive_choices, |n| n as usize),
        ..d
    };
    let Some((field, problem)) = r.invalid() else {
        return Ok(r);
    };
    // Blame whichever source gave the value (the defaults are all valid).
    let key = match field {
        "sma_window" => Key::SmaWindow,
        "ewma_alpha" => Key::EwmaAlpha,
        "avg_span" => Key::AvgSpan,
        "peak_ewma_tau" => Key::PeakEwmaTau,
        "idle_decay" => Key::IdleDecay,
        "adaptive_bias" => Key::LoadBias,
        "choices" => Key::Choices,
        _ => Key::AdaptiveChoices,
    };
    let origin = v.values.get(&key).map_or("defaults", |g| g.origin.as_str());
    Err(ConfigError::new(
        origin,
        "routing",
        format!("{field}: {problem}"),
    ))
}

fn retry(v: &Layer) -> Result<RetrySettings, ConfigError> {
    let d = RetrySettings::default();
    Ok(RetrySettings {
        count: v
            .get(Key::Retries, &value::RETRIES)?
            .map_or(d.count, |n| n as u32),
        budget: v
            .get(Key::RetryBudget, &value::PERCENT)?
            .map_or(d.budget, |p| p / 100.0),
        policy: policy::retry_policy(v)?,
        hedging: policy::hedging_policy(v)?,
        ..d
    })
}
