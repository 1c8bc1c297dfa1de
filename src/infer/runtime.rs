//! The ONNX Runtime environment, loaded once per process from the library the model install
//! put in place, and the sessions built from it: what every model wrapper stands on.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use ort::session::Session;
use ort::session::builder::GraphOptimizationLevel;

use crate::config::{InferConfig, ModelsConfig, Provider};

/// An image as decoded RGB pixels.
pub type RgbImage = image::RgbImage;

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ONNX Runtime library is not where it should be.
    #[error(
        "ONNX Runtime library not found at {}; run `models/install.sh` (or set infer.ort_library or ORT_DYLIB_PATH)",
        path.display()
    )]
    LibraryMissing {
        /// Where it was looked for.
        path: PathBuf,
    },
    /// The library exists but cannot be used (wrong file, too old, missing dependencies).
    #[error("cannot load ONNX Runtime from {}: {message}", path.display())]
    Library {
        /// The library file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A model file is missing.
    #[error(
        "model file {} not found; run `models/install.sh` (or set models.dir or PANOPTES_MODELS)",
        path.display()
    )]
    ModelMissing {
        /// The expected file.
        path: PathBuf,
    },
    /// A model could not be loaded or run, or its output was not what was expected.
    #[error("{model}: {message}")]
    Model {
        /// Which model.
        model: &'static str,
        /// What went wrong.
        message: String,
    },
    /// An input could not be read or decoded.
    #[error("{source_name}: {message}")]
    Input {
        /// The input (file name, camera).
        source_name: String,
        /// What went wrong.
        message: String,
    },
}

/// Wraps any displayable error as a model error.
pub(crate) fn model_err(model: &'static str) -> impl Fn(&dyn std::fmt::Display) -> Error {
    move |e| Error::Model {
        model,
        message: e.to_string(),
    }
}

/// The ONNX Runtime environment, created once per process.
static ENVIRONMENT: OnceLock<(PathBuf, ort::environment::Environment)> = OnceLock::new();

/// Loads ONNX Runtime and builds sessions for the models in one directory.
pub struct Runtime {
    env: ort::environment::Environment,
    dir: PathBuf,
    provider: Provider,
    fallback_to_cpu: bool,
    threads: usize,
    /// Largest batch per model run.
    pub batch: usize,
    library: PathBuf,
}

impl Runtime {
    /// Finds and loads the ONNX Runtime library. The library is checked before `ort` touches
    /// it, so a missing or wrong file is an error, not a panic.
    pub fn new(infer: &InferConfig, models: &ModelsConfig) -> Result<Self, Error> {
        let dir = models.resolved_dir();
        let library = library_path(infer, &dir)?;
        let env = match ENVIRONMENT.get() {
            Some((loaded, env)) => {
                if *loaded != library {
                    return Err(Error::Library {
                        path: library,
                        message: format!(
                            "this process already loaded ONNX Runtime from {}",
                            loaded.display()
                        ),
                    });
                }
                env.clone()
            }
            None => {
                let lib_err = |message: String| Error::Library {
                    path: library.clone(),
                    message,
                };
                let env = ort::init_from(&library)
                    .map_err(|e| lib_err(e.to_string()))?
                    .with_name("panoptes")
                    .build()
                    .map_err(|e| lib_err(e.to_string()))?;
                ENVIRONMENT.get_or_init(|| (library.clone(), env)).1.clone()
            }
        };
        let threads = match infer.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        Ok(Self {
            env,
            dir,
            provider: infer.provider,
            fallback_to_cpu: infer.fallback_to_cpu,
            threads,
            batch: infer.frame_batch(),
            library,
        })
    }

    /// The models directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ONNX Runtime library in use.
    pub fn library(&self) -> &Path {
        &self.library
    }

    /// The execution provider sessions are built with.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// Threads per model run.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// A model file under the models directory, checked to exist.
    pub fn file(&self, relative: impl AsRef<Path>) -> Result<PathBuf, Error> {
        let path = self.dir.join(relative);
        if path.is_file() {
            Ok(path)
        } else {
            Err(Error::ModelMissing { path })
        }
    }

    /// Builds a session for `relative` (under the models directory) with the configured
    /// provider and threads.
    pub fn session(
        &self,
        model: &'static str,
        relative: impl AsRef<Path>,
    ) -> Result<Session, Error> {
        self.session_with_threads(model, relative, self.threads)
    }

    /// [`Runtime::session`] with its own thread count (small models served to many callers
    /// run better as several one-thread sessions than as one wide one).
    pub fn session_with_threads(
        &self,
        model: &'static str,
        relative: impl AsRef<Path>,
        threads: usize,
    ) -> Result<Session, Error> {
        let path = self.file(relative)?;
        let err = model_err(model);
        let mut builder = Session::builder(&self.env)
            .map_err(|e| err(&e))?
            .with_optimization_level(GraphOptimizationLevel::All)
            .map_err(|e| err(&e))?
            .with_intra_threads(threads.max(1))
            .map_err(|e| err(&e))?
            // Idle pool threads sleep instead of spinning. Spinning kept a core busy while
            // the other finished the serial parts of small runs, and took it from the
            // other models and the edge: without it, OCR runs 1.8x faster at batch 1 and
            // 100 cameras get 3.1 frames/s analysed instead of 1.8 (detection alone loses
            // about 6%).
            .with_intra_op_spinning(false)
            .map_err(|e| err(&e))?
            .with_inter_threads(1)
            .map_err(|e| err(&e))?;
        let eps = match self.provider {
            Provider::Cpu => Vec::new(),
            Provider::Cuda => vec![ort::ep::CUDA::default().build()],
            Provider::Tensorrt => vec![
                ort::ep::TensorRT::default().build(),
                ort::ep::CUDA::default().build(),
            ],
        };
        if !eps.is_empty() {
            let eps: Vec<_> = eps
                .into_iter()
                .map(|ep| {
                    if self.fallback_to_cpu {
                        ep.fail_silently()
                    } else {
                        ep.error_on_failure()
                    }
                })
                .collect();
            builder = builder
                .with_execution_providers(eps)
                .map_err(|e| Error::Model {
                    model,
                    message: format!(
                        "execution provider {:?} is not available ({e}); install onnxruntime-gpu \
                         with CUDA, or set infer.provider = \"cpu\" or infer.fallback_to_cpu = true",
                        self.provider
                    ),
                })?;
        }
        builder.commit_from_file(&path).map_err(|e| Error::Model {
            model,
            message: format!("cannot load {}: {e}", path.display()),
        })
    }
}

/// The ONNX Runtime library to load: `ORT_DYLIB_PATH`, else `infer.ort_library`, else the
/// newest `libonnxruntime.so.*` in `<models>/onnxruntime/`.
fn library_path(infer: &InferConfig, dir: &Path) -> Result<PathBuf, Error> {
    let explicit = std::env::var_os("ORT_DYLIB_PATH")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| infer.ort_library.clone());
    if let Some(path) = explicit {
        return if path.is_file() {
            Ok(path)
        } else {
            Err(Error::LibraryMissing { path })
        };
    }
    let folder = dir.join("onnxruntime");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&folder)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libonnxruntime.so."))
        })
        .collect();
    found.sort_by_key(|p| version_key(p));
    found.pop().ok_or(Error::LibraryMissing {
        path: folder.join("libonnxruntime.so.<version>"),
    })
}

/// `libonnxruntime.so.1.32.0` -> [1, 32, 0], so 1.100 sorts after 1.32.
fn version_key(p: &Path) -> Vec<u32> {
    p.file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("libonnxruntime.so."))
        .map(|v| v.split('.').map(|x| x.parse().unwrap_or(0)).collect())
        .unwrap_or_default()
}

/// A session and the buffers reused between its runs, behind one lock.
pub(crate) struct Slot<S> {
    pub session: Session,
    pub scratch: S,
}

pub(crate) type Shared<S> = Mutex<Slot<S>>;

/// Locks a shared session; a panic in another run does not poison the model for good.
pub(crate) fn lock<S>(m: &Shared<S>) -> std::sync::MutexGuard<'_, Slot<S>> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn newest_library_version_wins() {
        let mut v = [
            PathBuf::from("libonnxruntime.so.1.100.0"),
            PathBuf::from("libonnxruntime.so.1.32.0"),
        ];
        v.sort_by_key(|p| version_key(p));
        assert_eq!(v[1], PathBuf::from("libonnxruntime.so.1.100.0"));
    }

    #[test]
    fn missing_library_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let models = ModelsConfig {
            dir: dir.path().to_path_buf(),
            ..ModelsConfig::default()
        };
        let err = library_path(&InferConfig::default(), &models.dir).unwrap_err();
        assert!(matches!(err, Error::LibraryMissing { .. }));
        assert!(err.to_string().contains("models/install.sh"), "{err}");
    }
}
