//! Samples/s of one MLP training step on the CPU (forward, BCE, backward, AdamW), burn flex.
//!
//! The architecture matches `benches/torch_mlp.py`: 64 numeric inputs, hidden 256 and 256,
//! one logit, batch 1024; and the bank-marketing MLP's shape (8 categorical columns with
//! embeddings, 7 numerics, hidden 128 and 64, batch 512).
//!
//! `cargo bench -p halyard-models --bench mlp_train`

use std::hint::black_box;

use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams};
use burn::prelude::Module;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use halyard_models::device::bce_with_logits;

#[derive(Module, Debug)]
struct Mlp {
    l1: Linear,
    l2: Linear,
    out: Linear,
}

impl Mlp {
    fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.out
            .forward(relu(self.l2.forward(relu(self.l1.forward(x)))))
    }
}

fn bench(c: &mut Criterion) {
    let device = Device::flex().autodiff();
    device.seed(1);
    let (inputs, hidden, batch) = (64, 256, 1024);
    let mut model = Mlp {
        l1: LinearConfig::new(inputs, hidden).init(&device),
        l2: LinearConfig::new(hidden, hidden).init(&device),
        out: LinearConfig::new(hidden, 1).init(&device),
    };
    let mut optim = AdamWConfig::new().init();
    let xs: Vec<f32> = (0..batch * inputs)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
        .collect();
    let ys: Vec<f32> = (0..batch).map(|i| (i % 9 == 0) as u8 as f32).collect();
    let mut g = c.benchmark_group("mlp_train_step");
    g.throughput(Throughput::Elements(batch as u64));
    g.sample_size(30);
    g.bench_function("burn_flex_64x256x256x1_batch1024", |b| {
        b.iter(|| {
            let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [batch, inputs]), &device);
            let y = Tensor::<2>::from_data(TensorData::new(ys.clone(), [batch, 1]), &device);
            let loss = bce_with_logits(model.forward(x), y).mean();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model.clone(), grads);
            black_box(&model);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
