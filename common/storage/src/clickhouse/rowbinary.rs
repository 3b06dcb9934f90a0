//! `RowBinary` encoding of the rows [`write`](super::ClickHouseStorage) inserts.
//!
//! An INSERT body is encoded into one buffer and handed to the client in one piece. The
//! client's row-by-row `Insert` streams its body in 256 KiB chunks instead, and every
//! chunk is a hand-off from the writer task to the client's request task and on to the
//! connection task. On a collector busy with hundreds of agent sessions each hand-off
//! waits its turn on the runtime: a 50,000-row INSERT then spent up to 300 ms being
//! streamed, more than ClickHouse took to store it, while the server sat waiting for
//! data. One buffer is one hand-off. The rows are in memory already; the encoded copy
//! is about as large as they are, and lives until the INSERT returns.
//!
//! The encoding is positional, as the client's was with validation off (18.16 cannot
//! describe a table in `RowBinaryWithNamesAndTypes`): each struct lists its columns in
//! [`RowBinary::COLUMNS`], in the table's order, and writes them in that order. `Date`
//! is a little-endian `u16` of days, `String` a LEB128 length and the bytes, numbers
//! little-endian.

use super::{EventInsert, MarkInsert, SampleInsert, SeriesInsert};

/// A row that can be encoded as `RowBinary` for one table.
pub(super) trait RowBinary {
    /// The column list of the INSERT, in the order `encode` writes the values.
    const COLUMNS: &'static str;

    /// Bytes `encode` writes (exactly), for sizing the buffer.
    fn encoded_len(&self) -> usize;

    /// Appends the row to `out`.
    fn encode(&self, out: &mut Vec<u8>);
}

/// Encodes `rows` into one INSERT body.
pub(super) fn encode_all<R: RowBinary>(rows: &[R]) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows.iter().map(R::encoded_len).sum());
    for row in rows {
        row.encode(&mut out);
    }
    out
}

fn string_len(s: &str) -> usize {
    varint_len(s.len() as u64) + s.len()
}

fn varint_len(mut v: u64) -> usize {
    let mut n = 1;
    while v >= 0x80 {
        v >>= 7;
        n += 1;
    }
    n
}

fn put_string(out: &mut Vec<u8>, s: &str) {
    let mut len = s.len() as u64;
    while len >= 0x80 {
        out.push((len as u8 & 0x7f) | 0x80);
        len >>= 7;
    }
    out.push(len as u8);
    out.extend_from_slice(s.as_bytes());
}

impl RowBinary for SampleInsert<'_> {
    const COLUMNS: &'static str = "`date`,`cluster`,`member`,`name`,`labels`,`ts_ms`,`value`";

    fn encoded_len(&self) -> usize {
        2 + string_len(self.cluster)
            + string_len(self.member)
            + string_len(self.name)
            + string_len(self.labels)
            + 8
            + 8
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.date.to_le_bytes());
        put_string(out, self.cluster);
        put_string(out, self.member);
        put_string(out, self.name);
        put_string(out, self.labels);
        out.extend_from_slice(&self.ts_ms.to_le_bytes());
        out.extend_from_slice(&self.value.to_le_bytes());
    }
}

impl RowBinary for SeriesInsert<'_> {
    const COLUMNS: &'static str = "`cluster`,`member`,`name`,`labels`,`metric_type`,`seen_ms`";

    fn encoded_len(&self) -> usize {
        string_len(self.cluster)
            + string_len(self.member)
            + string_len(self.name)
            + string_len(self.labels)
            + string_len(self.metric_type)
            + 8
    }

    fn encode(&self, out: &mut Vec<u8>) {
        put_string(out, self.cluster);
        put_string(out, self.member);
        put_string(out, self.name);
        put_string(out, self.labels);
        put_string(out, self.metric_type);
        out.extend_from_slice(&self.seen_ms.to_le_bytes());
    }
}

impl RowBinary for EventInsert<'_> {
    const COLUMNS: &'static str = "`date`,`cluster`,`member`,`ts_ms`,`kind`,`message`";

    fn encoded_len(&self) -> usize {
        2 + string_len(self.cluster)
            + string_len(self.member)
            + 8
            + string_len(self.kind)
            + string_len(self.message)
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.date.to_le_bytes());
        put_string(out, self.cluster);
        put_string(out, self.member);
        out.extend_from_slice(&self.ts_ms.to_le_bytes());
        put_string(out, self.kind);
        put_string(out, self.message);
    }
}

impl RowBinary for MarkInsert<'_> {
    const COLUMNS: &'static str = "`date`,`agent_id`,`sequence`,`samples`,`stored_ms`";

    fn encoded_len(&self) -> usize {
        2 + string_len(self.agent_id) + 8 + 8 + 8
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.date.to_le_bytes());
        put_string(out, self.agent_id);
        out.extend_from_slice(&self.sequence.to_le_bytes());
        out.extend_from_slice(&self.samples.to_le_bytes());
        out.extend_from_slice(&self.stored_ms.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_leb128_prefixed() {
        for (len, prefix) in [
            (0usize, vec![0u8]),
            (1, vec![1]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (300, vec![0xac, 0x02]),
            (16_384, vec![0x80, 0x80, 0x01]),
        ] {
            let s = "x".repeat(len);
            let mut out = Vec::new();
            put_string(&mut out, &s);
            assert_eq!(&out[..prefix.len()], prefix.as_slice(), "length {len}");
            assert_eq!(out.len(), prefix.len() + len);
            assert_eq!(string_len(&s), out.len());
        }
    }

    #[test]
    fn a_sample_row_is_encoded_in_column_order() {
        let labels = "l".repeat(130);
        let row = SampleInsert {
            date: 0x0102,
            cluster: "c",
            member: "m1",
            name: "up",
            labels: &labels,
            ts_ms: -2,
            value: 0.5,
        };
        let out = encode_all(std::slice::from_ref(&row));
        let mut expected = vec![
            0x02, 0x01, 1, b'c', 2, b'm', b'1', 2, b'u', b'p', 0x82, 0x01,
        ];
        expected.extend_from_slice(labels.as_bytes());
        expected.extend_from_slice(&(-2i64).to_le_bytes());
        expected.extend_from_slice(&0.5f64.to_le_bytes());
        assert_eq!(out, expected);
        assert_eq!(row.encoded_len(), out.len());
    }

    #[test]
    fn every_row_kind_reports_its_exact_length() {
        let series = SeriesInsert {
            cluster: "c",
            member: "m",
            name: "n",
            labels: "a=\"b\"",
            metric_type: "counter",
            seen_ms: 7,
        };
        let event = EventInsert {
            date: 1,
            cluster: "c",
            member: "",
            ts_ms: 9,
            kind: "leader_changed",
            message: "leader 1 -> 2 (term 3)",
        };
        let mark = MarkInsert {
            date: 1,
            agent_id: "agent",
            sequence: 4,
            samples: 5,
            stored_ms: 6,
        };
        assert_eq!(
            encode_all(std::slice::from_ref(&series)).len(),
            series.encoded_len()
        );
        assert_eq!(
            encode_all(std::slice::from_ref(&event)).len(),
            event.encoded_len()
        );
        let out = encode_all(std::slice::from_ref(&mark));
        assert_eq!(out.len(), mark.encoded_len());
        assert_eq!(&out[out.len() - 24..out.len() - 16], &4u64.to_le_bytes());
    }
}
