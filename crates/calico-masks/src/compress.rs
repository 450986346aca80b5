//! The compressed COCO RLE string (`rleToString` / `rleFrString`).
//!
//! Each count is stored as a difference to the count two places earlier
//! (from the fourth count on), written little-endian in 5-bit groups, one
//! ASCII character (`'0'` + value) per group, bit `0x20` meaning "more
//! groups follow" and bit `0x10` of the last group the sign.

use crate::error::{MaskError, Result};

/// Longest group sequence for one count: 7 groups hold 35 bits, enough for
/// any difference of two `u32` values.
const MAX_GROUPS: usize = 7;

/// Encodes counts as pycocotools does.
pub fn counts_to_string(counts: &[u32]) -> String {
    let mut out = Vec::with_capacity(counts.len() * 2);
    for (i, &c) in counts.iter().enumerate() {
        let mut x = c as i64;
        if i > 2 {
            x -= counts[i - 2] as i64;
        }
        loop {
            let mut group = (x & 0x1f) as u8;
            x >>= 5;
            let more = if group & 0x10 != 0 { x != -1 } else { x != 0 };
            if more {
                group |= 0x20;
            }
            out.push(group + 48);
            if !more {
                break;
            }
        }
    }
    // Every byte is in 48..=111, so this is ASCII.
    String::from_utf8(out).unwrap_or_default()
}

/// Decodes a compressed counts string.
///
/// Accepts exactly the strings [`counts_to_string`] can produce: characters
/// `'0'..='o'`, at most seven groups per value, no dangling continuation.
/// pycocotools silently reads past the end or overflows on such input; we
/// name the offending byte instead.
pub fn counts_from_string(s: &[u8]) -> Result<Vec<u32>> {
    let mut counts: Vec<u32> = Vec::with_capacity(s.len() / 2 + 1);
    let mut p = 0usize;
    while p < s.len() {
        let value_start = p;
        let mut x = 0i64;
        let mut k = 0usize;
        loop {
            let Some(&byte) = s.get(p) else {
                return Err(bad(
                    value_start,
                    "string ends inside a value (last character has the continuation bit)",
                ));
            };
            if !(48..=111).contains(&byte) {
                return Err(bad(
                    p,
                    &format!("character {:?} is outside '0'..='o'", byte as char),
                ));
            }
            if k == MAX_GROUPS {
                return Err(bad(value_start, "value longer than 7 characters"));
            }
            let c = (byte - 48) as i64;
            x |= (c & 0x1f) << (5 * k);
            p += 1;
            k += 1;
            if c & 0x20 == 0 {
                if c & 0x10 != 0 {
                    x |= -1i64 << (5 * k);
                }
                break;
            }
        }
        let m = counts.len();
        if m > 2 {
            x += counts[m - 2] as i64;
        }
        counts.push(x as u32);
    }
    Ok(counts)
}

fn bad(offset: usize, reason: &str) -> MaskError {
    MaskError::BadRleString {
        offset,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_strings() {
        // Values checked against pycocotools 2.0.11.
        assert_eq!(counts_to_string(&[1, 2, 1]), "121");
        assert_eq!(counts_to_string(&[0]), "0");
        assert_eq!(counts_to_string(&[]), "");
        assert_eq!(counts_from_string(b"e0191O1`1").unwrap().len(), 7);
    }

    #[test]
    fn round_trip_extremes() {
        let counts = vec![
            0,
            u32::MAX,
            0,
            u32::MAX,
            1,
            7,
            123_456_789,
            0,
            31,
            32,
            16,
            15,
        ];
        let s = counts_to_string(&counts);
        assert_eq!(counts_from_string(s.as_bytes()).unwrap(), counts);
    }

    #[test]
    fn malformed_strings_are_errors() {
        assert!(counts_from_string(b"1P").is_err()); // 'P' = 48+32: dangling continuation
        assert!(counts_from_string(b"1 2").is_err()); // space
        assert!(counts_from_string("1é".as_bytes()).is_err());
        assert!(counts_from_string(b"PPPPPPP0").is_err()); // 8 groups
        let err = counts_from_string(b"12z").unwrap_err().to_string();
        assert!(err.contains("byte 2"), "{err}");
    }
}
