//! corelb-backend: flags -> validated config -> one mio event loop per thread, speaking
//! HTTP/1.1, h2c or gRPC (`--protocol`).

mod config;
mod conn;
mod framing;
mod grpc;
mod h2app;
mod h2conn;
mod profile;
mod response;
mod route;
mod server;
mod stats;
mod timer;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cfg = match config::Config::try_from(config::Args::parse()) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("corelb-backend: {e}");
            return ExitCode::from(2);
        }
    };
    match server::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("corelb-backend: {e}");
            ExitCode::FAILURE
        }
    }
}
