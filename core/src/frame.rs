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
