//! What the integration tests share: an in-process group of threads.

use std::sync::{Arc, Barrier, Mutex};

use halyard_models::distributed::Collective;

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
