//! Record-batch walking without decompression: attribution's `summarize` and tiered reads'
//! offset rebasing, on hostile `records` fields.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tollgate::wire::records::summarize;
use tollgate::tiered::{scan_batches, shift_base_offsets, Scan, Segment};

fuzz_target!(|data: &[u8]| {
    if data.len() < 17 {
        return;
    }
    let word = |i: usize| i64::from_be_bytes(data[i..i + 8].try_into().unwrap());
    let (from, up) = (word(0), word(8));
    let records = &data[16..];
    let s = summarize(records, from);
    assert_eq!(s.bytes + s.partial_bytes, records.len() as u64);
    let seg = Segment {
        up_start: up,
        down_start: up.wrapping_sub(from),
        len: (data[16] & 1 == 1).then_some(from),
    };
    if let Scan::Batches { len, .. } = scan_batches(records, &seg) {
        let mut batches = records[..len].to_vec();
        shift_base_offsets(&mut batches, seg.delta());
        assert_eq!(batches[8..12], records[8..12], "a batch length changed");
    }
});
