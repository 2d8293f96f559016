//! The retry policy (`retryPolicy` in the file, `--retry-on` on the command line) checked
//! into [`RetryPolicy`]: which failures may replay a request that corelb would otherwise
//! never send twice, for which methods or gRPC paths, and how many attempts in all; and
//! the hedging policy (`hedgingPolicy`, `--hedge-delay`) into [`HedgingPolicy`]. In gRPC
//! service-config terms where they fit (`maxAttempts`, `retryOn` as status names,
//! `hedgingDelay`).

use serde_json::Value;

use super::types::{HedgeDelay, HedgingPolicy, RetryOn, RetryPolicy};
use super::value::{Given, Key, Layer, Raw};
use super::ConfigError;

/// The `retryOn` names corelb knows, with what each allows.
const CONDITIONS: [(&str, RetryOn); 5] = [
    ("connect-failure", RetryOn::CONNECT),
    ("refused-stream", RetryOn::REFUSED),
    ("reset", RetryOn::RESET),
    ("unavailable", RetryOn::UNAVAILABLE),
    ("resource-exhausted", RetryOn::RESOURCE_EXHAUSTED),
];

/// Keys of gRPC's retryPolicy that corelb does not carry out (yet): refused, so a policy
/// never reads as doing what it does not.
const NOT_YET: [&str; 4] = [
    "initialBackoff",
    "maxBackoff",
    "backoffMultiplier",
    "perTryTimeout",
];

/// Most attempts a policy may allow (the first one included), as gRPC caps them.
pub const MAX_ATTEMPTS: u32 = 5;

fn conditions(g: &Given, field: &str, list: &[String]) -> Result<RetryOn, ConfigError> {
    let mut on = RetryOn::default();
    for name in list {
        let lower = name.to_ascii_lowercase().replace('_', "-");
        match CONDITIONS.iter().find(|(n, _)| *n == lower) {
            Some((_, c)) => on = on.with(*c),
            None => {
                let known: Vec<&str> = CONDITIONS.iter().map(|(n, _)| *n).collect();
                return Err(ConfigError::new(
                    &g.origin,
                    field,
                    format!("unknown condition {name:?}: expected {}", known.join(", ")),
                ));
            }
        }
    }
    if on.is_empty() {
        return Err(ConfigError::new(
            &g.origin,
            field,
            "expected at least one condition",
        ));
    }
    Ok(on)
}

fn strings(g: &Given, field: &str, v: &Value) -> Result<Vec<String>, ConfigError> {
    let bad = |other: &Value| {
        ConfigError::new(
            &g.origin,
            field,
            format!("expected a list of strings, got {other}"),
        )
    };
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(list) => list
            .iter()
            .map(|x| x.as_str().map(str::to_string).ok_or_else(|| bad(x)))
            .collect(),
        other => Err(bad(other)),
    }
}

/// A method name (`GET`) or a path (`/tts.TTS/Synthesize`, or `/tts.TTS/*` for a service).
fn check_method(g: &Given, field: &str, m: &str) -> Result<(), ConfigError> {
    let ok = if let Some(path) = m.strip_prefix('/') {
        let body = path.strip_suffix('*').unwrap_or(path);
        !path.is_empty() && !body.contains('*') && !m.bytes().any(|b| b <= b' ')
    } else {
        !m.is_empty() && m.bytes().all(|b| b.is_ascii_uppercase() || b == b'-')
    };
    if ok {
        Ok(())
    } else {
        Err(ConfigError::new(
            &g.origin,
            field,
            format!(
                "{m:?}: expected a method (GET) or a path (/pkg.Service/Method, /pkg.Service/*)"
            ),
        ))
    }
}

type Object = serde_json::Map<String, Value>;

/// Every key of `map` is `known`; one of `not_yet` is refused with `why`.
fn check_keys(
    g: &Given,
    map: &Object,
    known: &[&str],
    not_yet: &[&str],
    why: &str,
) -> Result<(), ConfigError> {
    for k in map.keys() {
        let field = format!("{}.{k}", g.field);
        if not_yet.contains(&k.as_str()) {
            return Err(ConfigError::new(&g.origin, field, why));
        }
        if !known.contains(&k.as_str()) {
            let list = match known {
                [rest @ .., last] => format!("{} and {last}", rest.join(", ")),
                [] => String::new(),
            };
            return Err(ConfigError::new(
                &g.origin,
                field,
                format!("unknown field: expected {list}"),
            ));
        }
    }
    Ok(())
}

/// `maxAttempts`: 2 to [`MAX_ATTEMPTS`], 3 when absent.
fn max_attempts(g: &Given, map: &Object) -> Result<u32, ConfigError> {
    let Some(v) = map.get("maxAttempts") else {
        return Ok(3);
    };
    match v.as_u64() {
        Some(n) if (2..=MAX_ATTEMPTS as u64).contains(&n) => Ok(n as u32),
        _ => Err(ConfigError::new(
            &g.origin,
            format!("{}.maxAttempts", g.field),
            format!("expected a whole number from 2 to {MAX_ATTEMPTS}, got {v}"),
        )),
    }
}

/// `methods`: method names and paths, each checked; empty when absent.
fn methods(g: &Given, map: &Object) -> Result<Vec<String>, ConfigError> {
    let field = format!("{}.methods", g.field);
    let Some(v) = map.get("methods") else {
        return Ok(Vec::new());
    };
    let list = strings(g, &field, v)?;
    for (i, m) in list.iter().enumerate() {
        check_method(g, &format!("{field}[{i}]"), m)?;
    }
    Ok(list)
}

/// The policy from the file's `retryPolicy` object.
fn from_object(g: &Given) -> Result<RetryPolicy, ConfigError> {
    let Raw::Json(Value::Object(map)) = &g.raw else {
        return Err(g.error(r#"expected an object like {"maxAttempts": 3, "retryOn": ["reset"]}"#));
    };
    let field = |k: &str| format!("{}.{k}", g.field);
    let not_yet = "not supported yet: corelb retries at once, on another server";
    check_keys(
        g,
        map,
        &["maxAttempts", "retryOn", "methods"],
        &NOT_YET,
        not_yet,
    )?;
    let max_attempts = max_attempts(g, map)?;
    let on = match map.get("retryOn") {
        None => return Err(ConfigError::new(&g.origin, field("retryOn"), "missing")),
        Some(v) => conditions(g, &field("retryOn"), &strings(g, &field("retryOn"), v)?)?,
    };
    let methods = methods(g, map)?;
    Ok(RetryPolicy {
        max_attempts,
        on,
        methods,
    })
}

/// The retry policy the layers give: the file's `retryPolicy`, whose conditions
/// `--retry-on` replaces (for every request if the file names no methods).
pub(super) fn retry_policy(v: &Layer) -> Result<Option<RetryPolicy>, ConfigError> {
    let mut policy = match v.values.get(&Key::RetryPolicy) {
        Some(g) => Some(from_object(g)?),
        None => None,
    };
    if let Some(g) = v.values.get(&Key::RetryOn) {
        let list: Vec<String> = match &g.raw {
            Raw::Text(s) => s.split(',').map(|p| p.trim().to_string()).collect(),
            Raw::Json(v) => strings(g, &g.field, v)?,
        };
        if list.iter().any(|s| s == "off") {
            return Ok(None);
        }
        let on = conditions(g, &g.field, &list)?;
        policy = Some(match policy {
            Some(p) => RetryPolicy { on, ..p },
            None => RetryPolicy {
                max_attempts: 3,
                on,
                methods: Vec::new(),
            },
        });
    }
    Ok(policy)
}

/// A hedging delay: a duration (`20ms`, `0.02`) or `p95`.
fn hedge_delay(g: &Given, field: &str, v: &Value) -> Result<HedgeDelay, ConfigError> {
    let bad = || {
        ConfigError::new(
            &g.origin,
            field,
            format!("expected a delay like \"20ms\" or \"p95\", got {v}"),
        )
    };
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => format!("{n}s"),
        _ => return Err(bad()),
    };
    if text.eq_ignore_ascii_case("p95") {
        return Ok(HedgeDelay::P95);
    }
    let secs: f64 = if let Some(ms) = text.strip_suffix("ms") {
        ms.trim().parse::<f64>().map_err(|_| bad())? / 1000.0
    } else {
        text.trim_end_matches('s')
            .trim()
            .parse()
            .map_err(|_| bad())?
    };
    if !(0.001..=60.0).contains(&secs) {
        return Err(ConfigError::new(
            &g.origin,
            field,
            format!("{text}: expected from 1ms to 60s"),
        ));
    }
    Ok(HedgeDelay::Fixed(std::time::Duration::from_secs_f64(secs)))
}

/// The hedging policy from the file's `hedgingPolicy` object.
fn hedging_object(g: &Given) -> Result<HedgingPolicy, ConfigError> {
    let Raw::Json(Value::Object(map)) = &g.raw else {
        return Err(
            g.error(r#"expected an object like {"hedgingDelay": "p95", "methods": ["GET"]}"#)
        );
    };
    let field = |k: &str| format!("{}.{k}", g.field);
    let not_yet = "not supported yet: the first response head wins";
    let known = ["maxAttempts", "hedgingDelay", "methods"];
    check_keys(g, map, &known, &["nonFatalStatusCodes"], not_yet)?;
    let max_attempts = max_attempts(g, map)?;
    let delay = match map.get("hedgingDelay") {
        None => HedgeDelay::P95,
        Some(v) => hedge_delay(g, &field("hedgingDelay"), v)?,
    };
    let methods = methods(g, map)?;
    Ok(HedgingPolicy {
        delay,
        max_attempts,
        methods,
    })
}

/// The hedging policy the layers give: the file's `hedgingPolicy`, whose delay
/// `--hedge-delay` replaces (for GET and HEAD if the file names no methods).
pub(super) fn hedging_policy(v: &Layer) -> Result<Option<HedgingPolicy>, ConfigError> {
    let mut policy = match v.values.get(&Key::HedgingPolicy) {
        Some(g) => Some(hedging_object(g)?),
        None => None,
    };
    if let Some(g) = v.values.get(&Key::HedgeDelay) {
        let value = match &g.raw {
            Raw::Text(s) if s == "off" => return Ok(None),
            Raw::Text(s) => Value::String(s.clone()),
            Raw::Json(v) => v.clone(),
        };
        let delay = hedge_delay(g, &g.field, &value)?;
        policy = Some(match policy {
            Some(p) => HedgingPolicy { delay, ..p },
            None => HedgingPolicy {
                delay,
                max_attempts: 3,
                methods: Vec::new(),
            },
        });
    }
    Ok(policy)
}
