//! Request routing: maps a request target to a `Route`; knows nothing about sockets.

/// What a request asks for. `Copy`, borrowed from nothing, so routing never allocates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Any other path: the profile delay, then a short text (or `--size` bytes).
    Default,
    /// `/delay/MS`: like the default route, after exactly MS ms.
    Delay(u64),
    /// `/health`: `ok`, not counted.
    Health,
    /// `/flap`: a flapping health endpoint, 200 and 503 in turn, not counted.
    Flap,
    /// `/stats`: JSON counters, not counted.
    Stats,
    /// `/echo`: the request body, streamed back.
    Echo,
    /// `/sink`: byte count and sum of the body.
    Sink,
    /// `/discard`: byte count of the body only (no per-byte work: upload benchmarks).
    Discard,
    /// `/bytes/N[?chunked=1]`: N pattern bytes.
    Bytes { len: u64, chunked: bool },
    /// `/headers`: the raw request head as the body.
    Headers,
    /// `/status/CODE`.
    Status(u16),
    /// `/hang`: never answers.
    Hang,
    /// `/close`: promises 100 body bytes, sends 10, closes.
    Close,
    /// `/garbage`: a malformed status line, then close.
    Garbage,
    /// `/ws`: a WebSocket echo (101 with `Sec-WebSocket-Accept`, then RFC 6455 frames).
    Ws,
    /// `/upgrade-echo`: 101 (asked for or not), then every byte echoed until EOF.
    UpgradeEcho,
}

/// A target naming a known route with a bad argument (`/status/abc`); answered with 400.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadTarget;

impl Route {
    /// Whether the request counts in `/stats` (`requests`, `connections`).
    pub fn counted(self) -> bool {
        !matches!(self, Route::Health | Route::Flap | Route::Stats)
    }

    /// Routes a request target in origin form (`/path?query`) or absolute form.
    pub fn of(target: &str) -> Result<Route, BadTarget> {
        let target = strip_authority(target);
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, q),
            None => (target, ""),
        };
        Ok(match path {
            "/health" => Route::Health,
            "/flap" => Route::Flap,
            "/stats" => Route::Stats,
            "/echo" => Route::Echo,
            "/sink" => Route::Sink,
            "/discard" => Route::Discard,
            "/headers" => Route::Headers,
            "/hang" => Route::Hang,
            "/close" => Route::Close,
            "/garbage" => Route::Garbage,
            "/ws" => Route::Ws,
            "/upgrade-echo" => Route::UpgradeEcho,
            _ => {
                if let Some(n) = path.strip_prefix("/bytes/") {
                    let chunked = query.split('&').any(|kv| kv == "chunked=1");
                    Route::Bytes {
                        len: number(n)?,
                        chunked,
                    }
                } else if let Some(code) = path.strip_prefix("/status/") {
                    match number(code)? {
                        c @ 100..=999 => Route::Status(c as u16),
                        _ => return Err(BadTarget),
                    }
                } else if let Some(ms) = path.strip_prefix("/delay/") {
                    Route::Delay(number(ms)?)
                } else {
                    Route::Default
                }
            }
        })
    }
}

/// `http://host:port/path` -> `/path`; origin form is returned unchanged.
fn strip_authority(target: &str) -> &str {
    let lower_starts = |p: &str| {
        target.len() >= p.len() && target.as_bytes()[..p.len()].eq_ignore_ascii_case(p.as_bytes())
    };
    for scheme in ["http://", "https://"] {
        if lower_starts(scheme) {
            let rest = &target[scheme.len()..];
            return match rest.find('/') {
                Some(i) => &rest[i..],
                None => "/",
            };
        }
    }
    target
}

/// Plain decimal digits only: no sign, no spaces, at most 19 digits.
fn number(s: &str) -> Result<u64, BadTarget> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadTarget);
    }
    s.parse().map_err(|_| BadTarget)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_routes() {
        assert_eq!(Route::of("/health"), Ok(Route::Health));
        assert_eq!(Route::of("/stats"), Ok(Route::Stats));
        assert_eq!(Route::of("/echo?x=1"), Ok(Route::Echo));
        assert_eq!(Route::of("/sink"), Ok(Route::Sink));
        assert_eq!(Route::of("/discard"), Ok(Route::Discard));
        assert_eq!(Route::of("/headers"), Ok(Route::Headers));
        assert_eq!(Route::of("/hang"), Ok(Route::Hang));
        assert_eq!(Route::of("/close"), Ok(Route::Close));
        assert_eq!(Route::of("/garbage"), Ok(Route::Garbage));
    }

    #[test]
    fn default_route_for_everything_else() {
        for t in [
            "/",
            "/index.html",
            "/health/",
            "/healthz",
            "/echo/x",
            "/bytes",
            "*",
        ] {
            assert_eq!(Route::of(t), Ok(Route::Default), "{t}");
        }
    }

    #[test]
    fn parameterised_routes() {
        assert_eq!(
            Route::of("/bytes/1073741824"),
            Ok(Route::Bytes {
                len: 1 << 30,
                chunked: false
            })
        );
        assert_eq!(
            Route::of("/bytes/10?a=b&chunked=1"),
            Ok(Route::Bytes {
                len: 10,
                chunked: true
            })
        );
        assert_eq!(
            Route::of("/bytes/10?chunked=0"),
            Ok(Route::Bytes {
                len: 10,
                chunked: false
            })
        );
        assert_eq!(Route::of("/status/204"), Ok(Route::Status(204)));
        assert_eq!(Route::of("/status/304?x"), Ok(Route::Status(304)));
        assert_eq!(Route::of("/delay/15"), Ok(Route::Delay(15)));
    }

    #[test]
    fn bad_arguments_are_rejected() {
        for t in [
            "/status/abc",
            "/status/99",
            "/status/1000",
            "/bytes/-1",
            "/bytes/",
            "/delay/1.5",
            "/bytes/+3",
        ] {
            assert_eq!(Route::of(t), Err(BadTarget), "{t}");
        }
    }

    #[test]
    fn absolute_form() {
        assert_eq!(Route::of("http://example.com/echo"), Ok(Route::Echo));
        assert_eq!(
            Route::of("HTTP://example.com:80/status/201"),
            Ok(Route::Status(201))
        );
        assert_eq!(Route::of("http://example.com"), Ok(Route::Default));
    }

    #[test]
    fn only_health_and_stats_are_uncounted() {
        assert!(!Route::Health.counted());
        assert!(!Route::Flap.counted());
        assert_eq!(Route::of("/flap"), Ok(Route::Flap));
        assert!(!Route::Stats.counted());
        assert!(Route::Default.counted());
        assert!(Route::Hang.counted());
        assert!(Route::Echo.counted());
    }
}
