//! HPACK Huffman decoding (RFC 7541 §5.2, Appendix B) without allocation or hashing:
//! the code is canonical, so one pass over the bits with a per-length range check finds
//! each symbol. [`raw_literals`] rewrites a header block so every Huffman-coded string is
//! a raw one, before the block goes to `loona-hpack`'s decoder (whose own Huffman decoder
//! builds two levels of hash maps for every string: most of the CPU of a small request).

use std::sync::OnceLock;

/// (code, bit length) of each symbol 0..=256 (256 is EOS), from RFC 7541 Appendix B.
#[rustfmt::skip]
const CODES: [(u32, u8); 257] = [
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28),
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28),
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11),
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6),
    (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),
    (0x1e, 6), (0x1f, 6), (0x5c, 7), (0xfb, 8),
    (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10),
    (0x1ffa, 13), (0x21, 6), (0x5d, 7), (0x5e, 7),
    (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7),
    (0x63, 7), (0x64, 7), (0x65, 7), (0x66, 7),
    (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7),
    (0x6b, 7), (0x6c, 7), (0x6d, 7), (0x6e, 7),
    (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7),
    (0xfc, 8), (0x73, 7), (0xfd, 8), (0x1ffb, 13),
    (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6),
    (0x7ffd, 15), (0x3, 5), (0x23, 6), (0x4, 5),
    (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6),
    (0x27, 6), (0x6, 5), (0x74, 7), (0x75, 7),
    (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5),
    (0x2b, 6), (0x76, 7), (0x2c, 6), (0x8, 5),
    (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7),
    (0x79, 7), (0x7a, 7), (0x7b, 7), (0x7ffe, 15),
    (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23),
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19),
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25),
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26),
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),
    (0x3fffffff, 30),
];

/// Longest code.
const MAX_LEN: usize = 30;

/// The canonical code by length: the first code of each length, how many there are,
/// and where their symbols start in `symbols` (ordered by code).
struct Canonical {
    first: [u32; MAX_LEN + 1],
    count: [u32; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    symbols: [u16; 257],
}

fn canonical() -> &'static Canonical {
    static C: OnceLock<Canonical> = OnceLock::new();
    C.get_or_init(|| {
        let mut order: Vec<u16> = (0..257).collect();
        order.sort_by_key(|&s| (CODES[s as usize].1, CODES[s as usize].0));
        let mut c = Canonical {
            first: [0; MAX_LEN + 1],
            count: [0; MAX_LEN + 1],
            offset: [0; MAX_LEN + 1],
            symbols: [0; 257],
        };
        for (i, &s) in order.iter().enumerate() {
            let (code, len) = CODES[s as usize];
            let len = len as usize;
            if c.count[len] == 0 {
                c.first[len] = code;
                c.offset[len] = i as u16;
            }
            c.count[len] += 1;
            c.symbols[i] = s;
        }
        c
    })
}

/// Decodes one Huffman-coded string into `out`. `Err` for EOS in the data, padding over
/// 7 bits or not all ones (§5.2), or a code that matches no symbol.
pub fn decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), ()> {
    let c = canonical();
    let (mut acc, mut len) = (0u32, 0usize);
    for &byte in input {
        for shift in (0..8).rev() {
            acc = (acc << 1) | ((byte >> shift) & 1) as u32;
            len += 1;
            let n = c.count[len];
            if n > 0 && acc >= c.first[len] && acc - c.first[len] < n {
                let sym = c.symbols[c.offset[len] as usize + (acc - c.first[len]) as usize];
                if sym == 256 {
                    return Err(());
                }
                out.push(sym as u8);
                acc = 0;
                len = 0;
            } else if len >= MAX_LEN {
                return Err(());
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if len > 7 || acc != (1u32 << len) - 1 {
        return Err(());
    }
    Ok(())
}

/// Reads an HPACK integer with an `n`-bit prefix at `b[*at]`.
fn integer(b: &[u8], at: &mut usize, n: u8) -> Result<usize, ()> {
    let mask = (1u16 << n) as usize - 1;
    let mut v = (*b.get(*at).ok_or(())? as usize) & mask;
    *at += 1;
    if v < mask {
        return Ok(v);
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(*at).ok_or(())?;
        *at += 1;
        if shift > 28 {
            return Err(());
        }
        v += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
}

/// Writes `v` as an HPACK integer with an `n`-bit prefix whose other bits are `flags`.
fn put_integer(out: &mut Vec<u8>, flags: u8, n: u8, mut v: usize) {
    let mask = (1usize << n) - 1;
    if v < mask {
        out.push(flags | v as u8);
        return;
    }
    out.push(flags | mask as u8);
    v -= mask;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// Copies a string literal at `b[*at]` into `out`, Huffman-decoded if it was coded.
fn string(b: &[u8], at: &mut usize, out: &mut Vec<u8>) -> Result<(), ()> {
    let huffman = *b.get(*at).ok_or(())? & 0x80 != 0;
    let len = integer(b, at, 7)?;
    let s = b.get(*at..*at + len).ok_or(())?;
    *at += len;
    if !huffman {
        put_integer(out, 0, 7, len);
        out.extend_from_slice(s);
        return Ok(());
    }
    // Decoded after a placeholder length, then the length written in front.
    let mark = out.len();
    decode(s, out)?;
    let raw = out.len() - mark;
    // The length goes in front: at most a few bytes, shifted in without allocating.
    let mut head = [0u8; 8];
    let mut n = 0;
    let mut v = raw;
    if v < 127 {
        head[0] = v as u8;
        n = 1;
    } else {
        head[0] = 127;
        v -= 127;
        n += 1;
        while v >= 128 {
            head[n] = (v % 128) as u8 | 0x80;
            v /= 128;
            n += 1;
        }
        head[n] = v as u8;
        n += 1;
    }
    out.splice(mark..mark, head[..n].iter().copied());
    Ok(())
}

/// Rewrites header block `b` into `out` with every Huffman-coded string made raw; the
/// representations are otherwise copied as they are. `Ok(false)` (and `out` untouched
/// in meaning) when `b` has no Huffman string, so the caller can decode `b` itself.
/// `Err` for a block that is not valid HPACK.
pub fn raw_literals(b: &[u8], out: &mut Vec<u8>) -> Result<bool, ()> {
    out.clear();
    let mut at = 0;
    let mut any = false;
    while at < b.len() {
        let first = b[at];
        let start = at;
        let (prefix, literal) = match first {
            0x80..=0xff => (7, false),
            0x40..=0x7f => (6, true),
            0x20..=0x3f => (5, false),
            _ => (4, true),
        };
        let index = integer(b, &mut at, prefix)?;
        out.extend_from_slice(&b[start..at]);
        if literal {
            if index == 0 {
                any |= b.get(at).is_some_and(|x| x & 0x80 != 0);
                string(b, &mut at, out)?;
            }
            any |= b.get(at).is_some_and(|x| x & 0x80 != 0);
            string(b, &mut at, out)?;
        }
    }
    Ok(any)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn encode(s: &[u8]) -> Vec<u8> {
        let (mut acc, mut bits, mut out) = (0u64, 0u32, Vec::new());
        for &b in s {
            let (code, len) = CODES[b as usize];
            acc = (acc << len) | code as u64;
            bits += len as u32;
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
        }
        out
    }

    #[test]
    fn rfc7541_examples() {
        let mut out = Vec::new();
        decode(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"), &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        out.clear();
        decode(&hex("a8eb 1064 9cbf"), &mut out).unwrap();
        assert_eq!(out, b"no-cache");
        out.clear();
        decode(&hex("25a8 49e9 5bb8 e8b4 bf"), &mut out).unwrap();
        assert_eq!(out, b"custom-value");
    }

    #[test]
    fn every_symbol_round_trips() {
        let all: Vec<u8> = (0..=255).collect();
        for chunk in all.chunks(7) {
            let mut out = Vec::new();
            decode(&encode(chunk), &mut out).unwrap();
            assert_eq!(out, chunk);
        }
    }

    #[test]
    fn bad_padding_and_eos_are_errors() {
        let mut out = Vec::new();
        // "a" is 00011 (5 bits): padding of zeros is refused.
        assert!(decode(&[0b0001_1000], &mut out).is_err());
        // A whole byte of padding is refused.
        assert!(decode(&[0b0001_1111, 0xff], &mut out).is_err());
        // EOS (30 ones) in the data.
        assert!(decode(&[0xff, 0xff, 0xff, 0xfc], &mut out).is_err());
    }

    #[test]
    fn blocks_are_rewritten_raw() {
        // RFC 7541 C.4.1: indexed fields and a Huffman-coded :authority literal.
        let block = hex("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff");
        let mut out = Vec::new();
        assert!(raw_literals(&block, &mut out).unwrap());
        let mut want = hex("8286 8441 0f");
        want.extend_from_slice(b"www.example.com");
        assert_eq!(out, want);
        assert!(!raw_literals(&hex("8286 84"), &mut out).unwrap());
        assert!(raw_literals(&hex("41 8c f1"), &mut out).is_err());
    }
}
