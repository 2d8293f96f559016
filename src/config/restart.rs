//! What a reload can apply: the settings that differ between the running configuration
//! and a new one and need a restart, named one line each, and the new configuration with
//! those put back to their running values.

use super::Config;

impl Config {
    /// The settings that differ between `old` (running) and this configuration and need a
    /// restart, one line each.
    pub fn restart_needed(&self, old: &Config) -> Vec<String> {
        let new = self;
        let mut out = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                out.push(format!(
                    "{name} changed ({a} -> {b}): needs a restart, not applied"
                ));
            }
        };
        macro_rules! field {
            ($name:literal, $f:ident) => {
                check($name, format!("{:?}", old.$f), format!("{:?}", new.$f))
            };
        }
        let listen = |c: &Config| c.listen.map_or("off".to_string(), |a| a.to_string());
        check("listen", listen(old), listen(new));
        let tls_fixed = |c: &Config| {
            c.tls
                .as_ref()
                .map(|t| (t.listen.clone(), t.handshake_timeout, t.max_handshakes))
        };
        check(
            "tls (listen, handshakeTimeout, maxHandshakes)",
            format!("{:?}", tls_fixed(old)),
            format!("{:?}", tls_fixed(new)),
        );
        field!("workers", workers);
        field!("mode", mode);
        field!("upstream", upstream);
        field!("admin", admin);
        field!("timeouts", timeouts);
        field!("maxIdlePerBackend", max_idle_per_backend);
        field!("h2MaxResets", h2_max_resets);
        field!("h2MaxStreams", h2_max_streams);
        field!("spliceMin", splice_min);
        field!("notsentLowat", notsent_lowat);
        field!("logCsv", log_csv);
        field!("logQueue", log_queue);
        field!("hdrDir", hdr_dir);
        field!("hdrInterval", hdr_interval);
        field!("heartbeatInterval", heartbeat_interval);
        field!("heartbeatTimeout", heartbeat_timeout);
        field!("healthCheck", health);
        field!("outlierDetection", outlier);
        field!("retries", retry);
        field!("routing", routing);
        field!("maxServers", max_servers);
        field!("resolver", resolver);
        field!("debug", debug);
        field!("pin", pin);
        if old.admin_token != new.admin_token {
            out.push("admin token changed: needs a restart, not applied".into());
        }
        out
    }

    /// This configuration with every setting that needs a restart put back to `running`'s
    /// value.
    pub fn keep_restart_settings(&mut self, running: &Config) {
        let new = self;
        let servers = std::mem::take(&mut new.servers);
        let (source, dns_refresh) = (new.source.clone(), new.dns_refresh);
        *new = Config {
            servers,
            source,
            dns_refresh,
            ..running.clone()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::Config;

    #[test]
    fn restart_settings_are_named_and_kept() {
        let a = Config::from_json(
            "a.json",
            r#"{"servers":[{"name":"A","address":"127.0.0.1","port":1}]}"#,
        )
        .unwrap();
        let mut b = Config::from_json(
            "a.json",
            r#"{"listen":"127.0.0.1:9999","workers":3,"spliceMin":"off","notsentLowat":"1MiB","servers":[{"name":"B","address":"127.0.0.1","port":2}]}"#,
        )
        .unwrap();
        let r = b.restart_needed(&a);
        assert_eq!(r.len(), 4, "{r:?}");
        assert!(r[0].starts_with("listen changed (127.0.0.1:9090 -> 127.0.0.1:9999)"));
        assert!(r[1].starts_with("workers changed"));
        assert!(r[2].starts_with("spliceMin changed (65536 -> 0)"), "{r:?}");
        assert!(r[3].starts_with("notsentLowat changed (131072 -> 1048576)"));
        b.keep_restart_settings(&a);
        assert_eq!((b.listen, b.workers), (a.listen, a.workers));
        assert_eq!(
            (b.splice_min, b.notsent_lowat),
            (a.splice_min, a.notsent_lowat)
        );
        assert_eq!(b.servers[0].name, "B");
    }
}
