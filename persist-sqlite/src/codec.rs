//! How values are stored in SQLite's columns: unsigned numbers, the checksums, and the row
//! counts a marks row keeps.

use std::collections::BTreeMap;

/// Stores a `u64` in an `INTEGER` column (a signed 64-bit number) so that SQLite orders the
/// stored numbers as the unsigned ones: the top bit is flipped, so 0 becomes `i64::MIN`,
/// 2^63 becomes 0 and `u64::MAX` becomes `i64::MAX`. Ids, epochs and floors all go through
/// it, so ranges (`BETWEEN`) and `ORDER BY` work for ids of 2^63 and more.
pub(crate) fn to_sql(x: u64) -> i64 {
    (x ^ (1 << 63)) as i64
}

/// The inverse of [`to_sql`].
pub(crate) fn from_sql(v: i64) -> u64 {
    (v as u64) ^ (1 << 63)
}

/// The checksum of one row, over everything that identifies it and its bytes.
///
/// SQLite keeps no page checksums, and a record envelope's own checksum covers its bytes but
/// not the key it is stored under: a flipped bit in a key column would otherwise hand one
/// actor's row to another, or move it out of sight.
pub(crate) fn row_sum(ns: &str, key: &str, space: u8, id: u64, bytes: &[u8]) -> i64 {
    let mut crc = crc32c::crc32c(b"R");
    crc = text(crc, ns);
    crc = text(crc, key);
    crc = crc32c::crc32c_append(crc, &[space]);
    crc = crc32c::crc32c_append(crc, &id.to_be_bytes());
    i64::from(crc32c::crc32c_append(crc, bytes))
}

/// The checksum of one marks row.
pub(crate) fn marks_sum(ns: &str, key: &str, epoch: u64, floor: u64, counts: &[u8]) -> i64 {
    let mut crc = crc32c::crc32c(b"M");
    crc = text(crc, ns);
    crc = text(crc, key);
    crc = crc32c::crc32c_append(crc, &epoch.to_be_bytes());
    crc = crc32c::crc32c_append(crc, &floor.to_be_bytes());
    i64::from(crc32c::crc32c_append(crc, counts))
}

/// Length-prefixed, so that ("ab", "c") and ("a", "bc") sum differently.
fn text(crc: u32, s: &str) -> u32 {
    let crc = crc32c::crc32c_append(crc, &(s.len() as u64).to_be_bytes());
    crc32c::crc32c_append(crc, s.as_bytes())
}

/// How many rows a key holds in each space that holds any, by space.
pub(crate) type Counts = BTreeMap<u8, u64>;

/// One entry of the `counts` column: the space, then the count (big-endian).
const ENTRY: usize = 9;

/// The `counts` column: an entry per space with rows, by ascending space.
pub(crate) fn encode_counts(counts: &Counts) -> Vec<u8> {
    let mut out = Vec::with_capacity(counts.len() * ENTRY);
    for (space, n) in counts {
        out.push(*space);
        out.extend_from_slice(&n.to_be_bytes());
    }
    out
}

/// Reads the `counts` column; `None` if it is not one [`encode_counts`] writes.
pub(crate) fn decode_counts(bytes: &[u8]) -> Option<Counts> {
    if !bytes.len().is_multiple_of(ENTRY) {
        return None;
    }
    let mut counts = Counts::new();
    let mut last = None;
    for entry in bytes.chunks_exact(ENTRY) {
        let space = entry[0];
        let n = u64::from_be_bytes(entry[1..].try_into().ok()?);
        if n == 0 || last.is_some_and(|l| l >= space) {
            return None;
        }
        last = Some(space);
        counts.insert(space, n);
    }
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mapping_keeps_the_unsigned_order() {
        let xs = [0, 1, 255, (1 << 63) - 1, 1 << 63, (1 << 63) + 1, u64::MAX];
        for w in xs.windows(2) {
            assert!(to_sql(w[0]) < to_sql(w[1]), "{} < {}", w[0], w[1]);
        }
        for x in xs {
            assert_eq!(from_sql(to_sql(x)), x);
        }
        assert_eq!(to_sql(0), i64::MIN);
        assert_eq!(to_sql(u64::MAX), i64::MAX);
    }

    #[test]
    fn counts_round_trip_and_malformed_ones_are_refused() {
        let counts = Counts::from([(0, 1), (1, 300), (255, u64::MAX)]);
        assert_eq!(decode_counts(&encode_counts(&counts)), Some(counts));
        assert_eq!(decode_counts(&[]), Some(Counts::new()));
        assert_eq!(decode_counts(&[0; 8]), None, "a short entry");
        assert_eq!(decode_counts(&[0; 9]), None, "a zero count");
        let mut twice = encode_counts(&Counts::from([(3, 1)]));
        twice.extend(twice.clone());
        assert_eq!(decode_counts(&twice), None, "a space twice");
    }

    #[test]
    fn a_sum_covers_every_column() {
        let base = row_sum("ns", "key", 1, 7, b"bytes");
        assert_ne!(base, row_sum("nt", "key", 1, 7, b"bytes"));
        assert_ne!(base, row_sum("ns", "kez", 1, 7, b"bytes"));
        assert_ne!(base, row_sum("nsk", "ey", 1, 7, b"bytes"));
        assert_ne!(base, row_sum("ns", "key", 2, 7, b"bytes"));
        assert_ne!(base, row_sum("ns", "key", 1, 6, b"bytes"));
        assert_ne!(base, row_sum("ns", "key", 1, 7, b"bytez"));
        let marks = marks_sum("ns", "key", 1, 2, &[]);
        assert_ne!(marks, marks_sum("ns", "key", 2, 1, &[]));
        assert_ne!(marks, marks_sum("ns", "key", 1, 2, &[0]));
    }
}
