//! Sentence embeddings (all-MiniLM-L6-v2): the text of an insight, or a search query, as a
//! unit vector, so that cosine similarity is a dot product.

use std::sync::Mutex;

use ort::value::TensorRef;
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

use super::runtime::{Error, Runtime, Shared, Slot, lock, model_err};

/// Longest input in tokens; longer texts are cut.
const MAX_TOKENS: usize = 128;

#[derive(Default)]
struct Scratch {
    ids: Vec<i64>,
    mask: Vec<i64>,
    types: Vec<i64>,
}

/// Text embeddings: one single-threaded session per core, so search queries embedded by
/// many API requests at once run side by side instead of queueing for one session.
pub struct Embedder {
    slots: Vec<Shared<Scratch>>,
    next: std::sync::atomic::AtomicUsize,
    tokenizer: Tokenizer,
    batch: usize,
}

const MODEL: &str = "embedder";

impl Embedder {
    /// Dimensions of an embedding.
    pub const DIM: usize = 384;

    /// Loads `minilm/{model.onnx,tokenizer.json}` from the models directory.
    pub fn load(rt: &Runtime) -> Result<Self, Error> {
        let err = model_err(MODEL);
        let slots = (0..rt.threads().max(1))
            .map(|_| {
                Ok(Mutex::new(Slot {
                    session: rt.session_with_threads(MODEL, "minilm/model.onnx", 1)?,
                    scratch: Scratch::default(),
                }))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let mut tokenizer =
            Tokenizer::from_file(rt.file("minilm/tokenizer.json")?).map_err(|e| err(&e))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length: MAX_TOKENS,
                ..Default::default()
            }))
            .map_err(|e| err(&e))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..Default::default()
        }));
        Ok(Self {
            slots,
            next: std::sync::atomic::AtomicUsize::new(0),
            tokenizer,
            batch: rt.batch.max(16),
        })
    }

    /// Embeds each text: unit vectors of [`Embedder::DIM`] values.
    /// Several batches run side by side on the single-threaded sessions.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, Error> {
        let chunks: Vec<&[&str]> = texts.chunks(self.batch).collect();
        let workers = self.slots.len().min(chunks.len());
        if workers <= 1 {
            let mut out = Vec::with_capacity(texts.len());
            for chunk in chunks {
                self.embed_batch(chunk, &mut out)?;
            }
            return Ok(out);
        }
        // Worker w takes chunks w, w + workers, ...; results are put back in order.
        let per_worker: Vec<Result<Vec<Vec<Vec<f32>>>, Error>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..workers)
                .map(|w| {
                    let chunks = &chunks;
                    scope.spawn(move || {
                        chunks
                            .iter()
                            .skip(w)
                            .step_by(workers)
                            .map(|c| {
                                let mut v = Vec::with_capacity(c.len());
                                self.embed_batch(c, &mut v).map(|()| v)
                            })
                            .collect()
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
                .collect()
        });
        let mut per_worker: Vec<std::vec::IntoIter<Vec<Vec<f32>>>> = per_worker
            .into_iter()
            .map(|r| r.map(Vec::into_iter))
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(texts.len());
        for i in 0..chunks.len() {
            out.extend(per_worker[i % workers].next().unwrap_or_default());
        }
        Ok(out)
    }

    /// An idle session if there is one, else the next in turn.
    fn free_slot(&self) -> std::sync::MutexGuard<'_, Slot<Scratch>> {
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for i in 0..self.slots.len() {
            if let Ok(g) = self.slots[(start + i) % self.slots.len()].try_lock() {
                return g;
            }
        }
        lock(&self.slots[start % self.slots.len()])
    }

    fn embed_batch(&self, texts: &[&str], out: &mut Vec<Vec<f32>>) -> Result<(), Error> {
        let err = model_err(MODEL);
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|e| err(&e))?;
        let len = encodings.first().map_or(0, |e| e.len());
        let mut guard = self.free_slot();
        let Slot { session, scratch } = &mut *guard;
        scratch.ids.clear();
        scratch.mask.clear();
        scratch.types.clear();
        for e in &encodings {
            scratch.ids.extend(e.get_ids().iter().map(|&v| v as i64));
            scratch
                .mask
                .extend(e.get_attention_mask().iter().map(|&v| v as i64));
            scratch
                .types
                .extend(e.get_type_ids().iter().map(|&v| v as i64));
        }
        let shape = [texts.len(), len];
        let outputs = session
            .run(ort::inputs![
                "input_ids" => TensorRef::from_array_view((shape, &*scratch.ids)).map_err(|e| err(&e))?,
                "attention_mask" => TensorRef::from_array_view((shape, &*scratch.mask)).map_err(|e| err(&e))?,
                "token_type_ids" => TensorRef::from_array_view((shape, &*scratch.types)).map_err(|e| err(&e))?,
            ])
            .map_err(|e| err(&e))?;
        let (oshape, hidden) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| err(&e))?;
        let dim = *oshape.last().unwrap_or(&0) as usize;
        if dim != Self::DIM {
            return Err(Error::Model {
                model: MODEL,
                message: format!("output shape {oshape:?}, expected [N, L, {}]", Self::DIM),
            });
        }
        for (i, mask) in scratch.mask.chunks(len).enumerate() {
            out.push(mean_pool(&hidden[i * len * dim..][..len * dim], mask, dim));
        }
        Ok(())
    }
}

/// Most search queries embedded in one run of the model (measured on 2 cores: 5.0 ms for
/// one query alone, 3.4 ms a query at 8 to a run).
const QUERY_BATCH: usize = 8;

struct QueryJob {
    text: String,
    reply: tokio::sync::oneshot::Sender<Result<Vec<f32>, String>>,
}

/// Embeds search queries as they arrive. One thread per session of the [`Embedder`] takes
/// the oldest waiting query together with every query that came while the sessions were
/// busy (up to [`QUERY_BATCH`]) and runs them as one batch: concurrent searches share the
/// model's fixed cost, are answered in the order they came, and an idle server embeds a
/// lone query at once. The threads end when this is dropped.
pub struct QueryEmbedder {
    queue: std::sync::mpsc::Sender<QueryJob>,
}

impl QueryEmbedder {
    /// Starts the threads.
    pub fn new(embedder: std::sync::Arc<Embedder>) -> std::io::Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<QueryJob>();
        let rx = std::sync::Arc::new(Mutex::new(rx));
        for i in 0..embedder.slots.len() {
            let (rx, embedder) = (std::sync::Arc::clone(&rx), std::sync::Arc::clone(&embedder));
            std::thread::Builder::new()
                .name(format!("query-embed-{i}"))
                .spawn(move || {
                    while let Some(jobs) = next_queries(&rx) {
                        let texts: Vec<&str> = jobs.iter().map(|j| j.text.as_str()).collect();
                        match embedder.embed(&texts) {
                            Ok(vectors) => {
                                for (job, v) in jobs.into_iter().zip(vectors) {
                                    let _ = job.reply.send(Ok(v));
                                }
                            }
                            Err(e) => {
                                let e = e.to_string();
                                for job in jobs {
                                    let _ = job.reply.send(Err(e.clone()));
                                }
                            }
                        }
                    }
                })?;
        }
        Ok(Self { queue: tx })
    }

    /// The query as a unit vector; waits its turn without holding a thread.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>, String> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job = QueryJob {
            text: text.to_string(),
            reply,
        };
        self.queue
            .send(job)
            .map_err(|_| "the query embedder has stopped".to_string())?;
        answer
            .await
            .map_err(|_| "the query embedder has stopped".to_string())?
    }
}

/// Blocks for the next query, then takes those already waiting behind it. `None` once
/// the [`QueryEmbedder`] is gone.
fn next_queries(rx: &Mutex<std::sync::mpsc::Receiver<QueryJob>>) -> Option<Vec<QueryJob>> {
    let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
    let mut jobs = vec![rx.recv().ok()?];
    while jobs.len() < QUERY_BATCH {
        match rx.try_recv() {
            Ok(job) => jobs.push(job),
            Err(_) => break,
        }
    }
    Some(jobs)
}

/// Mean of the token vectors where `mask` is 1, scaled to unit length (the sum is enough:
/// the mean's divisor cancels in the scaling).
fn mean_pool(hidden: &[f32], mask: &[i64], dim: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; dim];
    for (token, &m) in hidden.chunks(dim).zip(mask) {
        if m != 0 {
            for (a, b) in v.iter_mut().zip(token) {
                *a += b;
            }
        }
    }
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let scale = if norm > 0.0 { 1.0 / norm } else { 0.0 };
    v.iter_mut().for_each(|x| *x *= scale);
    v
}

/// Cosine similarity of two unit vectors.
pub fn similarity(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_padding_and_normalises() {
        let hidden = [3.0, 0.0, 0.0, 4.0, 100.0, 100.0];
        let v = mean_pool(&hidden, &[1, 1, 0], 2);
        assert!(
            (v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6,
            "{v:?}"
        );
        assert!((similarity(&v, &v) - 1.0).abs() < 1e-6);
    }
}
