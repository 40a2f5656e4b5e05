//! Length- and CRC-framed records, the format of the event log's segments and of the
//! embedded coordinator's journal: the payload's length and CRC-32 (little-endian
//! `u32`s), then the payload. A frame cut short or failing its CRC ends a file: a crash
//! can only cut its last, unacknowledged write.

/// Bytes before a payload.
const HEADER: usize = 8;

/// Append one frame to `buf`, its payload written by `payload`.
pub fn encode(buf: &mut Vec<u8>, payload: impl FnOnce(&mut Vec<u8>)) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER]);
    payload(buf);
    let len = (buf.len() - start - HEADER) as u32;
    let crc = crc32fast::hash(&buf[start + HEADER..]);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + HEADER].copy_from_slice(&crc.to_le_bytes());
}

/// The records of `bytes`' whole, intact frames (each payload read by `record`; `None`
/// ends the file like a bad CRC), and how many bytes they took.
pub fn decode<T>(bytes: &[u8], mut record: impl FnMut(&[u8]) -> Option<T>) -> (Vec<T>, usize) {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(header) = bytes.get(at..at + HEADER) {
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(payload) = bytes.get(at + HEADER..at + HEADER + len) else {
            break;
        };
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(r) = record(payload) else {
            break;
        };
        out.push(r);
        at += HEADER + len;
    }
    (out, at)
}

/// Reads a payload's fields in order.
pub struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    /// The next 8 bytes as a little-endian `u64`.
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }

    /// Bytes prefixed by their `u32` length.
    pub fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = u32::from_le_bytes(self.take(4)?.try_into().ok()?) as usize;
        self.take(n)
    }

    /// UTF-8 text prefixed by its `u32` length.
    pub fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }
}

/// Append `part` prefixed by its `u32` length.
pub fn put_bytes(buf: &mut Vec<u8>, part: &[u8]) {
    buf.extend_from_slice(&(part.len() as u32).to_le_bytes());
    buf.extend_from_slice(part);
}

/// Bytes before a whole file's payload: its kind (8 bytes), length (`u64`), CRC-32.
const WHOLE_HEADER: usize = 8 + 8 + 4;

/// A file written whole: `magic` (8 bytes naming what it holds), then the payload's length
/// (`u64`) and CRC-32 (`u32`), little-endian, then the payload. [`open_whole`] tells it
/// from a file cut short or changed since.
pub fn seal_whole(magic: &[u8; 8], payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(WHOLE_HEADER + payload.len());
    out.extend_from_slice(magic);
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// What [`open_whole`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Whole<'a> {
    /// The payload, its length and CRC as written.
    Intact(&'a [u8]),
    /// No magic: a file written before such files were sealed, taken as it is.
    Unsealed(&'a [u8]),
    /// Cut short, lengthened or changed since it was written: what is wrong.
    Damaged(String),
}

/// Read a file written by [`seal_whole`] with `magic`.
pub fn open_whole<'a>(magic: &[u8; 8], bytes: &'a [u8]) -> Whole<'a> {
    if !bytes.starts_with(magic) {
        return Whole::Unsealed(bytes);
    }
    let Some(header) = bytes.get(..WHOLE_HEADER) else {
        return Whole::Damaged(format!(
            "cut short: {} bytes, shorter than its {WHOLE_HEADER}-byte header",
            bytes.len()
        ));
    };
    let len = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let crc = u32::from_le_bytes(header[16..].try_into().expect("4 bytes"));
    let payload = &bytes[WHOLE_HEADER..];
    if payload.len() as u64 != len {
        return Whole::Damaged(format!(
            "{} bytes of payload where its header says {len}",
            payload.len()
        ));
    }
    let actual = crc32fast::hash(payload);
    if actual != crc {
        return Whole::Damaged(format!(
            "its bytes have changed since they were written (CRC-32 {actual:08x}, written {crc:08x})"
        ));
    }
    Whole::Intact(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAGIC: &[u8; 8] = b"TESTFILE";

    #[test]
    fn a_whole_file_reads_back_and_any_change_to_it_is_told() {
        let payload: Vec<u8> = (0..1000u32).map(|i| (i * 7 % 251) as u8).collect();
        let sealed = seal_whole(MAGIC, &payload);
        assert_eq!(open_whole(MAGIC, &sealed), Whole::Intact(&payload[..]));
        // Every single flipped bit after the magic, and every cut, is caught.
        for at in 8..sealed.len() {
            let mut bad = sealed.clone();
            bad[at] ^= 0x10;
            assert!(
                matches!(open_whole(MAGIC, &bad), Whole::Damaged(_)),
                "a bit flipped at byte {at} went unseen"
            );
        }
        for cut in [8, 19, 20, sealed.len() - 1] {
            assert!(matches!(
                open_whole(MAGIC, &sealed[..cut]),
                Whole::Damaged(_)
            ));
        }
        let mut longer = sealed.clone();
        longer.push(0);
        assert!(
            matches!(open_whole(MAGIC, &longer), Whole::Damaged(why) if why.contains("1001 bytes"))
        );
        // A file without the magic (written before sealing) is taken as it is.
        assert_eq!(open_whole(MAGIC, &payload), Whole::Unsealed(&payload[..]));
        assert_eq!(open_whole(MAGIC, b""), Whole::Unsealed(&b""[..]));
    }
}
