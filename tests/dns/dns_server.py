"""A small authoritative DNS server for corelb's discovery tests, on loopback UDP.

    python dns_server.py RECORDS.json

RECORDS.json maps names to address lists, e.g. {"backends.test.": ["127.0.0.1",
"127.0.0.2"]}; it is read again for every query, so a test changes the answers by
rewriting it. Prints "dns listening on 127.0.0.1:PORT" once bound (port chosen by the
system). The wire format is dnslib's.
"""

import ipaddress
import json
import socket
import sys

from dnslib import AAAA, QTYPE, RCODE, RR, A, DNSRecord


def answer(query: DNSRecord, records: dict) -> bytes:
    reply = query.reply()
    name = str(query.q.qname)
    if not name.endswith("."):
        name += "."
    if name not in records:
        reply.header.rcode = RCODE.NXDOMAIN
        return reply.pack()
    for ip in records[name]:
        addr = ipaddress.ip_address(ip)
        if addr.version == 4 and query.q.qtype == QTYPE.A:
            reply.add_answer(RR(name, QTYPE.A, rdata=A(ip), ttl=1))
        elif addr.version == 6 and query.q.qtype == QTYPE.AAAA:
            reply.add_answer(RR(name, QTYPE.AAAA, rdata=AAAA(ip), ttl=1))
    return reply.pack()


def main() -> None:
    path = sys.argv[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    print("dns listening on 127.0.0.1:%d" % sock.getsockname()[1], flush=True)
    while True:
        data, peer = sock.recvfrom(4096)
        try:
            query = DNSRecord.parse(data)
        except Exception:  # not DNS: ignore it
            continue
        with open(path) as f:
            records = json.load(f)
        sock.sendto(answer(query, records), peer)


if __name__ == "__main__":
    main()
