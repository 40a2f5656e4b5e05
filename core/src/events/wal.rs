//! The write-ahead log's frames and segment files.
//!
//! A segment is `wal-<seq>.log` (12 digits, from 1) holding frames back to back: the
//! payload's length and CRC-32 (little-endian `u32`s), then the payload: kind (`u8`),
//! version (`u64`), time in ms (`i64`), value (`f64`), then model, key and metric, each a
//! `u32` length and UTF-8 bytes. A frame that is cut short or fails its CRC ends the
//! segment: a crash can only cut its last, unacknowledged write.

use std::path::{Path, PathBuf};

use super::{Event, Kind};

/// The bytes of a frame's header.
const HEADER: usize = 8;

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
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    buf.push(e.kind as u8);
    buf.extend_from_slice(&e.version.to_le_bytes());
    buf.extend_from_slice(&e.time_ms.to_le_bytes());
    buf.extend_from_slice(&e.value.to_le_bytes());
    for s in [&e.model, &e.key, &e.metric] {
        buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
        buf.extend_from_slice(s.as_bytes());
    }
    let payload = &buf[start + HEADER..];
    let len = (payload.len() as u32).to_le_bytes();
    let crc = crc32fast::hash(payload).to_le_bytes();
    buf[start..start + 4].copy_from_slice(&len);
    buf[start + 4..start + HEADER].copy_from_slice(&crc);
}

/// The events of a segment's bytes, and how many bytes of whole, intact frames they
/// came from (the rest is a torn or corrupt tail).
pub(super) fn decode(bytes: &[u8]) -> (Vec<Event>, usize) {
    let mut events = Vec::new();
    let mut at = 0;
    while let Some((e, next)) = frame(bytes, at) {
        events.push(e);
        at = next;
    }
    (events, at)
}

/// The frame at `at` and where the next begins; `None` at the end or at a bad frame.
fn frame(bytes: &[u8], at: usize) -> Option<(Event, usize)> {
    let header = bytes.get(at..at + HEADER)?;
    let len = u32::from_le_bytes(header[..4].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(header[4..].try_into().ok()?);
    let payload = bytes.get(at + HEADER..at + HEADER + len)?;
    if crc32fast::hash(payload) != crc {
        return None;
    }
    let mut r = Reader(payload);
    let kind = match r.take(1)?[0] {
        0 => Kind::Exposure,
        1 => Kind::Outcome,
        _ => return None,
    };
    let version = u64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let time_ms = i64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let value = f64::from_le_bytes(r.take(8)?.try_into().ok()?);
    let e = Event {
        kind,
        version,
        time_ms,
        value,
        model: r.string()?,
        key: r.string()?,
        metric: r.string()?,
    };
    Some((e, at + HEADER + len))
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn string(&mut self) -> Option<String> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        String::from_utf8(self.take(n)?.to_vec()).ok()
    }
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
