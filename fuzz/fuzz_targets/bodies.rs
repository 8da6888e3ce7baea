//! Every API body Tollgate decodes, request and response, at any version (inside and outside
//! the range it advertises): decoding must fail cleanly, never panic or over-allocate, and
//! whatever decodes must encode again.
#![no_main]

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::{RequestKind, ResponseKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let apis = tollgate::layers::decoded_apis();
    let key = apis[data[0] as usize % apis.len()];
    let range = tollgate::layers::decodable_versions(key);
    // Mostly inside the decodable range; sometimes just outside it.
    let span = (range.max - range.min + 3) as u8;
    let version = range.min - 1 + (data[1] % span) as i16;
    let body = Bytes::copy_from_slice(&data[3..]);
    if data[2] & 1 == 0 {
        if let Ok(r) = RequestKind::decode(key, &mut body.clone(), version) {
            let _ = r.encode(&mut BytesMut::new(), version);
        }
    } else if let Ok(r) = ResponseKind::decode(key, &mut body.clone(), version) {
        let _ = r.encode(&mut BytesMut::new(), version);
    }
});
