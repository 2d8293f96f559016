//! The `-d` debug switch and the `debug!` macro every layer uses; owns nothing else.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

static DEBUG: AtomicBool = AtomicBool::new(false);

/// Turns `debug!` output on or off for the whole process.
pub fn set_debug(on: bool) {
    DEBUG.store(on, Relaxed);
}

#[inline]
pub fn debug_enabled() -> bool {
    DEBUG.load(Relaxed)
}

/// Prints a line to stderr when `-d` is on.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::debug_enabled() {
            eprintln!("corelb: {}", format_args!($($arg)*));
        }
    };
}
