//! The cost of checking a request's API key on a node: the door's check with the key's
//! record already cached (every request after the first of a key within 2 s), against the
//! SHA-256 of the secret alone. `cargo bench -p halyard-core --bench auth`.

use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use halyard_core::auth::{Action, Role, Verifier, generate, parse_token};
use halyard_core::coord::Coordinator;
use halyard_core::kv::EmbeddedKv;

fn key_check(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let coord = Coordinator::new(Arc::new(EmbeddedKv::new()), "/bench");
    let key = generate(
        "bench",
        Role::Predictor,
        Some("campaign-*".into()),
        None,
        "bench",
        0,
    );
    rt.block_on(coord.create_key(&key.record)).unwrap();
    let verifier = Verifier::new(coord);
    let token = key.token.clone();
    // Warm the cache.
    rt.block_on(verifier.check(Some(&token), Action::Predict, Some("campaign-a")))
        .unwrap();
    let mut g = c.benchmark_group("key check");
    g.bench_function("verifier, cached record", |b| {
        b.iter(|| {
            rt.block_on(verifier.check(
                Some(std::hint::black_box(&token)),
                Action::Predict,
                Some("campaign-a"),
            ))
            .unwrap()
        })
    });
    let (_, secret) = parse_token(&key.token).unwrap();
    g.bench_function("sha-256 of the secret alone", |b| {
        b.iter(|| key.record.secret_matches(std::hint::black_box(secret)))
    });
    g.finish();
}

criterion_group!(benches, key_check);
criterion_main!(benches);
