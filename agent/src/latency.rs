//! Where an analysed frame's time goes between its capture and its messages being
//! durable, stage by stage, as `/metrics` histograms (`lookout_stage_seconds`). What is
//! left of capture → publish after these is the MQTT hop (the broker and the network).
//!
//! A leaf: the pipeline, the inference worker and the events thread record into the one
//! process-wide [`STAGES`]; telemetry renders it.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// The stages, in flow order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Capture (the first packet's arrival) to the appsink: the jitter buffer, depayloading,
    /// decoding, scaling and colour conversion.
    Pipeline,
    /// The appsink to the start of the batch that analyses it: waiting for the model.
    Queue,
    /// The model run of that batch.
    Inference,
    /// The end of the run until the frame's messages are appended: waiting for the events
    /// thread, tracking, rules, snapshot encoding, the append.
    Events,
    /// The append until the fsync that makes them durable (only durable records are
    /// handed to MQTT).
    Durable,
}

impl Stage {
    pub const ALL: [Stage; 5] = [Stage::Pipeline, Stage::Queue, Stage::Inference, Stage::Events, Stage::Durable];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Pipeline => "pipeline",
            Stage::Queue => "queue",
            Stage::Inference => "inference",
            Stage::Events => "events",
            Stage::Durable => "durable",
        }
    }
}

/// Upper bounds (seconds) of the buckets.
pub const BUCKETS: [f64; 15] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 5.0, 10.0];

/// One histogram per stage (non-cumulative bucket counts, the last one +Inf).
pub struct StageStats {
    buckets: [[AtomicU64; BUCKETS.len() + 1]; Stage::ALL.len()],
    sum_us: [AtomicU64; Stage::ALL.len()],
}

/// The agent's stage histograms.
pub static STAGES: StageStats = StageStats {
    buckets: [const { [const { AtomicU64::new(0) }; BUCKETS.len() + 1] }; Stage::ALL.len()],
    sum_us: [const { AtomicU64::new(0) }; Stage::ALL.len()],
};

impl StageStats {
    pub fn record(&self, stage: Stage, seconds: f64) {
        let seconds = if seconds.is_finite() { seconds.max(0.0) } else { 0.0 };
        let i = BUCKETS.iter().position(|b| seconds <= *b).unwrap_or(BUCKETS.len());
        self.buckets[stage as usize][i].fetch_add(1, Ordering::Relaxed);
        self.sum_us[stage as usize].fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Prometheus text for `lookout_stage_seconds{stage=…}`.
    pub fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP lookout_stage_seconds Time an analysed frame spends in each stage from capture until its messages are durable (pipeline: jitter buffer and decoding; queue: waiting for the model; inference; events: tracking, rules, snapshots, append; durable: waiting for the fsync).\n\
             # TYPE lookout_stage_seconds histogram"
        );
        for stage in Stage::ALL {
            let mut cum = 0;
            for (i, b) in self.buckets[stage as usize].iter().enumerate() {
                cum += b.load(Ordering::Relaxed);
                let le = BUCKETS.get(i).map_or_else(|| "+Inf".to_string(), |b| b.to_string());
                let _ = writeln!(out, "lookout_stage_seconds_bucket{{stage=\"{}\",le=\"{le}\"}} {cum}", stage.as_str());
            }
            let sum = self.sum_us[stage as usize].load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(out, "lookout_stage_seconds_sum{{stage=\"{}\"}} {sum}", stage.as_str());
            let _ = writeln!(out, "lookout_stage_seconds_count{{stage=\"{}\"}} {cum}", stage.as_str());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_render_as_cumulative_buckets() {
        let s = StageStats {
            buckets: [const { [const { AtomicU64::new(0) }; BUCKETS.len() + 1] }; Stage::ALL.len()],
            sum_us: [const { AtomicU64::new(0) }; Stage::ALL.len()],
        };
        s.record(Stage::Queue, 0.004);
        s.record(Stage::Queue, 0.12);
        s.record(Stage::Queue, 60.0);
        // Not a duration: counted as zero rather than lost.
        s.record(Stage::Queue, f64::NAN);
        let mut out = String::new();
        s.render(&mut out);
        assert!(out.contains("lookout_stage_seconds_bucket{stage=\"queue\",le=\"0.005\"} 2\n"), "{out}");
        assert!(out.contains("lookout_stage_seconds_bucket{stage=\"queue\",le=\"0.15\"} 3\n"));
        assert!(out.contains("lookout_stage_seconds_bucket{stage=\"queue\",le=\"+Inf\"} 4\n"));
        assert!(out.contains("lookout_stage_seconds_count{stage=\"queue\"} 4\n"));
        assert!(out.contains("lookout_stage_seconds_sum{stage=\"queue\"} 60.124\n"), "{out}");
        assert!(out.contains("lookout_stage_seconds_count{stage=\"durable\"} 0\n"));
    }
}
