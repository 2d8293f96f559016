//! Command-line flags (clap), mapped onto [`config::Overrides`](crate::config::Overrides).

use clap::Parser;

use crate::config::Overrides;

/// corelb: thread-per-core HTTP/1.1 reverse proxy and load balancer.
#[derive(Debug, Parser)]
#[command(name = "corelb", version, about)]
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
    /// Listen address: PORT or HOST:PORT (a bare port binds 127.0.0.1). Default 9090.
    #[arg(long, short = 'l', env = "PROXY_SERVER_PORT")]
    pub listen: Option<String>,
    /// Worker threads, each pinned to a core. Default: one per core.
    #[arg(long, short = 'w')]
    pub workers: Option<usize>,
    /// Upstream connections: persistent (keep-alive pools) or per-request.
    #[arg(long, short = 'u')]
    pub upstream: Option<String>,
    /// Print debug output: configuration, errors, state changes.
    #[arg(long, short = 'd')]
    pub debug: bool,
    /// Upstream connect timeout (e.g. 500ms, 5s).
    #[arg(long)]
    pub connect_timeout: Option<String>,
    /// Time a client has to send a complete request head (408 after).
    #[arg(long)]
    pub client_timeout: Option<String>,
    /// Upstream inactivity timeout while a response is awaited or read (504 after).
    #[arg(long)]
    pub upstream_timeout: Option<String>,
    /// Idle keep-alive client connections are closed after this.
    #[arg(long)]
    pub idle_timeout: Option<String>,
    /// Idle pooled upstream connections are closed after this.
    #[arg(long)]
    pub pool_idle_timeout: Option<String>,
    /// Longest graceful shutdown before remaining connections are closed.
    #[arg(long)]
    pub drain_timeout: Option<String>,
    /// Most idle pooled connections per backend per worker.
    #[arg(long)]
    pub max_idle_per_backend: Option<usize>,
    /// Per-request CSV log file, or `off`. Default: <mode>_<upstream>.csv.
    #[arg(long, value_name = "FILE|off")]
    pub log_csv: Option<String>,
    /// Records the log queue holds before records are dropped (and counted).
    #[arg(long, value_name = "N")]
    pub log_queue: Option<usize>,
    /// Directory for HDR histogram dumps (.hgrm and .hlog), written on exit.
    #[arg(long, value_name = "DIR")]
    pub hdr_dir: Option<String>,
    /// Also dump every this often (e.g. 10s).
    #[arg(long, value_name = "D")]
    pub hdr_interval: Option<String>,
    /// Active health check: tcp, http, http:/PATH, http:/PATH:STATUS, or off.
    #[arg(long, value_name = "SPEC")]
    pub health_check: Option<String>,
    /// Consecutive successful checks that bring a server back up (default 2).
    #[arg(long)]
    pub rise: Option<u32>,
    /// Consecutive failed checks that take a server down (default 3).
    #[arg(long)]
    pub fall: Option<u32>,
    /// A recovered server's share ramps up over this long (e.g. 30s).
    #[arg(long, value_name = "D")]
    pub slow_start: Option<String>,
    /// Consecutive failed exchanges that eject a server (0: never; default 5).
    #[arg(long, value_name = "N")]
    pub eject_after: Option<u32>,
    /// First ejection time; repeated ejections last longer (default 10s).
    #[arg(long, value_name = "D")]
    pub eject_time: Option<String>,
    /// Most retries of one request on other servers (default 2).
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// Retries may add at most this percentage of requests (default 20).
    #[arg(long, value_name = "PCT")]
    pub retry_budget: Option<f64>,
    /// Admin API and live dashboard: HOST:PORT, PORT, or off. Default 127.0.0.1:5002.
    #[arg(long, value_name = "ADDR|off")]
    pub admin: Option<String>,
    /// adaptive_sma: responses in the moving window (default 512).
    #[arg(long, value_name = "N")]
    pub sma_window: Option<usize>,
    /// adaptive_ewma: least weight of each new response, in (0, 1] (default 0.004).
    #[arg(long, value_name = "A")]
    pub ewma_alpha: Option<f64>,
    /// adaptive_sma/adaptive_ewma: average over about this much time at most, however
    /// few responses that is (default 500ms).
    #[arg(long, value_name = "D")]
    pub avg_span: Option<String>,
    /// peak-ewma: decay time of a latency peak (default 10s).
    #[arg(long, value_name = "D")]
    pub peak_ewma_tau: Option<String>,
    /// Do not pin workers to cores (helps when the proxy shares its cores with other busy
    /// processes, such as a load generator on the same machine).
    #[arg(long)]
    pub no_pin: bool,
}

impl Args {
    /// The overrides these flags (and the environment) make. Fails if the positional mode
    /// and `--mode` disagree.
    pub fn overrides(&self) -> Result<Overrides, String> {
        let mode = match (&self.mode_pos, &self.mode) {
            (Some(a), Some(b)) if a != b => {
                return Err(format!(
                    "command line: MODE: \"{a}\" conflicts with --mode \"{b}\""
                ))
            }
            (a, b) => a.clone().or_else(|| b.clone()),
        };
        Ok(Overrides {
            config: self.config.clone(),
            listen: self.listen.clone(),
            workers: self.workers,
            mode,
            upstream: self.upstream.clone(),
            debug: self.debug,
            connect_timeout: self.connect_timeout.clone(),
            client_timeout: self.client_timeout.clone(),
            upstream_timeout: self.upstream_timeout.clone(),
            idle_timeout: self.idle_timeout.clone(),
            pool_idle_timeout: self.pool_idle_timeout.clone(),
            drain_timeout: self.drain_timeout.clone(),
            max_idle_per_backend: self.max_idle_per_backend,
            log_csv: self.log_csv.clone(),
            log_queue: self.log_queue,
            hdr_dir: self.hdr_dir.clone(),
            hdr_interval: self.hdr_interval.clone(),
            health_check: self.health_check.clone(),
            rise: self.rise,
            fall: self.fall,
            slow_start: self.slow_start.clone(),
            eject_after: self.eject_after,
            eject_time: self.eject_time.clone(),
            retries: self.retries,
            retry_budget: self.retry_budget,
            admin: self.admin.clone(),
            sma_window: self.sma_window,
            ewma_alpha: self.ewma_alpha,
            avg_span: self.avg_span.clone(),
            peak_ewma_tau: self.peak_ewma_tau.clone(),
            no_pin: self.no_pin,
        })
    }
}
