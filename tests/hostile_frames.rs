//! Adversarial frames against the Kafka decoders Tollgate uses (the vendored, patched
//! `kafka-protocol`): a count or length read off the wire must never make the decoder
//! allocate more than the frame could justify.
//!
//! A counting global allocator records the largest single allocation while each body is
//! decoded. (This test crate needs `unsafe` for `GlobalAlloc`; the library forbids it.)
//!
//! What this bounds is *pre-allocation* from an untrusted count or length. Elements that are
//! really in the frame still take their in-memory size as they decode (up to ~60x their wire
//! size for a struct of empty fields); `proxy.max_frame_bytes` bounds that, see docs/security.md's
//! *Hostile input* section.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    DescribeGroupsRequest, JoinGroupRequest, MetadataRequest, ProduceRequest,
};
use kafka_protocol::protocol::Decodable;

struct Counting;

static LARGEST: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Ordering::Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Decode `body` as `T` at `version` and return the largest single allocation it made.
fn largest_allocation<T: Decodable>(body: &Bytes, version: i16) -> usize {
    let mut b = body.clone();
    LARGEST.store(0, Ordering::SeqCst);
    let _ = T::decode(&mut b, version);
    LARGEST.load(Ordering::SeqCst)
}

/// `prefix`, then `filler` bytes of 0xFF: a frame body near a large `max_frame_bytes` whose
/// first element does not decode (0xFF.. is a length of -1 for a non-nullable field, or a
/// varint that never ends). What the decoder allocated is then what the *count* asked for,
/// not what decoded elements took.
fn body(prefix: &[u8], filler: usize) -> Bytes {
    let mut b = BytesMut::with_capacity(prefix.len() + filler);
    b.put_slice(prefix);
    b.put_bytes(0xFF, filler);
    b.freeze()
}

fn varint(mut v: u32) -> Vec<u8> {
    let mut out = Vec::new();
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
    out
}

const FILLER: usize = 16 << 20; // 16 MiB of body after the hostile count
const BOUND: usize = 1 << 16; // no single allocation above 64 KiB may come from a count or length

#[test]
fn hostile_counts_and_lengths_never_allocate_past_the_bytes_they_bring() {
    let mut worst = Vec::new();
    // Array counts: i32 (classic) and unsigned varint (flexible), close to their maxima.
    let cases: Vec<(&str, usize)> = vec![
        // DescribeGroups v0: groups: [string], count 2^31-1.
        (
            "DescribeGroups v0 array",
            largest_allocation::<DescribeGroupsRequest>(&body(&i32::MAX.to_be_bytes(), FILLER), 0),
        ),
        // DescribeGroups v5 (flexible): compact array count 2^32-2.
        (
            "DescribeGroups v5 compact array",
            largest_allocation::<DescribeGroupsRequest>(&body(&varint(u32::MAX), FILLER), 5),
        ),
        // Metadata v9 (flexible): topics compact array of structs (large in memory).
        (
            "Metadata v9 compact array of structs",
            largest_allocation::<MetadataRequest>(&body(&varint(u32::MAX), FILLER), 9),
        ),
        // JoinGroup v5: group id "", session timeout, rebalance timeout, member id "",
        // group instance id null, protocol type "", then protocols: [struct], count 2^31-1.
        ("JoinGroup v5 array of structs", {
            let mut p = Vec::new();
            p.extend(0i16.to_be_bytes());
            p.extend(0i32.to_be_bytes());
            p.extend(0i32.to_be_bytes());
            p.extend(0i16.to_be_bytes());
            p.extend((-1i16).to_be_bytes());
            p.extend(0i16.to_be_bytes());
            p.extend(i32::MAX.to_be_bytes());
            largest_allocation::<JoinGroupRequest>(&body(&p, FILLER), 5)
        }),
        // Produce v3: transactional id null, acks, timeout, topics count 2^31-1.
        ("Produce v3 array of structs", {
            let mut p = Vec::new();
            p.extend((-1i16).to_be_bytes());
            p.extend(1i16.to_be_bytes());
            p.extend(0i32.to_be_bytes());
            p.extend(i32::MAX.to_be_bytes());
            largest_allocation::<ProduceRequest>(&body(&p, FILLER), 3)
        }),
        // A string length with nothing behind it (DescribeGroups v0's first group name).
        (
            "DescribeGroups v0 string length",
            largest_allocation::<DescribeGroupsRequest>(
                &body(
                    &[&1i32.to_be_bytes()[..], &i16::MAX.to_be_bytes()].concat(),
                    0,
                ),
                0,
            ),
        ),
    ];
    for (name, largest) in cases {
        if largest > BOUND {
            worst.push(format!("{name}: {largest} bytes"));
        }
    }
    assert!(
        worst.is_empty(),
        "allocations past {BOUND} bytes: {worst:?}"
    );
}
