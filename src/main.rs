//! The `corelb` binary: flags in, proxy running, exit code out.

fn main() {
    let cfg = match corelb::config::Config::from_args(std::env::args_os()) {
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
