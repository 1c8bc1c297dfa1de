//! Object detection with a YOLOv8-layout ONNX model: letterbox, batch, decode, class-wise NMS.
//!
//! Any model with input f32[N,3,S,S], output f32[N,4+classes,anchors] (cx, cy, w, h in input
//! pixels, then class scores, no objectness) and a `names` metadata entry works, as
//! `yolo export format=onnx` writes it.

use std::path::Path;
use std::sync::Mutex;

use ort::value::TensorRef;
use serde::Serialize;

use super::pixels::{self, Affine, Normalize, Target};
use super::runtime::{Error, RgbImage, Runtime, Shared, Slot, lock, model_err};
use crate::config::DetectionConfig;
use crate::geometry::BBox;

/// One detected object.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detection {
    /// Class name from the model's metadata.
    pub label: String,
    /// Class index.
    #[serde(skip)]
    pub class: usize,
    /// Class score, 0..1.
    pub confidence: f32,
    /// Where, in normalised image coordinates.
    pub bbox: BBox,
}

/// Buffers reused between runs.
#[derive(Default)]
struct Scratch {
    input: Vec<f32>,
    best: Vec<(f32, u32)>,
    candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, Copy)]
struct Candidate {
    class: usize,
    score: f32,
    /// x0, y0, x1, y1 in input pixels.
    bbox: [f32; 4],
}

/// A YOLOv8-layout detector.
pub struct Detector {
    slot: Shared<Scratch>,
    labels: Vec<String>,
    size: usize,
    min_confidence: f32,
    nms_iou: f32,
    batch: usize,
    /// The model's file stem, reported with each insight.
    pub name: String,
}

const MODEL: &str = "detector";

impl Detector {
    /// Loads the detector at `path` (relative to the models directory, or absolute).
    pub fn load(rt: &Runtime, path: &Path, cfg: &DetectionConfig) -> Result<Self, Error> {
        let session = rt.session(MODEL, path)?;
        let err = model_err(MODEL);
        let meta = session.metadata().map_err(|e| err(&e))?;
        let names = meta.custom("names").ok_or_else(|| Error::Model {
            model: MODEL,
            message: format!(
                "{} has no `names` metadata; a YOLOv8-layout model lists its classes there",
                path.display()
            ),
        })?;
        let labels = parse_names(&names).map_err(|m| Error::Model {
            model: MODEL,
            message: format!("cannot read its `names` metadata: {m}"),
        })?;
        drop(meta);
        let size = match session.inputs().first().map(|i| i.dtype().tensor_shape()) {
            Some(Some(shape)) if shape.len() == 4 && shape[2] > 0 && shape[2] == shape[3] => {
                shape[2] as usize
            }
            _ => 640,
        };
        Ok(Self {
            slot: Mutex::new(Slot {
                session,
                scratch: Scratch::default(),
            }),
            labels,
            size,
            min_confidence: cfg.min_confidence,
            nms_iou: cfg.nms_iou,
            batch: rt.batch,
            name: path
                .file_stem()
                .map_or("detector".into(), |s| s.to_string_lossy().into_owned()),
        })
    }

    /// Class names, by index.
    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    /// Detects objects in each image; one list per image, strongest first.
    pub fn detect(&self, images: &[&RgbImage]) -> Result<Vec<Vec<Detection>>, Error> {
        let mut out = Vec::with_capacity(images.len());
        for chunk in images.chunks(self.batch) {
            self.detect_batch(chunk, &mut out)?;
        }
        Ok(out)
    }

    fn detect_batch(
        &self,
        images: &[&RgbImage],
        out: &mut Vec<Vec<Detection>>,
    ) -> Result<(), Error> {
        let err = model_err(MODEL);
        let s = self.size;
        let per_image = 3 * s * s;
        let mut guard = lock(&self.slot);
        let Slot { session, scratch } = &mut *guard;
        scratch.input.resize(images.len() * per_image, 0.0);
        let mut boxes = Vec::with_capacity(images.len());
        for (img, dst) in images.iter().zip(scratch.input.chunks_mut(per_image)) {
            boxes.push(letterbox(img, s, dst));
        }
        let input = TensorRef::from_array_view(([images.len(), 3, s, s], &*scratch.input))
            .map_err(|e| err(&e))?;
        let outputs = session.run(ort::inputs![input]).map_err(|e| err(&e))?;
        let (shape, data) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| err(&e))?;
        let classes = self.labels.len();
        if shape.len() != 3 || shape[1] as usize != 4 + classes {
            return Err(Error::Model {
                model: MODEL,
                message: format!(
                    "output shape {shape:?} does not fit {classes} classes ([N, 4 + classes, anchors])"
                ),
            });
        }
        let anchors = shape[2] as usize;
        for (i, (img, lb)) in images.iter().zip(&boxes).enumerate() {
            let rows = &data[i * (4 + classes) * anchors..][..(4 + classes) * anchors];
            decode(
                rows,
                classes,
                anchors,
                self.min_confidence,
                &mut scratch.best,
                &mut scratch.candidates,
            );
            nms(&mut scratch.candidates, self.nms_iou);
            out.push(
                scratch
                    .candidates
                    .iter()
                    .map(|c| {
                        let [x0, y0, x1, y1] = lb.unmap(c.bbox);
                        Detection {
                            label: self.labels[c.class].clone(),
                            class: c.class,
                            confidence: c.score,
                            bbox: BBox::from_pixels(x0, y0, x1, y1, img.width(), img.height()),
                        }
                    })
                    .collect(),
            );
        }
        Ok(())
    }
}

/// How an image was placed in the square input.
#[derive(Debug, Clone, Copy)]
struct Letterbox {
    scale: f32,
    pad_x: f32,
    pad_y: f32,
}

impl Letterbox {
    fn unmap(&self, b: [f32; 4]) -> [f32; 4] {
        [
            (b[0] - self.pad_x) / self.scale,
            (b[1] - self.pad_y) / self.scale,
            (b[2] - self.pad_x) / self.scale,
            (b[3] - self.pad_y) / self.scale,
        ]
    }
}

/// Scales `img` to fit `size` x `size` keeping its aspect, centred on gray 114, into `dst`.
fn letterbox(img: &RgbImage, size: usize, dst: &mut [f32]) -> Letterbox {
    let (w, h) = (img.width().max(1) as f32, img.height().max(1) as f32);
    let scale = (size as f32 / w).min(size as f32 / h);
    let nw = ((w * scale).round() as usize).clamp(1, size);
    let nh = ((h * scale).round() as usize).clamp(1, size);
    let x0 = (size - nw) / 2;
    let y0 = (size - nh) / 2;
    pixels::fill(dst, 114.0, &Normalize::UNIT_RGB);
    let target = Target {
        plane_w: size,
        plane_h: size,
        x0,
        y0,
        w: nw,
        h: nh,
    };
    let map = Affine::resize(img.width(), img.height(), nw, nh);
    pixels::sample(img, &map, dst, &target, &Normalize::UNIT_RGB);
    Letterbox {
        scale,
        pad_x: x0 as f32,
        pad_y: y0 as f32,
    }
}

/// Best class per anchor above `min`, from rows laid out as [4 + classes][anchors]. Scores
/// are scanned class by class (contiguous rows), keeping the best per anchor in `best`.
fn decode(
    rows: &[f32],
    classes: usize,
    anchors: usize,
    min: f32,
    best: &mut Vec<(f32, u32)>,
    out: &mut Vec<Candidate>,
) {
    out.clear();
    best.clear();
    best.resize(anchors, (f32::NEG_INFINITY, 0));
    for c in 0..classes {
        let row = &rows[(4 + c) * anchors..(5 + c) * anchors];
        for (b, &v) in best.iter_mut().zip(row) {
            if v > b.0 {
                *b = (v, c as u32);
            }
        }
    }
    for (a, &(score, class)) in best.iter().enumerate() {
        if score < min {
            continue;
        }
        let (cx, cy) = (rows[a], rows[anchors + a]);
        let (w, h) = (rows[2 * anchors + a], rows[3 * anchors + a]);
        out.push(Candidate {
            class: class as usize,
            score,
            bbox: [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0],
        });
    }
}

fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let area = |r: &[f32; 4]| (r[2] - r[0]).max(0.0) * (r[3] - r[1]).max(0.0);
    let union = area(a) + area(b) - inter;
    if union <= 0.0 { 0.0 } else { inter / union }
}

/// Class-wise non-maximum suppression, in place; survivors stay sorted by score.
fn nms(cands: &mut Vec<Candidate>, threshold: f32) {
    cands.sort_by(|a, b| b.score.total_cmp(&a.score));
    let mut kept: Vec<Candidate> = Vec::with_capacity(cands.len());
    for c in cands.iter() {
        if kept
            .iter()
            .all(|k| k.class != c.class || iou(&k.bbox, &c.bbox) <= threshold)
        {
            kept.push(*c);
        }
    }
    *cands = kept;
}

/// Reads the class names from a `names` metadata value: the Python dict Ultralytics writes
/// (`{0: 'person', 1: 'bicycle'}`), a JSON object (`{"0": "person"}`) or a JSON array.
fn parse_names(text: &str) -> Result<Vec<String>, String> {
    if let Ok(list) = serde_json::from_str::<Vec<String>>(text) {
        return Ok(list);
    }
    let body = text
        .trim()
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .ok_or("expected {index: 'name', ...}")?;
    let mut entries: Vec<(usize, String)> = Vec::new();
    let mut rest = body.trim();
    while !rest.is_empty() {
        let colon = rest.find(':').ok_or("an entry has no ':'")?;
        let key = rest[..colon].trim().trim_matches(['"', '\'']);
        let index: usize = key.parse().map_err(|_| format!("bad index {key:?}"))?;
        let after = rest[colon + 1..].trim_start();
        let quote = after.chars().next().filter(|c| *c == '\'' || *c == '"');
        let quote = quote.ok_or_else(|| format!("the name of class {index} is not quoted"))?;
        let end = after[1..]
            .find(quote)
            .ok_or_else(|| format!("the name of class {index} is not closed"))?;
        entries.push((index, after[1..1 + end].to_string()));
        rest = after[end + 2..].trim_start();
        rest = rest.strip_prefix(',').unwrap_or(rest).trim_start();
    }
    entries.sort_by_key(|e| e.0);
    if entries.iter().enumerate().any(|(i, e)| e.0 != i) {
        return Err("class indexes must run 0, 1, 2, ... without gaps".into());
    }
    if entries.is_empty() {
        return Err("no classes".into());
    }
    Ok(entries.into_iter().map(|e| e.1).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_in_every_format() {
        let want = vec![
            "person".to_string(),
            "traffic light".into(),
            "o'clock".into(),
        ];
        assert_eq!(
            parse_names("{0: 'person', 1: 'traffic light', 2: \"o'clock\"}").unwrap(),
            want
        );
        assert_eq!(
            parse_names(r#"{"0": "person", "1": "traffic light", "2": "o'clock"}"#).unwrap(),
            want
        );
        assert_eq!(
            parse_names(r#"["person", "traffic light", "o'clock"]"#).unwrap(),
            want
        );
        assert!(parse_names("{0: 'a', 2: 'b'}").is_err());
        assert!(parse_names("person").is_err());
    }

    #[test]
    fn nms_keeps_the_best_box_per_class() {
        let c = |class, score, x| Candidate {
            class,
            score,
            bbox: [x, 0.0, x + 10.0, 10.0],
        };
        let mut v = vec![
            c(0, 0.6, 1.0),
            c(0, 0.9, 0.0),
            c(1, 0.5, 0.0),
            c(0, 0.7, 50.0),
        ];
        nms(&mut v, 0.45);
        let got: Vec<_> = v.iter().map(|c| (c.class, c.score)).collect();
        assert_eq!(got, vec![(0, 0.9), (0, 0.7), (1, 0.5)]);
    }

    #[test]
    fn decode_picks_the_best_class_and_converts_centres() {
        // 2 anchors, 2 classes: rows cx, cy, w, h, class0, class1.
        let rows = [
            10.0, 20.0, // cx
            10.0, 20.0, // cy
            4.0, 4.0, // w
            2.0, 2.0, // h
            0.1, 0.8, // class 0
            0.3, 0.2, // class 1
        ];
        let mut out = Vec::new();
        decode(&rows, 2, 2, 0.25, &mut Vec::new(), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!((out[0].class, out[0].score), (1, 0.3));
        assert_eq!(out[0].bbox, [8.0, 9.0, 12.0, 11.0]);
        assert_eq!((out[1].class, out[1].score), (0, 0.8));
    }

    #[test]
    fn letterbox_maps_back_to_image_pixels() {
        let img = RgbImage::new(640, 320);
        let mut dst = vec![0.0; 3 * 64 * 64];
        let lb = letterbox(&img, 64, &mut dst);
        assert_eq!((lb.scale, lb.pad_x, lb.pad_y), (0.1, 0.0, 16.0));
        assert_eq!(lb.unmap([0.0, 16.0, 64.0, 48.0]), [0.0, 0.0, 640.0, 320.0]);
        // The border is gray 114.
        assert!((dst[0] - 114.0 / 255.0).abs() < 1e-6);
    }
}
