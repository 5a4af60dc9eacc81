//! Lookout: an edge video-analytics agent. RTSP cameras in (GStreamer), ONNX detections
//! (ONNX Runtime through `ort`), MQTT messages out. See ARCHITECTURE.md for the flow.

pub mod agent;
pub mod camera;
pub mod cli;
pub mod config;
pub mod console;
pub mod control;
pub mod demo;
pub mod event;
pub mod infer;
pub mod latency;
pub mod model;
pub mod probe;
pub mod publish;
pub mod rules;
pub mod site;
pub mod source;
pub mod telemetry;
pub mod track;
