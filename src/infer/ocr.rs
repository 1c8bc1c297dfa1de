//! Reading text in images with PaddleOCR models: DB text detection, minimum-area boxes,
//! rotated crops, an upright / upside-down check, and CTC recognition in batches of crops.

use std::sync::Mutex;

use ort::value::TensorRef;
use serde::Serialize;

use super::pixels::{self, Affine, Normalize, Target};
use super::runtime::{Error, RgbImage, Runtime, Shared, Slot, lock, model_err};
use crate::config::OcrConfig;
use crate::geometry::BBox;

/// One line of text found in an image.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextLine {
    /// What it says.
    pub text: String,
    /// Mean probability of the recognised characters, 0..1.
    pub confidence: f32,
    /// Where, in normalised image coordinates (axis-aligned around the rotated box).
    pub bbox: BBox,
}

/// Longest side of the image the text detector sees.
const DET_LIMIT_SIDE: f32 = 736.0;
/// Pixel probability above which a pixel is text.
const DET_THRESHOLD: f32 = 0.3;
/// Mean probability of a region below which it is not text.
const BOX_THRESHOLD: f32 = 0.5;
/// How much a region is grown back (DB shrinks text regions in training).
const UNCLIP_RATIO: f32 = 1.6;
/// Regions considered per image.
const MAX_CANDIDATES: usize = 1000;
/// Height of a text line crop for recognition.
const REC_HEIGHT: usize = 48;
/// Narrowest batch width for recognition (PaddleOCR's 320 x 48).
const REC_MIN_WIDTH: usize = 320;
/// Widest crop recognised (longer lines are squeezed).
const REC_MAX_WIDTH: usize = 2048;
/// The orientation classifier's input size.
const CLS_W: usize = 192;
/// Confidence needed before a crop is turned around.
const CLS_THRESHOLD: f32 = 0.9;

#[derive(Default)]
struct DetScratch {
    input: Vec<f32>,
    labels: Vec<u32>,
    stack: Vec<usize>,
}

#[derive(Default)]
struct RecScratch {
    input: Vec<f32>,
}

/// A text region in source-image pixels: corners top-left, top-right, bottom-left, with
/// width along the text and height across it.
#[derive(Debug, Clone, Copy)]
struct Region {
    tl: [f32; 2],
    tr: [f32; 2],
    bl: [f32; 2],
    width: f32,
    height: f32,
}

impl Region {
    fn turned(&self) -> Region {
        // The same box read from the other end: bottom-right becomes top-left.
        let br = [
            self.tr[0] + self.bl[0] - self.tl[0],
            self.tr[1] + self.bl[1] - self.tl[1],
        ];
        Region {
            tl: br,
            tr: self.bl,
            bl: self.tr,
            ..*self
        }
    }

    fn bbox(&self, w: u32, h: u32) -> BBox {
        let br = [
            self.tr[0] + self.bl[0] - self.tl[0],
            self.tr[1] + self.bl[1] - self.tl[1],
        ];
        let xs = [self.tl[0], self.tr[0], self.bl[0], br[0]];
        let ys = [self.tl[1], self.tr[1], self.bl[1], br[1]];
        let min = |v: [f32; 4]| v.into_iter().fold(f32::INFINITY, f32::min);
        let max = |v: [f32; 4]| v.into_iter().fold(f32::NEG_INFINITY, f32::max);
        BBox::from_pixels(min(xs), min(ys), max(xs), max(ys), w, h)
    }

    /// Crop width at recognition height.
    fn rec_width(&self) -> usize {
        ((REC_HEIGHT as f32 * self.width / self.height.max(1.0)).ceil() as usize)
            .clamp(1, REC_MAX_WIDTH)
    }
}

/// Text detection and recognition.
pub struct Ocr {
    det: Shared<DetScratch>,
    rec: Shared<RecScratch>,
    cls: Shared<RecScratch>,
    /// Class index -> text: blank first, then the dictionary, then a space if the model has it.
    charset: Vec<String>,
    min_confidence: f32,
    batch: usize,
}

impl Ocr {
    /// Loads `ppocr/{det,rec,cls}.onnx` from the models directory.
    pub fn load(rt: &Runtime, cfg: &OcrConfig) -> Result<Self, Error> {
        let det = rt.session("ocr-det", "ppocr/det.onnx")?;
        let rec = rt.session("ocr-rec", "ppocr/rec.onnx")?;
        let cls = rt.session("ocr-cls", "ppocr/cls.onnx")?;
        let err = model_err("ocr-rec");
        let meta = rec.metadata().map_err(|e| err(&e))?;
        let dict = meta.custom("character").ok_or(Error::Model {
            model: "ocr-rec",
            message: "no `character` metadata (the recognition dictionary)".into(),
        })?;
        drop(meta);
        let mut charset = vec![String::new()];
        charset.extend(dict.split('\n').map(str::to_string));
        let classes = rec.outputs()[0]
            .dtype()
            .tensor_shape()
            .and_then(|s| s.last().copied())
            .unwrap_or(-1);
        if classes == charset.len() as i64 + 1 {
            charset.push(" ".into());
        } else if classes > 0 && classes != charset.len() as i64 {
            return Err(Error::Model {
                model: "ocr-rec",
                message: format!(
                    "{classes} output classes do not fit a dictionary of {} characters",
                    charset.len() - 1
                ),
            });
        }
        let slot = |session| {
            Mutex::new(Slot {
                session,
                scratch: RecScratch::default(),
            })
        };
        Ok(Self {
            det: Mutex::new(Slot {
                session: det,
                scratch: DetScratch::default(),
            }),
            rec: slot(rec),
            cls: slot(cls),
            charset,
            min_confidence: cfg.min_confidence,
            batch: rt.batch.max(8),
        })
    }

    /// Reads the text lines of each image, top to bottom.
    pub fn read(&self, images: &[&RgbImage]) -> Result<Vec<Vec<TextLine>>, Error> {
        let mut regions = Vec::new();
        for (i, img) in images.iter().enumerate() {
            for r in self.detect(img)? {
                regions.push((i, r));
            }
        }
        // Turn the crops the classifier finds upside down, then recognise all crops of all
        // images together, similar widths in one batch.
        let upside_down = self.classify(images, &regions)?;
        for (r, flip) in regions.iter_mut().zip(upside_down) {
            if flip {
                r.1 = r.1.turned();
            }
        }
        let mut order: Vec<usize> = (0..regions.len()).collect();
        order.sort_by(|&a, &b| {
            let ra = regions[a].1.width / regions[a].1.height.max(1.0);
            let rb = regions[b].1.width / regions[b].1.height.max(1.0);
            ra.total_cmp(&rb)
        });
        let mut texts: Vec<Option<(String, f32)>> = vec![None; regions.len()];
        for chunk in order.chunks(self.batch) {
            let crops: Vec<(&RgbImage, Region)> = chunk
                .iter()
                .map(|&k| (images[regions[k].0], regions[k].1))
                .collect();
            for (&k, t) in chunk.iter().zip(self.recognize(&crops)?) {
                texts[k] = Some(t);
            }
        }
        let mut out: Vec<Vec<TextLine>> = vec![Vec::new(); images.len()];
        for ((i, r), t) in regions.iter().zip(texts) {
            let Some((text, confidence)) = t else {
                continue;
            };
            // A lone character is nearly always a texture read as a glyph.
            if text.chars().filter(|c| c.is_alphanumeric()).count() < 2
                || confidence < self.min_confidence
            {
                continue;
            }
            out[*i].push(TextLine {
                text: text.trim().to_string(),
                confidence,
                bbox: r.bbox(images[*i].width(), images[*i].height()),
            });
        }
        for lines in &mut out {
            lines.sort_by(|a, b| {
                (a.bbox.y, a.bbox.x)
                    .partial_cmp(&(b.bbox.y, b.bbox.x))
                    .unwrap()
            });
        }
        Ok(out)
    }

    /// Text regions of one image, in its pixels.
    fn detect(&self, img: &RgbImage) -> Result<Vec<Region>, Error> {
        let err = model_err("ocr-det");
        let (w, h) = (img.width() as f32, img.height() as f32);
        let ratio = (DET_LIMIT_SIDE / w.max(h)).min(1.0);
        let round32 = |v: f32| (((v * ratio) / 32.0).round() as usize).max(1) * 32;
        let (dw, dh) = (round32(w), round32(h));
        let mut guard = lock(&self.det);
        let Slot { session, scratch } = &mut *guard;
        scratch.input.resize(3 * dw * dh, 0.0);
        let target = Target {
            plane_w: dw,
            plane_h: dh,
            x0: 0,
            y0: 0,
            w: dw,
            h: dh,
        };
        pixels::sample(
            img,
            &Affine::resize(img.width(), img.height(), dw, dh),
            &mut scratch.input,
            &target,
            &Normalize::SIGNED_BGR,
        );
        let input =
            TensorRef::from_array_view(([1, 3, dh, dw], &*scratch.input)).map_err(|e| err(&e))?;
        let outputs = session.run(ort::inputs![input]).map_err(|e| err(&e))?;
        let (_, prob) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| err(&e))?;
        if prob.len() != dw * dh {
            return Err(Error::Model {
                model: "ocr-det",
                message: format!("output has {} values, expected {dw} x {dh}", prob.len()),
            });
        }
        let (sx, sy) = (w / dw as f32, h / dh as f32);
        let regions = db_regions(prob, dw, dh, &mut scratch.labels, &mut scratch.stack);
        Ok(regions
            .into_iter()
            .map(|r| {
                with_true_size(Region {
                    tl: [r.tl[0] * sx, r.tl[1] * sy],
                    tr: [r.tr[0] * sx, r.tr[1] * sy],
                    bl: [r.bl[0] * sx, r.bl[1] * sy],
                    ..r
                })
            })
            .collect())
    }

    /// For each region, whether the classifier is sure it is upside down.
    fn classify(
        &self,
        images: &[&RgbImage],
        regions: &[(usize, Region)],
    ) -> Result<Vec<bool>, Error> {
        let err = model_err("ocr-cls");
        let mut flips = Vec::with_capacity(regions.len());
        let per = 3 * REC_HEIGHT * CLS_W;
        let mut guard = lock(&self.cls);
        let Slot { session, scratch } = &mut *guard;
        for chunk in regions.chunks(self.batch) {
            scratch.input.clear();
            scratch.input.resize(chunk.len() * per, 0.0);
            for ((i, r), dst) in chunk.iter().zip(scratch.input.chunks_mut(per)) {
                let w = r.rec_width().min(CLS_W);
                sample_crop(images[*i], r, dst, CLS_W, w);
            }
            let input =
                TensorRef::from_array_view(([chunk.len(), 3, REC_HEIGHT, CLS_W], &*scratch.input))
                    .map_err(|e| err(&e))?;
            let outputs = session.run(ort::inputs![input]).map_err(|e| err(&e))?;
            let (_, p) = outputs[0]
                .try_extract_tensor::<f32>()
                .map_err(|e| err(&e))?;
            flips.extend(
                p.chunks(2)
                    .map(|c| c.len() == 2 && c[1] > c[0] && c[1] >= CLS_THRESHOLD),
            );
        }
        Ok(flips)
    }

    /// Recognises one batch of crops: text and mean character probability for each.
    fn recognize(&self, crops: &[(&RgbImage, Region)]) -> Result<Vec<(String, f32)>, Error> {
        let err = model_err("ocr-rec");
        let width = crops
            .iter()
            .map(|(_, r)| r.rec_width())
            .max()
            .unwrap_or(1)
            .max(REC_MIN_WIDTH);
        let per = 3 * REC_HEIGHT * width;
        let mut guard = lock(&self.rec);
        let Slot { session, scratch } = &mut *guard;
        scratch.input.clear();
        scratch.input.resize(crops.len() * per, 0.0);
        for ((img, r), dst) in crops.iter().zip(scratch.input.chunks_mut(per)) {
            sample_crop(img, r, dst, width, r.rec_width());
        }
        let input =
            TensorRef::from_array_view(([crops.len(), 3, REC_HEIGHT, width], &*scratch.input))
                .map_err(|e| err(&e))?;
        let outputs = session.run(ort::inputs![input]).map_err(|e| err(&e))?;
        let (shape, probs) = outputs[0]
            .try_extract_tensor::<f32>()
            .map_err(|e| err(&e))?;
        let (steps, classes) = (shape[1] as usize, shape[2] as usize);
        if classes != self.charset.len() {
            return Err(Error::Model {
                model: "ocr-rec",
                message: format!("{classes} classes, dictionary has {}", self.charset.len()),
            });
        }
        Ok(probs
            .chunks(steps * classes)
            .map(|p| ctc_greedy(p, classes, &self.charset))
            .collect())
    }
}

/// Samples region `r` of `img` at recognition height into a planar buffer `plane_w` wide,
/// `w` pixels of it filled (the rest stays 0, the normalised mid-gray padding).
fn sample_crop(img: &RgbImage, r: &Region, dst: &mut [f32], plane_w: usize, w: usize) {
    let target = Target {
        plane_w,
        plane_h: REC_HEIGHT,
        x0: 0,
        y0: 0,
        w,
        h: REC_HEIGHT,
    };
    let map = Affine::quad(r.tl, r.tr, r.bl, w, REC_HEIGHT);
    pixels::sample(img, &map, dst, &target, &Normalize::SIGNED_BGR);
}

/// Width and height from the corners (scaling may stretch the two axes differently).
fn with_true_size(mut r: Region) -> Region {
    let d = |a: [f32; 2], b: [f32; 2]| ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2)).sqrt();
    r.width = d(r.tl, r.tr);
    r.height = d(r.tl, r.bl);
    r
}

/// CTC greedy decoding: best class per step, repeats merged, blanks dropped.
fn ctc_greedy(probs: &[f32], classes: usize, charset: &[String]) -> (String, f32) {
    let mut text = String::new();
    let mut sum = 0.0;
    let mut n = 0;
    let mut prev = 0;
    for step in probs.chunks(classes) {
        let (best, p) = step
            .iter()
            .enumerate()
            .fold(
                (0, f32::NEG_INFINITY),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            );
        if best != 0 && best != prev {
            text.push_str(&charset[best]);
            sum += p;
            n += 1;
        }
        prev = best;
    }
    (text, if n == 0 { 0.0 } else { sum / n as f32 })
}

/// DB post-processing on a probability map: text regions as rotated boxes, grown back by the
/// unclip ratio, in map pixels.
fn db_regions(
    prob: &[f32],
    w: usize,
    h: usize,
    labels: &mut Vec<u32>,
    stack: &mut Vec<usize>,
) -> Vec<Region> {
    labels.clear();
    labels.resize(w * h, 0);
    let mut regions = Vec::new();
    let mut next = 0u32;
    let mut points: Vec<[f32; 2]> = Vec::new();
    let mut extremes: std::collections::HashMap<usize, (usize, usize)> = Default::default();
    for start in 0..w * h {
        if labels[start] != 0 || prob[start] <= DET_THRESHOLD {
            continue;
        }
        next += 1;
        if next as usize > MAX_CANDIDATES {
            break;
        }
        // Flood fill (8-connected) one region, collecting the corners of its pixels.
        labels[start] = next;
        stack.clear();
        stack.push(start);
        points.clear();
        extremes.clear();
        let mut score = 0.0;
        let mut count = 0usize;
        while let Some(p) = stack.pop() {
            let (x, y) = (p % w, p / w);
            score += prob[p];
            count += 1;
            // Only the leftmost and rightmost pixel of each row can be on the hull.
            let (left, right) = extremes.entry(y).or_insert((x, x));
            *left = (*left).min(x);
            *right = (*right).max(x);
            for dy in -1i32..=1 {
                for dx in -1i32..=1 {
                    let (nx, ny) = (x as i32 + dx, y as i32 + dy);
                    if nx < 0 || ny < 0 || nx >= w as i32 || ny >= h as i32 {
                        continue;
                    }
                    let q = ny as usize * w + nx as usize;
                    if labels[q] == 0 && prob[q] > DET_THRESHOLD {
                        labels[q] = next;
                        stack.push(q);
                    }
                }
            }
        }
        if count < 4 || score / (count as f32) < BOX_THRESHOLD {
            continue;
        }
        for (&y, &(left, right)) in &extremes {
            let (fy, l, r) = (y as f32, left as f32, right as f32 + 1.0);
            points.extend([[l, fy], [l, fy + 1.0], [r, fy], [r, fy + 1.0]]);
        }
        let hull = convex_hull(&mut points);
        let Some(rect) = min_area_rect(&hull) else {
            continue;
        };
        if rect.half[0].min(rect.half[1]) * 2.0 < 3.0 {
            continue;
        }
        // Scored over the whole box, as PaddleOCR does: a text line fills its box, a
        // sprawling texture (foliage, coffee foam) does not.
        let box_area = 4.0 * rect.half[0] * rect.half[1];
        if score / box_area.max(count as f32) < BOX_THRESHOLD {
            continue;
        }
        // Grow by d = area * ratio / perimeter on every side (the offset DB's training undoes).
        let (rw, rh) = (rect.half[0] * 2.0, rect.half[1] * 2.0);
        let d = rw * rh * UNCLIP_RATIO / (2.0 * (rw + rh));
        let half = [rect.half[0] + d, rect.half[1] + d];
        if half[0].min(half[1]) * 2.0 < 5.0 {
            continue;
        }
        regions.push(oriented(rect.center, rect.axis, half));
    }
    regions
}

/// A rotated rectangle: centre, unit axis of its first side, half extents along the axis
/// and its normal.
struct Rect {
    center: [f32; 2],
    axis: [f32; 2],
    half: [f32; 2],
}

/// Corners for reading: the side nearer horizontal runs left to right; a box much taller
/// than wide is read bottom to top (vertical text turned a quarter).
fn oriented(center: [f32; 2], axis: [f32; 2], half: [f32; 2]) -> Region {
    let (mut u, mut hu, mut hv) = (axis, half[0], half[1]);
    if u[0].abs() < u[1].abs() {
        u = [-u[1], u[0]];
        std::mem::swap(&mut hu, &mut hv);
    }
    if u[0] < 0.0 {
        u = [-u[0], -u[1]];
    }
    let mut v = [-u[1], u[0]]; // points down when u points right
    if hv > hu * 1.5 {
        // Vertical text: read along v upwards.
        let up = [-v[0], -v[1]];
        v = u;
        u = up;
        std::mem::swap(&mut hu, &mut hv);
    }
    let at = |a: f32, b: f32| {
        [
            center[0] + u[0] * a + v[0] * b,
            center[1] + u[1] * a + v[1] * b,
        ]
    };
    Region {
        tl: at(-hu, -hv),
        tr: at(hu, -hv),
        bl: at(-hu, hv),
        width: 2.0 * hu,
        height: 2.0 * hv,
    }
}

fn cross(o: [f32; 2], a: [f32; 2], b: [f32; 2]) -> f32 {
    (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])
}

/// Convex hull (Andrew's monotone chain), counter-clockwise.
fn convex_hull(points: &mut [[f32; 2]]) -> Vec<[f32; 2]> {
    points.sort_unstable_by(|a, b| a[0].total_cmp(&b[0]).then(a[1].total_cmp(&b[1])));
    let mut hull: Vec<[f32; 2]> = Vec::with_capacity(points.len() / 2 + 2);
    for pass in 0..2 {
        let start = hull.len();
        let iter: Box<dyn Iterator<Item = &[f32; 2]>> = if pass == 0 {
            Box::new(points.iter())
        } else {
            Box::new(points.iter().rev())
        };
        for &p in iter {
            while hull.len() >= start + 2
                && cross(hull[hull.len() - 2], hull[hull.len() - 1], p) <= 0.0
            {
                hull.pop();
            }
            hull.push(p);
        }
        hull.pop();
    }
    hull
}

/// The minimum-area rectangle around a convex polygon (rotating calipers over its edges).
fn min_area_rect(hull: &[[f32; 2]]) -> Option<Rect> {
    if hull.len() < 3 {
        return None;
    }
    let mut best: Option<(f32, Rect)> = None;
    for i in 0..hull.len() {
        let (a, b) = (hull[i], hull[(i + 1) % hull.len()]);
        let len = ((b[0] - a[0]).powi(2) + (b[1] - a[1]).powi(2)).sqrt();
        if len == 0.0 {
            continue;
        }
        let u = [(b[0] - a[0]) / len, (b[1] - a[1]) / len];
        let v = [-u[1], u[0]];
        let (mut umin, mut umax, mut vmin, mut vmax) = (f32::MAX, f32::MIN, f32::MAX, f32::MIN);
        for p in hull {
            let pu = p[0] * u[0] + p[1] * u[1];
            let pv = p[0] * v[0] + p[1] * v[1];
            umin = umin.min(pu);
            umax = umax.max(pu);
            vmin = vmin.min(pv);
            vmax = vmax.max(pv);
        }
        let area = (umax - umin) * (vmax - vmin);
        if best.as_ref().is_none_or(|(a, _)| area < *a) {
            let (cu, cv) = ((umin + umax) / 2.0, (vmin + vmax) / 2.0);
            best = Some((
                area,
                Rect {
                    center: [cu * u[0] + cv * v[0], cu * u[1] + cv * v[1]],
                    axis: u,
                    half: [(umax - umin) / 2.0, (vmax - vmin) / 2.0],
                },
            ));
        }
    }
    best.map(|b| b.1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ctc_merges_repeats_and_drops_blanks() {
        let charset: Vec<String> = ["", "a", "b"].iter().map(|s| s.to_string()).collect();
        // steps: a a blank a b  -> "aab"
        let steps = [
            [0.1, 0.8, 0.1],
            [0.1, 0.8, 0.1],
            [0.9, 0.05, 0.05],
            [0.2, 0.6, 0.2],
            [0.1, 0.1, 0.8],
        ];
        let flat: Vec<f32> = steps.iter().flatten().copied().collect();
        let (text, conf) = ctc_greedy(&flat, 3, &charset);
        assert_eq!(text, "aab");
        assert!((conf - (0.8 + 0.6 + 0.8) / 3.0).abs() < 1e-6);
    }

    #[test]
    fn a_tilted_bar_becomes_one_oriented_box() {
        // A 40 x 8 bar of text probability in a 64 x 32 map.
        let (w, h) = (64, 32);
        let mut prob = vec![0.0; w * h];
        for y in 10..18 {
            for x in 10..50 {
                prob[y * w + x] = 0.9;
            }
        }
        let regions = db_regions(&prob, w, h, &mut Vec::new(), &mut Vec::new());
        assert_eq!(regions.len(), 1);
        let r = regions[0];
        // Unclipped: d = 40 * 8 * 1.6 / 96 = 5.33 on each side.
        assert!((r.width - (40.0 + 2.0 * 5.333)).abs() < 0.1, "{r:?}");
        assert!((r.height - (8.0 + 2.0 * 5.333)).abs() < 0.1, "{r:?}");
        assert!(
            r.tl[0] < r.tr[0] && r.tl[1] < r.bl[1],
            "reads left to right: {r:?}"
        );
    }

    #[test]
    fn a_sparse_texture_is_not_text() {
        // Every other pixel over 40 x 20: one 8-connected region filling half its box.
        let (w, h) = (64, 32);
        let mut prob = vec![0.0; w * h];
        for y in 5..25 {
            for x in 5..45 {
                if (x + y) % 2 == 0 {
                    prob[y * w + x] = 0.9;
                }
            }
        }
        assert!(db_regions(&prob, w, h, &mut Vec::new(), &mut Vec::new()).is_empty());
    }

    #[test]
    fn min_area_rect_of_a_rotated_square() {
        let hull = [[0.0, 1.0], [1.0, 0.0], [2.0, 1.0], [1.0, 2.0]];
        let r = min_area_rect(&hull).unwrap();
        let area = 4.0 * r.half[0] * r.half[1];
        assert!((area - 2.0).abs() < 1e-5, "{area}");
        assert!((r.center[0] - 1.0).abs() < 1e-5 && (r.center[1] - 1.0).abs() < 1e-5);
    }

    #[test]
    fn turning_a_region_swaps_its_ends() {
        let r = oriented([10.0, 5.0], [1.0, 0.0], [4.0, 2.0]);
        let t = r.turned();
        assert_eq!(t.tl, [14.0, 7.0]);
        assert_eq!(t.tr, [6.0, 7.0]);
        assert_eq!(t.bl, [14.0, 3.0]);
    }
}
