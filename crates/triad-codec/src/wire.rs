//! The Confluent wire format: magic byte 0, a big-endian 4-byte schema id, the Avro body.

use crate::{Error, Result};

/// Length of the Confluent prefix (magic byte + schema id).
pub const PREFIX_LEN: usize = 5;

/// Splits a framed record into its schema id and Avro body, checking the length before any
/// slicing so a short or foreign record is an error, never a panic.
pub fn split(bytes: &[u8]) -> Result<(u32, &[u8])> {
    let Some((prefix, body)) = bytes.split_first_chunk::<PREFIX_LEN>() else {
        return Err(Error::Truncated { len: bytes.len() });
    };
    let [magic, id @ ..] = *prefix;
    if magic != 0 {
        return Err(Error::BadMagic { found: magic });
    }
    Ok((u32::from_be_bytes(id), body))
}

/// Frames an Avro body with the given schema id.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(PREFIX_LEN + body.len());
    out.push(0);
    out.extend_from_slice(&schema_id.to_be_bytes());
    out.extend_from_slice(body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn short_records_are_errors() {
        for len in 0..PREFIX_LEN {
            let bytes = vec![0u8; len];
            assert!(matches!(split(&bytes), Err(Error::Truncated { len: l }) if l == len));
        }
    }

    #[test]
    fn foreign_magic_is_an_error() {
        assert!(matches!(
            split(&[1, 0, 0, 0, 7, 9]),
            Err(Error::BadMagic { found: 1 })
        ));
    }

    proptest! {
        #[test]
        fn frame_then_split_round_trips(id: u32, body in proptest::collection::vec(any::<u8>(), 0..64)) {
            let framed = frame(id, &body);
            let (got_id, got_body) = split(&framed).unwrap();
            prop_assert_eq!(got_id, id);
            prop_assert_eq!(got_body, &body[..]);
        }

        #[test]
        fn split_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..16)) {
            let _ = split(&bytes);
        }
    }
}
