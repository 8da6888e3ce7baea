//! Framing and headers: the size prefix, then request header parsing (api key, version,
//! correlation id, client id, the body offset, Produce acks) and response correlation ids,
//! on whatever bytes arrive.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use tollgate::wire::protocol::{check_frame, missing_bytes, parse_request, response_correlation_id};

fuzz_target!(|data: &[u8]| {
    let _ = missing_bytes(data);
    let mut rest = data;
    while let Ok(Some(n)) = check_frame(rest, 1 << 20) {
        let frame = Bytes::copy_from_slice(&rest[..n]);
        if let Ok(meta) = parse_request(&frame) {
            assert!(meta.body_offset.is_none_or(|o| o <= frame.len()));
        }
        let _ = response_correlation_id(&frame);
        rest = &rest[n..];
    }
    // The whole input as one frame, whatever its prefix says.
    let _ = parse_request(&Bytes::copy_from_slice(data));
});
