//! A Fetch response encoded around its record sets instead of through them.
//!
//! A merged tiered Fetch answer ([`crate::layers::routing`]) carries record sets that are
//! slices of the secondary's response buffers. Encoding it with `kafka-protocol` would copy
//! every record into one new frame. [`encode_fetch`] encodes it with each large record set
//! replaced by a 16-byte marker, then cuts the small encoded frame at the markers and puts the
//! record sets back as pieces of their own: the frame goes to the client as a list of pieces
//! ([`crate::layers::request::Response::Pieces`]) written one after the other, and the records are
//! never copied. The pieces joined are byte for byte what the plain encode gives (unit tests
//! check every Fetch version).
//!
//! A marker is an 8-byte magic and its index. Each cut checks the magic, the index and the
//! length prefix before it (an `i32` of 16 before v12, the compact length 17 from v12); if
//! anything does not match, the response is encoded the plain way instead.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, FetchResponse, ResponseHeader};

use crate::wire::protocol;

/// Record sets smaller than this are copied into the frame: a piece of its own costs more.
pub(crate) const MIN_PIECE: usize = 16 * 1024;

const MAGIC: [u8; 8] = [0xf7, b'T', b'G', b'r', b'e', b'c', b's', 0x1f];
const MARKER: usize = 16;

/// Encode `resp` (with its size prefix) as pieces that, joined, are the response frame. The
/// first piece holds the size prefix, the header and the top-level fields (so a layer can
/// patch `throttle_time_ms` in it); record sets of [`MIN_PIECE`] bytes or more are pieces of
/// their own, shared with the buffers they came from.
pub(crate) fn encode_fetch(
    header: &ResponseHeader,
    resp: FetchResponse,
    version: i16,
) -> anyhow::Result<Vec<Bytes>> {
    let mut marked = resp.clone();
    let taken = mark(&mut marked);
    if taken.is_empty() {
        return Ok(vec![protocol::encode_response(
            header,
            &resp,
            ApiKey::Fetch,
            version,
        )?]);
    }
    let frame = protocol::encode_response(header, &marked, ApiKey::Fetch, version)?;
    match cut(&frame, taken, version >= 12) {
        Some(pieces) => Ok(pieces),
        None => Ok(vec![protocol::encode_response(
            header,
            &resp,
            ApiKey::Fetch,
            version,
        )?]),
    }
}

/// Replace every large record set with a marker; the record sets, in encoding order.
fn mark(resp: &mut FetchResponse) -> Vec<Bytes> {
    let mut taken = Vec::new();
    for p in resp
        .responses
        .iter_mut()
        .flat_map(|t| t.partitions.iter_mut())
    {
        let Some(records) = p.records.as_mut().filter(|r| r.len() >= MIN_PIECE) else {
            continue;
        };
        let mut m = BytesMut::with_capacity(MARKER);
        m.put_slice(&MAGIC);
        m.put_u64(taken.len() as u64);
        taken.push(std::mem::replace(records, m.freeze()));
    }
    taken
}

/// Cut `frame` at its markers and put the record sets in their place. `None` when a marker
/// is not where and what it should be.
fn cut(frame: &Bytes, taken: Vec<Bytes>, flexible: bool) -> Option<Vec<Bytes>> {
    let old_prefix = if flexible { 1 } else { 4 };
    let mut pieces = Vec::with_capacity(taken.len() * 3 + 1);
    let mut size = frame.len().checked_sub(4)?;
    let mut from = 4;
    for (i, records) in taken.into_iter().enumerate() {
        let pos = from + find(&frame[from..], &MAGIC)?;
        let index = frame.get(pos + 8..pos + MARKER)?;
        let prefix = frame.get(pos.checked_sub(old_prefix)?..pos)?;
        let expected: &[u8] = if flexible { &[17] } else { &[0, 0, 0, 16] };
        if index != (i as u64).to_be_bytes() || prefix != expected || pos - old_prefix < from {
            return None;
        }
        let new_prefix = length_prefix(records.len(), flexible)?;
        size = size - old_prefix - MARKER + new_prefix.len() + records.len();
        pieces.push(frame.slice(from..pos - old_prefix));
        pieces.push(new_prefix);
        pieces.push(records);
        from = pos + MARKER;
    }
    pieces.push(frame.slice(from..));
    // The size prefix and the head of the frame in one small piece.
    let mut head = BytesMut::with_capacity(4 + pieces[0].len());
    head.put_i32(i32::try_from(size).ok()?);
    head.put_slice(&pieces[0]);
    pieces[0] = head.freeze();
    Some(pieces)
}

/// The length prefix of a record set of `len` bytes: `i32`, or unsigned varint of `len + 1`.
fn length_prefix(len: usize, flexible: bool) -> Option<Bytes> {
    if !flexible {
        return Some(Bytes::copy_from_slice(
            &i32::try_from(len).ok()?.to_be_bytes(),
        ));
    }
    let mut v = u32::try_from(len.checked_add(1)?).ok()?;
    let mut out = BytesMut::with_capacity(5);
    while v >= 0x80 {
        out.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
    Some(out.freeze())
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
    use kafka_protocol::messages::TopicName;
    use kafka_protocol::protocol::StrBytes;

    fn response(sizes: &[usize]) -> FetchResponse {
        let partitions = sizes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                PartitionData::default()
                    .with_partition_index(i as i32)
                    .with_high_watermark(1000 + i as i64)
                    .with_records(Some(Bytes::from(vec![(i % 251) as u8; *n])))
            })
            .collect();
        FetchResponse::default()
            .with_throttle_time_ms(3)
            .with_responses(vec![FetchableTopicResponse::default()
                .with_topic(TopicName(StrBytes::from_static_str("orders")))
                .with_partitions(partitions)])
    }

    fn joined(pieces: &[Bytes]) -> Vec<u8> {
        pieces.iter().flat_map(|p| p.iter().copied()).collect()
    }

    #[test]
    fn the_pieces_joined_are_the_plain_encoding_at_every_version() {
        let header = ResponseHeader::default().with_correlation_id(42);
        // Small and large record sets, one needing a 3-byte compact length.
        let resp = response(&[10, MIN_PIECE, 300_000, 0, 70_000]);
        for version in 4..=18 {
            let plain = protocol::encode_response(&header, &resp, ApiKey::Fetch, version).unwrap();
            let pieces = encode_fetch(&header, resp.clone(), version).unwrap();
            assert_eq!(
                pieces.len(),
                1 + 3 * 3,
                "v{version}: three record sets cut out"
            );
            assert_eq!(joined(&pieces), plain.to_vec(), "v{version}");
        }
    }

    #[test]
    fn record_sets_are_shared_not_copied() {
        let header = ResponseHeader::default();
        let resp = response(&[100_000]);
        let original = resp.responses[0].partitions[0].records.clone().unwrap();
        let pieces = encode_fetch(&header, resp, 12).unwrap();
        assert_eq!(pieces[2].as_ptr(), original.as_ptr());
    }

    #[test]
    fn small_answers_stay_one_frame() {
        let header = ResponseHeader::default();
        let pieces = encode_fetch(&header, response(&[10, 20]), 12).unwrap();
        assert_eq!(pieces.len(), 1);
    }

    #[test]
    fn a_marker_that_does_not_check_out_falls_back_to_the_plain_encoding() {
        let frame = Bytes::from_static(&[0, 0, 0, 4, 1, 2, 3, 4]);
        assert!(cut(&frame, vec![Bytes::from_static(b"x")], true).is_none());
    }
}
