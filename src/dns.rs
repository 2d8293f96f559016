//! DNS for discovery: the addresses a name resolves to, from a configured resolver (A and
//! AAAA questions over UDP, in simple-dns's wire format) or the system's. Blocking: only the
//! control thread calls it, never a worker.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

/// How long a DNS query over UDP waits for its answer.
const DNS_TIMEOUT: Duration = Duration::from_secs(2);

/// The addresses `name` resolves to: from `resolver` (A and AAAA over UDP) or the
/// system's resolver. Sorted, without duplicates.
pub fn resolve(name: &str, resolver: Option<SocketAddr>) -> io::Result<Vec<IpAddr>> {
    let mut ips = match resolver {
        Some(server) => {
            let mut v = query(server, name, simple_dns::TYPE::A)?;
            v.extend(query(server, name, simple_dns::TYPE::AAAA).unwrap_or_default());
            v
        }
        None => (name, 0)
            .to_socket_addrs()?
            .map(|a| a.ip())
            .collect::<Vec<_>>(),
    };
    ips.sort();
    ips.dedup();
    Ok(ips)
}

/// One DNS question of type `qtype` for `name` to `server` over UDP; the addresses in
/// the answer. The wire format is simple-dns's.
fn query(server: SocketAddr, name: &str, qtype: simple_dns::TYPE) -> io::Result<Vec<IpAddr>> {
    use simple_dns::{rdata::RData, Name, Packet, PacketFlag, Question, CLASS};
    let invalid = |e: simple_dns::SimpleDnsError| io::Error::new(io::ErrorKind::InvalidData, e);
    let id = (std::process::id() as u16) ^ (Instant::now().elapsed().subsec_nanos() as u16);
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(Question::new(
        Name::new(name).map_err(invalid)?,
        qtype.into(),
        CLASS::IN.into(),
        false,
    ));
    let bytes = q.build_bytes_vec().map_err(invalid)?;
    let bind: SocketAddr = if server.is_ipv4() {
        "0.0.0.0:0".parse().expect("literal")
    } else {
        "[::]:0".parse().expect("literal")
    };
    let sock = UdpSocket::bind(bind)?;
    sock.set_read_timeout(Some(DNS_TIMEOUT))?;
    sock.connect(server)?;
    sock.send(&bytes)?;
    let mut buf = [0u8; 4096];
    loop {
        let n = sock.recv(&mut buf)?;
        let Ok(reply) = Packet::parse(&buf[..n]) else {
            continue;
        };
        if reply.id() != id {
            continue;
        }
        let rcode = reply.rcode();
        if rcode != simple_dns::RCODE::NoError && rcode != simple_dns::RCODE::NameError {
            return Err(io::Error::other(format!("DNS server answered {rcode:?}")));
        }
        return Ok(reply
            .answers
            .iter()
            .filter_map(|rr| match &rr.rdata {
                RData::A(a) => Some(IpAddr::from(std::net::Ipv4Addr::from(a.address))),
                RData::AAAA(a) => Some(IpAddr::from(std::net::Ipv6Addr::from(a.address))),
                _ => None,
            })
            .collect());
    }
}
