//! Record-batch headers, read without decompressing, and a zero-copy buffer over the chunks
//! of a cut-through response.
//!
//! Attribution counts bytes and records from the `records` field of Produce requests and
//! Fetch responses. Each record batch (magic 2) starts with a fixed 61-byte header; the
//! fields used here sit at fixed offsets:
//!
//! ```text
//! 0 baseOffset i64 | 8 batchLength i32 | 16 magic i8 | 21 attributes i16
//! 23 lastOffsetDelta i32 | 27 baseTimestamp i64 | 35 maxTimestamp i64 | 57 recordsCount i32
//! ```
//!
//! A batch occupies `12 + batchLength` bytes. `kafka-protocol`'s `decode_batch_info` reads the
//! same header but verifies the CRC (a pass over every byte), stops at legacy message sets and
//! does not return the batch length or last offset delta, which are needed here; so the walk
//! is done by hand over the fixed offsets, and the CRC is left to the client that owns it.
//!
//! Legacy message sets (magic 0/1) count one record per entry (a compressed wrapper holds
//! more, which cannot be known without decompressing; such clients are rare).

use std::collections::VecDeque;
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use kafka_protocol::protocol::buf::ByteBuf;

/// Size of the fixed part of a v2 record batch header.
pub(crate) const BATCH_HEADER_BYTES: usize = 61;
/// Bit 5 of the attributes marks control batches (transaction markers).
const CONTROL_FLAG: i16 = 0x20;

/// What the complete batches of one `records` field add up to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchSummary {
    /// Bytes of complete batches (a trailing partial batch, which brokers append to
    /// size-limited fetches, is not counted: the client fetches it again whole).
    pub bytes: u64,
    /// Data records at or after the `from` offset in complete, non-control batches.
    pub(crate) records: u64,
    /// Complete batches seen.
    pub(crate) batches: u32,
    /// Offsets spanned by complete batches (for a bytes-per-offset estimate).
    pub(crate) offsets: u64,
    /// One past the last offset of the last complete batch (0 when there is none).
    pub(crate) next_offset: i64,
    /// The base offset of the first complete batch (-1 when there is none).
    pub(crate) first_offset: i64,
    /// Largest `maxTimestamp` of the complete batches (-1 when there is none).
    pub(crate) max_timestamp: i64,
    /// Bytes of a trailing partial batch.
    pub partial_bytes: u64,
}

fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes([b[at], b[at + 1]])
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}
fn be_i64(b: &[u8], at: usize) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    i64::from_be_bytes(a)
}

/// One whole entry of a `records` field: a record batch (magic 2) or a legacy message set
/// entry, read from its header. The ONE parser of batch headers: attribution counts with it
/// ([`summarize`]) and tiered reads rebase with it ([`crate::tiered::scan_batches`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry<'a> {
    /// The whole entry, `12 + batchLength` bytes.
    pub(crate) bytes: &'a [u8],
}

impl Entry<'_> {
    pub(crate) fn base_offset(&self) -> i64 {
        be_i64(self.bytes, 0)
    }

    pub(crate) fn magic(&self) -> i8 {
        self.bytes[16] as i8
    }

    /// A v2 record batch (its whole 61-byte header is there).
    pub(crate) fn is_batch(&self) -> bool {
        self.magic() >= 2
    }

    /// A transaction marker (v2 only).
    pub(crate) fn is_control(&self) -> bool {
        self.is_batch() && be_i16(self.bytes, 21) & CONTROL_FLAG != 0
    }

    /// The last offset in the entry (a legacy entry's offset is its last inner message's).
    pub(crate) fn last_offset(&self) -> i64 {
        match self.is_batch() {
            true => self
                .base_offset()
                .saturating_add(i64::from(be_i32(self.bytes, 23).max(0))),
            false => self.base_offset(),
        }
    }

    /// Records in the entry (one for a legacy entry).
    pub(crate) fn count(&self) -> u64 {
        match self.is_batch() {
            true => be_i32(self.bytes, 57).max(0) as u64,
            false => 1,
        }
    }

    /// The batch's `maxTimestamp` (-1 for a legacy entry).
    pub(crate) fn max_timestamp(&self) -> i64 {
        match self.is_batch() {
            true => be_i64(self.bytes, 35),
            false => -1,
        }
    }
}

/// The whole entries at the front of `records`, in order. Stops at a trailing partial entry
/// (brokers append one to size-limited fetches) and at a malformed one (a negative length,
/// one too short for its magic byte or, for a batch, its header): what follows is not read.
pub(crate) fn entries(records: &[u8]) -> impl Iterator<Item = Entry<'_>> {
    let mut rest = records;
    std::iter::from_fn(move || {
        let len = usize::try_from(be_i32(rest.get(..12)?, 8)).ok()?;
        let total = 12 + len;
        // Shorter than a magic byte: not an entry (a hostile length of 0-4 would otherwise
        // index past its end).
        if total < 17 || rest.len() < total {
            return None;
        }
        let entry = Entry {
            bytes: &rest[..total],
        };
        if entry.is_batch() && total < BATCH_HEADER_BYTES {
            return None;
        }
        rest = &rest[total..];
        Some(entry)
    })
}

/// Walk the batch headers of a `records` field. `from` is the fetch offset: records of a
/// batch that starts before it are delivered by the broker but skipped by the client, so
/// they are not counted (pass `i64::MIN` to count everything, as for Produce).
pub fn summarize(records: &[u8], from: i64) -> BatchSummary {
    let mut s = BatchSummary {
        max_timestamp: -1,
        first_offset: -1,
        ..BatchSummary::default()
    };
    for e in entries(records) {
        let (base, last) = (e.base_offset(), e.last_offset());
        if !e.is_control() {
            s.records += if base >= from {
                e.count()
            } else if last < from {
                0
            } else {
                // Offsets from..=last of this batch are delivered; without compaction gaps
                // that is one record per offset.
                ((last - from + 1) as u64).min(e.count())
            };
        }
        if s.batches == 0 {
            s.first_offset = base;
        }
        s.offsets += last.saturating_sub(base) as u64 + 1;
        s.next_offset = last.saturating_add(1);
        s.max_timestamp = s.max_timestamp.max(e.max_timestamp());
        s.bytes += e.bytes.len() as u64;
        s.batches += 1;
    }
    s.partial_bytes = records.len() as u64 - s.bytes;
    s
}

/// A [`ByteBuf`] over the chunks of a response that was forwarded cut-through, so
/// `kafka-protocol` can decode it without first copying it into one buffer. Fields that fall
/// inside one chunk (almost all, chunks are 256 KiB) are zero-copy slices; a field that
/// spans chunks is copied.
#[derive(Debug, Default)]
pub(crate) struct Chunks {
    chunks: VecDeque<Bytes>,
    remaining: usize,
}

impl Chunks {
    pub(crate) fn new(chunks: impl IntoIterator<Item = Bytes>) -> Chunks {
        let chunks: VecDeque<Bytes> = chunks.into_iter().filter(|c| !c.is_empty()).collect();
        let remaining = chunks.iter().map(Bytes::len).sum();
        Chunks { chunks, remaining }
    }
}

impl Buf for Chunks {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        self.chunks.front().map(|c| &c[..]).unwrap_or(&[])
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end of Chunks");
        self.remaining -= cnt;
        while cnt > 0 {
            let front = self.chunks.front_mut().expect("remaining counted");
            if cnt < front.len() {
                front.advance(cnt);
                return;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }
}

impl ByteBuf for Chunks {
    fn peek_bytes(&mut self, r: Range<usize>) -> Bytes {
        if let Some(front) = self.chunks.front() {
            if r.end <= front.len() {
                return front.slice(r);
            }
        }
        let mut out = BytesMut::with_capacity(r.len());
        let mut skip = r.start;
        let mut want = r.len();
        for c in &self.chunks {
            if want == 0 {
                break;
            }
            if skip >= c.len() {
                skip -= c.len();
                continue;
            }
            let take = (c.len() - skip).min(want);
            out.extend_from_slice(&c[skip..skip + take]);
            want -= take;
            skip = 0;
        }
        out.freeze()
    }

    fn get_bytes(&mut self, size: usize) -> Bytes {
        if let Some(front) = self.chunks.front_mut() {
            if size <= front.len() {
                let b = front.split_to(size);
                self.remaining -= size;
                if front.is_empty() {
                    self.chunks.pop_front();
                }
                return b;
            }
        }
        self.copy_to_bytes(size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BufMut;

    /// A v2 batch header with `count` records over `count` offsets and `payload` filler bytes.
    pub(crate) fn batch(base: i64, count: i32, payload: usize, control: bool) -> Vec<u8> {
        let mut b = BytesMut::new();
        b.put_i64(base);
        b.put_i32((BATCH_HEADER_BYTES - 12 + payload) as i32);
        b.put_i32(0); // leader epoch
        b.put_i8(2); // magic
        b.put_u32(0); // crc (not checked here)
        b.put_i16(if control { CONTROL_FLAG } else { 0 });
        b.put_i32(count - 1); // last offset delta
        b.put_i64(1000); // base timestamp
        b.put_i64(2000 + base); // max timestamp
        b.put_i64(-1);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i32(count);
        b.put_bytes(7, payload);
        b.to_vec()
    }

    #[test]
    fn counts_complete_batches_and_skips_the_partial_tail() {
        let mut data = batch(0, 10, 100, false);
        data.extend(batch(10, 5, 50, false));
        let whole = data.len() as u64;
        let tail = batch(15, 3, 30, false);
        data.extend(&tail[..20]);
        let s = summarize(&data, 0);
        assert_eq!(s.records, 15);
        assert_eq!(s.bytes, whole);
        assert_eq!(s.batches, 2);
        assert_eq!(s.offsets, 15);
        assert_eq!(s.next_offset, 15);
        assert_eq!(s.max_timestamp, 2010);
        assert_eq!(s.partial_bytes, 20);
    }

    #[test]
    fn records_before_the_fetch_offset_and_control_batches_are_not_counted() {
        let mut data = batch(0, 10, 0, false);
        data.extend(batch(10, 1, 0, true));
        assert_eq!(summarize(&data, 4).records, 6);
        assert_eq!(summarize(&data, 100).records, 0);
        assert_eq!(summarize(&data, i64::MIN).records, 10);
        assert_eq!(summarize(&data, 0).bytes, data.len() as u64);
    }

    #[test]
    fn garbage_never_panics() {
        for n in 0..200usize {
            let junk: Vec<u8> = (0..n).map(|i| (i * 37 % 251) as u8).collect();
            let _ = summarize(&junk, 0);
        }
        let mut neg = batch(0, 1, 0, false);
        neg[8..12].copy_from_slice(&(-5i32).to_be_bytes());
        assert_eq!(summarize(&neg, 0).batches, 0);
    }

    #[test]
    fn a_batch_length_shorter_than_the_magic_byte_is_malformed_not_a_panic() {
        // The 17-byte Produce payload that used to panic the connection task: length 0..=4
        // makes the batch 12..=16 bytes, and the magic byte sits at 16.
        for len in 0..=4i32 {
            let mut data = vec![0u8; 17];
            data[8..12].copy_from_slice(&len.to_be_bytes());
            let s = summarize(&data, 0);
            assert_eq!(
                (s.batches, s.bytes, s.partial_bytes),
                (0, 0, 17),
                "len {len}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_records_never_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), from in proptest::prelude::any::<i64>()) {
            let s = summarize(&data, from);
            proptest::prop_assert!(s.bytes + s.partial_bytes == data.len() as u64);
        }
    }

    #[test]
    fn chunks_decode_like_one_buffer() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i % 256) as u8).collect();
        let whole = Bytes::from(data.clone());
        let parts = vec![whole.slice(0..10), whole.slice(10..500), whole.slice(500..)];
        let mut c = Chunks::new(parts);
        assert_eq!(c.remaining(), 1000);
        assert_eq!(&c.peek_bytes(5..15)[..], &data[5..15]);
        assert_eq!(&c.get_bytes(4)[..], &data[0..4]);
        assert_eq!(&c.get_bytes(10)[..], &data[4..14]); // spans two chunks
        assert_eq!(c.get_i32(), i32::from_be_bytes([14, 15, 16, 17]));
        c.advance(600);
        assert_eq!(c.remaining(), 1000 - 618);
        assert_eq!(&c.get_bytes(382)[..], &data[618..]);
        assert_eq!(c.remaining(), 0);
    }
}
