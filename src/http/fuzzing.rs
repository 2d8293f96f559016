//! Properties checked by the fuzz targets in `fuzz/` and replayed over their corpus by
//! `tests/fuzz_corpus.rs`. Each function panics when a property fails; none is used by
//! the proxy itself.

use super::chunked::{ChunkError, ChunkedDecoder};
use super::{
    header_array, parse_request, parse_response, BodyKind, Forward, HeadIndex, Reply, MAX_HEAD,
    MAX_HEADERS,
};
use std::net::{IpAddr, Ipv4Addr};

/// Any bytes: parsing never panics; an accepted head is forwarded as a head that parses
/// again with the same method and framing, and none of its prefixes is complete.
pub fn request_head(data: &[u8]) {
    let mut h = header_array();
    let Ok(Some(r)) = parse_request(data, &mut h) else {
        return;
    };
    let mut h1 = header_array();
    assert!(
        matches!(parse_request(&data[..r.head_len - 1], &mut h1), Ok(None)),
        "a prefix of an accepted head is not incomplete"
    );
    let mut out = Vec::new();
    let mut idx = HeadIndex::default();
    r.write_upstream(
        &mut out,
        &mut idx,
        &Forward {
            client_ip: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            close: false,
            host: b"backend.test:8080",
            proto: None,
        },
    );
    // Host, X-Forwarded-For and Via are added: a head near the limits may go over them.
    if out.len() >= MAX_HEAD || r.req.headers.len() + 3 > MAX_HEADERS {
        return;
    }
    let mut h2 = header_array();
    let again = parse_request(&out, &mut h2)
        .unwrap_or_else(|e| panic!("forwarded head refused: {e:?}"))
        .expect("forwarded head complete");
    assert_eq!(
        again.head_len,
        out.len(),
        "forwarded head has trailing bytes"
    );
    assert_eq!(again.method, r.method);
    assert_eq!(again.body, r.body, "framing changed on the way");
    assert!(!again.path().is_empty());
    // The index recorded while writing says what parsing the written head finds.
    assert_eq!(
        idx.method(&out),
        again.method_str().as_bytes(),
        "index: method"
    );
    assert_eq!(idx.target(&out), again.path().as_bytes(), "index: target");
    let indexed: Vec<_> = idx.fields(&out).collect();
    let parsed: Vec<_> = again
        .req
        .headers
        .iter()
        .map(|h| (h.name.as_bytes(), h.value))
        .collect();
    assert_eq!(indexed, parsed, "index: fields");
}

/// Any bytes (the first says whether the request was HEAD): an accepted response head is
/// relayed as one that parses again with the same status and a body framed the same way.
pub fn response_head(data: &[u8]) {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    let head_request = flags & 1 == 1;
    let mut h = header_array();
    let Ok(Some(r)) = parse_response(data, &mut h, head_request) else {
        return;
    };
    let reply = Reply {
        http10: flags & 2 == 2,
        close: flags & 4 == 4,
        dechunk: flags & 2 == 2 && r.body == BodyKind::Chunked,
    };
    let mut out = Vec::new();
    r.write_client(&mut out, &reply);
    // Via, the framing field and Connection are added.
    if out.len() >= MAX_HEAD || r.resp.headers.len() + 3 > MAX_HEADERS {
        return;
    }
    let mut h2 = header_array();
    let again = parse_response(&out, &mut h2, head_request)
        .unwrap_or_else(|e| panic!("relayed head refused: {e:?}"))
        .expect("relayed head complete");
    assert_eq!(again.head_len, out.len());
    assert_eq!(again.status, r.status);
    let want = if reply.dechunk {
        BodyKind::UntilClose
    } else {
        r.body
    };
    assert_eq!(again.body, want, "framing changed on the way");
}

/// Feeds `input` to a decoder in pieces ending at `cuts`: the data, whether the body
/// ended, the bytes consumed (0 after an error: `decode` does not say where in a piece it
/// failed), and the error if any.
pub fn chunked_split(input: &[u8], cuts: &[usize]) -> (Vec<u8>, bool, usize, Option<ChunkError>) {
    let mut d = ChunkedDecoder::new();
    let (mut data, mut at) = (Vec::new(), 0);
    let mut ends: Vec<usize> = cuts.iter().map(|&c| c.min(input.len())).collect();
    ends.sort_unstable();
    ends.push(input.len());
    for end in ends {
        while at < end && !d.is_done() {
            match d.decode(&input[at..end]) {
                Ok(p) => {
                    data.extend_from_slice(&input[at..end][p.data]);
                    at += p.consumed;
                }
                Err(e) => return (data, false, 0, Some(e)),
            }
        }
    }
    (data, d.is_done(), at, None)
}

/// Any bytes (the first eight seed the cut points): decoding gives the same data, end
/// and error whatever the read split, and in-place de-chunking agrees.
pub fn chunked(data: &[u8]) {
    if data.len() < 8 {
        return;
    }
    let (seed, input) = data.split_at(8);
    let mut s = u64::from_le_bytes(seed.try_into().unwrap()) | 1;
    let whole = chunked_split(input, &[]);
    let cuts: Vec<usize> = (0..(s % 16))
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % (input.len() as u64 + 1)) as usize
        })
        .collect();
    assert_eq!(chunked_split(input, &cuts), whole, "cuts {cuts:?}");
    let bytewise: Vec<usize> = (1..input.len()).collect();
    assert_eq!(chunked_split(input, &bytewise), whole, "byte by byte");
    let mut buf = input.to_vec();
    let mut d = ChunkedDecoder::new();
    match d.decode_in_place(&mut buf) {
        Ok((_, n)) => {
            assert!(whole.3.is_none());
            assert_eq!(&buf[..n], &whole.0[..]);
            assert_eq!(d.is_done(), whole.1);
        }
        Err(e) => assert_eq!(Some(e), whole.3),
    }
}
