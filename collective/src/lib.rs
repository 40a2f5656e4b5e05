//! `halyard-collective`: collective operations between the executors of one data-parallel
//! training group, over gRPC (`CollectiveService` in `proto/halyard.proto`).
//!
//! - [`Ring::all_reduce`]: a ring all-reduce, reduce-scatter then all-gather. The vector is
//!   cut into one segment per rank and every segment into chunks; a rank forwards each chunk
//!   as soon as it has added (or copied) it, so every link of the ring carries data at once.
//!   Each segment's sum is made by one rank and copied to the others: every rank ends with
//!   the same bits.
//! - [`Ring::broadcast`]: rank 0's bytes, chunked, passed along the ring.
//!
//! Every wait has a deadline: a peer that stops answering (dead, stopped, partitioned) fails
//! the operation with [`CollectiveError::Deadline`] on every rank instead of hanging it.
//!
//! **Invariants.** Every rank of a group makes the same calls in the same order (operations
//! are numbered by call). A rank receives only from the rank before it and sends only to
//! the rank after it; chunks of one operation arrive in order on one stream.

mod error;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use halyard_core::auth::BearerKey;
use halyard_core::metrics::Histogram;
use halyard_core::proto::collective_service_client::CollectiveServiceClient;
use halyard_core::proto::collective_service_server::{CollectiveService, CollectiveServiceServer};
use halyard_core::proto::{CollectiveChunk, PushAck};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::{Channel, ClientTlsConfig};
use tonic::{Request, Response, Status, Streaming};

pub use error::{CollectiveError, Result};

/// Unclaimed inbound streams are dropped after this long (a group that failed).
const STALE_AFTER: Duration = Duration::from_secs(300);

/// Inbound chunk streams, by group and operation, until the local rank takes them.
#[derive(Clone, Default)]
pub struct Mailboxes {
    inner: Arc<Mutex<HashMap<(String, u64), Slot>>>,
}

struct Slot {
    tx: Option<mpsc::UnboundedSender<CollectiveChunk>>,
    rx: Option<mpsc::UnboundedReceiver<CollectiveChunk>>,
    created: Instant,
}

impl Mailboxes {
    fn with_slot<T>(&self, group: &str, op: u64, take: impl FnOnce(&mut Slot) -> T) -> T {
        let mut map = self.inner.lock().expect("mailboxes lock");
        map.retain(|_, s| s.created.elapsed() < STALE_AFTER);
        let key = (group.to_string(), op);
        let slot = map.entry(key.clone()).or_insert_with(|| {
            let (tx, rx) = mpsc::unbounded_channel();
            Slot {
                tx: Some(tx),
                rx: Some(rx),
                created: Instant::now(),
            }
        });
        let out = take(slot);
        if slot.tx.is_none() && slot.rx.is_none() {
            map.remove(&key);
        }
        out
    }

    fn sender(&self, group: &str, op: u64) -> Option<mpsc::UnboundedSender<CollectiveChunk>> {
        self.with_slot(group, op, |s| s.tx.take())
    }

    fn receiver(&self, group: &str, op: u64) -> Option<mpsc::UnboundedReceiver<CollectiveChunk>> {
        self.with_slot(group, op, |s| s.rx.take())
    }

    /// Drop everything kept for `group` (it ended or failed).
    pub fn forget(&self, group: &str) {
        self.inner
            .lock()
            .expect("mailboxes lock")
            .retain(|(g, _), _| g != group);
    }

    /// The gRPC service that fills these mailboxes.
    pub fn service(&self) -> CollectiveServiceServer<CollectiveApi> {
        CollectiveServiceServer::new(CollectiveApi {
            boxes: self.clone(),
        })
        .max_decoding_message_size(64 << 20)
    }
}

/// The receiving side: hands each inbound stream to its group's mailbox.
pub struct CollectiveApi {
    boxes: Mailboxes,
}

#[tonic::async_trait]
impl CollectiveService for CollectiveApi {
    async fn push(
        &self,
        request: Request<Streaming<CollectiveChunk>>,
    ) -> std::result::Result<Response<PushAck>, Status> {
        let mut stream = request.into_inner();
        let Some(first) = stream.message().await? else {
            return Ok(Response::new(PushAck {}));
        };
        let Some(tx) = self.boxes.sender(&first.group, first.op) else {
            return Err(Status::already_exists(format!(
                "group {} operation {} already has a sender",
                first.group, first.op
            )));
        };
        let gone = || Status::aborted("the receiving rank left the operation");
        tx.send(first).map_err(|_| gone())?;
        while let Some(chunk) = stream.message().await? {
            tx.send(chunk).map_err(|_| gone())?;
        }
        Ok(Response::new(PushAck {}))
    }
}

/// Settings of a ring.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RingConfig {
    /// The longest wait for a peer: a chunk, a connection, the end of a stream.
    pub deadline: Duration,
    /// Floats (all-reduce) or 4× bytes (broadcast) per chunk.
    pub chunk_floats: usize,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            deadline: Duration::from_secs(30),
            chunk_floats: 64 * 1024,
        }
    }
}

/// One rank's side of a ring of executors.
pub struct Ring {
    group: String,
    rank: usize,
    size: usize,
    /// The connection to the next rank.
    next: Option<Channel>,
    /// This node's key, sent with every push (the next rank's door checks it).
    key: BearerKey,
    next_addr: String,
    boxes: Mailboxes,
    op: u64,
    cfg: RingConfig,
    /// Where each all-reduce's duration is recorded, if anywhere.
    timer: Option<Histogram>,
}

/// The open stream to the next rank for one operation.
struct Outbound {
    tx: mpsc::UnboundedSender<CollectiveChunk>,
    /// The call's end: `Some(Ok)` when the next rank took everything, `Some(Err)` as soon
    /// as it failed (refused, reset, dead), which fails the operation at once.
    done: watch::Receiver<Option<std::result::Result<(), String>>>,
}

impl Outbound {
    /// Resolves when the call to the next rank has failed (never when it succeeds).
    async fn failed(&self) -> String {
        let mut done = self.done.clone();
        loop {
            let ended = done.borrow_and_update().clone();
            match ended {
                Some(Err(e)) => return e,
                // It took everything: nothing more can fail.
                Some(Ok(())) => return std::future::pending().await,
                None => {}
            }
            if done.changed().await.is_err() && done.borrow().is_none() {
                return "its stream task ended".into();
            }
        }
    }
}

/// A lazy connection to the next rank at `addr`, over TLS when `tls` is given.
fn connect_next(addr: &str, cfg: &RingConfig, tls: Option<ClientTlsConfig>) -> Result<Channel> {
    let endpoint = halyard_core::tls::endpoint(addr, tls)
        .map_err(|e| CollectiveError::Setup(format!("peer address {addr}: {e}")))?
        .connect_timeout(cfg.deadline)
        .tcp_nodelay(true)
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20));
    Ok(endpoint.connect_lazy())
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
        let next_addr = peers[(rank + 1) % size].clone();
        let next = if size > 1 {
            Some(connect_next(&next_addr, &cfg, None)?)
        } else {
            None
        };
        Ok(Ring {
            group: group.to_string(),
            rank,
            size,
            next,
            key: BearerKey::default(),
            next_addr,
            boxes,
            op: 0,
            cfg,
            timer: None,
        })
    }

    /// The ring, recording each all-reduce's duration in `timer`.
    pub fn with_timer(mut self, timer: Histogram) -> Ring {
        self.timer = Some(timer);
        self
    }

    /// The ring, sending `key` with every push to the next rank.
    pub fn with_key(mut self, key: BearerKey) -> Ring {
        self.key = key;
        self
    }

    /// The ring, reaching the next rank over (mutual) TLS with `tls`.
    pub fn with_tls(mut self, tls: Option<ClientTlsConfig>) -> Result<Ring> {
        if self.next.is_some() && tls.is_some() {
            self.next = Some(connect_next(&self.next_addr, &self.cfg, tls)?);
        }
        Ok(self)
    }

    /// This rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Ranks in the ring.
    pub fn size(&self) -> usize {
        self.size
    }

    fn open(&self) -> Outbound {
        let (tx, rx) = mpsc::unbounded_channel();
        let channel = self.next.clone().expect("a ring of more than one");
        let mut client = CollectiveServiceClient::with_interceptor(channel, self.key.clone())
            .max_encoding_message_size(64 << 20);
        let (done_tx, done) = watch::channel(None);
        tokio::spawn(async move {
            let result = client.push(UnboundedReceiverStream::new(rx)).await;
            let _ = done_tx.send(Some(
                result.map(|_| ()).map_err(|s| s.message().to_string()),
            ));
        });
        Outbound { tx, done }
    }

    fn chunk(&self, step: usize, chunk: usize, data: Bytes, total: u64) -> CollectiveChunk {
        CollectiveChunk {
            group: self.group.clone(),
            op: self.op,
            from_rank: self.rank as u32,
            step: step as u32,
            chunk: chunk as u32,
            data,
            total,
        }
    }

    fn send(&self, out: &Outbound, chunk: CollectiveChunk) -> Result<()> {
        out.tx
            .send(chunk)
            .map_err(|_| self.peer_failed("its stream closed"))
    }

    fn peer_failed(&self, why: &str) -> CollectiveError {
        CollectiveError::Peer {
            rank: (self.rank + 1) % self.size,
            message: format!("{} ({})", why, self.next_addr),
        }
    }

    /// The next chunk from the previous rank; fails at the deadline, or at once when the
    /// stream to the next rank (`out`) fails.
    async fn recv(
        &self,
        rx: &mut mpsc::UnboundedReceiver<CollectiveChunk>,
        out: Option<&Outbound>,
        step: usize,
        chunk: usize,
    ) -> Result<CollectiveChunk> {
        let prev = (self.rank + self.size - 1) % self.size;
        let next_failed = async {
            match out {
                Some(out) => out.failed().await,
                None => std::future::pending().await,
            }
        };
        let got = tokio::select! {
            got = tokio::time::timeout(self.cfg.deadline, rx.recv()) => got,
            why = next_failed => return Err(self.peer_failed(&why)),
        };
        let m = got
            .map_err(|_| CollectiveError::Deadline {
                rank: prev,
                op: self.op,
                waited: self.cfg.deadline,
            })?
            .ok_or_else(|| CollectiveError::Peer {
                rank: prev,
                message: "it ended its stream before the operation finished".into(),
            })?;
        if m.step as usize != step || m.chunk as usize != chunk {
            return Err(CollectiveError::Protocol(format!(
                "expected step {step} chunk {chunk} from rank {prev}, got step {} chunk {}",
                m.step, m.chunk
            )));
        }
        Ok(m)
    }

    /// Close the stream to the next rank and wait for it to take everything.
    async fn finish(&self, out: Outbound) -> Result<()> {
        drop(out.tx);
        let mut done = out.done;
        let ended = tokio::time::timeout(self.cfg.deadline, done.wait_for(Option::is_some)).await;
        match ended {
            Err(_) => Err(CollectiveError::Deadline {
                rank: (self.rank + 1) % self.size,
                op: self.op,
                waited: self.cfg.deadline,
            }),
            Ok(Err(_)) => Err(self.peer_failed("its stream task ended")),
            Ok(Ok(r)) => match &*r {
                Some(Err(e)) => Err(self.peer_failed(e)),
                _ => Ok(()),
            },
        }
    }

    fn inbound(&self) -> Result<mpsc::UnboundedReceiver<CollectiveChunk>> {
        self.boxes
            .receiver(&self.group, self.op)
            .ok_or_else(|| CollectiveError::Protocol(format!("operation {} taken twice", self.op)))
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
        let (n, size, rank) = (data.len(), self.size, self.rank);
        let segment = |k: usize| (k * n / size, (k + 1) * n / size);
        let c = self.cfg.chunk_floats.max(1);
        let chunks = |k: usize| {
            let (lo, hi) = segment(k);
            (lo..hi)
                .step_by(c)
                .map(move |s| (s, (s + c).min(hi)))
                .collect::<Vec<_>>()
        };
        let mut rx = self.inbound()?;
        let out = self.open();
        for (j, &(lo, hi)) in chunks(rank).iter().enumerate() {
            self.send(&out, self.chunk(0, j, bytes_of(&data[lo..hi]), 0))?;
        }
        let steps = 2 * (size - 1);
        for s in 0..steps {
            let reducing = s < size - 1;
            let k = if reducing {
                (rank + 2 * size - s - 1) % size
            } else {
                (rank + 2 * size - (s - (size - 1))) % size
            };
            for (j, &(lo, hi)) in chunks(k).iter().enumerate() {
                let m = self.recv(&mut rx, Some(&out), s, j).await?;
                let part = &mut data[lo..hi];
                if m.data.len() != 4 * part.len() {
                    return Err(CollectiveError::Protocol(format!(
                        "chunk of {} bytes where {} were due",
                        m.data.len(),
                        4 * part.len()
                    )));
                }
                combine(part, &m.data, reducing);
                if s + 1 < steps {
                    self.send(&out, self.chunk(s + 1, j, bytes_of(part), 0))?;
                }
            }
        }
        self.finish(out).await
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
        let c = 4 * self.cfg.chunk_floats.max(1);
        let forwards = self.rank + 1 < self.size;
        let out = forwards.then(|| self.open());
        if self.rank == 0 {
            let out = out.expect("rank 0 forwards");
            let total = data.len() as u64;
            let pieces: Vec<&[u8]> = if data.is_empty() {
                vec![&[]]
            } else {
                data.chunks(c).collect()
            };
            for (j, piece) in pieces.into_iter().enumerate() {
                self.send(&out, self.chunk(0, j, Bytes::copy_from_slice(piece), total))?;
            }
            return self.finish(out).await;
        }
        let mut rx = self.inbound()?;
        let mut got = Vec::new();
        let mut j = 0;
        loop {
            let m = self.recv(&mut rx, out.as_ref(), 0, j).await?;
            let total = m.total as usize;
            got.extend_from_slice(&m.data);
            if let Some(out) = &out {
                self.send(out, m)?;
            }
            j += 1;
            if got.len() >= total {
                break;
            }
        }
        if let Some(out) = out {
            self.finish(out).await?;
        }
        *data = got;
        Ok(())
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        self.boxes.forget(&self.group);
    }
}

/// Little-endian bytes of `values`.
fn bytes_of(values: &[f32]) -> Bytes {
    if cfg!(target_endian = "little") {
        Bytes::copy_from_slice(bytemuck::cast_slice(values))
    } else {
        Bytes::from(halyard_models::distributed::float_bytes(values))
    }
}

/// Add (`reducing`) or copy little-endian `bytes` into `part`.
fn combine(part: &mut [f32], bytes: &[u8], reducing: bool) {
    // In place when aligned on a little-endian machine; else decoded first.
    let values: std::borrow::Cow<[f32]> = match bytemuck::try_cast_slice::<u8, f32>(bytes) {
        Ok(v) if cfg!(target_endian = "little") => v.into(),
        _ => halyard_models::distributed::floats(bytes).into(),
    };
    if reducing {
        for (x, v) in part.iter_mut().zip(values.iter()) {
            *x += *v;
        }
    } else {
        part.copy_from_slice(&values);
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

/// Serve `boxes` alone on `listener` (benches and tests; an executor serves them on its
/// own port beside its other services) until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    boxes: Mailboxes,
    tls: Option<tonic::transport::ServerTlsConfig>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), tonic::transport::Error> {
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    server
        .initial_stream_window_size(Some(8 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .tcp_nodelay(true)
        .add_service(boxes.service())
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            shutdown,
        )
        .await
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
            assert!(ring.next.is_some());
        }
        let alone = Ring::new(
            "g/1",
            0,
            &peers[..1],
            Mailboxes::default(),
            RingConfig::default(),
        )
        .unwrap();
        assert!(alone.next.is_none(), "a group of one talks to nobody");
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
