//! TLS for tests: a throwaway CA (rcgen) that issues server certificates into a temp
//! directory, and a real rustls client over a blocking socket that reports what the
//! handshake gave (the certificate served, the version, ALPN, resumption).

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::{read_response, Resp};

/// A CA and the files it issued.
pub struct Pki {
    ca: CertifiedIssuer<'static, KeyPair>,
    pub dir: tempfile::TempDir,
    n: usize,
}

/// A certificate and key written to files.
#[derive(Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
}

impl Issued {
    pub fn cert_str(&self) -> &str {
        self.cert.to_str().unwrap()
    }
    pub fn key_str(&self) -> &str {
        self.key.to_str().unwrap()
    }
}

impl Pki {
    pub fn new() -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "corelb test CA");
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
        Pki { ca, dir, n: 0 }
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid from yesterday
    /// for `days` days (negative: expired), in new files.
    pub fn issue(&mut self, names: &[&str], days: i64) -> Issued {
        self.n += 1;
        let cert = self.dir.path().join(format!("cert{}.pem", self.n));
        let key = self.dir.path().join(format!("key{}.pem", self.n));
        self.issue_to(names, days, &cert, &key)
    }

    /// As [`issue`](Pki::issue), written to the given paths (replacing them).
    pub fn issue_to(&mut self, names: &[&str], days: i64, cert: &Path, key: &Path) -> Issued {
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let at = |secs: i64| time::OffsetDateTime::from_unix_timestamp(secs).unwrap();
        params.not_before = at(now - 86_400 * (1 + (-days).max(0)) - 86_400);
        params.not_after = at(now + 86_400 * days);
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("x"),
        );
        let k = KeyPair::generate().unwrap();
        let c = params.signed_by(&k, &self.ca).unwrap();
        std::fs::write(cert, c.pem()).unwrap();
        std::fs::write(key, k.serialize_pem()).unwrap();
        Issued {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            der: c.der().clone(),
        }
    }

    /// A client trusting this CA, offering `alpn`, resuming sessions.
    pub fn client(&self, alpn: &[&str]) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca_der()).unwrap();
        let mut c = ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        Arc::new(c)
    }
}

/// A TLS connection to corelb.
pub struct TlsClient {
    pub s: StreamOwned<ClientConnection, TcpStream>,
    pending: Vec<u8>,
}

impl TlsClient {
    /// Connects to `addr` sending `sni` and completes the handshake.
    pub fn connect(
        cfg: &Arc<ClientConfig>,
        addr: SocketAddr,
        sni: &str,
    ) -> std::io::Result<TlsClient> {
        let tcp = TcpStream::connect(addr)?;
        tcp.set_read_timeout(Some(Duration::from_secs(10)))?;
        let name = ServerName::try_from(sni.to_string()).unwrap();
        let conn = ClientConnection::new(cfg.clone(), name).unwrap();
        let mut s = StreamOwned::new(conn, tcp);
        while s.conn.is_handshaking() {
            s.conn.complete_io(&mut s.sock)?;
        }
        Ok(TlsClient {
            s,
            pending: Vec::new(),
        })
    }

    /// The leaf certificate the server sent.
    pub fn served(&self) -> CertificateDer<'static> {
        self.s.conn.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    pub fn resumed(&self) -> bool {
        self.s.conn.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
    }

    pub fn alpn(&self) -> Option<String> {
        self.s
            .conn
            .alpn_protocol()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// Sends `req` and reads one response (HTTP/1.1).
    pub fn exchange(&mut self, req: &[u8]) -> Option<Resp> {
        self.s.write_all(req).ok()?;
        self.s.flush().ok()?;
        read_response(&mut self.s, &mut self.pending, "GET")
    }

    /// `GET path` on this connection, kept alive.
    pub fn get(&mut self, path: &str) -> Option<Resp> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.exchange(req.as_bytes())
    }
}
