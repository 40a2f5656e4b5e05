//! Moving one operation's frames over a rank's two links at once, in one task.
//!
//! A frame is a 24-byte header — operation (u64), step (u32), zero (u32), payload length
//! (u64), little-endian — and the payload. An operation is a list of frames to send to the
//! next rank and a list to receive from the previous one. A frame to send may be *gated*
//! by a frame to receive: only the bytes of it already received (and added) may go, so a
//! rank forwards each byte as soon as it has it and every link of the ring carries data at
//! once. Received bytes are added to the buffer from a small scratch buffer, or read
//! straight into it when copied. Both links are polled from one loop, so nothing is
//! allocated or copied per chunk and the buffer is borrowed by one task only.

use std::future::Future;
use std::io;
use std::ops::Range;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::ReadBuf;

use crate::link::Link;

/// Bytes of a frame header.
pub(crate) const HEADER: usize = 24;

/// The longest payload a frame may announce (a corrupt header must not allocate more).
const MAX_FRAME: u64 = 1 << 36;

/// What to do with received bytes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Mode {
    /// Add them, as little-endian `f32`s, to the buffer's.
    Add,
    /// Put them in the buffer.
    Copy,
}

/// A frame to send: bytes `range` of the buffer, released as receive `gate` completes.
pub(crate) struct Outgoing {
    pub step: u32,
    pub range: Range<usize>,
    pub gate: Option<usize>,
}

/// A frame to receive into bytes `range` of the buffer (`header_read`: its header was
/// read before the transfer).
pub(crate) struct Incoming {
    pub step: u32,
    pub range: Range<usize>,
    pub mode: Mode,
    pub header_read: bool,
}

/// Why a transfer failed.
#[derive(Debug)]
pub(crate) enum Fault {
    /// Reading from the previous rank failed or its link closed.
    Prev(String),
    /// Writing to the next rank failed.
    Next(String),
    /// The previous rank sent a frame this rank did not expect.
    Protocol(String),
    /// Nothing moved for the deadline; `true` when it was the previous rank's turn.
    Silent { prev: bool },
}

/// The header of `step` of operation `op` with `len` payload bytes.
pub(crate) fn header(op: u64, step: u32, len: u64) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(&op.to_le_bytes());
    h[8..12].copy_from_slice(&step.to_le_bytes());
    h[16..].copy_from_slice(&len.to_le_bytes());
    h
}

/// The payload length of a received header, checked against the operation and step due.
pub(crate) fn check_header(h: &[u8; HEADER], op: u64, step: u32) -> Result<u64, Fault> {
    let word = |r: Range<usize>| {
        let mut b = [0u8; 8];
        b[..r.len()].copy_from_slice(&h[r]);
        u64::from_le_bytes(b)
    };
    let (got_op, got_step, len) = (word(0..8), word(8..12) as u32, word(16..24));
    if got_op != op || got_step != step {
        return Err(Fault::Protocol(format!(
            "expected operation {op} step {step}, got operation {got_op} step {got_step}"
        )));
    }
    if len > MAX_FRAME {
        return Err(Fault::Protocol(format!(
            "a frame of {len} bytes announced (most {MAX_FRAME})"
        )));
    }
    Ok(len)
}

/// One operation's frames in flight.
pub(crate) struct Transfer<'a> {
    buf: &'a mut [u8],
    op: u64,
    sends: Vec<Outgoing>,
    recvs: Vec<Incoming>,
    /// Received bytes waiting to be added (a partial float at most between reads).
    scratch: &'a mut [f32],
    /// The most bytes one read or write moves.
    io_bytes: usize,
    // Sending: the frame, its header bytes written, its payload bytes written.
    si: usize,
    s_head: usize,
    s_done: usize,
    head_out: [u8; HEADER],
    /// Everything written is flushed.
    flushed: bool,
    // Receiving: the frame, its header bytes read, its payload bytes final, bytes waiting
    // in `scratch`.
    ri: usize,
    r_head: usize,
    r_done: usize,
    pending: usize,
    head_in: [u8; HEADER],
    /// Something moved since the owner last asked.
    moved: bool,
}

impl<'a> Transfer<'a> {
    pub(crate) fn new(
        buf: &'a mut [u8],
        op: u64,
        sends: Vec<Outgoing>,
        recvs: Vec<Incoming>,
        scratch: &'a mut [f32],
        io_bytes: usize,
    ) -> Self {
        let r_head = if recvs.first().is_some_and(|r| r.header_read) {
            HEADER
        } else {
            0
        };
        let head_out = sends
            .first()
            .map_or([0; HEADER], |s| header(op, s.step, s.range.len() as u64));
        Transfer {
            buf,
            op,
            sends,
            recvs,
            scratch,
            io_bytes: io_bytes.max(4),
            si: 0,
            s_head: 0,
            s_done: 0,
            head_out,
            flushed: true,
            ri: 0,
            r_head,
            r_done: 0,
            pending: 0,
            head_in: [0; HEADER],
            moved: false,
        }
    }

    /// Bytes of receive `j` that are final.
    fn released(&self, j: usize) -> usize {
        match j.cmp(&self.ri) {
            std::cmp::Ordering::Less => self.recvs[j].range.len(),
            std::cmp::Ordering::Equal => self.r_done,
            std::cmp::Ordering::Greater => 0,
        }
    }

    /// The next payload bytes of the current send that may go now (empty when gated).
    fn sendable(&self) -> Range<usize> {
        let frame = &self.sends[self.si];
        let len = frame.range.len();
        let released = frame.gate.map_or(len, |g| self.released(g).min(len));
        let start = frame.range.start + self.s_done;
        start..start + (released - self.s_done).min(self.io_bytes)
    }

    /// Write what may be written now; whether anything moved.
    fn poll_send(&mut self, cx: &mut Context<'_>, out: &mut Link) -> Result<bool, Fault> {
        let mut moved = false;
        let fail = |e: io::Error| Fault::Next(e.to_string());
        while self.si < self.sends.len() {
            if self.s_head == HEADER && self.s_done == self.sends[self.si].range.len() {
                self.si += 1;
                self.s_head = 0;
                self.s_done = 0;
                if let Some(next) = self.sends.get(self.si) {
                    self.head_out = header(self.op, next.step, next.range.len() as u64);
                }
                continue;
            }
            let wrote = if self.s_head < HEADER {
                Pin::new(&mut **out).poll_write(cx, &self.head_out[self.s_head..])
            } else {
                let bytes = self.sendable();
                if bytes.is_empty() {
                    break; // gated: the bytes have not arrived yet
                }
                Pin::new(&mut **out).poll_write(cx, &self.buf[bytes])
            };
            match wrote {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(fail(e)),
                Poll::Ready(Ok(0)) => return Err(Fault::Next("the link took no bytes".into())),
                Poll::Ready(Ok(n)) => {
                    moved = true;
                    self.flushed = false;
                    if self.s_head < HEADER {
                        self.s_head += n;
                    } else {
                        self.s_done += n;
                    }
                }
            }
        }
        // Push out what a TLS layer holds back.
        if !self.flushed {
            match Pin::new(&mut **out).poll_flush(cx) {
                Poll::Ready(Ok(())) => self.flushed = true,
                Poll::Ready(Err(e)) => return Err(fail(e)),
                Poll::Pending => {}
            }
        }
        Ok(moved)
    }

    /// Read what has arrived; whether anything moved.
    fn poll_recv(&mut self, cx: &mut Context<'_>, inp: &mut Link) -> Result<bool, Fault> {
        let mut moved = false;
        let fail = |e: io::Error| Fault::Prev(e.to_string());
        while self.ri < self.recvs.len() {
            let (step, start, len, mode) = {
                let r = &self.recvs[self.ri];
                (r.step, r.range.start, r.range.len(), r.mode)
            };
            if self.r_head == HEADER && self.r_done == len {
                self.ri += 1;
                self.r_done = 0;
                self.r_head = 0;
                continue;
            }
            let into: &mut [u8] = if self.r_head < HEADER {
                &mut self.head_in[self.r_head..]
            } else if mode == Mode::Copy {
                let at = start + self.r_done;
                &mut self.buf[at..at + (len - self.r_done).min(self.io_bytes)]
            } else {
                let room =
                    (len - self.r_done - self.pending).min(4 * self.scratch.len() - self.pending);
                let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut *self.scratch);
                &mut bytes[self.pending..self.pending + room]
            };
            let mut rb = ReadBuf::new(into);
            let n = match Pin::new(&mut **inp).poll_read(cx, &mut rb) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Err(fail(e)),
                Poll::Ready(Ok(())) => rb.filled().len(),
            };
            if n == 0 {
                return Err(Fault::Prev(
                    "it closed its link before the operation finished".into(),
                ));
            }
            moved = true;
            if self.r_head < HEADER {
                self.r_head += n;
                if self.r_head == HEADER {
                    let announced = check_header(&self.head_in, self.op, step)?;
                    if announced != len as u64 {
                        return Err(Fault::Protocol(format!(
                            "step {step} brings {announced} bytes where {len} were due"
                        )));
                    }
                }
            } else if mode == Mode::Copy {
                self.r_done += n;
            } else {
                self.add(start, n);
            }
        }
        Ok(moved)
    }

    /// Add the whole floats of the `n` bytes just read into `scratch` (after the
    /// `pending` ones) to the buffer at `start + r_done`; keep a partial float.
    fn add(&mut self, start: usize, n: usize) {
        let total = self.pending + n;
        let whole = total / 4;
        let at = start + self.r_done;
        let dst: &mut [f32] = bytemuck::cast_slice_mut(&mut self.buf[at..at + 4 * whole]);
        for (x, v) in dst.iter_mut().zip(&self.scratch[..whole]) {
            *x += f32::from_le_bytes(v.to_ne_bytes());
        }
        let bytes: &mut [u8] = bytemuck::cast_slice_mut(self.scratch);
        bytes.copy_within(4 * whole..total, 0);
        self.pending = total - 4 * whole;
        self.r_done += 4 * whole;
    }

    fn done(&self) -> bool {
        self.si == self.sends.len() && self.flushed && self.ri == self.recvs.len()
    }

    /// Drive both links until every frame is sent and received.
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut Link,
        inp: &mut Link,
    ) -> Poll<Result<(), Fault>> {
        loop {
            let received = self.poll_recv(cx, inp);
            let sent = self.poll_send(cx, out);
            let moved = match (received, sent) {
                (Err(f), _) | (_, Err(f)) => return Poll::Ready(Err(f)),
                (Ok(a), Ok(b)) => a || b,
            };
            if self.done() {
                return Poll::Ready(Ok(()));
            }
            if !moved {
                return Poll::Pending;
            }
            self.moved = true;
        }
    }

    /// Run to the end; fails when nothing moves for `deadline`.
    pub(crate) async fn run(
        &mut self,
        out: &mut Link,
        inp: &mut Link,
        deadline: Duration,
    ) -> Result<(), Fault> {
        let mut silent = Box::pin(tokio::time::sleep(deadline));
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = self.poll(cx, out, inp) {
                return Poll::Ready(r);
            }
            if std::mem::take(&mut self.moved) {
                silent
                    .as_mut()
                    .reset(tokio::time::Instant::now() + deadline);
            }
            match silent.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Fault::Silent {
                    prev: self.ri < self.recvs.len(),
                })),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn le_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[tokio::test]
    async fn bytes_arriving_in_odd_pieces_are_added_whole_and_forwarded_as_they_arrive() {
        // A 7-byte pipe: reads and writes move a few bytes at a time, splitting floats.
        let (mut feed, inp) = tokio::io::duplex(7);
        let (out, mut drain) = tokio::io::duplex(64);
        let mine: Vec<f32> = (0..1000).map(|i| i as f32 * 0.5).collect();
        let theirs: Vec<f32> = (0..1000).map(|i| 1000.0 - i as f32 * 0.25).collect();
        let payload = le_bytes(&theirs);
        let feeder = tokio::spawn(async move {
            feed.write_all(&header(3, 0, 4000)).await.unwrap();
            for piece in payload.chunks(3) {
                feed.write_all(piece).await.unwrap();
            }
        });
        let drainer = tokio::spawn(async move {
            let mut got = Vec::new();
            drain.read_to_end(&mut got).await.unwrap();
            got
        });
        let mut buf = mine.clone();
        let mut scratch = vec![0f32; 16];
        let (mut out, mut inp): (Link, Link) = (Box::new(out), Box::new(inp));
        let sends = vec![Outgoing {
            step: 1,
            range: 0..4000,
            gate: Some(0),
        }];
        let recvs = vec![Incoming {
            step: 0,
            range: 0..4000,
            mode: Mode::Add,
            header_read: false,
        }];
        Transfer::new(
            bytemuck::cast_slice_mut(&mut buf),
            3,
            sends,
            recvs,
            &mut scratch,
            40,
        )
        .run(&mut out, &mut inp, Duration::from_secs(10))
        .await
        .unwrap();
        feeder.await.unwrap();
        drop(out);
        let sent = drainer.await.unwrap();
        for (i, v) in buf.iter().enumerate() {
            assert_eq!(v.to_bits(), (mine[i] + theirs[i]).to_bits(), "float {i}");
        }
        assert_eq!(sent[..HEADER], header(3, 1, 4000));
        assert_eq!(sent[HEADER..], le_bytes(&buf));
    }

    #[tokio::test]
    async fn a_frame_of_another_step_or_length_is_refused() {
        for (h, want) in [
            (
                header(0, 1, 8),
                "expected operation 0 step 0, got operation 0 step 1",
            ),
            (header(0, 0, 12), "step 0 brings 12 bytes where 8 were due"),
            (
                header(0, 0, u64::MAX),
                "a frame of 18446744073709551615 bytes",
            ),
        ] {
            let (mut feed, inp) = tokio::io::duplex(64);
            let (out, _drain) = tokio::io::duplex(64);
            feed.write_all(&h).await.unwrap();
            let mut buf = [0u8; 8];
            let mut scratch = vec![0f32; 4];
            let (mut out, mut inp): (Link, Link) = (Box::new(out), Box::new(inp));
            let recv = Incoming {
                step: 0,
                range: 0..8,
                mode: Mode::Copy,
                header_read: false,
            };
            let fault = Transfer::new(&mut buf, 0, Vec::new(), vec![recv], &mut scratch, 16)
                .run(&mut out, &mut inp, Duration::from_secs(10))
                .await
                .unwrap_err();
            assert!(
                matches!(&fault, Fault::Protocol(m) if m.contains(want)),
                "{fault:?}"
            );
        }
    }
}
