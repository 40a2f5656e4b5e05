//! Ring all-reduce and broadcast between real servers on loopback, over their links.

use std::time::{Duration, Instant};

use halyard_collective::{CollectiveError, Mailboxes, Ring, RingConfig, loopback, serve};

/// `n` ranks, each with its own server; their rings and the switch that keeps the servers.
async fn ring(n: usize, cfg: RingConfig) -> (Vec<Ring>, Servers) {
    loopback(n, "job-1/1", cfg, None).await.unwrap()
}

/// Set to stop a loopback ring's servers (they stop when it is dropped).
type Servers = tokio::sync::watch::Sender<bool>;

fn values(rank: usize, len: usize) -> Vec<f32> {
    (0..len)
        .map(|i| ((i * 7 + rank * 13) % 101) as f32 * 0.37 - rank as f32 * 1.5)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_reduce_sums_and_every_rank_gets_the_same_bits() {
    for n in [2usize, 3, 4] {
        // Small chunks so that segments span several; lengths below, at and above n.
        let cfg = RingConfig {
            chunk_floats: 5,
            ..RingConfig::default()
        };
        let (rings, _servers) = ring(n, cfg).await;
        let mut tasks = Vec::new();
        for mut r in rings {
            tasks.push(tokio::spawn(async move {
                let mut outs = Vec::new();
                for len in [0usize, 1, n - 1, n, 37, 1000] {
                    let mut v = values(r.rank(), len);
                    r.all_reduce(&mut v).await.unwrap();
                    outs.push(v);
                }
                let mut b = if r.rank() == 0 {
                    (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect()
                } else {
                    Vec::new()
                };
                r.broadcast(&mut b).await.unwrap();
                let mut empty = if r.rank() == 0 {
                    Vec::new()
                } else {
                    vec![9u8; 3]
                };
                r.broadcast(&mut empty).await.unwrap();
                (outs, b, empty)
            }));
        }
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        for (k, len) in [0usize, 1, n - 1, n, 37, 1000].into_iter().enumerate() {
            let want: Vec<f32> = (0..len)
                .map(|i| (0..n).map(|r| values(r, len)[i]).sum())
                .collect();
            for (rank, (outs, _, _)) in results.iter().enumerate() {
                let bits: Vec<u32> = outs[k].iter().map(|v| v.to_bits()).collect();
                let first: Vec<u32> = results[0].0[k].iter().map(|v| v.to_bits()).collect();
                assert_eq!(bits, first, "{n} ranks, length {len}: rank {rank} differs");
                for (a, b) in outs[k].iter().zip(&want) {
                    assert!((a - b).abs() <= 1e-3 * b.abs().max(1.0), "{a} vs {b}");
                }
            }
        }
        let sent: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        for (_, b, empty) in &results {
            assert_eq!(b, &sent);
            assert!(empty.is_empty());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_peer_fails_the_operation_within_the_deadline() {
    let cfg = RingConfig {
        deadline: Duration::from_millis(800),
        ..RingConfig::default()
    };
    let (mut rings, _servers) = ring(3, cfg).await;
    // Rank 2 never calls: ranks 0 and 1 must fail, not hang.
    let _silent = rings.pop().unwrap();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut r in rings {
        tasks.push(tokio::spawn(async move {
            let mut v = vec![1.0f32; 10_000];
            r.all_reduce(&mut v).await
        }));
    }
    // The rank waiting on the silent one times out; the other learns it from its stream.
    let mut errors = Vec::new();
    for t in tasks {
        errors.push(t.await.unwrap().unwrap_err());
    }
    assert!(
        errors
            .iter()
            .any(|e| matches!(e, CollectiveError::Deadline { rank: 2, .. })
                && e.to_string().contains("dead, stopped or unreachable")),
        "{errors:?}"
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_is_gone_fails_the_operation_at_once_not_at_the_deadline() {
    let cfg = RingConfig {
        deadline: Duration::from_secs(30),
        ..RingConfig::default()
    };
    // The next rank's address has no server (a killed executor).
    let free = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dead = free.local_addr().unwrap().to_string();
    drop(free);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let me = listener.local_addr().unwrap().to_string();
    let boxes = Mailboxes::default();
    tokio::spawn(serve(listener, boxes.clone(), None, std::future::pending()));
    let mut r = Ring::new("job-2/1", 0, &[me, dead.clone()], boxes, cfg).unwrap();
    let started = Instant::now();
    let err = r.all_reduce(&mut [1.0, 2.0]).await.unwrap_err();
    assert!(
        matches!(err, CollectiveError::Peer { rank: 1, .. }),
        "unexpected error: {err}"
    );
    assert!(err.to_string().contains(&dead), "{err}");
    // A ring that could not open its links is broken: the next call says why at once.
    let again = r.all_reduce(&mut [1.0, 2.0]).await.unwrap_err();
    assert!(
        matches!(&again, CollectiveError::Broken(why) if why.contains(&dead)),
        "{again}"
    );
    // Waiting on the previous rank (the same dead one) would take 30 s: the failed stream
    // to the next rank ends the operation first.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

/// Rings of `n` ranks whose servers and links use mutual TLS with certificates of one CA.
async fn tls_ring(n: usize, dir: &std::path::Path) -> (Vec<Ring>, Servers) {
    let made = halyard_core::certs::init(dir, &["ring".to_string()]).unwrap();
    let (_, cert, key) = &made.nodes[0];
    let tls = halyard_core::tls::TlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        ca: Some(made.ca.clone()),
    }
    .load()
    .unwrap();
    loopback(n, "job-3/1", RingConfig::default(), Some(&tls))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 3)]
async fn over_mutual_tls_the_ring_sums_and_broadcasts_as_in_the_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (rings, _servers) = tls_ring(3, dir.path()).await;
    let len = 300_001;
    let mut tasks = Vec::new();
    for mut r in rings {
        tasks.push(tokio::spawn(async move {
            let mut v = values(r.rank(), len);
            r.all_reduce(&mut v).await.unwrap();
            let mut b = if r.rank() == 0 {
                vec![7u8; 1 << 20]
            } else {
                Vec::new()
            };
            r.broadcast(&mut b).await.unwrap();
            (v, b)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let each: Vec<Vec<f32>> = (0..3).map(|r| values(r, len)).collect();
    let want: Vec<f32> = (0..len).map(|i| each.iter().map(|v| v[i]).sum()).collect();
    for (v, b) in &results {
        assert_eq!(v.len(), len);
        for (a, w) in v.iter().zip(&want) {
            assert!((a - w).abs() <= 1e-3 * w.abs().max(1.0), "{a} vs {w}");
        }
        assert_eq!(b, &vec![7u8; 1 << 20]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranks_out_of_step_fail_clearly_and_the_ring_stays_broken() {
    let (rings, _servers) = ring(2, RingConfig::default()).await;
    let mut tasks = Vec::new();
    for mut r in rings {
        tasks.push(tokio::spawn(async move {
            // The ranks disagree on the vector's length.
            let mut v = vec![1.0f32; 100 + 10 * r.rank()];
            let first = r.all_reduce(&mut v).await.unwrap_err();
            let again = r.all_reduce(&mut [1.0, 2.0]).await.unwrap_err();
            (first, again)
        }));
    }
    let mut firsts = Vec::new();
    for t in tasks {
        let (first, again) = t.await.unwrap();
        assert!(
            matches!(again, CollectiveError::Broken(_)),
            "a broken ring was used again: {again}"
        );
        assert!(again.to_string().contains("operation 0"), "{again}");
        firsts.push(first);
    }
    assert!(
        firsts
            .iter()
            .any(|e| matches!(e, CollectiveError::Protocol(m) if m.contains("bytes where"))),
        "{firsts:?}"
    );
}
