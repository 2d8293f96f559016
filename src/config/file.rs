//! The configuration file: the seed's JSON format (`heartbeatInterval`, `heartbeatTimeout`,
//! `servers`) and corelb's additions, as serde structs. Owns the file's shape: which keys
//! exist (any other is refused, so a typo never goes unnoticed; keys starting with `_` are
//! comments, at every level), which are objects and lists, and every field's path. The
//! values themselves are left as written for `Config::validate`, which checks them with the
//! same rules as flags.

use serde::de::Visitor;
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::value::{Given, Key, Layer, Raw, ServerGiven, ServersGiven};
use super::ConfigError;

/// A key's value; `Default` (the key is absent) is "not given". Unlike `Option`, a `null`
/// is a value (and refused as one by the field's rule, as the file format has no nulls).
#[derive(Debug)]
struct Entry<T>(Option<T>);

impl<T> Default for Entry<T> {
    fn default() -> Self {
        Entry(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Entry<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        T::deserialize(ObjectOnly(d)).map(|v| Entry(Some(v)))
    }
}

/// Reads a struct only from an object. serde would also read one from a list of its
/// fields in order, which the file format never meant (`"servers": [[0, "A", ...]]`).
struct ObjectOnly<D>(D);

impl<'de, D: Deserializer<'de>> Deserializer<'de> for ObjectOnly<D> {
    type Error = D::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, D::Error> {
        self.0.deserialize_any(visitor)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, D::Error> {
        self.0.deserialize_map(visitor)
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes
        byte_buf option unit unit_struct newtype_struct seq tuple tuple_struct map enum
        identifier ignored_any
    }
}

/// A setting's value as written: its rule is applied by `Config::validate`, so that it is
/// the same rule, with the same words, as the matching flag's.
type Scalar = Entry<Value>;

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "a JSON object"
)]
struct File {
    heartbeat_interval: Scalar,
    heartbeat_timeout: Scalar,
    /// Every element is present: `Entry` only reads each server from an object.
    servers: Entry<Vec<Entry<Server>>>,
    listen: Scalar,
    workers: Scalar,
    mode: Scalar,
    upstream: Scalar,
    timeouts: Entry<Timeouts>,
    max_idle_per_backend: Scalar,
    h2_max_resets: Scalar,
    h2_max_streams: Scalar,
    splice_min: Scalar,
    notsent_lowat: Scalar,
    log_csv: Scalar,
    hdr_dir: Scalar,
    hdr_interval: Scalar,
    health_check: Entry<HealthCheck>,
    outlier_detection: Entry<OutlierDetection>,
    retries: Entry<Retries>,
    retry_policy: Scalar,
    hedging_policy: Scalar,
    admin: Scalar,
    routing: Entry<Routing>,
    max_servers: Scalar,
    dns_refresh: Scalar,
    resolver: Scalar,
    tls: Entry<Tls>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object"
)]
struct Tls {
    listen: Scalar,
    certificates: Scalar,
    alpn: Scalar,
    min_version: Scalar,
    handshake_timeout: Scalar,
    max_handshakes: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields, expecting = "an object")]
struct Server {
    priority: Scalar,
    name: Scalar,
    address: Scalar,
    port: Scalar,
    load: Scalar,
    protocol: Scalar,
    tls: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object"
)]
struct Timeouts {
    connect: Scalar,
    client: Scalar,
    upstream: Scalar,
    idle: Scalar,
    pool_idle: Scalar,
    drain: Scalar,
    tunnel: Scalar,
    send: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object"
)]
struct HealthCheck {
    #[serde(rename = "type")]
    kind: Scalar,
    path: Scalar,
    expect_status: Scalar,
    service: Scalar,
    rise: Scalar,
    fall: Scalar,
    slow_start: Scalar,
    enabled: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object"
)]
struct OutlierDetection {
    consecutive_failures: Scalar,
    base_ejection_time: Scalar,
    max_ejection_time: Scalar,
    #[serde(rename = "on5xx")]
    on_5xx: Scalar,
    grpc_statuses: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object"
)]
struct Retries {
    count: Scalar,
    budget_percent: Scalar,
}

#[derive(Debug, Default, Deserialize)]
#[serde(
    default,
    deny_unknown_fields,
    rename_all = "camelCase",
    expecting = "an object"
)]
struct Routing {
    sma_window: Scalar,
    ewma_alpha: Scalar,
    avg_span: Scalar,
    peak_ewma_tau: Scalar,
    idle_decay: Scalar,
    load_bias: Scalar,
    choices: Scalar,
    adaptive_choices: Scalar,
}

/// Reads the file's text into the settings it gives; `source` names it in errors.
pub(crate) fn read(source: &str, text: &str) -> Result<Layer, ConfigError> {
    let mut root: Value = serde_json::from_str(text).map_err(|e| {
        ConfigError::new(
            source,
            "(json)",
            format!(
                "invalid JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ),
        )
    })?;
    strip_comments(&mut root);
    let file: Entry<File> = serde_path_to_error::deserialize(root).map_err(|e| {
        let field = match e.path().to_string() {
            p if p == "." => "(root)".to_string(),
            p => p,
        };
        ConfigError::new(source, field, e.into_inner().to_string())
    })?;
    Ok(file.0.map(|f| f.layer(source)).unwrap_or_default())
}

/// Removes the `_`-prefixed keys (comments) from every object.
fn strip_comments(v: &mut Value) {
    match v {
        Value::Object(map) => {
            map.retain(|k, _| !k.starts_with('_'));
            map.values_mut().for_each(strip_comments);
        }
        Value::Array(list) => list.iter_mut().for_each(strip_comments),
        _ => {}
    }
}

/// Collects the given values of one object, each named by its path in the file.
struct Collect<'a> {
    layer: &'a mut Layer,
    source: &'a str,
    prefix: &'static str,
}

impl Collect<'_> {
    fn put(&mut self, key: Key, entry: Scalar, name: &str) {
        if let Some(v) = entry.0 {
            let given = Given::new(Raw::Json(v), self.source, format!("{}{name}", self.prefix));
            self.layer.set(key, given);
        }
    }
}

fn given(source: &str, path: &str, name: &str, entry: Scalar) -> Option<Given> {
    entry
        .0
        .map(|v| Given::new(Raw::Json(v), source, format!("{path}.{name}")))
}

impl File {
    fn layer(self, source: &str) -> Layer {
        let mut layer = Layer {
            servers: self.servers.0.map(|list| ServersGiven {
                origin: source.to_string(),
                list: list
                    .into_iter()
                    .filter_map(|s| s.0)
                    .enumerate()
                    .map(|(i, s)| {
                        let path = format!("servers[{i}]");
                        ServerGiven {
                            name: given(source, &path, "name", s.name),
                            address: given(source, &path, "address", s.address),
                            port: given(source, &path, "port", s.port),
                            priority: given(source, &path, "priority", s.priority),
                            load: given(source, &path, "load", s.load),
                            protocol: given(source, &path, "protocol", s.protocol),
                            tls: given(source, &path, "tls", s.tls),
                            path,
                        }
                    })
                    .collect(),
            }),
            ..Layer::default()
        };
        let mut top = Collect {
            layer: &mut layer,
            source,
            prefix: "",
        };
        top.put(
            Key::HeartbeatInterval,
            self.heartbeat_interval,
            "heartbeatInterval",
        );
        top.put(
            Key::HeartbeatTimeout,
            self.heartbeat_timeout,
            "heartbeatTimeout",
        );
        top.put(Key::Listen, self.listen, "listen");
        top.put(Key::Workers, self.workers, "workers");
        top.put(Key::Mode, self.mode, "mode");
        top.put(Key::Upstream, self.upstream, "upstream");
        top.put(
            Key::MaxIdlePerBackend,
            self.max_idle_per_backend,
            "maxIdlePerBackend",
        );
        top.put(Key::H2MaxResets, self.h2_max_resets, "h2MaxResets");
        top.put(Key::H2MaxStreams, self.h2_max_streams, "h2MaxStreams");
        top.put(Key::SpliceMin, self.splice_min, "spliceMin");
        top.put(Key::NotsentLowat, self.notsent_lowat, "notsentLowat");
        top.put(Key::LogCsv, self.log_csv, "logCsv");
        top.put(Key::HdrDir, self.hdr_dir, "hdrDir");
        top.put(Key::HdrInterval, self.hdr_interval, "hdrInterval");
        top.put(Key::Admin, self.admin, "admin");
        top.put(Key::MaxServers, self.max_servers, "maxServers");
        top.put(Key::DnsRefresh, self.dns_refresh, "dnsRefresh");
        top.put(Key::Resolver, self.resolver, "resolver");
        top.put(Key::RetryPolicy, self.retry_policy, "retryPolicy");
        top.put(Key::HedgingPolicy, self.hedging_policy, "hedgingPolicy");
        if let Some(t) = self.timeouts.0 {
            let mut c = Collect {
                layer: &mut layer,
                source,
                prefix: "timeouts.",
            };
            c.put(Key::ConnectTimeout, t.connect, "connect");
            c.put(Key::ClientTimeout, t.client, "client");
            c.put(Key::UpstreamTimeout, t.upstream, "upstream");
            c.put(Key::IdleTimeout, t.idle, "idle");
            c.put(Key::PoolIdleTimeout, t.pool_idle, "poolIdle");
            c.put(Key::DrainTimeout, t.drain, "drain");
            c.put(Key::TunnelTimeout, t.tunnel, "tunnel");
            c.put(Key::SendTimeout, t.send, "send");
        }
        if let Some(h) = self.health_check.0 {
            let mut c = Collect {
                layer: &mut layer,
                source,
                prefix: "healthCheck.",
            };
            c.put(Key::CheckType, h.kind, "type");
            c.put(Key::CheckPath, h.path, "path");
            c.put(Key::CheckStatus, h.expect_status, "expectStatus");
            c.put(Key::CheckService, h.service, "service");
            c.put(Key::Rise, h.rise, "rise");
            c.put(Key::Fall, h.fall, "fall");
            c.put(Key::SlowStart, h.slow_start, "slowStart");
            c.put(Key::CheckEnabled, h.enabled, "enabled");
        }
        if let Some(o) = self.outlier_detection.0 {
            let mut c = Collect {
                layer: &mut layer,
                source,
                prefix: "outlierDetection.",
            };
            c.put(
                Key::EjectAfter,
                o.consecutive_failures,
                "consecutiveFailures",
            );
            c.put(Key::EjectTime, o.base_ejection_time, "baseEjectionTime");
            c.put(Key::MaxEjectionTime, o.max_ejection_time, "maxEjectionTime");
            c.put(Key::On5xx, o.on_5xx, "on5xx");
            c.put(Key::EjectGrpcStatuses, o.grpc_statuses, "grpcStatuses");
        }
        if let Some(r) = self.retries.0 {
            let mut c = Collect {
                layer: &mut layer,
                source,
                prefix: "retries.",
            };
            c.put(Key::Retries, r.count, "count");
            c.put(Key::RetryBudget, r.budget_percent, "budgetPercent");
        }
        if let Some(t) = self.tls.0 {
            let mut c = Collect {
                layer: &mut layer,
                source,
                prefix: "tls.",
            };
            c.put(Key::TlsListen, t.listen, "listen");
            c.put(Key::TlsCertificates, t.certificates, "certificates");
            c.put(Key::TlsAlpn, t.alpn, "alpn");
            c.put(Key::TlsMinVersion, t.min_version, "minVersion");
            c.put(
                Key::TlsHandshakeTimeout,
                t.handshake_timeout,
                "handshakeTimeout",
            );
            c.put(Key::TlsMaxHandshakes, t.max_handshakes, "maxHandshakes");
        }
        if let Some(r) = self.routing.0 {
            let mut c = Collect {
                layer: &mut layer,
                source,
                prefix: "routing.",
            };
            c.put(Key::SmaWindow, r.sma_window, "smaWindow");
            c.put(Key::EwmaAlpha, r.ewma_alpha, "ewmaAlpha");
            c.put(Key::AvgSpan, r.avg_span, "avgSpan");
            c.put(Key::PeakEwmaTau, r.peak_ewma_tau, "peakEwmaTau");
            c.put(Key::IdleDecay, r.idle_decay, "idleDecay");
            c.put(Key::LoadBias, r.load_bias, "loadBias");
            c.put(Key::Choices, r.choices, "choices");
            c.put(Key::AdaptiveChoices, r.adaptive_choices, "adaptiveChoices");
        }
        layer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        read("f.json", text).unwrap_err().to_string()
    }

    #[test]
    fn comments_are_dropped_at_every_level() {
        let l = read(
            "f.json",
            r#"{"_c": 1, "servers": [{"_c": {"x": 1}, "name": "A"}],
                "healthCheck": {"_why": "slow backends", "rise": 5},
                "routing": {"_": []}}"#,
        )
        .unwrap();
        let s = &l.servers.unwrap().list[0];
        assert_eq!(s.name.as_ref().unwrap().field, "servers[0].name");
        assert!(s.port.is_none());
        let rise = &l.values[&Key::Rise];
        assert_eq!(
            (rise.field.as_str(), &rise.raw),
            ("healthCheck.rise", &Raw::Json(5.into()))
        );
    }

    #[test]
    fn shape_errors_keep_the_field_path() {
        assert!(err(r#"{"servers": [{"name": "A", "prot": 1}]}"#)
            .starts_with("f.json: servers[0].prot: unknown field `prot`"));
        assert!(
            err(r#"{"routing": {"alpha": 1}}"#).starts_with("f.json: routing.alpha: unknown field")
        );
        assert_eq!(
            err(r#"{"timeouts": 5}"#),
            "f.json: timeouts: invalid type: integer `5`, expected an object"
        );
        assert_eq!(
            err(r#"{"servers": [1]}"#),
            "f.json: servers[0]: invalid type: integer `1`, expected an object"
        );
        assert_eq!(
            err(r#"{"servers": [[0, "A", "127.0.0.1", 8081, 1]]}"#),
            "f.json: servers[0]: invalid type: sequence, expected an object"
        );
        assert_eq!(
            err("[]"),
            "f.json: (root): invalid type: sequence, expected a JSON object"
        );
    }

    #[test]
    fn null_is_a_value_not_an_absence() {
        let l = read("f.json", r#"{"workers": null}"#).unwrap();
        assert_eq!(l.values[&Key::Workers].raw, Raw::Json(Value::Null));
    }
}
