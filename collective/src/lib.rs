//! `halyard-collective`: collective operations between the executors of one data-parallel
//! training group, over one long-lived connection per link of the ring.
//!
//! - Links ([`link`]): rank `r` dials rank `r + 1` once per group — an HTTP/1.1 upgrade on
//!   the executor's port (`GET /v1/collective/link`), so the door checks the node key and,
//!   with mutual TLS, the node certificate — and keeps the connection, plain TCP or TLS,
//!   for every operation of the group.
//! - Frames ([`transfer`]): a 24-byte header and the payload, one frame per ring step; the
//!   payload is written from the caller's buffer, added from a small scratch buffer or read
//!   straight into the destination, with both links polled from one loop: no message
//!   framing, no per-chunk allocation or task.
//! - [`Ring::all_reduce`]: a ring all-reduce, reduce-scatter then all-gather. The vector is
//!   cut into one segment per rank; a rank forwards each byte of a segment as soon as it has
//!   added (or copied) it, so every link of the ring carries data at once. Each segment's
//!   sum is made by one rank and copied to the others: every rank ends with the same bits.
//! - [`Ring::broadcast`]: rank 0's bytes passed along the ring, each rank forwarding what
//!   it has as it arrives.
//!
//! Every wait has a deadline: a peer that stops answering (dead, stopped, partitioned) fails
//! the operation with [`CollectiveError::Deadline`] on every rank instead of hanging it, and
//! a failed operation breaks the ring (the group is formed again).
//!
//! **Invariants.** Every rank of a group makes the same calls in the same order (operations
//! are numbered by call, and every frame's header names its operation and step: ranks out
//! of step fail with [`CollectiveError::Protocol`]). A rank receives only from the rank
//! before it and sends only to the rank after it.

#[cfg(target_endian = "big")]
compile_error!(
    "the ring's frames carry little-endian floats in place: a big-endian build needs byte swaps in collective/src/transfer.rs"
);

mod error;
pub mod link;
mod transfer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use halyard_core::auth::BearerKey;
use halyard_core::metrics::Histogram;
use tokio::io::AsyncReadExt;

pub use error::{CollectiveError, Result};
use link::{Inbound, Link};
pub use link::{LINK_PATH, Mailboxes, serve};
use transfer::{Fault, HEADER, Incoming, Mode, Outgoing, Transfer};

/// Settings of a ring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RingConfig {
    /// The longest wait for a peer: a connection, a byte of a frame.
    pub deadline: Duration,
    /// The most floats one read or write moves (and the scratch buffer's size).
    pub chunk_floats: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            deadline: Duration::from_secs(30),
            chunk_floats: 256 * 1024,
        }
    }
}

/// The two links of a rank: to the next rank and from the previous one.
struct Links {
    next: Link,
    prev: Link,
}

/// One rank's side of a ring of executors.
pub struct Ring {
    group: String,
    rank: usize,
    size: usize,
    /// This node's key, sent when it opens its link (the next rank's door checks it).
    key: BearerKey,
    /// TLS to the next rank (its port's), when the cluster has it.
    tls: Option<Arc<rustls::ClientConfig>>,
    next_addr: String,
    boxes: Mailboxes,
    op: u64,
    cfg: RingConfig,
    /// Where each all-reduce's duration is recorded, if anywhere.
    timer: Option<Histogram>,
    /// Open after the first operation.
    links: Option<Links>,
    /// Why an earlier operation failed: the ring is no longer usable.
    broken: Option<String>,
    /// Received floats waiting to be added.
    scratch: Vec<f32>,
}

impl Ring {
    /// Rank `rank` of the ring whose members listen on `peers` (`HOST:PORT`, in rank order);
    /// `boxes` are the mailboxes this rank's server fills.
    pub fn new(
        group: &str,
        rank: usize,
        peers: &[String],
        boxes: Mailboxes,
        cfg: RingConfig,
    ) -> Result<Ring> {
        let size = peers.len();
        if rank >= size {
            return Err(CollectiveError::Setup(format!(
                "rank {rank} of a group of {size}"
            )));
        }
        Ok(Ring {
            group: group.to_string(),
            rank,
            size,
            key: BearerKey::default(),
            tls: None,
            next_addr: peers[(rank + 1) % size].clone(),
            boxes,
            op: 0,
            cfg,
            timer: None,
            links: None,
            broken: None,
            scratch: Vec::new(),
        })
    }

    /// The ring, recording each all-reduce's duration in `timer`.
    pub fn with_timer(mut self, timer: Histogram) -> Ring {
        self.timer = Some(timer);
        self
    }

    /// The ring, presenting `key` when it opens its link to the next rank.
    pub fn with_key(mut self, key: BearerKey) -> Ring {
        self.key = key;
        self
    }

    /// The ring, reaching the next rank over (mutual) TLS with `tls`.
    pub fn with_tls(mut self, tls: Option<Arc<rustls::ClientConfig>>) -> Ring {
        self.tls = tls;
        self
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the ring.
    pub fn size(&self) -> usize {
        self.size
    }

    fn prev(&self) -> usize {
        (self.rank + self.size - 1) % self.size
    }

    fn next(&self) -> usize {
        (self.rank + 1) % self.size
    }

    fn next_failed(&self, why: &str) -> CollectiveError {
        CollectiveError::Peer {
            rank: self.next(),
            message: format!("{why} ({})", self.next_addr),
        }
    }

    fn deadline(&self, rank: usize) -> CollectiveError {
        CollectiveError::Deadline {
            rank,
            op: self.op,
            waited: self.cfg.deadline,
        }
    }

    /// Open both links once per group; a ring that failed before (to open its links or
    /// in a transfer) is broken for good.
    async fn connect(&mut self) -> Result<()> {
        if let Some(why) = &self.broken {
            return Err(CollectiveError::Broken(why.clone()));
        }
        if self.links.is_some() {
            return Ok(());
        }
        let opened = self.open_links().await;
        if let Err(e) = &opened {
            self.broke(e);
        }
        opened
    }

    /// Dial the next rank, take the previous rank's link.
    async fn open_links(&mut self) -> Result<()> {
        let inbound = self.boxes.receiver(&self.group).ok_or_else(|| {
            CollectiveError::Protocol(format!("group {} joined twice on this node", self.group))
        })?;
        let deadline = self.cfg.deadline;
        let dial = link::dial(
            &self.next_addr,
            self.tls.as_ref(),
            &self.key,
            &self.group,
            self.rank,
        );
        let next = tokio::time::timeout(deadline, dial)
            .await
            .map_err(|_| self.deadline(self.next()))?
            .map_err(|e| self.next_failed(&e))?;
        let prev = self.prev();
        let Inbound { from, link } = tokio::time::timeout(deadline, inbound)
            .await
            .map_err(|_| self.deadline(prev))?
            .map_err(|_| CollectiveError::Peer {
                rank: prev,
                message: "its link failed to open".into(),
            })?;
        if from != prev {
            return Err(CollectiveError::Protocol(format!(
                "rank {from} opened a link to rank {} where rank {prev} should",
                self.rank
            )));
        }
        self.links = Some(Links { next, prev: link });
        Ok(())
    }

    /// Move one operation's frames; a failure breaks the ring.
    async fn transfer(
        &mut self,
        buf: &mut [u8],
        sends: Vec<Outgoing>,
        recvs: Vec<Incoming>,
    ) -> Result<()> {
        let floats = self.cfg.chunk_floats.max(1);
        if self.scratch.len() != floats {
            self.scratch = vec![0.0; floats];
        }
        let links = self.links.as_mut().expect("connected before a transfer");
        let result = Transfer::new(buf, self.op, sends, recvs, &mut self.scratch, 4 * floats)
            .run(&mut links.next, &mut links.prev, self.cfg.deadline)
            .await;
        result.map_err(|f| self.fail(f))
    }

    /// The error of `fault`; the ring is broken from now on.
    fn fail(&mut self, fault: Fault) -> CollectiveError {
        let e = match fault {
            Fault::Prev(message) => CollectiveError::Peer {
                rank: self.prev(),
                message,
            },
            Fault::Next(why) => self.next_failed(&why),
            Fault::Protocol(why) => CollectiveError::Protocol(why),
            Fault::Silent { prev: true } => self.deadline(self.prev()),
            Fault::Silent { prev: false } => self.deadline(self.next()),
        };
        self.broke(&e);
        e
    }

    /// Remember why the ring broke and close its links: later calls fail at once.
    fn broke(&mut self, e: &CollectiveError) {
        self.broken = Some(format!("operation {}: {e}", self.op));
        self.links = None;
    }

    /// Sum `data` element-wise over the ring; every rank ends with the same bits.
    pub async fn all_reduce(&mut self, data: &mut [f32]) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        let started = Instant::now();
        let result = self.all_reduce_op(data).await;
        self.op += 1;
        if let Some(t) = &self.timer {
            t.observe(started.elapsed().as_secs_f64());
        }
        result
    }

    async fn all_reduce_op(&mut self, data: &mut [f32]) -> Result<()> {
        self.connect().await?;
        let (n, size, rank) = (data.len(), self.size, self.rank);
        // Bytes of segment `k`.
        let segment = |k: usize| 4 * (k * n / size)..4 * ((k + 1) * n / size);
        // The segment received at step `s` (and sent on at step `s + 1`).
        let received = |s: usize| (rank + 2 * size - s - 1) % size;
        let steps = 2 * (size - 1);
        let sends = (0..steps)
            .map(|s| Outgoing {
                step: s as u32,
                range: segment(if s == 0 { rank } else { received(s - 1) }),
                gate: s.checked_sub(1),
            })
            .collect();
        let recvs = (0..steps)
            .map(|s| Incoming {
                step: s as u32,
                range: segment(received(s)),
                mode: if s < size - 1 { Mode::Add } else { Mode::Copy },
                header_read: false,
            })
            .collect();
        self.transfer(bytemuck::cast_slice_mut(data), sends, recvs)
            .await
    }

    /// Replace `data` on every rank with rank 0's.
    pub async fn broadcast(&mut self, data: &mut Vec<u8>) -> Result<()> {
        if self.size == 1 {
            return Ok(());
        }
        let result = self.broadcast_op(data).await;
        self.op += 1;
        result
    }

    async fn broadcast_op(&mut self, data: &mut Vec<u8>) -> Result<()> {
        self.connect().await?;
        if self.rank == 0 {
            let whole = Outgoing {
                step: 0,
                range: 0..data.len(),
                gate: None,
            };
            return self.transfer(data, vec![whole], Vec::new()).await;
        }
        // The length comes first: the buffer is sized before the bytes arrive.
        let mut head = [0u8; HEADER];
        let links = self.links.as_mut().expect("connected");
        let read = tokio::time::timeout(self.cfg.deadline, links.prev.read_exact(&mut head)).await;
        let total = match read {
            Err(_) => Err(Fault::Silent { prev: true }),
            Ok(Err(e)) => Err(Fault::Prev(e.to_string())),
            Ok(Ok(_)) => transfer::check_header(&head, self.op, 0),
        }
        .map_err(|f| self.fail(f))? as usize;
        data.clear();
        data.resize(total, 0);
        let forwards = self.rank + 1 < self.size;
        let sends = if forwards {
            vec![Outgoing {
                step: 0,
                range: 0..total,
                gate: Some(0),
            }]
        } else {
            Vec::new()
        };
        let recv = Incoming {
            step: 0,
            range: 0..total,
            mode: Mode::Copy,
            header_read: true,
        };
        self.transfer(data, sends, vec![recv]).await
    }
}

/// A ring of `ranks` ranks in this process, each with its own server on a free loopback
/// port (over mutual TLS with `tls`: every rank serves and dials with it), for benches and
/// tests; the servers stop when the returned switch is set to `true` or dropped.
pub async fn loopback(
    ranks: usize,
    group: &str,
    cfg: RingConfig,
    tls: Option<&halyard_core::tls::Tls>,
) -> Result<(Vec<Ring>, tokio::sync::watch::Sender<bool>)> {
    let setup = |e: std::io::Error| CollectiveError::Setup(format!("loopback ring: {e}"));
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut peers = Vec::new();
    let mut boxes = Vec::new();
    for _ in 0..ranks {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(setup)?;
        peers.push(listener.local_addr().map_err(setup)?.to_string());
        let b = Mailboxes::default();
        let mut stopped = stopped.clone();
        let shutdown = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        tokio::spawn(serve(
            listener,
            b.clone(),
            tls.map(|t| t.server.clone()),
            shutdown,
        ));
        boxes.push(b);
    }
    let rings = boxes
        .into_iter()
        .enumerate()
        .map(|(r, b)| {
            Ok(Ring::new(group, r, &peers, b, cfg)?.with_tls(tls.map(|t| t.client.clone())))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((rings, stop))
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.boxes.forget(&self.group);
    }
}

/// A [`Ring`] driven from a training thread (not a runtime thread): the models crate's
/// [`halyard_models::distributed::Collective`].
pub struct BlockingRing {
    ring: Ring,
    runtime: tokio::runtime::Handle,
}

impl BlockingRing {
    /// Wrap `ring`, running its operations on `runtime`.
    pub fn new(ring: Ring, runtime: tokio::runtime::Handle) -> Self {
        BlockingRing { ring, runtime }
    }
}

fn model_error(e: CollectiveError) -> halyard_models::ModelError {
    halyard_models::ModelError::Collective(e.to_string())
}

impl halyard_models::distributed::Collective for BlockingRing {
    fn rank(&self) -> usize {
        self.ring.rank
    }
    fn size(&self) -> usize {
        self.ring.size
    }
    fn all_reduce(&mut self, data: &mut [f32]) -> halyard_models::Result<()> {
        self.runtime
            .block_on(self.ring.all_reduce(data))
            .map_err(model_error)
    }
    fn broadcast(&mut self, data: &mut Vec<u8>) -> halyard_models::Result<()> {
        self.runtime
            .block_on(self.ring.broadcast(data))
            .map_err(model_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_ring_knows_its_next_rank_and_refuses_a_rank_outside_the_group() {
        let peers: Vec<String> = ["a:1", "b:2", "c:3"].map(String::from).to_vec();
        // (rank, the next rank's address)
        for (rank, next) in [(0, "b:2"), (1, "c:3"), (2, "a:1")] {
            let ring = Ring::new(
                "g/1",
                rank,
                &peers,
                Mailboxes::default(),
                RingConfig::default(),
            )
            .unwrap();
            assert_eq!(
                (ring.rank(), ring.size(), ring.next_addr.as_str()),
                (rank, 3, next)
            );
        }
        // A group of one talks to nobody (its only peer's address is not even dialable).
        let mut alone = Ring::new(
            "g/1",
            0,
            &["nowhere".to_string()],
            Mailboxes::default(),
            RingConfig::default(),
        )
        .unwrap();
        let mut v = [1.5f32, -2.0];
        alone.all_reduce(&mut v).await.unwrap();
        assert_eq!(v, [1.5, -2.0]);
        let err = Ring::new(
            "g/1",
            3,
            &peers,
            Mailboxes::default(),
            RingConfig::default(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("rank 3 of a group of 3"), "{err}");
    }
}
