//! The `corelb` binary: flags in, proxy running (or, with `--check`, the configuration
//! checked and summed up), exit code out.

use corelb::config::{Args, Config};

fn main() {
    let cfg = Args::parse_argv(std::env::args_os()).and_then(|args| {
        let cfg = Config::load(&args)?;
        Ok((args.check, cfg))
    });
    let cfg = match cfg {
        Ok((true, cfg)) => {
            println!("corelb: {}", cfg.summary());
            return;
        }
        Ok((false, cfg)) => cfg,
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
