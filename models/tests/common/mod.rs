//! What the integration tests share: an in-process group of threads, the features of a
//! test table, a trained model loaded as a service loads it, and a fixture's numbers.
// (Each test file uses some of these.)
#![allow(dead_code)]

use std::sync::{Arc, Barrier, Mutex};

use halyard_models::artifact::{DataLineage, Manifest};
use halyard_models::distributed::Collective;
use halyard_models::pipeline::TrainedModel;
use halyard_models::preprocess::{Encoding, FeatureConfig};
use halyard_models::runtime::LoadedModel;
use serde_json::Value;

/// `label` as the label and every other column an input: one-hot categoricals (10 kept),
/// every fifth row (index % 5 == 4) a test row and the one before it a validation row.
pub(crate) fn features(label: &str) -> FeatureConfig {
    FeatureConfig {
        label: label.into(),
        positive: None,
        exclude: vec![],
        categorical: vec![],
        encoding: Encoding::OneHot,
        max_categories: 10,
        hash_buckets: 16,
        holdout_every: 5,
        split_column: None,
        numeric_buckets: 0,
        crosses: vec![],
    }
}

/// `model` as a service loads it: from its weights file and its manifest's JSON (`rows`:
/// the data's row count, for the lineage).
pub(crate) fn loaded(model: &TrainedModel, rows: usize) -> LoadedModel {
    LoadedModel::from_bytes(&model.weights, &manifest_json(model, rows)).unwrap()
}

/// The JSON of `model`'s manifest as a service reads it.
pub(crate) fn manifest_json(model: &TrainedModel, rows: usize) -> Vec<u8> {
    let manifest = Manifest {
        format: model.architecture.format().into(),
        name: "t".into(),
        version: 1,
        architecture: model.architecture.clone(),
        tensors: Default::default(),
        metrics: model.metrics.clone(),
        spec: serde_json::json!({}),
        data: DataLineage {
            source: "mem".into(),
            digest: "sha256:0".into(),
            rows,
            train_rows: model.train_rows,
            test_rows: model.test_rows,
        },
        job_id: "j".into(),
        halyard_version: "0".into(),
        created_ms: 0,
        reference: model.reference.clone(),
    };
    serde_json::to_vec(&manifest).unwrap()
}

/// A fixture's array of numbers.
pub(crate) fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Threads summing through shared slots, in rank order (the same bits on every rank).
pub(crate) struct Threads {
    pub(crate) rank: usize,
    pub(crate) size: usize,
    slots: Arc<Mutex<Vec<Vec<f32>>>>,
    bytes: Arc<Mutex<Vec<u8>>>,
    barrier: Arc<Barrier>,
}

pub(crate) fn group(size: usize) -> Vec<Threads> {
    let slots = Arc::new(Mutex::new(vec![Vec::new(); size]));
    let bytes = Arc::new(Mutex::new(Vec::new()));
    let barrier = Arc::new(Barrier::new(size));
    (0..size)
        .map(|rank| Threads {
            rank,
            size,
            slots: slots.clone(),
            bytes: bytes.clone(),
            barrier: barrier.clone(),
        })
        .collect()
}

impl Collective for Threads {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn all_reduce(&mut self, data: &mut [f32]) -> halyard_models::Result<()> {
        self.slots.lock().unwrap()[self.rank] = data.to_vec();
        self.barrier.wait();
        {
            let slots = self.slots.lock().unwrap();
            for (i, x) in data.iter_mut().enumerate() {
                *x = slots.iter().map(|s| s[i]).fold(0.0, |a, b| a + b);
            }
        }
        self.barrier.wait();
        Ok(())
    }
    fn broadcast(&mut self, data: &mut Vec<u8>) -> halyard_models::Result<()> {
        if self.rank == 0 {
            *self.bytes.lock().unwrap() = data.clone();
        }
        self.barrier.wait();
        if self.rank != 0 {
            *data = self.bytes.lock().unwrap().clone();
        }
        self.barrier.wait();
        Ok(())
    }
}
