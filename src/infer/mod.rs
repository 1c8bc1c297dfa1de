//! Inference: object detection, text reading, speech recognition and text embeddings
//! through ONNX Runtime.
//!
//! [`Runtime`] loads the ONNX Runtime library once per process and builds sessions with the
//! configured execution provider and thread count. Each model wrapper ([`Detector`], [`Ocr`],
//! [`Speech`], [`Embedder`]) owns its sessions and reusable buffers, takes a batch of inputs
//! (frames from many cameras, crops, audio segments, texts) and returns typed results.
//! Sessions are shared behind a mutex: a worker holds one model at a time, and ONNX Runtime's
//! own threads do the parallel work inside a run.

pub mod analyze;
mod detect;
mod embed;
mod ocr;
mod pixels;
mod runtime;
mod speech;
mod tracks;
pub mod worker;

use crate::config::{InferConfig, ModelsConfig};

pub use crate::geometry::BBox;
pub use detect::{Detection, Detector};
pub use embed::{Embedder, QueryEmbedder, similarity};
pub use ocr::{Ocr, TextLine};
pub use pixels::decode as decode_image;
pub use runtime::{Error, RgbImage, Runtime};
pub use speech::{Speech, SpeechSegment, VadStream, log_mel, whisper_files};

/// Every model, loaded per the config: what `panoptes analyze` and the infer worker use.
pub struct Models {
    /// The runtime the sessions belong to.
    pub runtime: Runtime,
    /// Object detection, when enabled.
    pub detector: Option<Detector>,
    /// Text reading, when enabled.
    pub ocr: Option<Ocr>,
    /// Voice activity detection + speech recognition, when enabled.
    pub speech: Option<Speech>,
    /// Text embeddings (shared with the API, which embeds search queries).
    pub embedder: std::sync::Arc<Embedder>,
}

impl Models {
    /// Loads ONNX Runtime and every enabled model.
    pub fn load(infer: &InferConfig, models: &ModelsConfig) -> Result<Self, Error> {
        let runtime = Runtime::new(infer, models)?;
        let detector = if infer.detection.enabled {
            Some(Detector::load(
                &runtime,
                &models.detector,
                &infer.detection,
            )?)
        } else {
            None
        };
        let ocr = if infer.ocr.enabled {
            Some(Ocr::load(&runtime, &infer.ocr)?)
        } else {
            None
        };
        let speech = if infer.speech.enabled {
            Some(Speech::load(&runtime, infer)?)
        } else {
            None
        };
        let embedder = std::sync::Arc::new(Embedder::load(&runtime)?);
        Ok(Self {
            runtime,
            detector,
            ocr,
            speech,
            embedder,
        })
    }
}
