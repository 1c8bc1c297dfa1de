//! The change gate: whether a sampled picture shows anything new against the camera's last
//! analysed one, so that the models run only where the picture changed.
//!
//! Pictures are compared small and grey ([`GATE_WIDTH`] x [`GATE_HEIGHT`], box-averaged, so
//! sensor noise and compression artefacts average out) against a reference: the last analysed
//! picture, which every unchanged sample moves a little towards itself ([`ADAPT`]), so slow
//! light drift (dusk, clouds) is followed rather than reported. Each comparison first takes
//! out the difference in mean brightness, so a gradual global change never counts; a pixel
//! changed when it differs by more than `threshold` grey levels after that. Changed pixels
//! are grouped into regions (8-connected, after closing one-pixel gaps), and the picture
//! changed when one region covers at least `min_area` of it. A sudden change of most of the
//! picture (lights switched on) is one change: it is analysed once and becomes the reference,
//! so the samples after it are compared with the new light. Every `refresh` the picture is
//! analysed whatever it shows.

use std::time::Duration;

use crate::geometry::BBox;

/// Width of the grey picture compared.
pub const GATE_WIDTH: usize = 160;
/// Height of the grey picture compared.
pub const GATE_HEIGHT: usize = 90;

/// How far each unchanged sample moves the reference towards itself.
const ADAPT: f32 = 0.1;

/// Share of the picture changed at once beyond which the change is global (lights, a camera
/// moved, an exposure jump): analysed once, then the reference starts over.
const GLOBAL_SHARE: f32 = 0.6;

/// Settings of one camera's gate (`infer.gate`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GateSettings {
    /// Grey levels (of 255) a pixel must differ by to count as changed.
    pub threshold: u8,
    /// Smallest changed region, as a share of the picture, that counts as change.
    pub min_area: f32,
    /// A picture is analysed at least this often, changed or not.
    pub refresh: Duration,
}

/// Why a picture is analysed (or not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The camera's first picture: nothing to compare with.
    First,
    /// A region at least `min_area` large changed.
    Changed,
    /// Most of the picture changed at once.
    Global,
    /// `refresh` passed since the last analysed picture.
    Refresh,
    /// Nothing changed enough: the models need not run.
    Unchanged,
}

impl Verdict {
    /// Whether the models should look at the picture.
    pub fn analyse(self) -> bool {
        self != Verdict::Unchanged
    }

    /// The lowercase name, for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::First => "first",
            Verdict::Changed => "changed",
            Verdict::Global => "global",
            Verdict::Refresh => "refresh",
            Verdict::Unchanged => "unchanged",
        }
    }
}

/// What the gate saw in one picture.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Whether to analyse it, and why.
    pub verdict: Verdict,
    /// Share of the picture in its largest changed region (0..1).
    pub score: f32,
    /// The changed regions of at least `min_area`, largest first, normalised.
    pub regions: Vec<BBox>,
}

/// One camera's gate: its reference picture and when it was last analysed.
#[derive(Debug, Clone)]
pub struct ChangeGate {
    settings: GateSettings,
    reference: Vec<f32>,
    /// Capture time (ms) of the last analysed picture.
    analysed_ms: Option<i64>,
}

impl ChangeGate {
    /// A gate that has seen nothing yet.
    pub fn new(settings: GateSettings) -> ChangeGate {
        ChangeGate {
            settings,
            reference: Vec::new(),
            analysed_ms: None,
        }
    }

    /// Looks at a picture captured at `at_ms`, given as packed RGB of `width` x `height`,
    /// and moves the reference: to this picture when it is to be analysed, a little towards
    /// it otherwise.
    pub fn look(&mut self, rgb: &[u8], width: usize, height: usize, at_ms: i64) -> Change {
        let grey = small_grey(rgb, width, height);
        let Some(last) = self
            .analysed_ms
            .filter(|_| self.reference.len() == grey.len())
        else {
            return self.analysed(grey, at_ms, Verdict::First, 1.0, Vec::new());
        };
        let (mask, changed) = self.changed_pixels(&grey);
        let total = grey.len() as f32;
        let regions = regions(&mask, GATE_WIDTH, GATE_HEIGHT);
        let score = regions.first().map_or(0.0, |r| r.0 as f32 / total);
        let min_pixels = (self.settings.min_area * total).max(1.0);
        let boxes: Vec<BBox> = regions
            .iter()
            .filter(|r| r.0 as f32 >= min_pixels)
            .map(|r| r.1)
            .collect();
        let refresh_ms = i64::try_from(self.settings.refresh.as_millis()).unwrap_or(i64::MAX);
        let verdict = if changed as f32 / total >= GLOBAL_SHARE {
            Verdict::Global
        } else if !boxes.is_empty() {
            Verdict::Changed
        } else if at_ms.saturating_sub(last) >= refresh_ms && refresh_ms > 0 {
            Verdict::Refresh
        } else {
            Verdict::Unchanged
        };
        if verdict.analyse() {
            return self.analysed(grey, at_ms, verdict, score, boxes);
        }
        for (r, g) in self.reference.iter_mut().zip(&grey) {
            *r += ADAPT * (g - *r);
        }
        Change {
            verdict,
            score,
            regions: boxes,
        }
    }

    fn analysed(
        &mut self,
        grey: Vec<f32>,
        at_ms: i64,
        verdict: Verdict,
        score: f32,
        regions: Vec<BBox>,
    ) -> Change {
        self.reference = grey;
        self.analysed_ms = Some(at_ms);
        Change {
            verdict,
            score,
            regions,
        }
    }

    /// Pixels that differ from the reference by more than the threshold once the difference
    /// in mean brightness is taken out, and how many there are.
    fn changed_pixels(&self, grey: &[f32]) -> (Vec<bool>, usize) {
        let n = grey.len() as f32;
        let shift = grey.iter().sum::<f32>() / n - self.reference.iter().sum::<f32>() / n;
        let threshold = f32::from(self.settings.threshold);
        let mask: Vec<bool> = grey
            .iter()
            .zip(&self.reference)
            .map(|(g, r)| (g - r - shift).abs() > threshold)
            .collect();
        let changed = mask.iter().filter(|m| **m).count();
        (close(&mask, GATE_WIDTH, GATE_HEIGHT), changed)
    }
}

/// `rgb` box-averaged to [`GATE_WIDTH`] x [`GATE_HEIGHT`] grey levels (0..255). Each output
/// pixel averages every input pixel of its cell, which is what takes sensor noise out.
pub fn small_grey(rgb: &[u8], width: usize, height: usize) -> Vec<f32> {
    let mut sum = vec![0.0f32; GATE_WIDTH * GATE_HEIGHT];
    let mut count = vec![0u32; GATE_WIDTH * GATE_HEIGHT];
    if width == 0 || height == 0 || rgb.len() < width * height * 3 {
        return sum;
    }
    for y in 0..height {
        let gy = y * GATE_HEIGHT / height;
        let row = &rgb[y * width * 3..(y + 1) * width * 3];
        for (x, px) in row.chunks_exact(3).enumerate() {
            let gx = x * GATE_WIDTH / width;
            // ITU-R BT.601 luma.
            let luma =
                0.299 * f32::from(px[0]) + 0.587 * f32::from(px[1]) + 0.114 * f32::from(px[2]);
            sum[gy * GATE_WIDTH + gx] += luma;
            count[gy * GATE_WIDTH + gx] += 1;
        }
    }
    for (s, c) in sum.iter_mut().zip(&count) {
        if *c > 0 {
            *s /= *c as f32;
        }
    }
    sum
}

/// The mask with one-pixel gaps closed: dilated by one pixel, then eroded by one, so an
/// object whose edges alone changed (a uniform car on a uniform road) is one region.
fn close(mask: &[bool], w: usize, h: usize) -> Vec<bool> {
    let around = |m: &[bool], x: usize, y: usize, want: bool| {
        let (x0, x1) = (x.saturating_sub(1), (x + 1).min(w - 1));
        let (y0, y1) = (y.saturating_sub(1), (y + 1).min(h - 1));
        (y0..=y1).any(|yy| (x0..=x1).any(|xx| m[yy * w + xx] == want))
    };
    let mut dilated = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            dilated[y * w + x] = around(mask, x, y, true);
        }
    }
    let mut closed = vec![false; w * h];
    for y in 0..h {
        for x in 0..w {
            closed[y * w + x] = dilated[y * w + x] && !around(&dilated, x, y, false);
        }
    }
    // Erosion must not remove what was changed to begin with.
    for (c, m) in closed.iter_mut().zip(mask) {
        *c |= *m;
    }
    closed
}

/// The 8-connected regions of `mask`: (pixels, bounding box), largest first.
fn regions(mask: &[bool], w: usize, h: usize) -> Vec<(usize, BBox)> {
    let mut seen = vec![false; w * h];
    let mut out = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if !mask[start] || seen[start] {
            continue;
        }
        seen[start] = true;
        stack.push(start);
        let (mut n, mut x0, mut y0, mut x1, mut y1) = (0usize, w, h, 0usize, 0usize);
        while let Some(i) = stack.pop() {
            let (x, y) = (i % w, i / w);
            n += 1;
            (x0, y0, x1, y1) = (x0.min(x), y0.min(y), x1.max(x), y1.max(y));
            for yy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for xx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = yy * w + xx;
                    if mask[j] && !seen[j] {
                        seen[j] = true;
                        stack.push(j);
                    }
                }
            }
        }
        let bbox = BBox {
            x: x0 as f32 / w as f32,
            y: y0 as f32 / h as f32,
            w: (x1 + 1 - x0) as f32 / w as f32,
            h: (y1 + 1 - y0) as f32 / h as f32,
        };
        out.push((n, bbox));
    }
    out.sort_by_key(|r| std::cmp::Reverse(r.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    const W: usize = 640;
    const H: usize = 360;

    fn settings() -> GateSettings {
        GateSettings {
            threshold: 20,
            min_area: 0.005,
            refresh: Duration::from_secs(300),
        }
    }

    /// A textured scene (gradients and stripes, like walls, floor and shelves), lit by
    /// `light` (1.0: as is), with Gaussian-ish sensor noise of about `noise` grey levels.
    fn scene(light: f32, noise: f32, seed: u64) -> Vec<u8> {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let mut out = Vec::with_capacity(W * H * 3);
        for y in 0..H {
            for x in 0..W {
                let base = 60.0
                    + 0.15 * x as f32
                    + 0.2 * y as f32
                    + if (x / 40) % 2 == 0 { 30.0 } else { 0.0 };
                for c in 0..3 {
                    // Sum of uniforms: roughly normal, standard deviation about `noise`.
                    let n: f32 =
                        (0..3).map(|_| rng.random::<f32>() - 0.5).sum::<f32>() * 2.0 * noise;
                    let v = (base + 10.0 * c as f32) * light + n;
                    out.push(v.clamp(0.0, 255.0) as u8);
                }
            }
        }
        out
    }

    /// `frame` with a dark rectangle of `share` of the picture at (`x`, `y`) (pixels).
    fn with_object(mut frame: Vec<u8>, x: usize, y: usize, share: f32) -> Vec<u8> {
        let side_h = ((share * (W * H) as f32) / (16.0 / 9.0)).sqrt() as usize;
        let side_w = side_h * 16 / 9;
        for yy in y..(y + side_h).min(H) {
            for xx in x..(x + side_w).min(W) {
                let i = (yy * W + xx) * 3;
                frame[i..i + 3].copy_from_slice(&[20, 25, 30]);
            }
        }
        frame
    }

    #[test]
    fn noise_and_slow_light_drift_are_not_change() {
        let mut g = ChangeGate::new(GateSettings {
            refresh: Duration::ZERO,
            ..settings()
        });
        assert_eq!(g.look(&scene(1.0, 6.0, 0), W, H, 0).verdict, Verdict::First);
        // An hour of dusk, one sample every 10 s: the light falls to 40% of what it was.
        for k in 1..360 {
            let light = 1.0 - 0.6 * k as f32 / 360.0;
            let c = g.look(&scene(light, 6.0, k), W, H, k as i64 * 10_000);
            assert_eq!(c.verdict, Verdict::Unchanged, "sample {k}: {c:?}");
        }
    }

    #[test]
    fn a_small_object_is_change_and_then_the_new_reference() {
        let mut g = ChangeGate::new(settings());
        g.look(&scene(1.0, 6.0, 1), W, H, 0);
        // 0.6% of the picture, in a corner of the stripes.
        let frame = with_object(scene(1.0, 6.0, 2), 500, 280, 0.006);
        let c = g.look(&frame, W, H, 10_000);
        assert_eq!(c.verdict, Verdict::Changed, "{c:?}");
        assert!(c.score >= 0.005, "{c:?}");
        let r = c.regions[0];
        assert!(
            (r.x - 500.0 / 640.0).abs() < 0.03 && (r.y - 280.0 / 360.0).abs() < 0.04,
            "{r:?}"
        );
        // It stays: the picture it was found in is the reference now, so no more change.
        let again = with_object(scene(1.0, 6.0, 3), 500, 280, 0.006);
        assert_eq!(g.look(&again, W, H, 20_000).verdict, Verdict::Unchanged);
        // It leaves: change again, where it was.
        let c = g.look(&scene(1.0, 6.0, 4), W, H, 30_000);
        assert_eq!(c.verdict, Verdict::Changed, "{c:?}");
    }

    #[test]
    fn an_object_below_min_area_is_not_change() {
        let mut g = ChangeGate::new(settings());
        g.look(&scene(1.0, 6.0, 1), W, H, 0);
        let frame = with_object(scene(1.0, 6.0, 2), 300, 100, 0.002);
        let c = g.look(&frame, W, H, 10_000);
        assert_eq!(c.verdict, Verdict::Unchanged, "{c:?}");
        assert!(c.score > 0.0, "the region was seen, only too small: {c:?}");
    }

    #[test]
    fn lights_switched_on_are_one_change_not_a_storm() {
        let mut g = ChangeGate::new(settings());
        g.look(&scene(0.3, 4.0, 1), W, H, 0);
        let on: Vec<Verdict> = (1..6)
            .map(|k| {
                g.look(&scene(1.0, 4.0, 10 + k), W, H, k as i64 * 10_000)
                    .verdict
            })
            .collect();
        // A brighter scene with the same mean shift taken out still has more contrast:
        // whichever verdict the first bright sample gets, it is analysed once, and the
        // samples after it compare with the new light.
        assert!(on[0].analyse(), "{on:?}");
        assert!(on[1..].iter().all(|v| *v == Verdict::Unchanged), "{on:?}");
    }

    #[test]
    fn refresh_analyses_an_unchanged_scene_again() {
        let mut g = ChangeGate::new(GateSettings {
            refresh: Duration::from_secs(60),
            ..settings()
        });
        g.look(&scene(1.0, 4.0, 1), W, H, 0);
        assert_eq!(
            g.look(&scene(1.0, 4.0, 2), W, H, 30_000).verdict,
            Verdict::Unchanged
        );
        assert_eq!(
            g.look(&scene(1.0, 4.0, 3), W, H, 60_000).verdict,
            Verdict::Refresh
        );
        assert_eq!(
            g.look(&scene(1.0, 4.0, 4), W, H, 90_000).verdict,
            Verdict::Unchanged
        );
    }

    #[test]
    fn regions_are_found_and_ordered_by_size() {
        let (w, h) = (10, 6);
        let mut mask = vec![false; w * h];
        for (x, y) in [(1, 1), (2, 1), (1, 2), (2, 2), (8, 4)] {
            mask[y * w + x] = true;
        }
        let r = regions(&mask, w, h);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].0, 4);
        assert_eq!(
            r[0].1,
            BBox {
                x: 0.1,
                y: 1.0 / 6.0,
                w: 0.2,
                h: 2.0 / 6.0
            }
        );
        assert_eq!(r[1].0, 1);
        // A one-pixel gap is closed, so the edges of one object make one region.
        let mut ring = vec![false; w * h];
        for x in 2..7 {
            ring[w + x] = true;
            ring[4 * w + x] = true;
        }
        for y in 1..5 {
            ring[y * w + 2] = true;
            ring[y * w + 6] = true;
        }
        ring[w + 4] = false;
        assert_eq!(regions(&close(&ring, w, h), w, h).len(), 1);
    }
}
