//! HPACK (RFC 7541) through `loona-hpack`: the decoder with its size limits, the encoder
//! with dynamic-table size updates when the peer's HEADER_TABLE_SIZE changes.
//!
//! The encoder scans its tables for every field, so a proxy that sends the same sections
//! again and again (the same request fields to a backend, the same response head and
//! trailers to a client) would pay that scan each time. A small cache keeps the last
//! sections whose encoding inserted nothing into the dynamic table (only indexed fields and
//! literals without indexing): such an encoding left the table as it was, so while no
//! other encoding changed the table, the same section encodes to the same bytes.

use loona_hpack::{encoder::encode_integer_into, Decoder, Encoder};

use super::fields::Fields;

/// Our encoder never uses a larger dynamic table than this, whatever the peer allows.
const ENCODER_TABLE_MAX: usize = 4096;

/// How a decode went when the block itself was valid HPACK.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded {
    Ok,
    /// Decoded list size over the limit; `fields` holds only a prefix. The size is as far
    /// as it was counted.
    TooLarge(usize),
}

/// Sections the encoder cache keeps.
const CACHED: usize = 4;

/// One cached section: its fields (names and values, each followed by its length), the
/// table generation it was encoded at, and its encoding.
#[derive(Default)]
struct Cached {
    key: Vec<u8>,
    generation: u64,
    block: Vec<u8>,
}

pub struct Hpack {
    enc: Encoder<'static>,
    /// Counts encodings that may have changed the encoder's dynamic table.
    generation: u64,
    cache: [Cached; CACHED],
    /// The cache slot the next new section takes.
    next_slot: usize,
    /// Scratch: the key of the section being encoded.
    key: Vec<u8>,
    dec: Decoder<'static>,
    enc_table: usize,
    /// A size update owed at the start of the next block we encode.
    enc_update: Option<usize>,
    /// The block being decoded with its Huffman strings made raw (huffman.rs).
    raw: Vec<u8>,
}

impl Hpack {
    /// `decoder_table`: our SETTINGS_HEADER_TABLE_SIZE.
    pub fn new(decoder_table: usize) -> Self {
        let mut dec = Decoder::new();
        dec.set_max_allowed_table_size(decoder_table.max(4096));
        Hpack {
            enc: Encoder::new(),
            generation: 0,
            cache: Default::default(),
            next_slot: 0,
            key: Vec::new(),
            dec,
            enc_table: ENCODER_TABLE_MAX,
            enc_update: None,
            raw: Vec::new(),
        }
    }

    /// Decodes a whole block into `out`, counting RFC list size; stops storing past
    /// `max_list`. `Err` is a COMPRESSION_ERROR.
    pub fn decode(
        &mut self,
        block: &[u8],
        max_list: usize,
        out: &mut Fields,
    ) -> Result<Decoded, ()> {
        let mut size = 0usize;
        let mut over = false;
        // Huffman strings are decoded here, without allocating (huffman.rs).
        let mut raw = std::mem::take(&mut self.raw);
        let block = match super::huffman::raw_literals(block, &mut raw) {
            Ok(true) => &raw[..],
            Ok(false) => block,
            Err(()) => {
                self.raw = raw;
                return Err(());
            }
        };
        let res = self
            .dec
            .decode_with_cb(block, |n, v| {
                size = size.saturating_add(n.len() + v.len() + 32);
                if size > max_list {
                    over = true;
                } else {
                    out.push(&n, &v);
                }
            })
            .map_err(|_| ());
        self.raw = raw;
        res?;
        Ok(if over {
            Decoded::TooLarge(size)
        } else {
            Decoded::Ok
        })
    }

    /// The peer's SETTINGS_HEADER_TABLE_SIZE changed.
    pub fn set_peer_table_size(&mut self, size: u32) {
        let size = (size as usize).min(ENCODER_TABLE_MAX);
        if size != self.enc_table {
            self.enc_table = size;
            self.enc.set_max_table_size(size);
            // Only the last size matters if several changes happen between two blocks, as
            // long as the smallest is signalled too; shrinking twice keeps the minimum.
            self.enc_update = Some(match self.enc_update {
                Some(prev) => prev.min(size),
                None => size,
            });
        }
    }

    /// Appends the encoded block of `fields` to `out`.
    pub fn encode(&mut self, fields: &[(&[u8], &[u8])], out: &mut Vec<u8>) {
        if let Some(min) = self.enc_update.take() {
            self.generation += 1;
            let _ = encode_integer_into(min, 5, 0x20, out);
            if min != self.enc_table {
                let _ = encode_integer_into(self.enc_table, 5, 0x20, out);
            }
        }
        let mut key = std::mem::take(&mut self.key);
        key.clear();
        for (n, v) in fields {
            key.extend_from_slice(n);
            key.extend_from_slice(&(n.len() as u32).to_le_bytes());
            key.extend_from_slice(v);
            key.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        let generation = self.generation;
        if let Some(c) = self
            .cache
            .iter()
            .find(|c| c.generation == generation && !c.block.is_empty() && c.key == key)
        {
            out.extend_from_slice(&c.block);
            self.key = key;
            return;
        }
        let start = out.len();
        let _ = self.enc.encode_into(fields.iter().copied(), out);
        if keeps_table(&out[start..], fields.len()) {
            let c = &mut self.cache[self.next_slot];
            self.next_slot = (self.next_slot + 1) % CACHED;
            std::mem::swap(&mut c.key, &mut key);
            c.generation = generation;
            c.block.clear();
            c.block.extend_from_slice(&out[start..]);
        } else {
            // A field was inserted (and others perhaps evicted): what was cached may now
            // name other entries.
            self.generation += 1;
        }
        self.key = key;
    }
}

/// `block` is exactly `n` field representations that leave the dynamic table as it was
/// (RFC 7541 §6.1 indexed fields, §6.2.2-6.2.3 literals without indexing); false for an
/// insertion (§6.2.1), a size update or anything unparsable.
fn keeps_table(block: &[u8], n: usize) -> bool {
    let mut at = 0;
    for _ in 0..n {
        let Some(&b) = block.get(at) else {
            return false;
        };
        let ok = if b & 0x80 != 0 {
            integer(block, &mut at, 7).is_some()
        } else if b & 0x40 != 0 || b & 0x20 != 0 {
            false
        } else {
            match integer(block, &mut at, 4) {
                Some(0) => string(block, &mut at) && string(block, &mut at),
                Some(_) => string(block, &mut at),
                None => false,
            }
        };
        if !ok {
            return false;
        }
    }
    at == block.len()
}

/// Reads an integer with an `prefix`-bit prefix at `*at` (RFC 7541 §5.1).
fn integer(block: &[u8], at: &mut usize, prefix: u8) -> Option<usize> {
    let max = (1usize << prefix) - 1;
    let mut v = (*block.get(*at)? as usize) & max;
    *at += 1;
    if v < max {
        return Some(v);
    }
    let mut shift = 0;
    loop {
        let c = *block.get(*at)?;
        *at += 1;
        v = v.checked_add(((c & 0x7f) as usize).checked_shl(shift)?)?;
        shift += 7;
        if c & 0x80 == 0 || shift > 28 {
            return (c & 0x80 == 0).then_some(v);
        }
    }
}

/// Skips a string literal at `*at` (RFC 7541 §5.2).
fn string(block: &[u8], at: &mut usize) -> bool {
    match integer(block, at, 7) {
        Some(len) if block.len() - *at >= len => {
            *at += len;
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_with_dynamic_table_and_size_update() {
        let mut a = Hpack::new(4096);
        let mut b = Hpack::new(4096);
        let fields: [(&[u8], &[u8]); 2] = [(b":status", b"200"), (b"x-custom", b"value")];
        for _ in 0..3 {
            let mut block = Vec::new();
            a.encode(&fields, &mut block);
            let mut out = Fields::new();
            assert_eq!(b.decode(&block, 1000, &mut out), Ok(Decoded::Ok));
            assert_eq!(out.pairs(), fields.to_vec());
        }
        a.set_peer_table_size(0);
        let mut block = Vec::new();
        a.encode(&fields, &mut block);
        assert_eq!(block[0], 0x20, "size update to 0 first");
        let mut out = Fields::new();
        assert_eq!(b.decode(&block, 1000, &mut out), Ok(Decoded::Ok));
        assert_eq!(out.pairs(), fields.to_vec());
    }

    #[test]
    fn cached_sections_decode_the_same_as_fresh_ones() {
        let mut a = Hpack::new(4096);
        let mut b = Hpack::new(4096);
        let head: [(&[u8], &[u8]); 3] = [
            (b":status", b"200"),
            (b"content-type", b"application/grpc"),
            (b"x-backend", b"A"),
        ];
        let trailers: [(&[u8], &[u8]); 2] = [(b"grpc-status", b"0"), (b"x-backend", b"A")];
        let other: [(&[u8], &[u8]); 2] = [(b":status", b"200"), (b"x-id", b"42")];
        let mut blocks = Vec::new();
        for round in 0..6 {
            let sections: Vec<&[(&[u8], &[u8])]> = if round == 3 {
                vec![&head, &other, &trailers]
            } else {
                vec![&head, &trailers]
            };
            for f in sections {
                let mut block = Vec::new();
                a.encode(f, &mut block);
                let mut out = Fields::new();
                assert_eq!(b.decode(&block, 1 << 20, &mut out), Ok(Decoded::Ok));
                assert_eq!(out.pairs(), f.to_vec(), "round {round}");
                blocks.push(block);
            }
        }
        // From the second round on, the head inserts nothing and comes from the cache.
        assert_eq!(blocks[2], blocks[4]);
        assert!(keeps_table(&blocks[2], 3));
        assert!(
            !keeps_table(&blocks[0], 3),
            "x-backend was inserted the first time"
        );
        assert!(!keeps_table(&[0x40, 1, b'a', 1, b'b'], 1));
        assert!(keeps_table(&[0xff, 0x80, 0x01, 0x82], 2));
        assert!(keeps_table(
            &[0x0f, 0x10, 2, b'x', b'y', 0x00, 1, b'n', 1, b'v'],
            2
        ));
        assert!(
            !keeps_table(&[0x0f, 0x10, 9, b'x'], 1),
            "a string past the end"
        );
    }

    #[test]
    fn huffman_from_rfc_c4() {
        // RFC 7541 C.4.1: a request with Huffman-coded literals.
        let block = [
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let mut h = Hpack::new(4096);
        let mut out = Fields::new();
        assert_eq!(h.decode(&block, 1000, &mut out), Ok(Decoded::Ok));
        assert_eq!(out.authority(), Some(&b"www.example.com"[..]));
    }

    #[test]
    fn size_limit_and_bad_blocks() {
        let mut a = Hpack::new(4096);
        let mut block = Vec::new();
        a.encode(&[(b"a", &[b'x'; 100])], &mut block);
        let mut h = Hpack::new(4096);
        let mut out = Fields::new();
        assert_eq!(h.decode(&block, 50, &mut out), Ok(Decoded::TooLarge(133)));
        // Index 0 and an index past both tables are errors.
        assert!(h.decode(&[0x80], 1000, &mut out).is_err());
        assert!(h.decode(&[0xff, 0x7f], 1000, &mut out).is_err());
        // A table size update above our setting.
        let mut big = Vec::new();
        encode_integer_into(1 << 20, 5, 0x20, &mut big).unwrap();
        big.push(0x82);
        assert!(h.decode(&big, 1000, &mut out).is_err());
    }
}
