//! Byte buffers with read/write cursors, and the per-worker pool they are borrowed from.
//!
//! Connections hold a buffer only while they have bytes in flight; an idle keep-alive
//! connection gives its buffer back, so it costs no buffer memory.

/// Size of a pooled buffer. Heads larger than this grow one buffer up to `MAX_HEAD`.
pub const BUF_SIZE: usize = 16 * 1024;

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
}

/// A worker's free list of [`BUF_SIZE`] buffers.
pub struct BufPool {
    free: Vec<Buf>,
    max_free: usize,
    /// Buffers handed out by `get` and not yet given back by `put` (a plain counter the
    /// worker publishes as a gauge once per loop iteration).
    out: usize,
}

impl BufPool {
    pub fn new(max_free: usize) -> BufPool {
        BufPool {
            free: Vec::new(),
            max_free,
            out: 0,
        }
    }

    #[inline]
    pub fn get(&mut self) -> Buf {
        self.out += 1;
        self.free
            .pop()
            .unwrap_or_else(|| Buf::with_capacity(BUF_SIZE))
    }

    /// Returns a buffer; grown buffers and buffers beyond the pool's bound are freed.
    #[inline]
    pub fn put(&mut self, mut b: Buf) {
        self.out = self.out.saturating_sub(1);
        if b.data.len() == BUF_SIZE && self.free.len() < self.max_free {
            b.clear();
            self.free.push(b);
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
        if self.free.len() <= keep {
            return;
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
}
