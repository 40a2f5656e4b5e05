//! `halyard bench allreduce`: the ring all-reduce between in-process ranks, each with its
//! own server on loopback and its links opened as executors open them, against a plain TCP
//! stream between two threads (the transport's own limit on this machine) and a memory
//! copy of the same bytes.
//!
//! Reported per size: the median time of one all-reduce; the algorithm bandwidth (vector
//! bytes / time) and the bus bandwidth (`2 (n - 1) / n` × algorithm bandwidth: what each
//! rank sends and receives, NCCL's convention, comparable across ring sizes); the TCP
//! stream's bandwidth moving the vector's bytes, measured right after the ring, and the
//! bus bandwidth as a fraction of it and of the copy bandwidth.

use std::time::{Duration, Instant};

use halyard_collective::{Ring, RingConfig};

use crate::bench::median_of;
use crate::{CliError, Result};

/// One size's figures.
#[derive(Debug, Clone)]
pub struct AllReduceFigure {
    /// Floats in the vector.
    pub floats: usize,
    /// Median time of one all-reduce.
    pub median: Duration,
    /// Vector bytes per second.
    pub algo_bandwidth: f64,
    /// Bytes each rank moved per second.
    pub bus_bandwidth: f64,
}

/// Median time of copying `floats` floats (bytes per second).
pub fn memcpy_bandwidth(floats: usize, runs: usize) -> f64 {
    let src = vec![1.5f32; floats];
    let mut dst = vec![0.0f32; floats];
    let mut times = Vec::new();
    for _ in 0..runs.max(3) {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&mut dst);
        times.push(t.elapsed());
    }
    (4 * floats) as f64 / median_of(times).as_secs_f64()
}

/// Plain TCP streams on loopback, each between its own writer and reader thread: one
/// stream through 1 MiB buffers that stay in the cache (the transport's limit in one
/// direction), or two at once (`both_ways`), each written from a buffer of `bytes` and read
/// into another, as a two-rank ring's two links move its vectors, without the ring's
/// arithmetic. Returns the median bytes/s of one stream moving `bytes` (1 MiB writes and
/// reads; the reader answers each transfer with one byte, which ends its timing; a
/// transfer of two streams lasts until the later ends), `runs` times after a warm-up.
pub fn tcp_bandwidth(bytes: usize, runs: usize, both_ways: bool) -> Result<f64> {
    use std::io::{Read, Write};
    use std::sync::{Arc, Barrier};
    let io = |e: std::io::Error| CliError::Failed(format!("tcp baseline: {e}"));
    let transfers = runs.max(1) + 1;
    let (streams, buffer) = if both_ways { (2, bytes) } else { (1, 1 << 20) };
    let start = Arc::new(Barrier::new(streams));
    let mut writers = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..streams {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(io)?;
        let addr = listener.local_addr().map_err(io)?;
        readers.push(std::thread::spawn(move || -> std::io::Result<()> {
            let (mut s, _) = listener.accept()?;
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; buffer];
            for _ in 0..transfers {
                let mut done = 0;
                while done < bytes {
                    let at = done % buffer;
                    let end = buffer.min(at + (bytes - done).min(1 << 20));
                    let n = s.read(&mut buf[at..end])?;
                    if n == 0 {
                        return Err(std::io::ErrorKind::UnexpectedEof.into());
                    }
                    done += n;
                }
                s.write_all(&[1])?;
            }
            Ok(())
        }));
        let mut s = std::net::TcpStream::connect(addr).map_err(io)?;
        s.set_nodelay(true).map_err(io)?;
        let start = start.clone();
        writers.push(std::thread::spawn(
            move || -> std::io::Result<Vec<Duration>> {
                let data = vec![1u8; buffer];
                let mut times = Vec::new();
                for _ in 0..transfers {
                    start.wait();
                    let started = Instant::now();
                    let mut done = 0;
                    while done < bytes {
                        let at = done % buffer;
                        let n = (bytes - done).min(1 << 20).min(buffer - at);
                        s.write_all(&data[at..at + n])?;
                        done += n;
                    }
                    s.read_exact(&mut [0u8; 1])?;
                    times.push(started.elapsed());
                }
                Ok(times)
            },
        ));
    }
    let panicked = || CliError::Failed("tcp baseline: a thread panicked".into());
    let mut per_stream = Vec::new();
    for w in writers {
        per_stream.push(w.join().map_err(|_| panicked())?.map_err(io)?);
    }
    for r in readers {
        r.join().map_err(|_| panicked())?.map_err(io)?;
    }
    // Each transfer lasts until its slowest stream ends; the first is the warm-up.
    let times: Vec<Duration> = (1..transfers)
        .map(|t| per_stream.iter().map(|s| s[t]).max().unwrap_or_default())
        .collect();
    Ok(bytes as f64 / median_of(times).as_secs_f64())
}

/// A ring of `ranks` in-process ranks, each with its own server on loopback (over
/// mutual TLS when `tls` is given), and the switch that stops the servers.
pub async fn loopback_ring(
    ranks: usize,
    group: &str,
    tls: Option<&halyard_core::tls::Tls>,
) -> Result<(Vec<Ring>, tokio::sync::watch::Sender<bool>)> {
    halyard_collective::loopback(ranks, group, RingConfig::default(), tls)
        .await
        .map_err(|e| CliError::Failed(e.to_string()))
}

/// All-reduce `sizes` over a ring of `ranks` in-process ranks, `runs` times each, over
/// mutual TLS when `tls` is given (each rank serves and calls with it).
pub async fn run(
    ranks: usize,
    sizes: &[usize],
    runs: usize,
    tls: Option<&halyard_core::tls::Tls>,
) -> Result<Vec<AllReduceFigure>> {
    let err = |e: String| CliError::Failed(format!("all-reduce bench: {e}"));
    let (mut rings, stop) = loopback_ring(ranks, "bench/1", tls).await?;
    let mut figures = Vec::new();
    for &floats in sizes {
        let mut times = Vec::new();
        // Each rank's vector is allocated once and written before each run, untimed: as a
        // trainer's gradient buffer is (a fresh or all-zero allocation would time the
        // kernel mapping its pages instead).
        let mut vectors: Vec<Vec<f32>> = vec![vec![0.0; floats]; rings.len()];
        // One warm-up run, then the measured ones.
        for run in 0..=runs.max(1) {
            for (rank, v) in vectors.iter_mut().enumerate() {
                v.fill(rank as f32 + 1.0);
            }
            let started = Instant::now();
            let tasks: Vec<_> = rings
                .drain(..)
                .zip(vectors.drain(..))
                .map(|(mut ring, mut v)| {
                    tokio::spawn(async move {
                        let r = ring.all_reduce(&mut v).await;
                        (ring, v, r)
                    })
                })
                .collect();
            for t in tasks {
                let (ring, v, r) = t.await.map_err(|e| err(e.to_string()))?;
                r.map_err(|e| err(e.to_string()))?;
                let sum = (ranks * (ranks + 1) / 2) as f32;
                if v.first().is_some_and(|x| *x != sum) || v.last().is_some_and(|x| *x != sum) {
                    return Err(err(format!("rank {} summed wrong", ring.rank())));
                }
                rings.push(ring);
                vectors.push(v);
            }
            if run > 0 {
                times.push(started.elapsed());
            }
        }
        let median = median_of(times);
        let algo = (4 * floats) as f64 / median.as_secs_f64();
        figures.push(AllReduceFigure {
            floats,
            median,
            algo_bandwidth: algo,
            bus_bandwidth: algo * 2.0 * (ranks - 1) as f64 / ranks as f64,
        });
    }
    let _ = stop.send(true);
    Ok(figures)
}

/// A CA and one node certificate in a temporary folder, loaded: mutual TLS for the
/// benchmark's ranks.
pub fn bench_tls() -> Result<halyard_core::tls::Tls> {
    let dir =
        tempfile::tempdir().map_err(|e| CliError::Failed(format!("temporary folder: {e}")))?;
    let w = halyard_core::certs::init(dir.path(), &["bench".to_string()])?;
    let (_, cert, key) = &w.nodes[0];
    Ok(halyard_core::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: Some(w.ca.clone()),
    }
    .load()?)
}

/// Mutual TLS against plaintext, size by size: each size's median times and their ratio.
pub fn tls_summary(
    ranks: usize,
    runs: usize,
    plain: &[AllReduceFigure],
    tls: &[AllReduceFigure],
) -> String {
    let mut out = format!(
        "ring all-reduce, {ranks} ranks on loopback links, mutual TLS against plaintext (median of {runs} runs, the two alternating per size)"
    );
    for (p, t) in plain.iter().zip(tls) {
        out.push_str(&format!(
            "\n  {:>10} floats: plaintext {:>9.2} ms ({:.3} GB/s bus), mTLS {:>9.2} ms ({:.3} GB/s bus): mTLS takes {:.2}x",
            p.floats,
            p.median.as_secs_f64() * 1e3,
            p.bus_bandwidth / 1e9,
            t.median.as_secs_f64() * 1e3,
            t.bus_bandwidth / 1e9,
            t.median.as_secs_f64() / p.median.as_secs_f64()
        ));
    }
    out
}

/// The report of one `halyard bench allreduce` run: each size's median time and bandwidths
/// against the TCP streams' (`tcp`, per size: one stream's bytes/s alone, and each of two
/// at once moving whole vectors) and the memory copy's `copy` bytes/s.
pub fn summary(
    ranks: usize,
    runs: usize,
    copy: f64,
    figures: &[AllReduceFigure],
    tcp: &[(f64, f64)],
) -> String {
    let mut out = format!(
        "ring all-reduce, {ranks} ranks on loopback links (median of {runs} runs), against plain TCP between threads moving the vector's bytes (measured after each size: one stream alone through 1 MiB buffers, then two at once, one each way, each from and into vector-sized buffers, as a two-rank ring's links move its vectors, without its additions) and a memory copy of 40 MB ({:.2} GB/s)",
        copy / 1e9
    );
    for (f, (one, two)) in figures.iter().zip(tcp) {
        out.push_str(&format!(
            "\n  {:>10} floats: {:>9.2} ms  algorithm {:.3} GB/s  bus {:.3} GB/s  TCP stream {:.3} GB/s (bus / TCP = {:.1} %)  two streams {:.3} GB/s each (bus / two = {:.1} %)  = {:.1} % of the copy",
            f.floats,
            f.median.as_secs_f64() * 1e3,
            f.algo_bandwidth / 1e9,
            f.bus_bandwidth / 1e9,
            one / 1e9,
            100.0 * f.bus_bandwidth / one,
            two / 1e9,
            100.0 * f.bus_bandwidth / two,
            100.0 * f.bus_bandwidth / copy
        ));
    }
    out
}
