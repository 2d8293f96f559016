//! TLS to clients: the certificate chains and keys named by `tls.certificates` read into
//! one rustls `ServerConfig` (aws-lc-rs provider), SNI choosing a certificate by the names in
//! its SAN, session tickets whose keys rotate and are shared by every worker, and the swap
//! a reload makes (new handshakes take the new certificates; established sessions keep
//! theirs). Workers only `load` the current config per accepted connection.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ProducesTickets, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

use crate::config::{CertFiles, ConfigError, Protocol, TlsSettings, TlsVersion, UpstreamTls};

/// A certificate expiring within this is reported by `--check` and reloads.
const EXPIRY_WARNING: Duration = Duration::from_secs(14 * 24 * 3600);

/// One certificate chain ready to serve, and the names SNI matches it by.
#[derive(Debug)]
struct Served {
    /// Lowercase DNS names from the SAN (the subject CN when there is no SAN); a leading
    /// `*.` is a wildcard for one label.
    names: Vec<String>,
    key: Arc<CertifiedKey>,
}

/// Picks a certificate by the ClientHello's server name: an exact name first, then a
/// wildcard, preferring one whose key can sign with a scheme the client offers. No name,
/// or no match: the first certificate.
#[derive(Debug)]
struct Sni {
    served: Vec<Served>,
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(rest) => name
            .split_once('.')
            .is_some_and(|(label, tail)| !label.is_empty() && tail == rest),
        None => pattern == name,
    }
}

impl ResolvesServerCert for Sni {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let schemes = hello.signature_schemes();
        let signs = |s: &&Served| s.key.key.choose_scheme(schemes).is_some();
        if let Some(name) = hello.server_name() {
            let name = name.to_ascii_lowercase();
            let exact = |s: &&Served| s.names.contains(&name);
            let wild = |s: &&Served| {
                s.names
                    .iter()
                    .any(|n| n.starts_with("*.") && matches(n, &name))
            };
            let found = (self.served.iter().filter(exact).find(signs))
                .or_else(|| self.served.iter().find(exact))
                .or_else(|| self.served.iter().filter(wild).find(signs))
                .or_else(|| self.served.iter().find(wild));
            if let Some(s) = found {
                return Some(s.key.clone());
            }
        }
        self.served.first().map(|s| s.key.clone())
    }
}

/// A certificate file set read and checked, with what `--check` should warn about.
pub struct Loaded {
    pub config: Arc<ServerConfig>,
    /// One line each: certificates expiring soon.
    pub warnings: Vec<String>,
    /// Per certificate, the names it serves (for `--check` and `/stats`).
    pub names: Vec<Vec<String>>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads one certificate chain and key; checks that they match and that the certificate
/// is valid now.
fn read_pair(
    f: &CertFiles,
    provider: &CryptoProvider,
) -> Result<(Served, Option<String>), ConfigError> {
    let cert_err = |p: String| ConfigError::new(&f.origin, f.cert_field.clone(), p);
    let key_err = |p: String| ConfigError::new(&f.origin, f.key_field.clone(), p);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&f.cert)
        .map_err(|e| cert_err(format!("cannot read {}: {}", f.cert, pem_problem(&e))))?
        .collect::<Result<_, _>>()
        .map_err(|e| cert_err(format!("{}: {}", f.cert, pem_problem(&e))))?;
    if chain.is_empty() {
        return Err(cert_err(format!("{}: no PEM CERTIFICATE in it", f.cert)));
    }
    let key = PrivateKeyDer::from_pem_file(&f.key)
        .map_err(|e| key_err(format!("{}: {}", f.key, pem_problem(&e))))?;
    let signer = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| key_err(format!("{}: unusable key: {e}", f.key)))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| {
        key_err(format!(
            "{}: this key does not match the certificate in {}",
            f.key, f.cert
        ))
    })?;
    let (names, warning) = inspect(&certified.cert[0]).map_err(cert_err)?;
    let warning = warning.map(|w| format!("{}: {}: {} {w}", f.origin, f.cert_field, f.cert));
    let served = Served {
        names,
        key: Arc::new(certified),
    };
    Ok((served, warning))
}

fn pem_problem(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as E;
    match e {
        E::Io(io) => io.to_string(),
        E::NoItemsFound => "no PEM item of the expected kind in it".into(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// The names a leaf certificate serves, and a warning when it expires soon; an error when
/// it has expired or is not yet valid.
fn inspect(der: &CertificateDer<'_>) -> Result<(Vec<String>, Option<String>), String> {
    use x509_parser::prelude::*;
    let (_, cert) = X509Certificate::from_der(der.as_ref())
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let validity = cert.validity();
    let not_after = validity.not_after.to_datetime();
    let Some(left) = validity.time_to_expiration() else {
        return Err(
            if validity.not_before.timestamp() > ASN1Time::now().timestamp() {
                format!("not valid before {}", validity.not_before)
            } else {
                format!("expired on {not_after}")
            },
        );
    };
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|n| match n {
                GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names.extend(
            cert.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    let left = left.whole_seconds().max(0) as u64;
    let warning = (left < EXPIRY_WARNING.as_secs())
        .then(|| format!("expires in {} day(s), on {not_after}", left / 86_400));
    Ok((names, warning))
}

/// Reads every certificate pair of `s` into a `ServerConfig`. `tickets` keeps the session
/// ticket keys of the config it replaces, so sessions resume across a reload.
pub fn load(
    s: &TlsSettings,
    tickets: Option<Arc<dyn ProducesTickets>>,
) -> Result<Loaded, ConfigError> {
    let provider = provider();
    let mut served = Vec::with_capacity(s.certificates.len());
    let mut warnings = Vec::new();
    for f in &s.certificates {
        let (one, warning) = read_pair(f, &provider)?;
        served.push(one);
        warnings.extend(warning);
    }
    let names = served.iter().map(|s| s.names.clone()).collect();
    let versions: &[&rustls::SupportedProtocolVersion] = match s.min_version {
        TlsVersion::V12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::V13 => &[&rustls::version::TLS13],
    };
    let first = &s.certificates[0];
    let fail = |e: rustls::Error| ConfigError::new(&first.origin, "tls", e.to_string());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(fail)?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(Sni { served }));
    config.alpn_protocols = s.alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config.ticketer = match tickets {
        Some(t) => t,
        None => rustls::crypto::aws_lc_rs::Ticketer::new().map_err(fail)?,
    };
    Ok(Loaded {
        config: Arc::new(config),
        warnings,
        names,
    })
}

/// The TLS config workers take for each accepted connection, swapped by reloads.
pub struct TlsFront {
    current: ArcSwap<ServerConfig>,
}

impl TlsFront {
    pub fn new(loaded: &Loaded) -> TlsFront {
        TlsFront {
            current: ArcSwap::new(loaded.config.clone()),
        }
    }

    /// The config for a new connection.
    #[inline]
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Reads the certificates again; on success new handshakes use them at once. On error
    /// the running ones stay.
    pub fn reload(&self, s: &TlsSettings) -> Result<Loaded, ConfigError> {
        let tickets = self.current.load().ticketer.clone();
        let loaded = load(s, Some(tickets))?;
        self.current.store(loaded.config.clone());
        Ok(loaded)
    }
}

/// TLS to one backend: the client config (trust, ALPN, client certificate, session cache
/// shared by every worker) and the name sent and verified.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub config: Arc<rustls::ClientConfig>,
    pub name: rustls::pki_types::ServerName<'static>,
}

/// A `"verify": false` server's warning, for `--check` and startup.
pub fn upstream_warning(t: &UpstreamTls) -> Option<String> {
    (!t.verify).then(|| {
        format!(
            "{}: {}.verify: false: this server's certificate is not checked; anyone on the path can impersonate it",
            t.origin, t.field
        )
    })
}

/// Builds the TLS client of a backend at `address` spoken to with `protocol` (ALPN `h2`
/// for HTTP/2, `http/1.1` otherwise).
pub fn upstream(
    t: &UpstreamTls,
    address: &str,
    protocol: Protocol,
) -> Result<Upstream, ConfigError> {
    let err = |k: &str, p: String| ConfigError::new(&t.origin, format!("{}.{k}", t.field), p);
    let provider = provider();
    let mut roots = rustls::RootCertStore::empty();
    match &t.ca {
        Some(ca) => {
            let certs = CertificateDer::pem_file_iter(ca)
                .map_err(|e| err("ca", format!("cannot read {ca}: {}", pem_problem(&e))))?;
            for c in certs {
                let c = c.map_err(|e| err("ca", format!("{ca}: {}", pem_problem(&e))))?;
                roots
                    .add(c)
                    .map_err(|e| err("ca", format!("{ca}: unusable CA certificate: {e}")))?;
            }
            if roots.is_empty() {
                return Err(err("ca", format!("{ca}: no PEM CERTIFICATE in it")));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(found.certs);
            if roots.is_empty() && t.verify {
                return Err(err(
                    "ca",
                    "not given, and the system has no trusted CA certificates".into(),
                ));
            }
        }
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| err("ca", e.to_string()))?;
    let builder = if t.verify {
        builder.with_root_certificates(roots)
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(unverified())
    };
    let mut config = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => {
            let files = CertFiles {
                cert: cert.clone(),
                key: key.clone(),
                origin: t.origin.clone(),
                cert_field: format!("{}.cert", t.field),
                key_field: format!("{}.key", t.field),
            };
            let (served, _) = read_pair(&files, &provider)?;
            let chain = served.key.cert.clone();
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| err("key", format!("{key}: {}", pem_problem(&e))))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| err("key", e.to_string()))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![match protocol {
        Protocol::H2c => b"h2".to_vec(),
        Protocol::Http1 => b"http/1.1".to_vec(),
    }];
    let name_text = t.sni.clone().unwrap_or_else(|| address.to_string());
    let name = rustls::pki_types::ServerName::try_from(name_text.clone()).map_err(|_| {
        err(
            "sni",
            format!("\"{name_text}\" is not a DNS name or IP address"),
        )
    })?;
    Ok(Upstream {
        config: Arc::new(config),
        name,
    })
}

/// What `"verify": false` trusts: any certificate for any name (the handshake's
/// signatures are still checked). Tests use it to see which certificate a server sends.
pub fn unverified() -> Arc<dyn rustls::client::danger::ServerCertVerifier> {
    Arc::new(NoVerify(provider()))
}

#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::matches;

    #[test]
    fn wildcards_match_one_label() {
        assert!(matches("*.example.com", "a.example.com"));
        assert!(!matches("*.example.com", "example.com"));
        assert!(!matches("*.example.com", "a.b.example.com"));
        assert!(!matches("*.example.com", ".example.com"));
        assert!(matches("example.com", "example.com"));
    }
}
