//! Kafka framing and the handful of fields Tollgate reads by hand.
//!
//! Every Kafka message on the wire is a frame: a big-endian `int32` size followed by that many
//! bytes. Frames are handled as [`Bytes`] that *include* the 4-byte size prefix, so a frame
//! that passes through unchanged is written back with one buffer and no copy.
//!
//! Decoding is in two steps, as in mini-redis: [`check_frame`] tells cheaply whether a whole
//! frame is buffered ("need more bytes" is `Ok(None)`, a value, not an error), and only then
//! are header fields parsed. Request headers are decoded with `kafka-protocol`; APIs that
//! `kafka-protocol` does not know are still forwarded, from the fixed-position fields alone.
//!
//! Bodies are decoded only where a layer needs them; this module offers the shared helpers
//! for that ([`decode_response`], [`encode_response`]) and one hand-written read:
//! the `acks` field of a Produce request, because `acks=0` means the broker sends no response
//! and the connection must not wait for one.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::buf::ByteBuf;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};

/// Size of the length prefix in front of every frame.
pub(crate) const LEN_PREFIX: usize = 4;

/// Why a frame could not be accepted. Any of these closes the one connection it came on.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The size prefix is larger than the configured maximum.
    #[error("frame of {size} bytes exceeds the maximum of {max} bytes")]
    Oversized { size: usize, max: usize },
    /// The size prefix is negative.
    #[error("frame has a negative size ({0})")]
    NegativeSize(i32),
    /// The frame is too short to hold a request or response header.
    #[error("frame of {0} bytes is too short for a header")]
    TooShort(usize),
    /// The header could not be decoded.
    #[error("malformed header: {0}")]
    BadHeader(String),
}

impl FrameError {
    /// Low-cardinality reason label for metrics.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            FrameError::Oversized { .. } => "oversized",
            FrameError::NegativeSize(_) => "negative_size",
            FrameError::TooShort(_) => "too_short",
            FrameError::BadHeader(_) => "bad_header",
        }
    }
}

/// Cheap completeness check: `Ok(Some(n))` when the first `n` bytes of `buf` are one whole
/// frame (size prefix included), `Ok(None)` when more bytes are needed.
pub fn check_frame(buf: &[u8], max: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < LEN_PREFIX {
        return Ok(None);
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if size < 0 {
        return Err(FrameError::NegativeSize(size));
    }
    let size = size as usize;
    if size > max {
        return Err(FrameError::Oversized { size, max });
    }
    let total = LEN_PREFIX + size;
    Ok((buf.len() >= total).then_some(total))
}

/// Whole length (size prefix included) of the frame starting at `buf`; needs 4 bytes.
pub(crate) fn frame_len(buf: &[u8]) -> Option<usize> {
    let b = buf.get(..LEN_PREFIX)?;
    Some(LEN_PREFIX + i32::from_be_bytes([b[0], b[1], b[2], b[3]]).max(0) as usize)
}

/// How many bytes are still missing for the frame at the start of `buf` (0 if unknown yet).
pub fn missing_bytes(buf: &[u8]) -> usize {
    frame_len(buf).map_or(0, |n| n.saturating_sub(buf.len()))
}

/// What Tollgate knows about a request after reading its header.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// Raw API key (kept raw: unknown keys are forwarded too).
    pub(crate) api_key: i16,
    /// The API key, when `kafka-protocol` knows it.
    pub api: Option<ApiKey>,
    pub api_version: i16,
    pub correlation_id: i32,
    /// `client.id` from the header; backed by the frame's bytes (no copy).
    pub(crate) client_id: Option<StrBytes>,
    /// Offset of the body in the frame (size prefix included), when the header was decoded.
    pub body_offset: Option<usize>,
    /// `false` for a Produce with `acks=0`: the broker sends no response.
    pub(crate) expects_response: bool,
}

/// Parse the request header of a whole frame (size prefix included).
pub fn parse_request(frame: &Bytes) -> Result<RequestMeta, FrameError> {
    // api_key(2) + api_version(2) + correlation_id(4)
    if frame.len() < LEN_PREFIX + 8 {
        return Err(FrameError::TooShort(frame.len()));
    }
    let mut fixed = &frame[LEN_PREFIX..];
    let api_key = fixed.get_i16();
    let api_version = fixed.get_i16();
    let correlation_id = fixed.get_i32();
    let api = ApiKey::try_from(api_key).ok();
    let Some(key) = api else {
        // Unknown to kafka-protocol: forward it using the fixed-position fields only.
        return Ok(RequestMeta {
            api_key,
            api,
            api_version,
            correlation_id,
            client_id: read_legacy_client_id(fixed),
            body_offset: None,
            expects_response: true,
        });
    };
    let mut body = frame.slice(LEN_PREFIX..);
    let before = body.len();
    let header = RequestHeader::decode(&mut body, key.request_header_version(api_version))
        .map_err(|e| FrameError::BadHeader(e.to_string()))?;
    let body_offset = LEN_PREFIX + (before - body.len());
    let expects_response = match key {
        ApiKey::Produce => produce_acks(&body, api_version)? != 0,
        _ => true,
    };
    Ok(RequestMeta {
        api_key,
        api,
        api_version,
        correlation_id,
        client_id: header.client_id,
        body_offset: Some(body_offset),
        expects_response,
    })
}

/// `client_id` is a nullable int16-length string at the same place in every header version.
fn read_legacy_client_id(mut rest: &[u8]) -> Option<StrBytes> {
    if rest.len() < 2 {
        return None;
    }
    let len = rest.get_i16();
    if len < 0 || rest.len() < len as usize {
        return None;
    }
    let s = std::str::from_utf8(&rest[..len as usize]).ok()?;
    Some(StrBytes::from_string(s.to_owned()))
}

/// Read `acks` from a Produce request body: it follows `transactional_id`, a nullable string
/// (int16 length before v9, compact varint length from v9 on).
pub(crate) fn produce_acks(body: &[u8], version: i16) -> Result<i16, FrameError> {
    let bad = || FrameError::BadHeader("produce request too short to hold acks".into());
    let mut b = body;
    if version >= 9 {
        let n = read_unsigned_varint(&mut b).ok_or_else(bad)? as usize;
        // compact nullable string: 0 = null, otherwise length + 1
        let len = n.saturating_sub(1);
        if b.len() < len {
            return Err(bad());
        }
        b.advance(len);
    } else {
        if b.len() < 2 {
            return Err(bad());
        }
        let len = b.get_i16();
        if len > 0 {
            if b.len() < len as usize {
                return Err(bad());
            }
            b.advance(len as usize);
        }
    }
    if b.len() < 2 {
        return Err(bad());
    }
    Ok(b.get_i16())
}

fn read_unsigned_varint(b: &mut &[u8]) -> Option<u32> {
    let mut value: u32 = 0;
    for i in 0..5 {
        let byte = *b.first()?;
        b.advance(1);
        value |= ((byte & 0x7f) as u32) << (7 * i);
        if byte & 0x80 == 0 {
            return Some(value);
        }
    }
    None
}

/// Correlation id of a response frame (size prefix included).
pub fn response_correlation_id(frame: &[u8]) -> Option<i32> {
    let b = frame.get(LEN_PREFIX..LEN_PREFIX + 4)?;
    Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// Decode the body of a response frame for `key` at `version`.
pub fn decode_response<T: Decodable>(
    frame: &Bytes,
    key: ApiKey,
    version: i16,
) -> anyhow::Result<(ResponseHeader, T)> {
    decode_response_from(frame.clone(), key, version)
}

/// [`decode_response`] from any buffer positioned at the start of the frame (size prefix
/// included), e.g. the chunks of a streamed response.
pub(crate) fn decode_response_from<T: Decodable, B: ByteBuf>(
    mut buf: B,
    key: ApiKey,
    version: i16,
) -> anyhow::Result<(ResponseHeader, T)> {
    if buf.remaining() < LEN_PREFIX {
        anyhow::bail!("response frame too short");
    }
    buf.advance(LEN_PREFIX);
    let header = ResponseHeader::decode(&mut buf, key.response_header_version(version))?;
    let body = T::decode(&mut buf, version)?;
    if buf.has_remaining() {
        // Clients (librdkafka, the Java client) ignore trailing bytes; so do we. Seen from
        // librdkafka's mock broker on Metadata v12.
        tracing::debug!(
            api = ?key,
            version,
            trailing = buf.remaining(),
            "ignoring trailing bytes after response body"
        );
    }
    Ok((header, body))
}

/// Encode a response frame (size prefix included) for `key` at `version`.
pub fn encode_response<T: Encodable>(
    header: &ResponseHeader,
    body: &T,
    key: ApiKey,
    version: i16,
) -> anyhow::Result<Bytes> {
    let header_version = key.response_header_version(version);
    let size = header.compute_size(header_version)? + body.compute_size(version)?;
    let mut buf = BytesMut::with_capacity(LEN_PREFIX + size);
    buf.put_i32(i32::try_from(size)?);
    header.encode(&mut buf, header_version)?;
    body.encode(&mut buf, version)?;
    Ok(buf.freeze())
}

/// Encode a request frame (size prefix included), for Tollgate's own requests.
pub fn encode_request<T: Encodable>(header: &RequestHeader, body: &T) -> anyhow::Result<Bytes> {
    let key = ApiKey::try_from(header.request_api_key)
        .map_err(|_| anyhow::anyhow!("unknown api key {}", header.request_api_key))?;
    let version = header.request_api_version;
    let header_version = key.request_header_version(version);
    let size = header.compute_size(header_version)? + body.compute_size(version)?;
    let mut buf = BytesMut::with_capacity(LEN_PREFIX + size);
    buf.put_i32(i32::try_from(size)?);
    header.encode(&mut buf, header_version)?;
    body.encode(&mut buf, version)?;
    Ok(buf.freeze())
}

/// A readable name for an API key, used as the `api` metric label and in logs.
pub(crate) fn api_name(api_key: i16) -> &'static str {
    match ApiKey::try_from(api_key) {
        Ok(key) => api_key_name(key),
        Err(()) => "Unknown",
    }
}

fn api_key_name(key: ApiKey) -> &'static str {
    // Debug of a fieldless enum is its variant name; leak once per key via a static table.
    static NAMES: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        let mut v = vec!["Unknown"; 128];
        for k in ApiKey::iter() {
            let idx = k as i16 as usize;
            if idx < v.len() {
                v[idx] = Box::leak(format!("{k:?}").into_boxed_str());
            }
        }
        v
    });
    names.get(key as i16 as usize).copied().unwrap_or("Unknown")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{MetadataRequest, ProduceRequest};
    use proptest::prelude::*;

    fn frame_of(payload: &[u8]) -> Vec<u8> {
        let mut v = (payload.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn incomplete_frames_are_a_value_not_an_error() {
        assert_eq!(check_frame(&[], 100), Ok(None));
        assert_eq!(check_frame(&[0, 0, 0], 100), Ok(None));
        assert_eq!(check_frame(&[0, 0, 0, 5, 1, 2], 100), Ok(None));
        assert_eq!(missing_bytes(&[0, 0, 0, 5, 1, 2]), 3);
        assert_eq!(check_frame(&frame_of(b"hello"), 100), Ok(Some(9)));
        assert_eq!(check_frame(&frame_of(b""), 100), Ok(Some(4)));
    }

    #[test]
    fn oversized_and_negative_frames_are_errors() {
        assert_eq!(
            check_frame(&frame_of(&[0; 11]), 10),
            Err(FrameError::Oversized { size: 11, max: 10 })
        );
        assert_eq!(
            check_frame(&(-1i32).to_be_bytes(), 10),
            Err(FrameError::NegativeSize(-1))
        );
    }

    fn request_frame<T: Encodable>(key: ApiKey, version: i16, client: &str, body: &T) -> Bytes {
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_string(client.into())));
        encode_request(&header, body).unwrap()
    }

    #[test]
    fn parses_headers_of_flexible_and_legacy_versions() {
        for version in [1, 9, 12] {
            let f = request_frame(
                ApiKey::Metadata,
                version,
                "my-client",
                &MetadataRequest::default(),
            );
            let meta = parse_request(&f).unwrap();
            assert_eq!(meta.api, Some(ApiKey::Metadata));
            assert_eq!(meta.api_version, version);
            assert_eq!(meta.correlation_id, 42);
            assert_eq!(meta.client_id.as_deref(), Some("my-client"));
            assert!(meta.expects_response);
            let mut body = f.slice(meta.body_offset.unwrap()..);
            MetadataRequest::decode(&mut body, version).unwrap();
        }
    }

    #[test]
    fn produce_acks_zero_expects_no_response() {
        for version in [3, 8, 9, 11] {
            for (acks, txn) in [(0, None), (1, Some("txn-1")), (-1, None), (0, Some("t"))] {
                let body = ProduceRequest::default()
                    .with_acks(acks)
                    .with_transactional_id(txn.map(|t| StrBytes::from_string(t.into()).into()));
                let f = request_frame(ApiKey::Produce, version, "p", &body);
                let meta = parse_request(&f).unwrap();
                assert_eq!(meta.expects_response, acks != 0, "v{version} acks={acks}");
            }
        }
    }

    #[test]
    fn unknown_api_keys_are_forwarded_with_their_fixed_fields() {
        let mut payload = vec![];
        payload.extend_from_slice(&999i16.to_be_bytes());
        payload.extend_from_slice(&3i16.to_be_bytes());
        payload.extend_from_slice(&7i32.to_be_bytes());
        payload.extend_from_slice(&2i16.to_be_bytes());
        payload.extend_from_slice(b"id");
        let f = Bytes::from(frame_of(&payload));
        let meta = parse_request(&f).unwrap();
        assert_eq!(meta.api, None);
        assert_eq!(meta.correlation_id, 7);
        assert_eq!(meta.client_id.as_deref(), Some("id"));
        assert_eq!(api_name(meta.api_key), "Unknown");
        assert_eq!(api_name(1), "Fetch");
    }

    #[test]
    fn short_frames_are_rejected() {
        let f = Bytes::from(frame_of(&[0, 3, 0, 1]));
        assert!(matches!(parse_request(&f), Err(FrameError::TooShort(_))));
    }

    proptest! {
        // The frame decoder and header parser must never panic, whatever the bytes.
        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            if let Ok(Some(n)) = check_frame(&data, 1 << 20) {
                let _ = parse_request(&Bytes::copy_from_slice(&data[..n]));
            }
            let _ = parse_request(&Bytes::from(frame_of(&data)));
            let _ = response_correlation_id(&data);
        }

        #[test]
        fn check_frame_finds_exactly_the_frame(payload in proptest::collection::vec(any::<u8>(), 0..300), extra in proptest::collection::vec(any::<u8>(), 0..10)) {
            let mut buf = frame_of(&payload);
            let n = buf.len();
            buf.extend_from_slice(&extra);
            prop_assert_eq!(check_frame(&buf, 1 << 20), Ok(Some(n)));
            prop_assert_eq!(check_frame(&buf[..n - 1], 1 << 20), Ok(None));
        }
    }
}
