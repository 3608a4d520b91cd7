//! The on-disk record: a frame of length and CRC32C around the record's fields.
//!
//! ```text
//! frame  = body_len u32 | crc32c(body) u32 | body
//! body   = offset u64 | publish_time_ms u64
//!        | key_len u32 (u32::MAX: no key) | key
//!        | attribute_count u32 | (name_len u32 | name | value_len u32 | value)*
//!        | value_len u32 | value
//!        [ | idempotency_key_len u32 | idempotency_key ]
//! ```
//!
//! Integers are little-endian. The offset is inside the CRC, so a record that lands at the
//! wrong place (a misdirected write, a stale block) is caught like a flipped bit.
//!
//! The idempotency key is a trailer after the value, present only when the record has one.
//! Frames written before keys existed end at the value and still read (with no key), and a
//! record without a key is written byte for byte as before. A broker of that older version
//! would refuse a frame with the trailer as damage, so going back to it after keys were
//! used is not supported.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::storage::Record;

/// Length and CRC before the body.
pub const FRAME_HEADER_BYTES: usize = 8;

/// The smallest body: offset, time, no key, no attributes, an empty value.
const BODY_BYTES_MIN: usize = 8 + 8 + 4 + 4 + 4;

/// The largest body a frame may claim. Anything larger is damage, not data: the broker
/// refuses messages over 3 MiB and attributes are bounded.
pub const BODY_BYTES_MAX: usize = 16 * 1024 * 1024;

const NO_KEY: u32 = u32::MAX;

/// Appends one framed record to `out`; returns the frame's length.
pub fn encode(offset: u64, record: &Record, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    out.extend_from_slice(&offset.to_le_bytes());
    out.extend_from_slice(&record.publish_time_ms.to_le_bytes());
    match &record.key {
        Some(key) => put_bytes(out, key.as_bytes()),
        None => out.extend_from_slice(&NO_KEY.to_le_bytes()),
    }
    out.extend_from_slice(&(record.attributes.len() as u32).to_le_bytes());
    for (name, value) in &record.attributes {
        put_bytes(out, name.as_bytes());
        put_bytes(out, value.as_bytes());
    }
    put_bytes(out, &record.value);
    if let Some(key) = &record.idempotency_key {
        put_bytes(out, key.as_bytes());
    }
    let body = &out[start + FRAME_HEADER_BYTES..];
    assert!(body.len() <= BODY_BYTES_MAX, "a record of {} bytes passed the broker's size checks", body.len());
    let crc = crc32c::crc32c(body);
    let len = body.len() as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    out.len() - start
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// What the bytes at a position hold.
#[derive(Debug)]
pub enum Decoded {
    /// A whole, intact record whose frame is `frame_len` bytes.
    Record { offset: u64, record: Record, frame_len: usize },
    /// The buffer ends inside the frame; `needed` bytes from the frame's start would hold it.
    Short { needed: usize },
    /// Not a record: a torn write, zeroes, or corruption.
    Bad(String),
}

/// Decodes the frame at the start of `buf`. The value shares `buf`'s memory.
pub fn decode(buf: &Bytes) -> Decoded {
    if buf.len() < FRAME_HEADER_BYTES {
        return Decoded::Short { needed: FRAME_HEADER_BYTES };
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if !(BODY_BYTES_MIN..=BODY_BYTES_MAX).contains(&len) {
        return Decoded::Bad(format!("frame length {len} is outside {BODY_BYTES_MIN}..={BODY_BYTES_MAX}"));
    }
    let frame_len = FRAME_HEADER_BYTES + len;
    if buf.len() < frame_len {
        return Decoded::Short { needed: frame_len };
    }
    let body = buf.slice(FRAME_HEADER_BYTES..frame_len);
    let actual = crc32c::crc32c(&body);
    if actual != crc {
        return Decoded::Bad(format!("CRC32C mismatch: stored {crc:#010x}, computed {actual:#010x}"));
    }
    match parse_body(&body) {
        Ok((offset, record)) => Decoded::Record { offset, record, frame_len },
        Err(reason) => Decoded::Bad(reason),
    }
}

/// Reads the fields of a body whose CRC matched.
fn parse_body(body: &Bytes) -> Result<(u64, Record), String> {
    let mut at = 0usize;
    let offset = take_u64(body, &mut at)?;
    let publish_time_ms = take_u64(body, &mut at)?;
    let key_len = take_u32(body, &mut at)?;
    let key = if key_len == NO_KEY { None } else { Some(take_string(body, &mut at, key_len)?) };
    let count = take_u32(body, &mut at)?;
    let mut attributes = BTreeMap::new();
    for _ in 0..count {
        let name_len = take_u32(body, &mut at)?;
        let name = take_string(body, &mut at, name_len)?;
        let value_len = take_u32(body, &mut at)?;
        let value = take_string(body, &mut at, value_len)?;
        attributes.insert(name, value);
    }
    let value_len = take_u32(body, &mut at)? as usize;
    let value = take_slice(body, &mut at, value_len)?;
    let idempotency_key = if at == body.len() {
        None
    } else {
        let key_len = take_u32(body, &mut at)?;
        Some(take_string(body, &mut at, key_len)?)
    };
    if at != body.len() {
        return Err(format!("{} bytes after the idempotency key", body.len() - at));
    }
    Ok((offset, Record { key, value, attributes, publish_time_ms, idempotency_key }))
}

fn take_slice(body: &Bytes, at: &mut usize, len: usize) -> Result<Bytes, String> {
    let end = at
        .checked_add(len)
        .filter(|end| *end <= body.len())
        .ok_or_else(|| format!("a field of {len} bytes at body byte {at} runs past the body's {} bytes", body.len()))?;
    let slice = body.slice(*at..end);
    *at = end;
    Ok(slice)
}

fn take_u32(body: &Bytes, at: &mut usize) -> Result<u32, String> {
    let bytes = take_slice(body, at, 4)?;
    Ok(u32::from_le_bytes(bytes[..].try_into().expect("4 bytes")))
}

fn take_u64(body: &Bytes, at: &mut usize) -> Result<u64, String> {
    let bytes = take_slice(body, at, 8)?;
    Ok(u64::from_le_bytes(bytes[..].try_into().expect("8 bytes")))
}

fn take_string(body: &Bytes, at: &mut usize, len: u32) -> Result<String, String> {
    let bytes = take_slice(body, at, len as usize)?;
    String::from_utf8(bytes.to_vec()).map_err(|_| "a key or attribute is not UTF-8".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        let attributes = BTreeMap::from([("a".to_string(), "1".to_string()), ("bb".to_string(), String::new())]);
        Record {
            key: Some("k".into()),
            value: Bytes::from_static(b"hello"),
            attributes,
            publish_time_ms: 42,
            idempotency_key: Some("order-17".into()),
        }
    }

    #[test]
    fn a_record_round_trips_with_its_offset() {
        let mut buf = Vec::new();
        let len = encode(7, &sample(), &mut buf);
        assert_eq!(len, buf.len());
        match decode(&Bytes::from(buf)) {
            Decoded::Record { offset, record, frame_len } => {
                assert_eq!((offset, frame_len), (7, len));
                assert_eq!(record, sample());
            }
            other => panic!("expected a record, got {other:?}"),
        }
        let keyless = Record {
            key: None,
            value: Bytes::new(),
            attributes: BTreeMap::new(),
            publish_time_ms: 0,
            idempotency_key: None,
        };
        let mut buf = Vec::new();
        encode(0, &keyless, &mut buf);
        assert!(matches!(decode(&Bytes::from(buf)), Decoded::Record { record, .. } if record == keyless));
    }

    #[test]
    fn every_flipped_byte_and_every_cut_is_caught() {
        let mut buf = Vec::new();
        encode(3, &sample(), &mut buf);
        for i in 0..buf.len() {
            let mut bad = buf.clone();
            bad[i] ^= 0x40;
            assert!(!matches!(decode(&Bytes::from(bad)), Decoded::Record { .. }), "a flip at byte {i} went unnoticed");
        }
        for cut in 0..buf.len() {
            assert!(matches!(decode(&Bytes::copy_from_slice(&buf[..cut])), Decoded::Short { .. }), "cut at {cut}");
        }
    }

    /// A frame as the format was before idempotency keys, built by hand so that a change to
    /// `encode` cannot hide a change in what old segments hold.
    #[test]
    fn a_frame_written_before_idempotency_keys_still_reads() {
        let mut body = Vec::new();
        body.extend_from_slice(&9u64.to_le_bytes());
        body.extend_from_slice(&1234u64.to_le_bytes());
        body.extend_from_slice(&[1, 0, 0, 0, b'k']);
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(&[1, 0, 0, 0, b'a', 1, 0, 0, 0, b'1']);
        body.extend_from_slice(&[2, 0, 0, 0, b'h', b'i']);
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&crc32c::crc32c(&body).to_le_bytes());
        frame.extend_from_slice(&body);
        let expected = Record {
            key: Some("k".into()),
            value: Bytes::from_static(b"hi"),
            attributes: BTreeMap::from([("a".to_string(), "1".to_string())]),
            publish_time_ms: 1234,
            idempotency_key: None,
        };
        match decode(&Bytes::from(frame.clone())) {
            Decoded::Record { offset: 9, record, frame_len } => {
                assert_eq!((record, frame_len), (expected.clone(), frame.len()));
            }
            other => panic!("expected the old record, got {other:?}"),
        }
        // And a record without a key is still written in exactly that format.
        let mut written = Vec::new();
        encode(9, &expected, &mut written);
        assert_eq!(written, frame);
    }

    #[test]
    fn zeroes_are_not_a_record() {
        assert!(matches!(decode(&Bytes::from(vec![0u8; 64])), Decoded::Bad(_)));
    }
}
