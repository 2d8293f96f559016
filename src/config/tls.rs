//! The `tls` settings (`tls.listen`, `tls.certificates`, ... and the `--tls-*` flags)
//! checked into [`TlsSettings`]. Only their shape and values: the files are read, and the
//! keys matched to their certificates, by the crate's `tls` module.

use serde_json::Value;

use super::types::{
    CertFiles, TlsSettings, TlsVersion, UpstreamTls, DEFAULT_TLS_HANDSHAKE_TIMEOUT,
    DEFAULT_TLS_MAX_HANDSHAKES,
};
use super::value::{self, Given, Int, Key, Layer, Raw};
use super::{parse_listen, ConfigError};

/// The ALPN protocols corelb serves.
const ALPN_KNOWN: [&str; 2] = ["h2", "http/1.1"];

const MAX_HANDSHAKES: Int = Int {
    min: 1,
    max: 1_000_000,
};

/// A list given as a JSON array of strings, one JSON string, or text split at commas.
fn strings(g: &Given) -> Result<Vec<String>, ConfigError> {
    let items: Vec<String> = match &g.raw {
        Raw::Text(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
        Raw::Json(Value::String(s)) => vec![s.clone()],
        Raw::Json(Value::Array(list)) => list
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(g.error(format!("expected a list of strings, got {other}"))),
            })
            .collect::<Result<_, _>>()?,
        Raw::Json(other) => return Err(g.error(format!("expected a list of strings, got {other}"))),
    };
    Ok(items.into_iter().filter(|s| !s.is_empty()).collect())
}

/// The certificate pairs: `[{"cert": FILE, "key": FILE}, ...]`.
fn certificates(g: &Given) -> Result<Vec<CertFiles>, ConfigError> {
    let flags = g.field.starts_with("--");
    let Raw::Json(Value::Array(list)) = &g.raw else {
        return Err(g.error(r#"expected a list like [{"cert": "a.pem", "key": "a.key"}]"#));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, item) in list.iter().enumerate() {
        let field = |name: &str| {
            if flags {
                format!("--tls-{name} #{}", i + 1)
            } else {
                format!("{}[{i}].{name}", g.field)
            }
        };
        let Value::Object(map) = item else {
            return Err(ConfigError::new(
                &g.origin,
                format!("{}[{i}]", g.field),
                format!("expected an object with cert and key, got {item}"),
            ));
        };
        if let Some(k) = map.keys().find(|k| *k != "cert" && *k != "key") {
            return Err(ConfigError::new(
                &g.origin,
                field(k),
                "unknown field: expected cert and key",
            ));
        }
        let file = |name: &str| match map.get(name) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(v) => Err(ConfigError::new(
                &g.origin,
                field(name),
                format!("expected a file name, got {v}"),
            )),
            None => Err(ConfigError::new(&g.origin, field(name), "missing")),
        };
        out.push(CertFiles {
            cert: file("cert")?,
            key: file("key")?,
            origin: g.origin.clone(),
            cert_field: field("cert"),
            key_field: field("key"),
        });
    }
    Ok(out)
}

/// The TLS settings, `None` when no TLS listener is given.
pub(super) fn tls(v: &Layer) -> Result<Option<TlsSettings>, ConfigError> {
    let listen = match v.values.get(&Key::TlsListen) {
        Some(g) => strings(g)?
            .iter()
            .map(|s| {
                parse_listen(s)
                    .ok_or_else(|| g.error(format!("expected PORT or HOST:PORT, got \"{s}\"")))
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => Vec::new(),
    };
    let certificates = match v.values.get(&Key::TlsCertificates) {
        Some(g) => certificates(g)?,
        None => Vec::new(),
    };
    let alpn = match v.values.get(&Key::TlsAlpn) {
        Some(g) => {
            let list = strings(g)?;
            if let Some(bad) = list.iter().find(|p| !ALPN_KNOWN.contains(&p.as_str())) {
                return Err(g.error(format!("unknown protocol \"{bad}\"; known: h2, http/1.1")));
            }
            if list.is_empty() {
                return Err(g.error("expected at least one of h2, http/1.1"));
            }
            list
        }
        None => ALPN_KNOWN.iter().map(|s| s.to_string()).collect(),
    };
    let min_version = v
        .values
        .get(&Key::TlsMinVersion)
        .map(|g| {
            let text = match &g.raw {
                Raw::Json(Value::Number(n)) => n.to_string(),
                Raw::Json(Value::String(s)) | Raw::Text(s) => s.trim().to_string(),
                Raw::Json(other) => other.to_string(),
            };
            match text.trim_start_matches("TLSv") {
                "1.2" => Ok(TlsVersion::V12),
                "1.3" => Ok(TlsVersion::V13),
                _ => Err(g.error(format!(
                    "expected \"1.2\" or \"1.3\", got {}",
                    g.raw.shown()
                ))),
            }
        })
        .transpose()?
        .unwrap_or(TlsVersion::V12);
    let handshake_timeout = v
        .get(Key::TlsHandshakeTimeout, &value::POSITIVE_SECONDS)?
        .unwrap_or(DEFAULT_TLS_HANDSHAKE_TIMEOUT);
    let max_handshakes = v
        .get(Key::TlsMaxHandshakes, &MAX_HANDSHAKES)?
        .map_or(DEFAULT_TLS_MAX_HANDSHAKES, |n| n as u32);
    if listen.is_empty() {
        return match v.values.get(&Key::TlsCertificates) {
            Some(g) => {
                Err(g.error("certificates given but no TLS listener (tls.listen or --tls-listen)"))
            }
            None => Ok(None),
        };
    }
    if certificates.is_empty() {
        return Err(v.values[&Key::TlsListen].error(
            "a TLS listener needs a certificate (tls.certificates, or --tls-cert and --tls-key)",
        ));
    }
    Ok(Some(TlsSettings {
        listen,
        certificates,
        alpn,
        min_version,
        handshake_timeout,
        max_handshakes,
    }))
}

/// A server's `tls` object: `{"ca": FILE, "sni": NAME, "verify": true, "cert": FILE,
/// "key": FILE}`, every key optional (`{}` is TLS verified against the system's roots).
pub(super) fn upstream(g: &Given) -> Result<UpstreamTls, ConfigError> {
    let Raw::Json(Value::Object(map)) = &g.raw else {
        return Err(g.error(r#"expected an object like {"ca": "ca.pem", "sni": "api.example"}"#));
    };
    let at = |k: &str| ConfigError::new(&g.origin, format!("{}.{k}", g.field), "");
    let mut t = UpstreamTls {
        ca: None,
        sni: None,
        verify: true,
        cert: None,
        key: None,
        origin: g.origin.clone(),
        field: g.field.clone(),
    };
    for (k, v) in map {
        let text = || match v {
            Value::String(s) if !s.is_empty() => Ok(s.clone()),
            other => Err(ConfigError {
                problem: format!("expected a non-empty string, got {other}"),
                ..at(k)
            }),
        };
        match k.as_str() {
            "ca" => t.ca = Some(text()?),
            "sni" => t.sni = Some(text()?),
            "cert" => t.cert = Some(text()?),
            "key" => t.key = Some(text()?),
            "verify" => {
                t.verify = v.as_bool().ok_or_else(|| ConfigError {
                    problem: format!("expected true or false, got {v}"),
                    ..at(k)
                })?
            }
            _ => {
                return Err(ConfigError {
                    problem: "unknown field: expected ca, sni, verify, cert, key".into(),
                    ..at(k)
                })
            }
        }
    }
    if t.cert.is_some() != t.key.is_some() {
        let missing = if t.cert.is_some() { "key" } else { "cert" };
        return Err(ConfigError {
            problem: "a client certificate needs both cert and key".into(),
            ..at(missing)
        });
    }
    Ok(t)
}
