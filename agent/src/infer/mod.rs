//! Inference: ONNX Runtime sessions, preprocessing, decoding, and the per-model worker
//! threads that batch frames across cameras.
//!
//! Each model gets `[inference] workers` OS threads (`infer-<model>`), each owning a
//! session: ONNX Runtime calls block for tens of milliseconds and must never run on the
//! async runtime's workers. A thread takes batches from the model's
//! [`queue::FrameQueue`] and sends one [`Analysed`] per frame down a bounded channel; when
//! that channel is full the thread waits (messages are never dropped) and the cameras'
//! latest-frame slots absorb the delay by replacing frames (counted).

pub mod decode;
pub mod detection;
mod detector;
#[cfg(test)]
mod format_tests;
pub mod letterbox;
pub mod manifest;
pub mod queue;
pub mod runtime;
mod shapes;
pub mod ssd;
mod stats;
mod worker;

pub use detector::{Detector, InferError, InputBatch};
pub use stats::{BATCH_BUCKETS, LATENCY_BUCKETS, ModelStats};
pub use worker::{Analysed, ModelSwap, run_worker};
