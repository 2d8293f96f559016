//! The control plane: the one place that changes the set of servers while the proxy runs.
//! Reloads (SIGHUP, `POST /reload`), the admin API's server changes and DNS discovery all
//! end here, on a control thread or the admin thread, never on a worker.
//!
//! A change is computed against the live slots (by name, then address), written to the
//! balancer's slot atomics and published as one new membership (see
//! [`Balancer::edit`](crate::balancer::Balancer::edit)). An unchanged server keeps its slot,
//! so its health, latency estimates and pooled connections; a removed one is retired: no
//! new requests, in-flight ones finish, and once none is left it is gone (workers close
//! its pooled connections at each publication). The control thread also watches retiring
//! slots, re-resolves DNS names every `dnsRefresh` and takes SIGHUP.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::balancer::SlotState;
use crate::config::{BackendSpec, Config, ConfigError};
use crate::dns::resolve;
use crate::shared::Shared;

/// Reads and validates the configuration again (the file, the environment and the flags
/// the process started with).
pub type Loader = Box<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// A retiring server becomes gone only after this long with nothing in flight (a worker
/// may have picked it from the previous membership just before the change).
const RETIRE_GRACE: Duration = Duration::from_millis(200);
/// How often the control thread looks at retiring servers and signals.
const TICK: Duration = Duration::from_millis(100);

/// Set by the SIGHUP handler, taken by the control thread.
static HANGUP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_hangup(_: libc::c_int) {
    HANGUP.store(true, Relaxed);
}

/// Routes SIGHUP to the control thread (the handler only sets a flag).
pub fn install_sighup() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGHUP,
            on_hangup as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
}

/// What a reload did.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadReport {
    pub ok: bool,
    /// The one-line error when the configuration was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Server changes applied, one line each.
    pub changes: Vec<String>,
    /// Settings that changed but need a restart (not applied), one line each.
    pub restart_needed: Vec<String>,
}

/// One server as `GET /servers` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ServerView {
    pub name: String,
    /// As configured (host name or IP).
    pub address: String,
    /// The socket address connected to.
    pub addr: String,
    pub port: u16,
    pub priority: u32,
    pub load: f64,
    /// `up`, `down`, `drain` or `ejected`.
    pub state: &'static str,
    pub inflight: u32,
    pub requests: u64,
}

/// `PUT /servers/{name}`'s body: every field optional for an existing server; a new one
/// needs `address` and `port`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerChange {
    pub address: Option<String>,
    pub port: Option<u16>,
    pub priority: Option<u32>,
    pub load: Option<f64>,
    pub state: Option<String>,
}

/// An admin API answer: HTTP status and a JSON body.
pub type Answer = (u16, String);

struct State {
    /// The configuration last applied (what a reload compares against).
    running: Config,
    /// Addresses each DNS-named server had at its last successful resolution.
    dns: HashMap<String, Vec<IpAddr>>,
    /// Retiring or drained slots and when their drain started.
    draining: HashMap<usize, Instant>,
    /// Drained-on-request slots whose drain end was announced.
    announced: HashSet<usize>,
    next_dns: Option<Instant>,
}

/// The control plane of one running proxy.
pub struct Control {
    shared: Arc<Shared>,
    loader: Option<Loader>,
    state: Mutex<State>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether servers named by DNS are discovered (re-resolved, one instance per address).
fn discovery(cfg: &Config) -> bool {
    cfg.dns_refresh.is_some() || cfg.resolver.is_some()
}

fn is_dns_name(address: &str) -> bool {
    address.parse::<IpAddr>().is_err()
}

impl Control {
    /// The control plane for `shared`, whose balancer was built from `shared.cfg` (DNS
    /// names are resolved now when discovery is on); `loader` reloads the configuration.
    pub fn new(shared: Arc<Shared>, loader: Option<Loader>) -> Arc<Control> {
        let cfg = shared.cfg.clone();
        let next_dns = cfg.dns_refresh.map(|d| Instant::now() + d);
        let c = Arc::new(Control {
            shared,
            loader,
            state: Mutex::new(State {
                running: cfg.clone(),
                dns: HashMap::new(),
                draining: HashMap::new(),
                announced: HashSet::new(),
                next_dns,
            }),
        });
        if discovery(&cfg) {
            let mut st = lock(&c.state);
            let wants = c.expand(&mut st, &cfg);
            if let Err(e) = c.apply(&mut st, &wants, &|_| true, "start") {
                eprintln!("corelb: discovery: {e}");
            }
        }
        c
    }

    /// Servers of `cfg` with every DNS-named one (discovery on) expanded into its
    /// instances `NAME#k`, one per address. An instance keeps its name while its address
    /// stays; a new address takes the lowest free number.
    fn expand(&self, st: &mut State, cfg: &Config) -> Vec<BackendSpec> {
        let mut out = Vec::new();
        for s in &cfg.servers {
            if !discovery(cfg) || !is_dns_name(&s.address) {
                out.push(s.clone());
                continue;
            }
            // No address at all reads as a failed lookup: the instances there are stay.
            let found = resolve(&s.address, cfg.resolver).and_then(|ips| {
                if ips.is_empty() {
                    Err(io::Error::other("no addresses"))
                } else {
                    Ok(ips)
                }
            });
            let ips = match found {
                Ok(ips) => {
                    if st.dns.get(&s.name) != Some(&ips) {
                        let list: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
                        self.shared.events.push(
                            "dns",
                            format!("{} ({}): [{}]", s.name, s.address, list.join(", ")),
                        );
                    }
                    st.dns.insert(s.name.clone(), ips.clone());
                    ips
                }
                Err(e) => {
                    let kept = st.dns.get(&s.name).cloned().unwrap_or_default();
                    eprintln!(
                        "corelb: discovery: {}: cannot resolve \"{}\": {e}; keeping {} address(es)",
                        s.name,
                        s.address,
                        kept.len()
                    );
                    kept
                }
            };
            out.extend(self.instances(s, &ips));
        }
        out
    }

    /// The instances of DNS-named server `s` for addresses `ips`.
    fn instances(&self, s: &BackendSpec, ips: &[IpAddr]) -> Vec<BackendSpec> {
        let bal = &self.shared.balancer;
        let prefix = format!("{}#", s.name);
        // Live instances by address.
        let mut by_addr: HashMap<SocketAddr, String> = HashMap::new();
        // Names still listed (retiring ones too) are not given to another address.
        let mut used: HashSet<String> = HashSet::new();
        for i in bal.listed() {
            let b = bal.backend(i);
            if !b.name.starts_with(&prefix) {
                continue;
            }
            used.insert(b.name.clone());
            if is_member_or_drained(b.state()) {
                by_addr.insert(b.addr, b.name.clone());
            }
        }
        let addrs: Vec<SocketAddr> = ips.iter().map(|&ip| SocketAddr::new(ip, s.port)).collect();
        let mut named: Vec<(SocketAddr, Option<String>)> = addrs
            .iter()
            .map(|a| (*a, by_addr.get(a).cloned()))
            .collect();
        let mut k = 1;
        for (_, n) in named.iter_mut().filter(|(_, n)| n.is_none()) {
            while used.contains(&format!("{prefix}{k}")) {
                k += 1;
            }
            let name = format!("{prefix}{k}");
            used.insert(name.clone());
            *n = Some(name);
        }
        named
            .into_iter()
            .map(|(addr, n)| BackendSpec {
                name: n.unwrap_or_default(),
                addr,
                ..s.clone()
            })
            .collect()
    }

    /// Makes the live servers for which `in_scope(name)` holds exactly `wants`: a server
    /// with the same name and address is tuned in place (and set up), another address is
    /// a removal plus an addition, a server not wanted is retired. Returns the changes.
    fn apply(
        &self,
        st: &mut State,
        wants: &[BackendSpec],
        in_scope: &dyn Fn(&str) -> bool,
        why: &str,
    ) -> Result<Vec<String>, String> {
        let bal = &self.shared.balancer;
        let live: Vec<usize> = bal
            .listed()
            .filter(|&i| {
                let b = bal.backend(i);
                is_member_or_drained(b.state()) && in_scope(&b.name)
            })
            .collect();
        let find = |name: &str| live.iter().copied().find(|&i| bal.backend(i).name == name);
        let same = |i: usize, w: &BackendSpec| {
            let b = bal.backend(i);
            b.addr == w.addr && b.protocol == w.protocol && b.address == w.address
        };
        let new_slots = wants
            .iter()
            .filter(|w| !find(&w.name).is_some_and(|i| same(i, w)))
            .count();
        if bal.len() + new_slots > bal.capacity() {
            return Err(format!(
                "maxServers: {} more backend slots needed, {} free (slots of removed servers are not reused before a restart)",
                new_slots,
                bal.capacity() - bal.len()
            ));
        }
        let mut changes = Vec::new();
        let mut edit = bal.edit();
        let now = Instant::now();
        for w in wants {
            match find(&w.name) {
                Some(i) if same(i, w) => {
                    let b = bal.backend(i);
                    if b.weight() != w.load || b.priority() != w.priority {
                        changes.push(format!(
                            "{}: load {} -> {}, priority {} -> {}",
                            w.name,
                            b.weight(),
                            w.load,
                            b.priority(),
                            w.priority
                        ));
                    }
                    edit.tune(i, w.load, w.priority);
                    if b.state() != SlotState::Active {
                        changes.push(format!("{}: up", w.name));
                        edit.set_state(i, SlotState::Active);
                        st.draining.remove(&i);
                        st.announced.remove(&i);
                    }
                }
                found => {
                    if let Some(i) = found {
                        let b = bal.backend(i);
                        changes.push(format!("{}: {} removed (draining)", b.name, b.addr));
                        edit.set_state(i, SlotState::Retiring);
                        st.draining.insert(i, now);
                        self.shared.counters.drains.fetch_add(1, Relaxed);
                    }
                    let i = edit.add(w)?;
                    let _ = i;
                    changes.push(format!(
                        "{}: {} added (priority {}, load {})",
                        w.name, w.addr, w.priority, w.load
                    ));
                }
            }
        }
        for &i in &live {
            let b = bal.backend(i);
            if !wants.iter().any(|w| w.name == b.name) {
                changes.push(format!("{}: {} removed (draining)", b.name, b.addr));
                edit.set_state(i, SlotState::Retiring);
                st.draining.insert(i, now);
                self.shared.counters.drains.fetch_add(1, Relaxed);
            }
        }
        edit.publish();
        for c in &changes {
            let kind = if c.ends_with("(draining)") {
                "drain"
            } else if c.contains(" added ") {
                "add"
            } else {
                "change"
            };
            self.shared.events.push(kind, format!("{why}: {c}"));
        }
        Ok(changes)
    }

    /// Reads the configuration again and applies its servers; see [`ReloadReport`].
    pub fn reload(&self) -> ReloadReport {
        let fail = |error: String| {
            eprintln!("corelb: reload failed, keeping the running configuration: {error}");
            self.shared.counters.reload_failures.fetch_add(1, Relaxed);
            self.shared.events.push("reload-failed", error.clone());
            ReloadReport {
                ok: false,
                error: Some(error),
                changes: Vec::new(),
                restart_needed: Vec::new(),
            }
        };
        let Some(loader) = &self.loader else {
            return fail(
                "reload: this proxy was started without a configuration to re-read".into(),
            );
        };
        let new = match loader() {
            Ok(c) => c,
            Err(e) => return fail(e.to_string()),
        };
        // Backends' TLS files too: a server whose CA or client certificate cannot be read
        // refuses the reload.
        for s in &new.servers {
            if let Some(t) = &s.tls {
                if let Err(e) = crate::tls::upstream(t, &s.address, s.protocol) {
                    return fail(e.to_string());
                }
            }
        }
        let mut st = lock(&self.state);
        // Certificates first: a file that cannot be read refuses the whole reload and the
        // running certificates stay, as with any other bad setting.
        let tls_change = match (
            &self.shared.tls,
            new.tls.as_ref().or(st.running.tls.as_ref()),
        ) {
            (Some(front), Some(settings)) => match front.reload(settings) {
                Ok(loaded) => {
                    for w in &loaded.warnings {
                        eprintln!("corelb: warning: {w}");
                    }
                    let names: Vec<String> = loaded.names.iter().map(|n| n.join(" ")).collect();
                    Some(format!(
                        "TLS certificates read again: {} ({})",
                        names.len(),
                        names.join("; ")
                    ))
                }
                Err(e) => {
                    drop(st);
                    return fail(e.to_string());
                }
            },
            _ => None,
        };
        let restart_needed = new.restart_needed(&st.running);
        let wants = self.expand(&mut st, &new);
        let changes = match self.apply(&mut st, &wants, &|_| true, "reload") {
            Ok(mut c) => {
                c.extend(tls_change);
                c
            }
            Err(e) => {
                drop(st);
                return fail(format!("{}: {e}", new.source));
            }
        };
        for r in &restart_needed {
            eprintln!("corelb: reload: {r}");
            self.shared.events.push("restart-needed", r.clone());
        }
        for c in &changes {
            eprintln!("corelb: reload: {c}");
        }
        // Settings that need a restart keep their running values.
        let mut running = new;
        running.keep_restart_settings(&st.running);
        st.running = running;
        st.next_dns = st.running.dns_refresh.map(|d| Instant::now() + d);
        self.shared.counters.reloads.fetch_add(1, Relaxed);
        self.shared.events.push(
            "reload",
            format!(
                "{}: {} change(s), {} need a restart",
                st.running.source,
                changes.len(),
                restart_needed.len()
            ),
        );
        ReloadReport {
            ok: true,
            error: None,
            changes,
            restart_needed,
        }
    }

    /// Every listed server (`GET /servers`).
    pub fn servers(&self) -> Vec<ServerView> {
        let sh = &self.shared;
        let bal = &sh.balancer;
        bal.listed()
            .map(|i| {
                let b = bal.backend(i);
                let h = sh.health.view(bal, i);
                let state = h.state(b.state());
                ServerView {
                    name: b.name.clone(),
                    address: b.address.clone(),
                    addr: b.addr.to_string(),
                    port: b.port,
                    priority: b.priority(),
                    load: b.weight(),
                    state,
                    inflight: b.stats.inflight.load(Relaxed),
                    requests: b.stats.requests.load(Relaxed),
                }
            })
            .collect()
    }

    /// `PUT /servers/{name}`: adds the server or changes it.
    pub fn put(&self, name: &str, body: &[u8]) -> Answer {
        let change: ServerChange = match serde_json::from_slice(body) {
            Ok(c) => c,
            Err(e) => return bad(format!("body: {e}")),
        };
        if name.is_empty() || name.contains('/') {
            return bad("name: expected a non-empty name without '/'".into());
        }
        if let Some(l) = change.load {
            if !(l.is_finite() && l > 0.0) {
                return bad(format!("load: expected a number > 0, got {l}"));
            }
        }
        if change.port == Some(0) {
            return bad("port: expected an integer 1..65535, got 0".into());
        }
        let state = match change.state.as_deref() {
            None => None,
            Some("up") => Some(SlotState::Active),
            Some("drain") => Some(SlotState::Drain),
            Some(s) => return bad(format!("state: expected \"up\" or \"drain\", got \"{s}\"")),
        };
        let mut st = lock(&self.state);
        let bal = &self.shared.balancer;
        let existing = bal.listed().find(|&i| {
            let b = bal.backend(i);
            b.name == name && is_member_or_drained(b.state())
        });
        let (address, port, priority, load, protocol) = match existing {
            Some(i) => {
                let b = bal.backend(i);
                (
                    change.address.clone().unwrap_or_else(|| b.address.clone()),
                    change.port.unwrap_or(b.port),
                    change.priority.unwrap_or(b.priority()),
                    change.load.unwrap_or(b.weight()),
                    b.protocol,
                )
            }
            None => match (&change.address, change.port) {
                (Some(a), Some(p)) => (
                    a.clone(),
                    p,
                    change.priority.unwrap_or(0),
                    change.load.unwrap_or(1.0),
                    Default::default(),
                ),
                _ => {
                    return bad(format!(
                        "{name}: a new server needs \"address\" and \"port\""
                    ))
                }
            },
        };
        let addr = match existing {
            Some(i) if change.address.is_none() && change.port.is_none() => bal.backend(i).addr,
            _ => match (address.as_str(), port)
                .to_socket_addrs()
                .map(|mut a| a.next())
            {
                Ok(Some(a)) => a,
                _ => return bad(format!("address: cannot resolve \"{address}\"")),
            },
        };
        // The API sets no TLS: a server it changes keeps what the configuration gave it.
        let tls = (st.running.servers.iter())
            .find(|s| s.name == name)
            .and_then(|s| s.tls.clone());
        let want = BackendSpec {
            name: name.to_string(),
            address,
            port,
            priority,
            load,
            addr,
            protocol,
            tls,
        };
        let scope = |n: &str| n == name;
        let mut changes = match self.apply(&mut st, std::slice::from_ref(&want), &scope, "admin") {
            Ok(c) => c,
            Err(e) => return (507, json_error(&e)),
        };
        if state == Some(SlotState::Drain) {
            if let Some(i) = bal.listed().find(|&i| {
                bal.backend(i).name == name && bal.backend(i).state() == SlotState::Active
            }) {
                let mut edit = bal.edit();
                edit.set_state(i, SlotState::Drain);
                edit.publish();
                st.draining.insert(i, Instant::now());
                st.announced.remove(&i);
                self.shared.counters.drains.fetch_add(1, Relaxed);
                let c = format!("{name}: drain");
                self.shared.events.push("drain", format!("admin: {c}"));
                changes.push(c);
            }
        }
        let status = if existing.is_some() { 200 } else { 201 };
        (
            status,
            serde_json::json!({ "ok": true, "changes": changes }).to_string(),
        )
    }

    /// `DELETE /servers/{name}`: retires the server (it drains).
    pub fn delete(&self, name: &str) -> Answer {
        let mut st = lock(&self.state);
        let bal = &self.shared.balancer;
        let Some(i) = bal.listed().find(|&i| {
            let b = bal.backend(i);
            b.name == name && is_member_or_drained(b.state())
        }) else {
            return (404, json_error(&format!("no server named \"{name}\"")));
        };
        let mut edit = bal.edit();
        edit.set_state(i, SlotState::Retiring);
        edit.publish();
        st.draining.insert(i, Instant::now());
        self.shared.counters.drains.fetch_add(1, Relaxed);
        let c = format!("{name}: {} removed (draining)", bal.backend(i).addr);
        self.shared.events.push("drain", format!("admin: {c}"));
        (
            200,
            serde_json::json!({ "ok": true, "changes": [c] }).to_string(),
        )
    }

    /// Ends the drains that are done: a retiring server with nothing in flight is gone; a
    /// server drained on request is announced drained. Publishes again if so, so workers
    /// close the pooled connections that finished exchanges put back meanwhile.
    pub fn tick(&self) {
        let mut st = lock(&self.state);
        if st.draining.is_empty() {
            return;
        }
        let bal = &self.shared.balancer;
        let now = Instant::now();
        let mut done = Vec::new();
        for (&i, &since) in &st.draining {
            let b = bal.backend(i);
            let idle = b.stats.inflight.load(Relaxed) == 0;
            if idle && now.duration_since(since) >= RETIRE_GRACE {
                done.push(i);
            }
        }
        if done.is_empty() {
            return;
        }
        let mut edit = bal.edit();
        for &i in &done {
            st.draining.remove(&i);
            let b = bal.backend(i);
            match b.state() {
                SlotState::Retiring => edit.set_state(i, SlotState::Gone),
                SlotState::Drain if st.announced.insert(i) => edit.touch(),
                _ => continue,
            }
            self.shared.counters.drains_done.fetch_add(1, Relaxed);
            self.shared
                .events
                .push("drained", format!("{} ({}): drained", b.name, b.addr));
        }
        edit.publish();
    }

    /// Re-resolves the DNS-named servers if it is time; applies what changed.
    fn refresh_dns(&self) {
        let mut st = lock(&self.state);
        let Some(due) = st.next_dns else { return };
        if Instant::now() < due {
            return;
        }
        let cfg = st.running.clone();
        st.next_dns = cfg.dns_refresh.map(|d| Instant::now() + d);
        if !discovery(&cfg) {
            return;
        }
        for s in cfg.servers.iter().filter(|s| is_dns_name(&s.address)) {
            let before = st.dns.get(&s.name).cloned();
            let one = Config {
                servers: vec![s.clone()],
                ..cfg.clone()
            };
            let wants = self.expand(&mut st, &one);
            if st.dns.get(&s.name) == before.as_ref() {
                continue;
            }
            let prefix = format!("{}#", s.name);
            let scope = |n: &str| n.starts_with(&prefix);
            match self.apply(&mut st, &wants, &scope, "dns") {
                Ok(changes) => changes
                    .iter()
                    .for_each(|c| eprintln!("corelb: discovery: {c}")),
                Err(e) => eprintln!("corelb: discovery: {}: {e}", s.name),
            }
        }
    }

    /// Starts the control thread: SIGHUP reloads, drains ending, DNS refreshes.
    pub fn start(self: &Arc<Control>) -> io::Result<ControlThread> {
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s2) = (self.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("corelb-control".into())
            .spawn(move || {
                while !s2.load(Relaxed) {
                    std::thread::sleep(TICK);
                    if HANGUP.swap(false, Relaxed) {
                        eprintln!("corelb: SIGHUP: reloading");
                        c.reload();
                    }
                    c.tick();
                    c.refresh_dns();
                }
            })?;
        Ok(ControlThread { stop, thread })
    }
}

/// The running control thread.
pub struct ControlThread {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl ControlThread {
    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        let _ = self.thread.join();
    }
}

fn is_member_or_drained(s: SlotState) -> bool {
    matches!(s, SlotState::Active | SlotState::Drain)
}

fn json_error(e: &str) -> String {
    serde_json::json!({ "ok": false, "error": e }).to_string()
}

fn bad(e: String) -> Answer {
    (400, json_error(&e))
}
