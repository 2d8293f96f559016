//! Command-line flags and the validated `Config` built from them; no I/O.

use std::net::IpAddr;

use clap::Parser;

use crate::profile::{Latency, ProfileSpec, SlowPhase, Stall};

pub const DEFAULT_PORT: u16 = 8080;
pub const DEFAULT_ID: &str = "A";
pub const DEFAULT_PROFILE: &str = "seed";
pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_SEED: u64 = 1;
/// Longest `--id`: it is written into every response head and body.
pub const MAX_ID_LEN: usize = 64;
pub const MAX_THREADS: usize = 1024;

/// Raw flags, as typed.
#[derive(Debug, Parser)]
#[command(
    name = "corelb-backend",
    version,
    about = "Latency-emulating HTTP/1.1 keep-alive backend for corelb tests and benchmarks"
)]
pub struct Args {
    /// Port to listen on (0 picks a free one).
    #[arg(long, env = "PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,
    /// Server id, sent as X-Backend and in bodies.
    #[arg(long, env = "SERVER_ID", default_value = DEFAULT_ID)]
    pub id: String,
    /// Latency profile: seed, fast, fixed:MS or queue:WORKERS:MEAN_MS.
    #[arg(long, default_value = DEFAULT_PROFILE)]
    pub profile: String,
    /// Multiply the delay by FACTOR during the first DURATION_MS of every PERIOD_MS.
    #[arg(long, value_name = "FACTOR:DURATION_MS:PERIOD_MS")]
    pub slow: Option<String>,
    /// Fraction of default-route requests answered with 500 (`--error-status`; TTS calls:
    /// `--grpc-error`).
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub error_rate: f64,
    /// The HTTP status of the answers `--error-rate` fails (500..599).
    #[arg(long, default_value_t = 500, value_name = "CODE")]
    pub error_status: u16,
    /// gRPC: the status of the TTS calls `--error-rate` fails (1..16; 14 UNAVAILABLE).
    #[arg(long, default_value_t = 14, value_name = "CODE")]
    pub grpc_error: u32,
    /// Fraction of default-route responses cut off after half the body.
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub close_rate: f64,
    /// A fraction R of default-route requests (HTTP/1.1 and h2c) and TTS calls (gRPC)
    /// waits MS more (a pause like a garbage collection's), e.g. 0.02:500.
    #[arg(long, value_name = "R:MS")]
    pub stall: Option<String>,
    /// Body size of the default route, in bytes (default: a short text).
    #[arg(long, value_name = "BYTES")]
    pub size: Option<u64>,
    /// HTTP/2 and gRPC: the SETTINGS_MAX_CONCURRENT_STREAMS announced (1..100000).
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_streams: u32,
    /// HTTP/2 and gRPC: fraction of streams refused with RST_STREAM(REFUSED_STREAM),
    /// unprocessed (so a proxy may retry them elsewhere).
    #[arg(long, default_value_t = 0.0, value_name = "R")]
    pub refuse_rate: f64,
    /// Event-loop threads, each with its own SO_REUSEPORT listener.
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub threads: usize,
    /// Address to listen on.
    #[arg(long, default_value = DEFAULT_HOST)]
    pub host: IpAddr,
    /// Seed of the pseudo-random draws (queue service times, error and close rates).
    #[arg(long, default_value_t = DEFAULT_SEED, value_name = "N")]
    pub seed: u64,
    /// Wire protocol: http1, h2c (HTTP/2 prior knowledge) or grpc (the TTS service on h2c).
    #[arg(long, default_value = "http1", value_name = "P")]
    pub protocol: String,
}

/// `--protocol`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http1,
    H2c,
    Grpc,
}

impl Protocol {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "http1" => Ok(Protocol::Http1),
            "h2c" => Ok(Protocol::H2c),
            "grpc" => Ok(Protocol::Grpc),
            _ => Err(format!("bad --protocol {s:?}: expected http1, h2c or grpc")),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "http1",
            Protocol::H2c => "h2c",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Validated settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub host: IpAddr,
    pub port: u16,
    pub id: String,
    pub profile: ProfileSpec,
    pub slow: Option<SlowPhase>,
    pub error_rate: f64,
    /// The grpc-status of an injected TTS call error, and the HTTP status of an injected
    /// default-route error.
    pub grpc_error: u32,
    pub error_status: u16,
    pub close_rate: f64,
    /// Stalled default-route requests and TTS calls.
    pub stall: Option<Stall>,
    pub size: Option<u64>,
    pub max_streams: u32,
    pub refuse_rate: f64,
    pub threads: usize,
    pub seed: u64,
    pub protocol: Protocol,
}

impl TryFrom<Args> for Config {
    type Error = String;

    fn try_from(a: Args) -> Result<Self, String> {
        let id_ok = |b: u8| b.is_ascii_alphanumeric() || b"-_.".contains(&b);
        if a.id.is_empty() || a.id.len() > MAX_ID_LEN || !a.id.bytes().all(id_ok) {
            return Err(format!(
                "bad --id {:?}: 1 to {MAX_ID_LEN} of A-Z a-z 0-9 - _ .",
                a.id
            ));
        }
        let profile = ProfileSpec::parse(&a.profile)?;
        let slow = a.slow.as_deref().map(SlowPhase::parse).transpose()?;
        // Refuses ids the seed profile does not know.
        Latency::new(&profile, &a.id, slow, a.seed)?;
        for (name, r) in [
            ("--error-rate", a.error_rate),
            ("--close-rate", a.close_rate),
            ("--refuse-rate", a.refuse_rate),
        ] {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("bad {name} {r}: must be within 0..1"));
            }
        }
        let stall = a.stall.as_deref().map(Stall::parse).transpose()?;
        if !(500..=599).contains(&a.error_status) {
            return Err(format!(
                "bad --error-status {}: a 5xx status",
                a.error_status
            ));
        }
        if !(1..=16).contains(&a.grpc_error) {
            return Err(format!(
                "bad --grpc-error {}: a gRPC status code 1..16",
                a.grpc_error
            ));
        }
        if a.max_streams == 0 || a.max_streams > 100_000 {
            return Err(format!(
                "bad --max-streams {}: must be 1..100000",
                a.max_streams
            ));
        }
        if a.threads == 0 || a.threads > MAX_THREADS {
            return Err(format!(
                "bad --threads {}: must be 1..{MAX_THREADS}",
                a.threads
            ));
        }
        Ok(Config {
            host: a.host,
            port: a.port,
            id: a.id,
            profile,
            slow,
            error_rate: a.error_rate,
            grpc_error: a.grpc_error,
            error_status: a.error_status,
            close_rate: a.close_rate,
            stall,
            size: a.size,
            max_streams: a.max_streams,
            refuse_rate: a.refuse_rate,
            threads: a.threads,
            seed: a.seed,
            protocol: Protocol::parse(&a.protocol)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["corelb-backend"];
        argv.extend_from_slice(args);
        Config::try_from(Args::try_parse_from(argv).map_err(|e| e.to_string())?)
    }

    #[test]
    fn defaults() {
        let c = parse(&["--port", "8080", "--id", "A"]).unwrap();
        assert_eq!(c.profile, ProfileSpec::Seed);
        assert_eq!(c.threads, 1);
        assert_eq!(c.host.to_string(), "127.0.0.1");
        assert_eq!(c.size, None);
        assert_eq!(c.slow, None);
        assert_eq!(c.protocol, Protocol::Http1);
    }

    #[test]
    fn protocols() {
        let p = |v| parse(&["--id", "A", "--protocol", v]).map(|c| c.protocol);
        assert_eq!(p("h2c"), Ok(Protocol::H2c));
        assert_eq!(p("grpc"), Ok(Protocol::Grpc));
        assert!(p("h3").is_err());
    }

    #[test]
    fn full_flags() {
        let c = parse(&[
            "--port",
            "0",
            "--id",
            "B",
            "--profile",
            "queue:4:10",
            "--slow",
            "5:100:1000",
            "--error-rate",
            "0.1",
            "--close-rate",
            "0.2",
            "--size",
            "1000",
            "--threads",
            "2",
            "--seed",
            "9",
            "--stall",
            "0.02:500",
        ])
        .unwrap();
        assert_eq!(c.port, 0);
        assert_eq!(c.id, "B");
        assert_eq!(c.slow.unwrap().factor, 5.0);
        assert_eq!(c.size, Some(1000));
        assert_eq!((c.threads, c.seed), (2, 9));
        let stall = c.stall.unwrap();
        assert_eq!((stall.rate, stall.extra.as_millis()), (0.02, 500));
    }

    #[test]
    fn rejects_bad_values() {
        assert!(parse(&["--port", "0", "--id", "A", "--error-rate", "1.5"]).is_err());
        assert!(parse(&["--port", "0", "--id", "A", "--grpc-error", "0"]).is_err());
        let c = parse(&["--port", "0", "--id", "A", "--grpc-error", "8"]).unwrap();
        assert_eq!(c.grpc_error, 8);
        assert!(parse(&["--port", "0", "--id", "A", "--error-status", "404"]).is_err());
        let c = parse(&["--port", "0", "--id", "A", "--error-status", "503"]).unwrap();
        assert_eq!(c.error_status, 503);
        assert!(parse(&["--port", "0", "--id", "A", "--threads", "0"]).is_err());
        assert!(parse(&["--port", "0", "--id", "a b"]).is_err());
        assert!(parse(&["--port", "0", "--id", "A", "--profile", "nope"]).is_err());
        assert!(parse(&["--port", "0", "--id", "A", "--slow", "1:2"]).is_err());
        assert!(parse(&["--port", "0", "--id", "A", "--stall", "2:500"]).is_err());
        let err = parse(&["--port", "0", "--id", "D"]).unwrap_err();
        assert!(err.contains("profile seed knows ids A, B, C"), "{err}");
        assert!(parse(&["--port", "0", "--id", "D", "--profile", "fast"]).is_ok());
    }
}
