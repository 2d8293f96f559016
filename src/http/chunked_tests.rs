//! Unit and property tests of the chunked decoder.

use super::*;

fn check(input: &[u8]) -> Result<(bool, Vec<u8>), ChunkError> {
    let mut d = ChunkedDecoder::new();
    let mut data = Vec::new();
    let mut at = 0;
    while at < input.len() && !d.is_done() {
        let p = d.decode(&input[at..])?;
        data.extend_from_slice(&input[at..][p.data]);
        at += p.consumed;
    }
    Ok((d.is_done(), data))
}

#[test]
fn decodes_chunks_and_trailers() {
    let body = b"5\r\nhello\r\n6;name=val\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n";
    assert_eq!(check(body).unwrap(), (true, b"hello world".to_vec()));
}

#[test]
fn decodes_byte_by_byte() {
    let body = b"a\r\n0123456789\r\n0;x\r\n\r\n";
    let mut d = ChunkedDecoder::new();
    let mut data = Vec::new();
    for i in 0..body.len() {
        let p = d.decode(&body[i..i + 1]).unwrap();
        assert_eq!(p.consumed, 1);
        data.extend_from_slice(&body[i..i + 1][p.data]);
    }
    assert!(d.is_done());
    assert_eq!(data, b"0123456789");
}

#[test]
fn reports_data_and_trailer_positions() {
    // Feeding framing byte by byte, the bytes read while `in_trailers` are exactly the
    // trailer field lines and the final CR (what a translation to HTTP/2 trailers needs).
    let body = b"3\r\nabc\r\n0\r\nX-Sum: 1\r\nX-B: 2\r\n\r\n";
    let mut d = ChunkedDecoder::new();
    let (mut at, mut trailers, mut data) = (0, Vec::new(), Vec::new());
    while !d.is_done() {
        if d.in_data() {
            let p = d.decode(&body[at..]).unwrap();
            data.extend_from_slice(&body[at..][p.data]);
            at += p.consumed;
            continue;
        }
        if d.in_trailers() {
            trailers.push(body[at]);
        }
        assert_eq!(d.decode(&body[at..at + 1]).unwrap().consumed, 1);
        at += 1;
    }
    assert_eq!(at, body.len());
    assert_eq!(data, b"abc");
    assert_eq!(trailers, b"X-Sum: 1\r\nX-B: 2\r\n\r");
    assert!(!d.in_trailers() && !d.in_data());
}

#[test]
fn stops_at_end_of_body() {
    let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
    let mut d = ChunkedDecoder::new();
    let n = d.validate(input).unwrap();
    assert!(d.is_done());
    assert_eq!(&input[n..], b"GET / HTTP/1.1\r\n");
}

#[test]
fn in_place_dechunk() {
    let mut buf = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec();
    let mut d = ChunkedDecoder::new();
    let (consumed, len) = d.decode_in_place(&mut buf).unwrap();
    assert_eq!(consumed, buf.len());
    assert_eq!(&buf[..len], b"abcde");
    assert!(d.is_done());
}

#[test]
fn upper_case_hex_and_leading_zeros() {
    assert_eq!(
        check(b"000A\r\n0123456789\r\n0\r\n\r\n").unwrap().1,
        b"0123456789"
    );
}

#[test]
fn rejects_bad_sizes() {
    assert_eq!(check(b"\r\nabc"), Err(ChunkError::EmptySize));
    assert_eq!(check(b";ext\r\n"), Err(ChunkError::EmptySize));
    assert_eq!(check(b"xyz\r\n"), Err(ChunkError::BadSize));
    assert_eq!(check(b"5x\r\n"), Err(ChunkError::BadSize));
    assert_eq!(check(b"+5\r\n"), Err(ChunkError::BadSize));
    assert_eq!(check(b"0x5\r\n"), Err(ChunkError::BadSize));
    assert_eq!(
        check(b"00000000000000001\r\n"),
        Err(ChunkError::SizeTooLong)
    );
    assert!(check(b"0000000000000001\r\nx\r\n0\r\n\r\n").is_ok());
}

#[test]
fn rejects_bad_extensions() {
    assert_eq!(check(b"1;a\nb\r\n"), Err(ChunkError::BadExtension));
    assert_eq!(check(b"1;a\0b\r\n"), Err(ChunkError::BadExtension));
    let mut long = b"1;".to_vec();
    long.extend(std::iter::repeat_n(b'a', 4096));
    long.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    assert_eq!(check(&long), Err(ChunkError::ExtensionTooLong));
    let mut ok = b"1;".to_vec();
    ok.extend(std::iter::repeat_n(b'a', 4000));
    ok.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
    assert!(check(&ok).is_ok());
}

#[test]
fn rejects_bare_lf_size_line() {
    assert_eq!(check(b"5\nhello"), Err(ChunkError::BadLineEnd));
    assert_eq!(check(b"5\rhello"), Err(ChunkError::BadLineEnd));
}

#[test]
fn rejects_data_without_crlf() {
    assert_eq!(check(b"3\r\nabcd\r\n"), Err(ChunkError::MissingDataCrlf));
    assert_eq!(check(b"3\r\nabc\rX"), Err(ChunkError::MissingDataCrlf));
    assert_eq!(
        check(b"3\r\nabc\n0\r\n\r\n"),
        Err(ChunkError::MissingDataCrlf)
    );
}

#[test]
fn rejects_bad_trailers() {
    assert_eq!(
        check(b"0\r\nBad Name: x\r\n\r\n"),
        Err(ChunkError::BadTrailer)
    );
    assert_eq!(check(b"0\r\nNoColon\r\n\r\n"), Err(ChunkError::BadTrailer));
    assert_eq!(check(b"0\r\nA: b\0\r\n\r\n"), Err(ChunkError::BadTrailer));
    assert_eq!(check(b"0\r\n\r\r"), Err(ChunkError::BadLineEnd));
}

#[test]
fn incomplete_is_not_done() {
    assert_eq!(check(b"5\r\nhel").unwrap(), (false, b"hel".to_vec()));
    assert!(!check(b"0\r\n").unwrap().0);
}

#[test]
fn extension_grammar() {
    for ok in [
        &b"1;a\r\nx\r\n0\r\n\r\n"[..],
        b"1;a=b\r\nx\r\n0\r\n\r\n",
        b"1 ; a = b ;c\r\nx\r\n0\r\n\r\n",
        b"1;a=\"q \\\" ;\"\r\nx\r\n0\r\n\r\n",
        b"1\t;a\r\nx\r\n0;last=1\r\n\r\n",
    ] {
        assert!(
            check(ok).is_ok_and(|r| r.0),
            "{}",
            String::from_utf8_lossy(ok)
        );
    }
    for bad in [
        &b"1 \r\nx\r\n0\r\n\r\n"[..],
        b"1;\r\nx\r\n0\r\n\r\n",
        b"1;a=\r\nx\r\n0\r\n\r\n",
        b"1;a b\r\nx\r\n0\r\n\r\n",
        b"1;a=b c\r\nx\r\n0\r\n\r\n",
        b"1;a=\"b\r\nx\r\n0\r\n\r\n",
        b"1;a=\"b\"c\r\nx\r\n0\r\n\r\n",
        b"1;a@b\r\nx\r\n0\r\n\r\n",
        b"1;a==b\r\nx\r\n0\r\n\r\n",
        b"1;a=b;\r\nx\r\n0\r\n\r\n",
        b"1x;a\r\nx\r\n0\r\n\r\n",
    ] {
        assert!(check(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn framing_and_routing_trailers_are_refused() {
    for name in [
        "Content-Length",
        "transfer-encoding",
        "HOST",
        "Trailer",
        "Connection",
        "TE",
        "Upgrade",
    ] {
        let body = format!("1\r\nx\r\n0\r\n{name}: 1\r\n\r\n");
        assert_eq!(
            check(body.as_bytes()),
            Err(ChunkError::ForbiddenTrailer),
            "{name}"
        );
    }
    // Longer names sharing a prefix are fine.
    assert!(
        check(b"0\r\nHosts: 1\r\nContent-Length-X: 2\r\nTransfer-Encoding-Ext: 3\r\n\r\n")
            .is_ok_and(|r| r.0)
    );
}

#[test]
fn trailer_section_is_bounded() {
    let mut body = b"0\r\n".to_vec();
    while body.len() < 2 * MAX_TRAILERS as usize {
        body.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    }
    body.extend_from_slice(b"\r\n");
    assert_eq!(check(&body), Err(ChunkError::TrailersTooLong));
}

/// xorshift64*: a small deterministic PRNG for the property tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random well-formed chunked body (sizes, extensions, trailers) and its data.
fn random_body(rng: &mut Rng) -> (Vec<u8>, Vec<u8>) {
    let (mut body, mut data) = (Vec::new(), Vec::new());
    for _ in 0..rng.below(6) {
        let n = 1 + rng.below(40) as usize;
        let chunk: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
        body.extend_from_slice(
            if rng.below(2) == 0 {
                format!("{n:x}")
            } else {
                format!("{n:04X}")
            }
            .as_bytes(),
        );
        match rng.below(4) {
            0 => body.extend_from_slice(b";a=1"),
            1 => body.extend_from_slice(b" ; name = \"v\\\"al\""),
            _ => {}
        }
        body.extend_from_slice(b"\r\n");
        body.extend_from_slice(&chunk);
        body.extend_from_slice(b"\r\n");
        data.extend_from_slice(&chunk);
    }
    body.extend_from_slice(b"0\r\n");
    if rng.below(2) == 0 {
        body.extend_from_slice(b"X-Check: 12\r\n");
    }
    body.extend_from_slice(b"\r\n");
    (body, data)
}

#[test]
fn any_read_split_gives_the_same_result() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for round in 0..3000 {
        let (mut body, data) = random_body(&mut rng);
        body.extend_from_slice(b"NEXT");
        let whole = crate::http::fuzzing::chunked_split(&body, &[]);
        assert_eq!(whole, (data, true, body.len() - 4, None), "round {round}");
        // Corrupt one byte now and then: errors must not depend on the split either.
        if round % 2 == 1 {
            let i = rng.below(body.len() as u64) as usize;
            body[i] = rng.next() as u8;
        }
        let whole = crate::http::fuzzing::chunked_split(&body, &[]);
        for _ in 0..8 {
            let cuts: Vec<usize> = (0..rng.below(12))
                .map(|_| rng.below(body.len() as u64 + 1) as usize)
                .collect();
            assert_eq!(
                crate::http::fuzzing::chunked_split(&body, &cuts),
                whole,
                "round {round}, cuts {cuts:?}"
            );
        }
        let bytewise: Vec<usize> = (1..body.len()).collect();
        assert_eq!(
            crate::http::fuzzing::chunked_split(&body, &bytewise),
            whole,
            "round {round} byte by byte"
        );
    }
}

/// Decodes `body`, but each time the decoder stands in chunk data with at least `min`
/// bytes left, skips up to `skip` of them (as a splicing caller does) instead of decoding.
/// Returns the data seen or skipped, done, and the bytes consumed.
fn decode_skipping(body: &[u8], min: u64, skip: u64) -> Result<(Vec<u8>, bool, usize), ChunkError> {
    let mut d = ChunkedDecoder::new();
    let (mut data, mut at) = (Vec::new(), 0);
    while at < body.len() && !d.is_done() {
        let left = d.data_left();
        if left >= min && left > 0 {
            let n = left.min(skip).min((body.len() - at) as u64) as usize;
            data.extend_from_slice(&body[at..at + n]);
            d.skip_data(n as u64);
            at += n;
            continue;
        }
        // Feed the decoder a little at a time so it stops in data often.
        let end = (at + 3).min(body.len());
        let p = d.decode(&body[at..end])?;
        data.extend_from_slice(&body[at..end][p.data]);
        at += p.consumed;
    }
    Ok((data, d.is_done(), at))
}

#[test]
fn skipped_chunk_data_gives_the_same_result_as_decoded() {
    let mut rng = Rng(0x1234_5678_9ABC_DEF1);
    for round in 0..2000 {
        let (mut body, data) = random_body(&mut rng);
        let end = body.len();
        body.extend_from_slice(b"NEXT");
        let min = 1 + rng.below(30);
        let skip = 1 + rng.below(50);
        assert_eq!(
            decode_skipping(&body, min, skip),
            Ok((data, true, end)),
            "round {round}"
        );
        // A corrupted byte outside chunk data is found whatever was skipped.
        let i = rng.below(end as u64) as usize;
        let mut bad = body.clone();
        bad[i] = b'!';
        let whole = decode_skipping(&bad, u64::MAX, 0).map(|r| r.2);
        let skipping = decode_skipping(&bad, min, skip).map(|r| r.2);
        assert_eq!(skipping, whole, "round {round}: byte {i}");
    }
}

#[test]
fn data_left_counts_down_to_the_crlf() {
    let mut d = ChunkedDecoder::new();
    assert_eq!(d.data_left(), 0, "at a size line");
    assert_eq!(d.decode(b"10000\r\n").unwrap().consumed, 7);
    assert_eq!(d.data_left(), 0x10000);
    let p = d.decode(&[b'x'; 100]).unwrap();
    assert_eq!(p.data, 0..100);
    assert_eq!(d.data_left(), 0x10000 - 100);
    d.skip_data(0x10000 - 100);
    assert_eq!(d.data_left(), 0, "at the data's CRLF");
    assert_eq!(d.decode(b"x"), Err(ChunkError::MissingDataCrlf));
    let mut d = ChunkedDecoder::new();
    d.decode(b"3\r\n").unwrap();
    d.skip_data(3);
    assert_eq!(d.validate(b"\r\n0\r\nX-T: 1\r\n\r\n"), Ok(15));
    assert!(d.is_done());
}
