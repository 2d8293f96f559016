//! The retry policy (`retryPolicy` in the file, `--retry-on` on the command line) checked
//! into [`RetryPolicy`]: which failures may replay a request that corelb would otherwise
//! never send twice, for which methods or gRPC paths, how many attempts in all, how long
//! each may wait for its response head, and the backoff between them; and the hedging
//! policy (`hedgingPolicy`, `--hedge-delay`) into [`HedgingPolicy`]. In gRPC
//! service-config terms where they fit (`maxAttempts`, `initialBackoff`, `maxBackoff`,
//! `backoffMultiplier`, `hedgingDelay`, `nonFatalStatusCodes`), Envoy's where gRPC has
//! none (`retryOn` conditions, `perTryTimeout`).

use serde_json::Value;

use std::time::Duration;

use super::types::{
    Backoff, GrpcStatusSet, HedgeDelay, HedgingPolicy, RetryOn, RetryPolicy, DEFAULT_REPLAY_MAX,
    GRPC_STATUS_NAMES, MAX_REPLAY_MAX,
};
use super::value::{Given, Key, Layer, Raw};
use super::ConfigError;

/// The `retryOn` names corelb knows, with what each allows.
const CONDITIONS: [(&str, RetryOn); 9] = [
    ("connect-failure", RetryOn::CONNECT),
    ("refused-stream", RetryOn::REFUSED),
    ("reset", RetryOn::RESET),
    ("unavailable", RetryOn::UNAVAILABLE),
    ("resource-exhausted", RetryOn::RESOURCE_EXHAUSTED),
    ("502", RetryOn::STATUS_502),
    ("503", RetryOn::STATUS_503),
    ("504", RetryOn::STATUS_504),
    ("per-try-timeout", RetryOn::PER_TRY_TIMEOUT),
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
    let known = [
        "maxAttempts",
        "retryOn",
        "methods",
        "perTryTimeout",
        "initialBackoff",
        "maxBackoff",
        "backoffMultiplier",
        "replayBufferBytes",
    ];
    check_keys(g, map, &known, &[], "")?;
    let max_attempts = max_attempts(g, map)?;
    let on = match map.get("retryOn") {
        None => return Err(ConfigError::new(&g.origin, field("retryOn"), "missing")),
        Some(v) => conditions(g, &field("retryOn"), &strings(g, &field("retryOn"), v)?)?,
    };
    let methods = methods(g, map)?;
    let duration = |k: &str| -> Result<Option<Duration>, ConfigError> {
        map.get(k).map(|v| duration(g, &field(k), v)).transpose()
    };
    let per_try = duration("perTryTimeout")?;
    if on.has(RetryOn::PER_TRY_TIMEOUT) && per_try.is_none() {
        return Err(ConfigError::new(
            &g.origin,
            field("retryOn"),
            "per-try-timeout needs a perTryTimeout",
        ));
    }
    let backoff = match duration("initialBackoff")? {
        None => {
            if let Some(k) = ["maxBackoff", "backoffMultiplier"]
                .iter()
                .find(|k| map.contains_key(**k))
            {
                return Err(ConfigError::new(
                    &g.origin,
                    field(k),
                    "needs an initialBackoff",
                ));
            }
            None
        }
        Some(initial) => {
            let max = duration("maxBackoff")?.unwrap_or(initial * 10);
            if max < initial {
                return Err(ConfigError::new(
                    &g.origin,
                    field("maxBackoff"),
                    "shorter than initialBackoff",
                ));
            }
            let multiplier = match map.get("backoffMultiplier") {
                None => 2.0,
                Some(v) => match v.as_f64() {
                    Some(m) if (1.0..=10.0).contains(&m) => m,
                    _ => {
                        return Err(ConfigError::new(
                            &g.origin,
                            field("backoffMultiplier"),
                            format!("expected a number from 1 to 10, got {v}"),
                        ))
                    }
                },
            };
            Some(Backoff {
                initial,
                max,
                multiplier,
            })
        }
    };
    let replay_max = match map.get("replayBufferBytes") {
        None => DEFAULT_REPLAY_MAX,
        Some(v) => match v.as_u64() {
            Some(n) if n <= MAX_REPLAY_MAX as u64 => n as usize,
            _ => {
                return Err(ConfigError::new(
                    &g.origin,
                    field("replayBufferBytes"),
                    format!("expected a number of bytes up to {MAX_REPLAY_MAX}, got {v}"),
                ))
            }
        },
    };
    Ok(RetryPolicy {
        max_attempts,
        on,
        methods,
        per_try,
        backoff,
        replay_max,
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
        let per_try = policy.as_ref().and_then(|p| p.per_try);
        if on.has(RetryOn::PER_TRY_TIMEOUT) && per_try.is_none() {
            return Err(ConfigError::new(
                &g.origin,
                &g.field,
                "per-try-timeout needs the file's retryPolicy.perTryTimeout",
            ));
        }
        policy = Some(match policy {
            Some(p) => RetryPolicy { on, ..p },
            None => RetryPolicy {
                max_attempts: 3,
                on,
                methods: Vec::new(),
                per_try: None,
                backoff: None,
                replay_max: DEFAULT_REPLAY_MAX,
            },
        });
    }
    Ok(policy)
}

/// A hedging delay: a duration (`20ms`, `0.02`) or `p95`.
fn hedge_delay(g: &Given, field: &str, v: &Value) -> Result<HedgeDelay, ConfigError> {
    if v.as_str()
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("p95"))
    {
        return Ok(HedgeDelay::P95);
    }
    let d = duration_as(g, field, v, "a delay like \"20ms\" or \"p95\"")?;
    Ok(HedgeDelay::Fixed(d))
}

/// A duration from 1 ms to 60 s: `"200ms"`, `"0.2s"`, or a number of seconds.
fn duration(g: &Given, field: &str, v: &Value) -> Result<Duration, ConfigError> {
    duration_as(g, field, v, "a duration like \"200ms\"")
}

fn duration_as(g: &Given, field: &str, v: &Value, like: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::new(&g.origin, field, format!("expected {like}, got {v}"));
    let text = match v {
        Value::String(s) => s.trim().to_string(),
        Value::Number(n) => format!("{n}s"),
        _ => return Err(bad()),
    };
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
    Ok(Duration::from_secs_f64(secs))
}

/// The hedging policy from the file's `hedgingPolicy` object.
fn hedging_object(g: &Given) -> Result<HedgingPolicy, ConfigError> {
    let Raw::Json(Value::Object(map)) = &g.raw else {
        return Err(
            g.error(r#"expected an object like {"hedgingDelay": "p95", "methods": ["GET"]}"#)
        );
    };
    let field = |k: &str| format!("{}.{k}", g.field);
    let known = [
        "maxAttempts",
        "hedgingDelay",
        "methods",
        "nonFatalStatusCodes",
    ];
    check_keys(g, map, &known, &[], "")?;
    let max_attempts = max_attempts(g, map)?;
    let delay = match map.get("hedgingDelay") {
        None => HedgeDelay::P95,
        Some(v) => hedge_delay(g, &field("hedgingDelay"), v)?,
    };
    let methods = methods(g, map)?;
    let non_fatal = match map.get("nonFatalStatusCodes") {
        None => GrpcStatusSet::NONE,
        Some(v) => status_codes(g, &field("nonFatalStatusCodes"), v)?,
    };
    Ok(HedgingPolicy {
        delay,
        max_attempts,
        methods,
        non_fatal,
    })
}

/// gRPC status codes by name (`"UNAVAILABLE"`) or number (14), 1 to 16.
fn status_codes(g: &Given, field: &str, v: &Value) -> Result<GrpcStatusSet, ConfigError> {
    let bad = |what: String| {
        ConfigError::new(
            &g.origin,
            field,
            format!("{what}: expected gRPC status names like [\"UNAVAILABLE\"] or codes 1 to 16"),
        )
    };
    let list = match v {
        Value::Array(list) => list,
        other => return Err(bad(other.to_string())),
    };
    let mut codes = Vec::new();
    for x in list {
        let code = match x {
            Value::Number(n) => n.as_u64().map(|n| n as u32),
            Value::String(s) => GRPC_STATUS_NAMES
                .iter()
                .position(|n| n.eq_ignore_ascii_case(s.trim()))
                .map(|c| c as u32),
            _ => None,
        };
        match code {
            Some(c) if (1..=16).contains(&c) => codes.push(c),
            _ => return Err(bad(x.to_string())),
        }
    }
    GrpcStatusSet::of(&codes).ok_or_else(|| bad(v.to_string()))
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
                non_fatal: GrpcStatusSet::NONE,
            },
        });
    }
    Ok(policy)
}
