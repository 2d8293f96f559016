//! The command line (clap) and the environment variables clap reads for it
//! (`PROXY_SERVER_PORT`, `PROXY_SERVER_CONFIG`). Owns the flag names, their help and which
//! values came from the environment. Values stay as typed: `Config::validate` checks them
//! with the same rules as the file's; the value parsers below run those rules early too, so
//! a bad flag fails before the file is read, with the same words.

use std::ffi::OsString;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser};

use super::types::{Check, DEFAULT_CHECK_PATH, DEFAULT_CHECK_STATUS};
use super::value::{self as rules, Given, Key, Layer, Raw, Rule};
use super::ConfigError;

/// The origin of values given as flags.
pub const COMMAND_LINE: &str = "command line";
/// The origin of values given as environment variables.
pub const ENVIRONMENT: &str = "environment";

/// A clap value parser that refuses what `rule` refuses, in its words, and keeps the text.
fn checked<R: Rule + Sync>(
    rule: &'static R,
) -> impl Fn(&str) -> Result<String, String> + Clone + Send + Sync + 'static {
    move |s: &str| rule.check(&Raw::Text(s.to_string())).map(|_| s.to_string())
}

/// corelb: thread-per-core HTTP/1.1 reverse proxy and load balancer.
#[derive(Debug, Parser)]
#[command(name = "corelb", version, about, allow_negative_numbers = true)]
pub struct Args {
    /// Routing mode, as the seed took it: round-robin, weighted, least-request,
    /// adaptive_sma, adaptive_ewma or peak-ewma.
    #[arg(value_name = "MODE")]
    pub mode_pos: Option<String>,
    /// Routing mode (same as the positional MODE).
    #[arg(long)]
    pub mode: Option<String>,
    /// JSON config file (the seed's format).
    #[arg(long, short = 'c', env = "PROXY_SERVER_CONFIG")]
    pub config: Option<String>,
    /// Listen address: PORT or HOST:PORT (a bare port binds 127.0.0.1), or off (TLS
    /// only). Default 9090.
    #[arg(long, short = 'l', env = "PROXY_SERVER_PORT")]
    pub listen: Option<String>,
    /// TLS listen address (repeatable): HTTPS and HTTP/2 by ALPN. Needs --tls-cert and
    /// --tls-key.
    #[arg(long, value_name = "ADDR")]
    pub tls_listen: Vec<String>,
    /// PEM certificate chain (repeatable, paired in order with --tls-key). SNI picks by
    /// the names in each certificate; the first is the default.
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Vec<String>,
    /// PEM private key (PKCS#8, SEC1 or RSA) of the --tls-cert in the same position.
    #[arg(long, value_name = "FILE")]
    pub tls_key: Vec<String>,
    /// ALPN protocols offered, in order (default h2,http/1.1).
    #[arg(long, value_name = "LIST")]
    pub tls_alpn: Option<String>,
    /// Lowest TLS version accepted: 1.2 (default) or 1.3.
    #[arg(long, value_name = "V")]
    pub tls_min_version: Option<String>,
    /// A TLS handshake must complete within this (default 10s).
    #[arg(long, value_name = "D", value_parser = checked(&rules::POSITIVE_SECONDS))]
    pub tls_handshake_timeout: Option<String>,
    /// TLS handshakes in progress per worker before new connections are closed (default
    /// 1000).
    #[arg(long, value_name = "N")]
    pub tls_max_handshakes: Option<String>,
    /// Worker threads, each pinned to a core, 1..1024. Default: one per core.
    #[arg(long, short = 'w', value_parser = checked(&rules::WORKERS))]
    pub workers: Option<String>,
    /// Upstream connections: persistent (keep-alive pools) or per-request.
    #[arg(long, short = 'u')]
    pub upstream: Option<String>,
    /// Protocol to every server: http1 or h2c (default: each server's `protocol`, else
    /// http1).
    #[arg(long, value_name = "http1|h2c")]
    pub upstream_protocol: Option<String>,
    /// Print debug output: configuration, errors, state changes.
    #[arg(long, short = 'd')]
    pub debug: bool,
    /// Upstream connect timeout (e.g. 500ms, 5s).
    #[arg(long, value_parser = checked(&rules::SECONDS))]
    pub connect_timeout: Option<String>,
    /// Time a client has to send a complete request head (408 after).
    #[arg(long, value_parser = checked(&rules::SECONDS))]
    pub client_timeout: Option<String>,
    /// Upstream inactivity timeout while a response is awaited or read (504 after).
    #[arg(long, value_parser = checked(&rules::SECONDS))]
    pub upstream_timeout: Option<String>,
    /// Idle keep-alive client connections are closed after this.
    #[arg(long, value_parser = checked(&rules::SECONDS))]
    pub idle_timeout: Option<String>,
    /// Idle pooled upstream connections are closed after this.
    #[arg(long, value_parser = checked(&rules::SECONDS))]
    pub pool_idle_timeout: Option<String>,
    /// Longest graceful shutdown before remaining connections are closed.
    #[arg(long, value_parser = checked(&rules::SECONDS))]
    pub drain_timeout: Option<String>,
    /// An upgraded connection (WebSocket, after a 101) idle both ways is closed after this
    /// (default 1h).
    #[arg(long, value_parser = checked(&rules::SECONDS))]
    pub tunnel_timeout: Option<String>,
    /// A response blocked on the client this long (a socket that takes no bytes, an
    /// HTTP/2 window it keeps shut) is abandoned (default 30s).
    #[arg(long, value_parser = checked(&rules::SECONDS))]
    pub send_timeout: Option<String>,
    /// Most idle pooled connections per backend per worker, 0..1048576.
    #[arg(long, value_parser = checked(&rules::MAX_IDLE_PER_BACKEND))]
    pub max_idle_per_backend: Option<String>,
    /// HTTP/2 clients: most stream resets in 10 s, theirs and those corelb sends for what
    /// they sent, before the connection is closed with ENHANCE_YOUR_CALM (default 200).
    #[arg(long, value_parser = checked(&rules::H2_MAX_RESETS))]
    pub h2_max_resets: Option<String>,
    /// HTTP/2 clients: most streams on one connection before a graceful GOAWAY, 0 for no
    /// limit (default 0).
    #[arg(long, value_parser = checked(&rules::H2_MAX_STREAMS))]
    pub h2_max_streams: Option<String>,
    /// Per-request CSV log file, or `off`. Default: <mode>_<upstream>.csv.
    #[arg(long, value_name = "FILE|off")]
    pub log_csv: Option<String>,
    /// Records the log queue holds before records are dropped (and counted).
    #[arg(long, value_name = "N", value_parser = checked(&rules::LOG_QUEUE))]
    pub log_queue: Option<String>,
    /// Bodies and chunks with at least this many bytes left are relayed with splice(2):
    /// bytes (65536, 64KiB, 1MiB), or off (default 64KiB).
    #[arg(long, value_name = "BYTES|off", value_parser = checked(&rules::SPLICE_MIN))]
    pub splice_min: Option<String>,
    /// Unsent bytes a socket may queue once a body is spliced into it (TCP_NOTSENT_LOWAT):
    /// bytes (131072, 128KiB), or off to leave the kernel's default (default 128KiB).
    #[arg(long, value_name = "BYTES|off", value_parser = checked(&rules::NOTSENT_LOWAT))]
    pub notsent_lowat: Option<String>,
    /// Directory for HDR histogram dumps (.hgrm and .hlog), written on exit.
    #[arg(long, value_name = "DIR")]
    pub hdr_dir: Option<String>,
    /// Also dump every this often (e.g. 10s).
    #[arg(long, value_name = "D", value_parser = checked(&rules::POSITIVE_SECONDS))]
    pub hdr_interval: Option<String>,
    /// Active health check: tcp, http, http:/PATH, http:/PATH:STATUS, grpc,
    /// grpc:SERVICE, or off (default: tcp for http1 servers, grpc for h2c servers).
    #[arg(long, value_name = "SPEC")]
    pub health_check: Option<String>,
    /// Consecutive successful checks that bring a server back up, 1..1000 (default 2).
    #[arg(long, value_parser = checked(&rules::RISE_FALL))]
    pub rise: Option<String>,
    /// Consecutive failed checks that take a server down, 1..1000 (default 3).
    #[arg(long, value_parser = checked(&rules::RISE_FALL))]
    pub fall: Option<String>,
    /// A recovered server's share ramps up over this long (e.g. 30s).
    #[arg(long, value_name = "D", value_parser = checked(&rules::SECONDS))]
    pub slow_start: Option<String>,
    /// Consecutive failed exchanges that eject a server (0: never; default 5).
    #[arg(long, value_name = "N", value_parser = checked(&rules::CONSECUTIVE_FAILURES))]
    pub eject_after: Option<String>,
    /// gRPC statuses that count as backend failures for ejection, e.g. 14,8,13 (the
    /// default), or none.
    #[arg(long, value_name = "CODES", value_parser = checked(&rules::GRPC_CODES))]
    pub eject_grpc_statuses: Option<String>,
    /// First ejection time; repeated ejections last longer (default 10s).
    #[arg(long, value_name = "D", value_parser = checked(&rules::SECONDS))]
    pub eject_time: Option<String>,
    /// Most retries of one request on other servers, 0..10 (default 2).
    #[arg(long, value_name = "N", value_parser = checked(&rules::RETRIES))]
    pub retries: Option<String>,
    /// Retries may add at most this percentage of requests (default 20).
    #[arg(long, value_name = "PCT", value_parser = checked(&rules::PERCENT))]
    pub retry_budget: Option<String>,
    /// Opt in to replaying requests that may have been processed, after these failures:
    /// reset, unavailable, resource-exhausted, 502, 503, 504, connect-failure,
    /// refused-stream, per-try-timeout (comma separated; per-try-timeout needs the file's
    /// perTryTimeout), or off. Covers the file's retryPolicy.methods, else every request.
    #[arg(long, value_name = "LIST")]
    pub retry_on: Option<String>,
    /// Hedge requests (the file's hedgingPolicy.methods, else GET and HEAD) with no answer
    /// after D (20ms) or the server's p95 latency (p95): one more copy to another server,
    /// the first answer wins. off disables the file's policy.
    #[arg(long, value_name = "D|p95|off")]
    pub hedge_delay: Option<String>,
    /// Admin API and live dashboard: HOST:PORT, PORT, or off. Default 127.0.0.1:5002.
    #[arg(long, value_name = "ADDR|off")]
    pub admin: Option<String>,
    /// Bearer token the admin API's changing calls (PUT, DELETE, POST /reload) require
    /// when the admin listener is not on loopback.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "CORELB_ADMIN_TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<String>,
    /// Backend slots in all, 1..4096 (default max(64, 4 x servers)); a removed server's
    /// slot is not reused before a restart.
    #[arg(long, value_name = "N", value_parser = checked(&rules::MAX_SERVERS))]
    pub max_servers: Option<String>,
    /// Re-resolve servers given by DNS name this often (e.g. 5s); each address becomes a
    /// backend NAME#1, NAME#2, ... Default: resolved at start and on reload only.
    #[arg(long, value_name = "D", value_parser = checked(&rules::POSITIVE_SECONDS))]
    pub dns_refresh: Option<String>,
    /// DNS server to ask directly over UDP (e.g. 127.0.0.1:5353) instead of the system
    /// resolver.
    #[arg(long, value_name = "ADDR")]
    pub resolver: Option<String>,
    /// adaptive_sma: responses in the moving window, 1..65536 (default 512).
    #[arg(long, value_name = "N", value_parser = checked(&rules::SMA_WINDOW))]
    pub sma_window: Option<String>,
    /// adaptive_ewma: least weight of each new response, in (0, 1] (default 0.004).
    #[arg(long, value_name = "A", value_parser = checked(&rules::ANY_NUMBER))]
    pub ewma_alpha: Option<String>,
    /// adaptive_sma/adaptive_ewma: average over about this much time at most, however
    /// few responses that is (default 500ms).
    #[arg(long, value_name = "D", value_parser = checked(&rules::SECONDS))]
    pub avg_span: Option<String>,
    /// peak-ewma: decay time of a latency peak (default 10s).
    #[arg(long, value_name = "D", value_parser = checked(&rules::SECONDS))]
    pub peak_ewma_tau: Option<String>,
    /// Do not pin workers to cores (helps when the proxy shares its cores with other busy
    /// processes, such as a load generator on the same machine).
    #[arg(long)]
    pub no_pin: bool,
    /// Validate the configuration (file, environment, flags), print a one-line summary and
    /// exit 0, or the error and exit 2; nothing is bound or started (like `nginx -t`).
    #[arg(long)]
    pub check: bool,
    /// The ids of the arguments whose value came from the environment (filled by
    /// [`Args::parse_argv`]; empty otherwise, and those values then count as flags).
    #[arg(skip)]
    from_env: Vec<String>,
}

impl Args {
    /// Parses a command line (the program name first). A value a rule refuses is an error
    /// naming the flag; help, version and malformed command lines are clap's to print,
    /// and exit the process as [`Parser::parse`] does.
    pub fn parse_argv<I, T>(argv: I) -> Result<Args, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let matches = Args::command()
            .try_get_matches_from(argv)
            .and_then(|m| Args::from_arg_matches(&m).map(|a| (a, m)));
        let (mut args, matches) = match matches {
            Ok(ok) => ok,
            Err(e) if e.kind() == ErrorKind::ValueValidation => return Err(refused(&e)),
            Err(e) => e.exit(),
        };
        args.from_env = ["config", "listen"]
            .into_iter()
            .filter(|id| matches.value_source(id) == Some(ValueSource::EnvVariable))
            .map(String::from)
            .collect();
        Ok(args)
    }

    /// The settings the environment gives, then those the flags give (which win).
    pub(crate) fn layers(&self) -> Result<(Layer, Layer), ConfigError> {
        let (mut env, mut cli) = (Layer::default(), Layer::default());
        if let Some(v) = &self.listen {
            if self.from_env.iter().any(|id| id == "listen") {
                env.set(Key::Listen, text(v, ENVIRONMENT, "PROXY_SERVER_PORT"));
            } else {
                cli.set(Key::Listen, text(v, COMMAND_LINE, "--listen"));
            }
        }
        let mode = match (&self.mode_pos, &self.mode) {
            (Some(a), Some(b)) if a != b => {
                return Err(ConfigError::new(
                    COMMAND_LINE,
                    "MODE",
                    format!("\"{a}\" conflicts with --mode \"{b}\""),
                ))
            }
            (a, b) => a.as_ref().or(b.as_ref()),
        };
        for (key, value, flag) in [
            (Key::Mode, mode, "--mode"),
            (Key::Workers, self.workers.as_ref(), "--workers"),
            (Key::Upstream, self.upstream.as_ref(), "--upstream"),
            (
                Key::UpstreamProtocol,
                self.upstream_protocol.as_ref(),
                "--upstream-protocol",
            ),
            (
                Key::ConnectTimeout,
                self.connect_timeout.as_ref(),
                "--connect-timeout",
            ),
            (
                Key::ClientTimeout,
                self.client_timeout.as_ref(),
                "--client-timeout",
            ),
            (
                Key::UpstreamTimeout,
                self.upstream_timeout.as_ref(),
                "--upstream-timeout",
            ),
            (
                Key::IdleTimeout,
                self.idle_timeout.as_ref(),
                "--idle-timeout",
            ),
            (
                Key::PoolIdleTimeout,
                self.pool_idle_timeout.as_ref(),
                "--pool-idle-timeout",
            ),
            (
                Key::DrainTimeout,
                self.drain_timeout.as_ref(),
                "--drain-timeout",
            ),
            (
                Key::TunnelTimeout,
                self.tunnel_timeout.as_ref(),
                "--tunnel-timeout",
            ),
            (
                Key::SendTimeout,
                self.send_timeout.as_ref(),
                "--send-timeout",
            ),
            (
                Key::MaxIdlePerBackend,
                self.max_idle_per_backend.as_ref(),
                "--max-idle-per-backend",
            ),
            (
                Key::H2MaxResets,
                self.h2_max_resets.as_ref(),
                "--h2-max-resets",
            ),
            (
                Key::H2MaxStreams,
                self.h2_max_streams.as_ref(),
                "--h2-max-streams",
            ),
            (Key::LogCsv, self.log_csv.as_ref(), "--log-csv"),
            (Key::LogQueue, self.log_queue.as_ref(), "--log-queue"),
            (Key::SpliceMin, self.splice_min.as_ref(), "--splice-min"),
            (
                Key::NotsentLowat,
                self.notsent_lowat.as_ref(),
                "--notsent-lowat",
            ),
            (Key::HdrDir, self.hdr_dir.as_ref(), "--hdr-dir"),
            (
                Key::HdrInterval,
                self.hdr_interval.as_ref(),
                "--hdr-interval",
            ),
            (Key::Rise, self.rise.as_ref(), "--rise"),
            (Key::Fall, self.fall.as_ref(), "--fall"),
            (Key::SlowStart, self.slow_start.as_ref(), "--slow-start"),
            (Key::EjectAfter, self.eject_after.as_ref(), "--eject-after"),
            (Key::EjectTime, self.eject_time.as_ref(), "--eject-time"),
            (
                Key::EjectGrpcStatuses,
                self.eject_grpc_statuses.as_ref(),
                "--eject-grpc-statuses",
            ),
            (Key::Retries, self.retries.as_ref(), "--retries"),
            (
                Key::RetryBudget,
                self.retry_budget.as_ref(),
                "--retry-budget",
            ),
            (Key::RetryOn, self.retry_on.as_ref(), "--retry-on"),
            (Key::HedgeDelay, self.hedge_delay.as_ref(), "--hedge-delay"),
            (Key::Admin, self.admin.as_ref(), "--admin"),
            (Key::MaxServers, self.max_servers.as_ref(), "--max-servers"),
            (Key::DnsRefresh, self.dns_refresh.as_ref(), "--dns-refresh"),
            (Key::TlsAlpn, self.tls_alpn.as_ref(), "--tls-alpn"),
            (
                Key::TlsMinVersion,
                self.tls_min_version.as_ref(),
                "--tls-min-version",
            ),
            (
                Key::TlsHandshakeTimeout,
                self.tls_handshake_timeout.as_ref(),
                "--tls-handshake-timeout",
            ),
            (
                Key::TlsMaxHandshakes,
                self.tls_max_handshakes.as_ref(),
                "--tls-max-handshakes",
            ),
            (Key::Resolver, self.resolver.as_ref(), "--resolver"),
            (Key::SmaWindow, self.sma_window.as_ref(), "--sma-window"),
            (Key::EwmaAlpha, self.ewma_alpha.as_ref(), "--ewma-alpha"),
            (Key::AvgSpan, self.avg_span.as_ref(), "--avg-span"),
            (
                Key::PeakEwmaTau,
                self.peak_ewma_tau.as_ref(),
                "--peak-ewma-tau",
            ),
        ] {
            if let Some(v) = value {
                cli.set(key, text(v, COMMAND_LINE, flag));
            }
        }
        if !self.tls_listen.is_empty() {
            let list = self.tls_listen.join(",");
            cli.set(Key::TlsListen, text(&list, COMMAND_LINE, "--tls-listen"));
        }
        if self.tls_cert.len() != self.tls_key.len() {
            return Err(ConfigError::new(
                COMMAND_LINE,
                "--tls-key",
                format!(
                    "{} --tls-cert but {} --tls-key: give them in pairs",
                    self.tls_cert.len(),
                    self.tls_key.len()
                ),
            ));
        }
        if !self.tls_cert.is_empty() {
            let pairs: Vec<serde_json::Value> = (self.tls_cert.iter().zip(&self.tls_key))
                .map(|(c, k)| serde_json::json!({"cert": c, "key": k}))
                .collect();
            let given = Given::new(Raw::Json(pairs.into()), COMMAND_LINE, "--tls-cert");
            cli.set(Key::TlsCertificates, given);
        }
        if let Some(spec) = &self.health_check {
            health_check(&mut cli, spec);
        }
        if self.debug {
            cli.set(Key::Debug, json(true, "--debug"));
        }
        if self.no_pin {
            cli.set(Key::Pin, json(false, "--no-pin"));
        }
        Ok((env, cli))
    }
}

fn text(v: &str, origin: &str, field: &str) -> Given {
    Given::new(Raw::Text(v.to_string()), origin, field)
}

/// A switch's value: switches have nothing to check, but go through the same merge.
fn json(v: bool, flag: &str) -> Given {
    Given::new(Raw::Json(v.into()), COMMAND_LINE, flag)
}

/// `--health-check off` only turns checks off; any other spec turns them on and gives
/// the check's type, path and status (the defaults when the spec leaves them out), each
/// checked by the rule of the file's `healthCheck` field.
fn health_check(cli: &mut Layer, spec: &str) {
    const FLAG: &str = "--health-check";
    let on = spec.trim() != "off";
    cli.set(Key::CheckEnabled, json(on, FLAG));
    if on {
        let (kind, path, status) = Check::split_spec(spec);
        if kind == "grpc" {
            cli.set(Key::CheckType, text(kind, COMMAND_LINE, FLAG));
            cli.set(
                Key::CheckService,
                text(path.unwrap_or(""), COMMAND_LINE, FLAG),
            );
            return;
        }
        let status = status.map_or(DEFAULT_CHECK_STATUS.to_string(), str::to_string);
        cli.set(Key::CheckType, text(kind, COMMAND_LINE, FLAG));
        let path = path.unwrap_or(DEFAULT_CHECK_PATH);
        cli.set(Key::CheckPath, text(path, COMMAND_LINE, FLAG));
        cli.set(Key::CheckStatus, text(&status, COMMAND_LINE, FLAG));
    }
}

/// A value refused by one of the value parsers above, as a one-line configuration error.
fn refused(e: &clap::Error) -> ConfigError {
    let flag = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.split(' ').next().unwrap_or(s).to_string(),
        _ => "(flag)".to_string(),
    };
    let problem = std::error::Error::source(e).map_or_else(|| e.to_string(), |s| s.to_string());
    ConfigError::new(COMMAND_LINE, flag, problem)
}
