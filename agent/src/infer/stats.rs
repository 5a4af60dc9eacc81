//! A model's inference counters, exported on `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Upper bounds (seconds) of the inference latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 10] = [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0];
/// Upper bounds of the batch size histogram's buckets.
pub const BATCH_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// A model's inference counters, read by `/metrics` (Prometheus histograms: cumulative
/// bucket counts are computed when rendering).
#[derive(Debug, Default)]
pub struct ModelStats {
    pub name: String,
    /// Per bucket of [`LATENCY_BUCKETS`] (non-cumulative), then +Inf.
    pub latency_buckets: [AtomicU64; 11],
    pub latency_sum_us: AtomicU64,
    /// Per bucket of [`BATCH_BUCKETS`] (non-cumulative), then +Inf.
    pub batch_buckets: [AtomicU64; 8],
    pub frames: AtomicU64,
    pub runs: AtomicU64,
    pub failed_runs: AtomicU64,
}

impl ModelStats {
    pub fn new(name: &str) -> Self {
        Self { name: name.to_string(), ..Self::default() }
    }

    pub(super) fn record(&self, seconds: f64, batch: usize) {
        let i = LATENCY_BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(LATENCY_BUCKETS.len());
        self.latency_buckets[i].fetch_add(1, Ordering::Relaxed);
        self.latency_sum_us.fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
        let j = BATCH_BUCKETS.iter().position(|b| batch as u64 <= *b).unwrap_or(BATCH_BUCKETS.len());
        self.batch_buckets[j].fetch_add(1, Ordering::Relaxed);
        self.frames.fetch_add(batch as u64, Ordering::Relaxed);
        self.runs.fetch_add(1, Ordering::Relaxed);
    }
}
