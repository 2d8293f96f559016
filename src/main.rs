//! The `corelb` binary: flags in, proxy running (or, with `--check`, the configuration
//! checked and summed up), exit code out.

use corelb::config::{Args, Config};

fn main() {
    let cfg = Args::parse_argv(std::env::args_os()).and_then(|args| {
        let cfg = Config::load(&args)?;
        // Certificates and keys are read (and matched) before anything starts.
        let mut warnings = match &cfg.tls {
            Some(t) => corelb::tls::load(t, None)?.warnings,
            None => Vec::new(),
        };
        for s in &cfg.servers {
            if let Some(t) = &s.tls {
                corelb::tls::upstream(t, &s.address, s.protocol)?;
                warnings.extend(corelb::tls::upstream_warning(t));
            }
        }
        for w in &warnings {
            eprintln!("corelb: warning: {w}");
        }
        Ok((args, cfg))
    });
    let (args, cfg) = match cfg {
        Ok((args, cfg)) if args.check => {
            println!("corelb: {}", cfg.summary());
            return;
        }
        Ok(ok) => ok,
        Err(e) => {
            eprintln!("corelb: {e}");
            std::process::exit(2);
        }
    };
    if let Err(e) = corelb::server::run(cfg, args) {
        eprintln!("corelb: {e}");
        std::process::exit(1);
    }
}
