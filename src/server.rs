//! Starting and stopping the proxy: binds one SO_REUSEPORT listener per worker, pins each
//! worker to a core, and turns Ctrl-C/SIGTERM into a graceful drain.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use crate::access_log::{LogContext, Logger};
use crate::balancer::Balancer;
use crate::config::{Args, Config};
use crate::control::{Control, ControlThread, Loader};
use crate::debug;
use crate::metrics::{Aggregator, DumpConfig};
use crate::shared::{Counters, Shared};
use crate::worker::{self, Handle, Worker};

/// A running proxy.
pub struct Server {
    pub shared: Arc<Shared>,
    /// The first listener's address: the cleartext one unless it is off.
    pub local_addr: std::net::SocketAddr,
    /// The TLS listeners' addresses.
    pub tls_addrs: Vec<std::net::SocketAddr>,
    workers: Vec<Handle>,
    logger: Option<Logger>,
    pub metrics: Aggregator,
    checker: Option<crate::health::checker::Checker>,
    /// Reloads, admin server changes and DNS discovery.
    pub control: Arc<Control>,
    control_thread: Option<ControlThread>,
    /// The admin listener's address (`None` with `--admin off`).
    pub admin_addr: Option<std::net::SocketAddr>,
    admin: Option<crate::admin::Admin>,
}

/// What a stopped server reports.
pub struct Report {
    pub csv_written: u64,
    pub csv_dropped: u64,
    pub dumps: Vec<std::path::PathBuf>,
    pub problems: Vec<String>,
}

impl Server {
    /// Binds the listeners and starts the workers; a reload re-reads `cfg.source` (when it
    /// is a file) without flags.
    pub fn start(cfg: Config) -> Result<Server, String> {
        let loader: Option<Loader> = std::path::Path::new(&cfg.source).is_file().then(|| {
            let path = cfg.source.clone();
            Box::new(move || {
                let text = std::fs::read_to_string(&path).map_err(|e| {
                    crate::config::ConfigError::new(&path, "(file)", format!("cannot read: {e}"))
                })?;
                Config::from_json(&path, &text)
            }) as Loader
        });
        Self::start_with(cfg, loader)
    }

    /// As [`start`](Server::start); `loader` reads the configuration again on a reload.
    pub fn start_with(cfg: Config, loader: Option<Loader>) -> Result<Server, String> {
        crate::log::set_debug(cfg.debug);
        raise_fd_limit();
        let n = cfg.workers.max(1);
        let tls = match &cfg.tls {
            Some(s) => Some(crate::tls::TlsFront::new(
                &crate::tls::load(s, None).map_err(|e| e.to_string())?,
            )),
            None => None,
        };
        let wanted: Vec<(std::net::SocketAddr, bool)> = (cfg.listen.iter().map(|&a| (a, false)))
            .chain(
                cfg.tls
                    .iter()
                    .flat_map(|t| t.listen.iter().map(|&a| (a, true))),
            )
            .collect();
        if wanted.len() > worker::MAX_LISTENERS {
            return Err(format!("at most {} listeners", worker::MAX_LISTENERS));
        }
        let (mut listeners, endpoints) = bind_all(&wanted, n)?;
        let local_addr = endpoints[0].0;
        // The balancer first: the log and the dumps name backends added later by their
        // slots.
        // Servers named by DNS with discovery on (their address left unspecified) get their
        // instances from the control plane, before the workers start.
        let mut initial = cfg.clone();
        initial.servers.retain(|s| !s.addr.ip().is_unspecified());
        initial.max_servers = Some(
            cfg.max_servers
                .unwrap_or_else(|| crate::balancer::default_capacity(cfg.servers.len())),
        );
        let balancer = Arc::new(Balancer::new(&initial));
        let slots = balancer.capacity();
        let b2 = balancer.clone();
        let url_of: Arc<dyn Fn(usize) -> Option<String> + Send + Sync> =
            Arc::new(move |i| (i < b2.len()).then(|| format!("http://{}", b2.backend(i).addr)));
        let b3 = balancer.clone();
        let name_of: crate::metrics::Names =
            Arc::new(move |i| (i < b3.len()).then(|| b3.backend(i).name.clone()));
        let logger = match &cfg.log_csv {
            Some(path) => Some(
                Logger::start(LogContext {
                    path: path.clone(),
                    mode: cfg.mode.to_string(),
                    // Asked by slot as backends appear.
                    backend_urls: Vec::new(),
                    more_urls: Some(url_of),
                    queue: cfg.log_queue,
                })
                .map_err(|e| format!("cannot write CSV log {path}: {e}"))?,
            ),
            None => None,
        };
        let dump = cfg.hdr_dir.as_ref().map(|dir| DumpConfig {
            dir: dir.into(),
            prefix: cfg.run_name(),
            backend_names: name_of,
            interval: cfg.hdr_interval,
        });
        let metrics = Aggregator::start(slots, dump)
            .map_err(|e| format!("cannot start metrics (hdr dir {:?}): {e}", cfg.hdr_dir))?;
        let health =
            crate::health::Health::new(cfg.health.clone(), cfg.outlier.clone(), slots, cfg.debug);
        let shared = Arc::new(Shared {
            tls,
            balancer,
            health,
            cfg,
            stop: AtomicBool::new(false),
            counters: Counters::default(),
            started: std::time::Instant::now(),
            log_dropped: logger
                .as_ref()
                .map_or_else(Default::default, |l| l.dropped.clone()),
            events: Default::default(),
        });
        // Before the workers: with discovery on it resolves the DNS-named servers first.
        let control = Control::new(shared.clone(), loader);
        let control_thread = Some(
            control
                .start()
                .map_err(|e| format!("cannot start the control thread: {e}"))?,
        );
        let admin = match shared.cfg.admin {
            Some(addr) => Some(
                crate::admin::Admin::start(
                    addr,
                    shared.clone(),
                    metrics.summary.clone(),
                    Some(control.clone()),
                )
                .map_err(|e| format!("cannot listen on admin {addr}: {e} (--admin ADDR or off)"))?,
            ),
            None => None,
        };
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        let mut workers = Vec::with_capacity(n);
        for (id, listener) in listeners.drain(..).enumerate() {
            let endpoints = endpoints.clone();
            let log = logger.as_ref().map(|l| l.sender.clone());
            let tx = metrics.handover();
            let (w, waker) = Worker::new(id, shared.clone(), listener, log.clone(), tx.clone())
                .map_err(|e| format!("cannot start worker {id}: {e}"))?;
            let core = (shared.cfg.pin && !cores.is_empty()).then(|| cores[id % cores.len()]);
            let shared2 = shared.clone();
            let thread = std::thread::Builder::new()
                .name(format!("corelb-w{id}"))
                .spawn(move || {
                    if let Some(core) = core {
                        if !core_affinity::set_for_current(core) {
                            debug!("worker {id}: could not pin to core {}", core.id);
                        }
                    }
                    supervise(id, w, &shared2, &endpoints, log, tx);
                })
                .map_err(|e| format!("cannot spawn worker {id}: {e}"))?;
            workers.push(Handle { waker, thread });
        }
        // Always started: with active checks off it still ends passive ejections.
        let checker = Some(
            crate::health::checker::Checker::start(shared.clone())
                .map_err(|e| format!("cannot start health checks: {e}"))?,
        );
        Ok(Server {
            shared,
            local_addr,
            tls_addrs: endpoints.iter().filter(|e| e.1).map(|e| e.0).collect(),
            workers,
            logger,
            metrics,
            checker,
            control,
            control_thread,
            admin_addr: admin.as_ref().map(|a| a.addr),
            admin,
        })
    }

    /// Asks every worker to drain and stop.
    pub fn stop(&self) {
        self.shared.stop.store(true, Relaxed);
        for w in &self.workers {
            let _ = w.waker.wake();
        }
    }

    /// Waits for every worker to finish, then for the CSV log to be flushed and the final
    /// histogram dumps to be written.
    pub fn join(self) -> Report {
        let mut problems = Vec::new();
        if let Some(c) = self.checker {
            c.stop();
        }
        if let Some(c) = self.control_thread {
            c.stop();
        }
        for (i, w) in self.workers.into_iter().enumerate() {
            if w.thread.join().is_err() {
                problems.push(format!("worker {i} panicked"));
            }
        }
        let (csv_written, csv_dropped) = match self.logger {
            Some(l) => l
                .finish(std::time::Duration::from_secs(10))
                .unwrap_or_else(|e| {
                    problems.push(e);
                    (0, 0)
                }),
            None => (0, 0),
        };
        let dumps = self.metrics.finish().unwrap_or_else(|e| {
            problems.push(format!("histogram dumps: {e}"));
            Vec::new()
        });
        if let Some(a) = self.admin {
            a.stop();
        }
        Report {
            csv_written,
            csv_dropped,
            dumps,
            problems,
        }
    }
}

/// Runs a worker; if it dies anyway (a panic outside any exchange, which the proxy
/// contains), a new one takes its place on a fresh SO_REUSEPORT listener. Its connections
/// are lost, the other workers' are not. The main thread's waker for it goes stale; the
/// new worker still sees a stop request within a second.
fn supervise(
    id: usize,
    first: Worker,
    shared: &Arc<Shared>,
    endpoints: &[(std::net::SocketAddr, bool)],
    log: Option<crate::access_log::LogSender>,
    tx: crate::metrics::Handover,
) {
    let mut next = Some(first);
    loop {
        let w = match next.take() {
            Some(w) => w,
            None => {
                let made = (endpoints.iter())
                    .map(|&(a, tls)| worker::listen(a).map(|l| (l, tls)))
                    .collect::<std::io::Result<Vec<_>>>()
                    .and_then(|l| Worker::new(id, shared.clone(), l, log.clone(), tx.clone()));
                match made {
                    Ok((w, _)) => w,
                    Err(e) => {
                        eprintln!("corelb: worker {id}: cannot restart: {e}");
                        return;
                    }
                }
            }
        };
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| w.run())).is_ok() {
            return;
        }
        shared.counters.worker_restarts.fetch_add(1, Relaxed);
        if shared.stop.load(Relaxed) {
            return;
        }
        eprintln!("corelb: worker {id} died; restarting it");
    }
}

/// Binds `n` SO_REUSEPORT listeners on each wanted address: the first bind resolves port
/// 0, the others join it. Per worker, its listeners (and whether each is TLS); and the
/// addresses bound.
#[allow(clippy::type_complexity)]
fn bind_all(
    wanted: &[(std::net::SocketAddr, bool)],
    n: usize,
) -> Result<
    (
        Vec<Vec<(std::net::TcpListener, bool)>>,
        Vec<(std::net::SocketAddr, bool)>,
    ),
    String,
> {
    let mut per_worker: Vec<Vec<(std::net::TcpListener, bool)>> =
        (0..n).map(|_| Vec::new()).collect();
    let mut bound = Vec::with_capacity(wanted.len());
    for &(addr, tls) in wanted {
        let first = worker::listen(addr).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        let local = first.local_addr().map_err(|e| e.to_string())?;
        per_worker[0].push((first, tls));
        for w in per_worker.iter_mut().skip(1) {
            let l = worker::listen(local).map_err(|e| format!("cannot listen on {local}: {e}"))?;
            w.push((l, tls));
        }
        bound.push((local, tls));
    }
    Ok((per_worker, bound))
}

/// Raises the soft open-file limit to the hard limit: every connection is a descriptor.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                debug!("could not raise the open-file limit");
            }
        }
    }
}

/// Runs the proxy until Ctrl-C or SIGTERM, then drains and returns. A second signal exits
/// at once.
pub fn run(cfg: Config, args: Args) -> Result<(), String> {
    let (tx, rx) = crossbeam_channel::bounded::<()>(1);
    let signals = Arc::new(AtomicUsize::new(0));
    let s2 = signals.clone();
    ctrlc::set_handler(move || {
        if s2.fetch_add(1, Relaxed) >= 1 {
            eprintln!("corelb: second signal, exiting now");
            std::process::exit(130);
        }
        let _ = tx.try_send(());
    })
    .map_err(|e| format!("cannot install signal handler: {e}"))?;

    let summary = format!(
        "mode {}, upstream {}, {} workers, {} servers from {}",
        cfg.mode,
        cfg.upstream,
        cfg.workers,
        cfg.servers.len(),
        cfg.source
    );
    let servers: Vec<String> = cfg
        .servers
        .iter()
        .map(|s| {
            let check = match cfg.health.enabled {
                true => cfg.health.check_for(s.protocol).to_string(),
                false => "off".to_string(),
            };
            format!(
                "{}={} (priority {}, load {}, {}, check {check})",
                s.name, s.addr, s.priority, s.load, s.protocol
            )
        })
        .collect();
    crate::control::install_sighup();
    let loader: Loader = Box::new(move || Config::load(&args));
    let server = Server::start_with(cfg, Some(loader))?;
    println!("corelb listening on {} ({summary})", server.local_addr);
    for a in &server.tls_addrs {
        println!("corelb listening for TLS on {a}");
    }
    if let Some(a) = server.admin_addr {
        println!("corelb admin on http://{a}/");
    }
    let _ = std::io::stdout().flush();
    debug!("servers: {}", servers.join(", "));

    let _ = rx.recv();
    eprintln!("corelb: stopping: finishing in-flight requests");
    server.stop();
    let counters = server.shared.clone();
    let log_path = counters.cfg.log_csv.clone();
    let report = server.join();
    if let Some(path) = log_path {
        eprintln!(
            "corelb: CSV log {path}: {} records written, {} dropped (queue full)",
            report.csv_written, report.csv_dropped
        );
    }
    for d in &report.dumps {
        eprintln!("corelb: wrote {}", d.display());
    }
    if !report.problems.is_empty() {
        return Err(report.problems.join("; "));
    }
    let c = &counters.counters;
    eprintln!(
        "corelb: stopped after {} connections, {} requests, {} upstream connections",
        c.accepted.load(Relaxed),
        c.requests.load(Relaxed),
        c.upstream_connects.load(Relaxed)
    );
    Ok(())
}
