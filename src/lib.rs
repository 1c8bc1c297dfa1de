//! Panoptes: a camera-analytics daemon.
//!
//! Edge workers pull RTSP streams, record clips without re-encoding and sample frames and
//! audio onto a bus; inference runs detection, OCR, speech recognition and text embeddings
//! through ONNX Runtime; an HTTP API serves camera state, snapshots and clips. See
//! `DESIGN.md` in the shared folder for the architecture and the contracts between stages.

pub mod api;
pub mod bus;
pub mod config;
pub mod edge;
pub mod geometry;
pub mod infer;
pub mod media;
pub mod replay;
pub mod run;
pub mod store;
pub mod telemetry;
