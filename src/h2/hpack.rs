//! HPACK (RFC 7541) through `loona-hpack`: the decoder with its size limits, the encoder
//! with dynamic-table size updates when the peer's HEADER_TABLE_SIZE changes.

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

pub struct Hpack {
    enc: Encoder<'static>,
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
            let _ = encode_integer_into(min, 5, 0x20, out);
            if min != self.enc_table {
                let _ = encode_integer_into(self.enc_table, 5, 0x20, out);
            }
        }
        let _ = self.enc.encode_into(fields.iter().copied(), out);
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
