//! Byte buffers with read/write cursors, and the per-worker pool they are borrowed from.
//!
//! Connections hold a buffer only while they have bytes in flight; an idle keep-alive
//! connection gives its buffer back, so it costs no buffer memory. A bulk transfer that
//! keeps its buffer full trades it for larger ones (doubling up to [`BULK_MAX`]), so it
//! makes fewer syscalls; grown buffers go back to a small pool of their own.

/// Size of a pooled buffer. Heads larger than this grow one buffer up to `MAX_HEAD`.
pub const BUF_SIZE: usize = 16 * 1024;
/// Largest buffer a bulk transfer grows to.
pub const BULK_MAX: usize = 256 * 1024;
/// Bulk size classes: `BUF_SIZE << 1` up to `BULK_MAX`.
const BULK_CLASSES: usize = (BULK_MAX / BUF_SIZE).trailing_zeros() as usize;
/// Grown buffers a worker keeps per size class.
const BULK_KEEP: usize = 4;

/// The capacity a buffer should have for its next read, given its capacity, whether the
/// last read filled all the room it was given, and the body bytes known to be left (`left`,
/// 0 when unknown). Unchanged unless the last read filled it and more than `cap` bytes may
/// follow; then at least doubled, and at once large enough for all of `left` (the next
/// power of two, up to [`BULK_MAX`]): the rest of a 64 KiB body whose first 16 KiB came
/// with the head is one read, not three. Buffers outside the bulk classes (grown heads)
/// never change.
pub fn bulk_capacity(cap: usize, last_filled: bool, left: u64) -> usize {
    if !last_filled || bulk_class(cap * 2).is_none() || (left > 0 && left <= cap as u64) {
        return cap;
    }
    let fit = left.min(BULK_MAX as u64).next_power_of_two() as usize;
    (cap * 2).max(fit).min(BULK_MAX)
}

/// Index of a bulk size class (`None`: not a grown bulk buffer).
fn bulk_class(cap: usize) -> Option<usize> {
    if cap > BUF_SIZE && cap <= BULK_MAX && cap.is_power_of_two() {
        Some((cap / BUF_SIZE).trailing_zeros() as usize - 1)
    } else {
        None
    }
}

/// A fixed-capacity byte buffer: `data[start..end]` holds unconsumed bytes. 24 bytes (a
/// boxed slice and two `u32` cursors), so an `Option<Buf>` in every connection stays small.
#[derive(Debug)]
pub struct Buf {
    data: Box<[u8]>,
    start: u32,
    end: u32,
}

impl Buf {
    fn with_capacity(n: usize) -> Buf {
        Buf {
            data: vec![0; n].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Index of the first unconsumed byte.
    #[inline]
    pub fn start(&self) -> usize {
        self.start as usize
    }

    /// Index just past the last byte.
    #[inline]
    pub fn end(&self) -> usize {
        self.end as usize
    }

    /// Drops everything after the first `len` unconsumed bytes.
    #[inline]
    pub fn truncate(&mut self, len: usize) {
        debug_assert!(len <= self.len());
        self.end = self.start + len as u32;
    }

    /// Unconsumed bytes.
    #[inline]
    pub fn bytes(&self) -> &[u8] {
        &self.data[self.start as usize..self.end as usize]
    }

    #[inline]
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.data[self.start as usize..self.end as usize]
    }

    #[inline]
    pub fn len(&self) -> usize {
        (self.end - self.start) as usize
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    pub fn capacity(&self) -> usize {
        self.data.len()
    }

    /// Free space after the data, compacting first if that makes room.
    #[inline]
    pub fn space(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end as usize == self.data.len() && self.start > 0 {
            self.data
                .copy_within(self.start as usize..self.end as usize, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.data[self.end as usize..]
    }

    /// Records `n` bytes written into [`space`](Buf::space).
    #[inline]
    pub fn filled(&mut self, n: usize) {
        self.end += n as u32;
        debug_assert!(self.end as usize <= self.data.len());
    }

    /// Drops `n` bytes from the front.
    #[inline]
    pub fn consume(&mut self, n: usize) {
        self.start += n as u32;
        debug_assert!(self.start <= self.end);
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    /// Grows the buffer to at least `n` bytes of capacity (for large heads).
    pub fn grow(&mut self, n: usize) {
        if self.data.len() < n {
            let mut v = std::mem::take(&mut self.data).into_vec();
            v.resize(n, 0);
            self.data = v.into_boxed_slice();
        }
    }

    pub fn clear(&mut self) {
        self.start = 0;
        self.end = 0;
    }

    /// Appends `bytes`, moving the data to the front or growing the buffer (to a power of
    /// two) when the free space after it is too small.
    pub fn append(&mut self, bytes: &[u8]) {
        let n = bytes.len();
        if self.space().len() < n {
            let (start, end) = (self.start as usize, self.end as usize);
            self.data.copy_within(start..end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.data.len() - (self.end as usize) < n {
                self.grow((self.len() + n).next_power_of_two());
            }
        }
        self.space()[..n].copy_from_slice(bytes);
        self.filled(n);
    }
}

/// A worker's free list of [`BUF_SIZE`] buffers, and a few grown ones per bulk class.
pub struct BufPool {
    free: Vec<Buf>,
    max_free: usize,
    bulk: [Vec<Buf>; BULK_CLASSES],
    /// Buffers handed out by `get` (or `enlarge`) and not yet given back by `put` (a plain
    /// counter the worker publishes as a gauge once per loop iteration).
    out: usize,
}

impl BufPool {
    pub fn new(max_free: usize) -> BufPool {
        BufPool {
            free: Vec::new(),
            max_free,
            bulk: Default::default(),
            out: 0,
        }
    }

    /// Trades the empty buffer `b` for a larger one ([`bulk_capacity`]: twice as large,
    /// or large enough for the `left` bytes still to come, up to [`BULK_MAX`]) when the
    /// last read filled it: a transfer that keeps its buffer full reads more per call.
    pub fn enlarge(&mut self, b: &mut Buf, last_filled: bool, left: u64) {
        debug_assert!(b.is_empty());
        let want = bulk_capacity(b.capacity(), last_filled, left);
        let Some(class) = (want != b.capacity()).then(|| bulk_class(want)).flatten() else {
            return;
        };
        let big = self.bulk[class]
            .pop()
            .unwrap_or_else(|| Buf::with_capacity(want));
        let old = std::mem::replace(b, big);
        self.out += 1;
        self.put(old);
    }

    #[inline]
    pub fn get(&mut self) -> Buf {
        self.out += 1;
        self.free
            .pop()
            .unwrap_or_else(|| Buf::with_capacity(BUF_SIZE))
    }

    /// Returns a buffer; bulk buffers go to their class's pool, grown heads and buffers
    /// beyond the pools' bounds are freed.
    #[inline]
    pub fn put(&mut self, mut b: Buf) {
        self.out = self.out.saturating_sub(1);
        b.clear();
        if b.data.len() == BUF_SIZE {
            if self.free.len() < self.max_free {
                self.free.push(b);
            }
        } else if let Some(class) = bulk_class(b.data.len()) {
            if self.bulk[class].len() < BULK_KEEP {
                self.bulk[class].push(b);
            }
        }
    }

    /// Returns the buffer in `slot`, if any.
    #[inline]
    pub fn release(&mut self, slot: &mut Option<Buf>) {
        if let Some(b) = slot.take() {
            self.put(b);
        }
    }

    /// Frees pooled buffers beyond `keep` (called when the worker is quiet) and hands the
    /// freed memory back to the OS, so idle connections cost no buffer memory.
    pub fn trim(&mut self, keep: usize) {
        let bulk = self.bulk.iter().any(|v| !v.is_empty());
        if self.free.len() <= keep && !bulk {
            return;
        }
        for v in &mut self.bulk {
            *v = Vec::new();
        }
        self.free.truncate(keep);
        self.free.shrink_to(keep);
        // SAFETY: malloc_trim only releases free heap pages; it touches no live allocation.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    pub fn pooled(&self) -> usize {
        self.free.len()
    }

    /// Buffers handed out and not returned: held by connections now.
    pub fn in_use(&self) -> usize {
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_and_compaction() {
        let mut pool = BufPool::new(4);
        let mut b = pool.get();
        let n = b.space().len();
        assert_eq!(n, BUF_SIZE);
        b.space()[..5].copy_from_slice(b"hello");
        b.filled(5);
        b.consume(2);
        assert_eq!(b.bytes(), b"llo");
        b.filled(BUF_SIZE - 5);
        assert_eq!(b.space().len(), 2, "compaction moves data to the front");
        assert_eq!(&b.bytes()[..3], b"llo");
        b.consume(b.len());
        assert!(b.is_empty());
        assert_eq!(pool.in_use(), 1);
        pool.put(b);
        assert_eq!(pool.pooled(), 1);
        assert_eq!(pool.in_use(), 0);
        let mut big = pool.get();
        big.grow(BUF_SIZE * 2);
        pool.put(big);
        assert_eq!(pool.pooled(), 0, "grown buffers are not pooled");
        assert_eq!(pool.in_use(), 0, "a freed buffer is no longer in use");
    }

    #[test]
    fn bulk_growth_doubles_up_to_the_cap_only_when_reads_fill_the_buffer() {
        assert_eq!(bulk_capacity(BUF_SIZE, false, 0), BUF_SIZE);
        assert_eq!(bulk_capacity(BUF_SIZE, true, 0), 2 * BUF_SIZE);
        assert_eq!(bulk_capacity(BULK_MAX / 2, true, 0), BULK_MAX);
        assert_eq!(bulk_capacity(BULK_MAX, true, 0), BULK_MAX, "capped");
        // A head grown past one buffer is not a bulk buffer and is left alone.
        assert_eq!(bulk_capacity(64 * 1024 + 1, true, 0), 64 * 1024 + 1);
        assert_eq!(BULK_CLASSES, 4);
    }

    #[test]
    fn bulk_growth_fits_the_known_rest_of_a_body_at_once() {
        // 64 KiB upload: 16 KiB came with the head, 49,295 bytes are left: one 64 KiB read.
        assert_eq!(bulk_capacity(BUF_SIZE, true, 49_295), 64 * 1024);
        assert_eq!(bulk_capacity(BUF_SIZE, true, 200_000), BULK_MAX);
        assert_eq!(bulk_capacity(BUF_SIZE, true, 1 << 40), BULK_MAX, "capped");
        // Never less than doubling while reads fill the buffer, never more than fits.
        assert_eq!(bulk_capacity(BUF_SIZE, true, 20_000), 2 * BUF_SIZE);
        assert_eq!(
            bulk_capacity(BUF_SIZE, true, 100),
            BUF_SIZE,
            "the rest fits already"
        );
        assert_eq!(
            bulk_capacity(BUF_SIZE, false, 1 << 20),
            BUF_SIZE,
            "a slow sender"
        );
    }

    #[test]
    fn append_compacts_or_grows_whatever_the_cursors() {
        let mut pool = BufPool::new(4);
        let mut b = pool.get();
        let cap = b.capacity();
        // Data in the middle: room only after moving it to the front.
        b.append(&vec![1u8; cap * 3 / 4]);
        b.consume(cap / 2);
        b.append(&vec![2u8; cap / 2]);
        assert_eq!(b.capacity(), cap, "moved to the front, not grown");
        assert_eq!(b.len(), cap * 3 / 4);
        assert_eq!(&b.bytes()[..cap / 4], &vec![1u8; cap / 4][..]);
        // No room even then: grown.
        b.append(&vec![3u8; cap]);
        assert!(b.capacity() >= cap * 7 / 4);
        assert_eq!(b.len(), cap * 7 / 4);
        assert_eq!(b.bytes()[b.len() - 1], 3);
    }

    #[test]
    fn enlarged_buffers_return_to_their_own_pool_and_normal_ones_stay_normal() {
        let mut pool = BufPool::new(4);
        let mut b = pool.get();
        pool.enlarge(&mut b, false, 0);
        assert_eq!(b.capacity(), BUF_SIZE, "no growth without a full read");
        let mut caps = Vec::new();
        for _ in 0..5 {
            pool.enlarge(&mut b, true, 0);
            caps.push(b.capacity());
        }
        assert_eq!(caps, [32, 64, 128, 256, 256].map(|k| k * 1024));
        // The smaller buffers traded in went back: the 16 KiB one to the normal pool.
        assert_eq!(pool.pooled(), 1);
        assert_eq!(pool.bulk.iter().map(Vec::len).sum::<usize>(), 3);
        pool.put(b);
        assert_eq!(pool.bulk[BULK_CLASSES - 1].len(), 1);
        assert_eq!(
            pool.get().capacity(),
            BUF_SIZE,
            "a new transfer starts small"
        );
        // Growing again reuses a pooled 32 KiB buffer.
        let mut c = pool.get();
        pool.enlarge(&mut c, true, 0);
        assert_eq!(c.capacity(), 2 * BUF_SIZE);
        assert_eq!(pool.bulk[0].len(), 0);
        pool.trim(0);
        assert_eq!(pool.bulk.iter().map(Vec::len).sum::<usize>(), 0);
    }
}
