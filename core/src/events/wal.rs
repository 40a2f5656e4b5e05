//! The write-ahead log's segment files: `wal-<seq>.log` (12 digits, from 1) holding
//! [`crate::frame`]s back to back, each an event: kind (`u8`), version (`u64`), time in ms
//! (`i64`), value (`f64`), then model, key and metric (each a `u32` length and UTF-8).

use std::path::{Path, PathBuf};

use super::{Event, Kind};
use crate::frame::{self, Reader};

/// The file of segment `seq` in `dir`.
pub(super) fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:012}.log"))
}

/// The segment number of a file name, when it is a segment's.
pub(super) fn segment_seq(name: &str) -> Option<u64> {
    name.strip_prefix("wal-")?
        .strip_suffix(".log")?
        .parse()
        .ok()
}

/// Append `e`'s frame to `buf`.
pub(super) fn encode(buf: &mut Vec<u8>, e: &Event) {
    frame::encode(buf, |b| {
        b.push(e.kind as u8);
        b.extend_from_slice(&e.version.to_le_bytes());
        b.extend_from_slice(&e.time_ms.to_le_bytes());
        b.extend_from_slice(&e.value.to_le_bytes());
        for s in [&e.model, &e.key, &e.metric] {
            frame::put_bytes(b, s.as_bytes());
        }
    });
}

/// The events of a segment's bytes, and how many bytes of whole, intact frames they
/// came from (the rest is a torn or corrupt tail).
pub(super) fn decode(bytes: &[u8]) -> (Vec<Event>, usize) {
    frame::decode(bytes, |payload| {
        let mut r = Reader(payload);
        let kind = match r.take(1)?[0] {
            0 => Kind::Exposure,
            1 => Kind::Outcome,
            _ => return None,
        };
        Some(Event {
            kind,
            version: r.u64()?,
            time_ms: r.u64()? as i64,
            value: f64::from_bits(r.u64()?),
            model: r.string()?,
            key: r.string()?,
            metric: r.string()?,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Event> {
        vec![
            Event::exposure("offer", 2, "customer-1", 1_700_000_000_000),
            Event::outcome("offer", 2, "customer-1", "revenue", 12.5, 1_700_000_000_001),
            Event::outcome("offer", 3, "", "conversion", 1.0, -5),
        ]
    }

    #[test]
    fn frames_round_trip() {
        let mut buf = Vec::new();
        for e in &sample() {
            encode(&mut buf, e);
        }
        assert_eq!(decode(&buf), (sample(), buf.len()));
    }

    #[test]
    fn a_torn_or_corrupt_tail_ends_the_segment_at_the_last_whole_frame() {
        let mut buf = Vec::new();
        for e in &sample() {
            encode(&mut buf, e);
        }
        let mut first_two = Vec::new();
        for e in &sample()[..2] {
            encode(&mut first_two, e);
        }
        for cut in first_two.len()..buf.len() {
            assert_eq!(
                decode(&buf[..cut]),
                (sample()[..2].to_vec(), first_two.len())
            );
        }
        let mut flipped = buf.clone();
        *flipped.last_mut().unwrap() ^= 1;
        assert_eq!(decode(&flipped).1, first_two.len());
        // A flipped byte in the first frame leaves nothing.
        let mut early = buf;
        early[12] ^= 0x40;
        assert_eq!(decode(&early), (Vec::new(), 0));
    }

    #[test]
    fn segment_names_sort_and_parse() {
        let p = segment_path(Path::new("/x"), 42);
        assert_eq!(p, Path::new("/x/wal-000000000042.log"));
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(segment_seq(name), Some(42));
        assert_eq!(segment_seq("checkpoint.json"), None);
    }
}
