//! gRPC status codes: their names, and a set of them as the retry, hedging and outlier
//! settings name them.

use std::fmt;

/// gRPC status codes (0 OK .. 16 UNAUTHENTICATED) by name.
pub const GRPC_STATUS_NAMES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// Largest gRPC status code defined (UNAUTHENTICATED).
pub const GRPC_STATUS_MAX: u32 = 16;

/// A gRPC status code's name; `None` past [`GRPC_STATUS_MAX`].
pub fn grpc_status_name(code: u32) -> Option<&'static str> {
    GRPC_STATUS_NAMES.get(code as usize).copied()
}

/// A set of gRPC status codes (1..=16), as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GrpcStatusSet(pub(super) u32);

impl GrpcStatusSet {
    /// The empty set.
    pub const NONE: GrpcStatusSet = GrpcStatusSet(0);

    /// The set of `codes`; `None` if one is outside 1..=16.
    pub fn of(codes: &[u32]) -> Option<GrpcStatusSet> {
        codes.iter().try_fold(GrpcStatusSet::NONE, |set, &c| {
            (1..=GRPC_STATUS_MAX)
                .contains(&c)
                .then_some(GrpcStatusSet(set.0 | 1 << c))
        })
    }

    #[inline]
    pub fn contains(self, code: u32) -> bool {
        code < 32 && self.0 & (1 << code) != 0
    }

    /// The codes, lowest first.
    pub fn codes(self) -> Vec<u32> {
        (0..32).filter(|&c| self.contains(c)).collect()
    }
}

impl fmt::Display for GrpcStatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let codes: Vec<String> = self.codes().iter().map(u32::to_string).collect();
        f.write_str(&codes.join(","))
    }
}
