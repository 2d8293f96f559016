//! The `corelb` binary: flags in, proxy running, exit code out.

use clap::Parser;

fn main() {
    let args = corelb::cli::Args::parse();
    let overrides = match args.overrides() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("corelb: {e}");
            std::process::exit(2);
        }
    };
    let cfg = match corelb::config::Config::load(&overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("corelb: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = corelb::server::run(cfg) {
        eprintln!("corelb: {e}");
        std::process::exit(1);
    }
}
