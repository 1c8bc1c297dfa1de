//! Pixel preparation for the vision models: one bilinear sampler that resizes, letterboxes,
//! crops rotated boxes and normalises straight into a model's planar input buffer, so a
//! frame is read once and nothing is allocated per pixel.

use super::runtime::RgbImage;

/// How 8-bit channel values become model inputs: `v * scale[c] + bias[c]`, in RGB or BGR
/// plane order.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Normalize {
    pub scale: [f32; 3],
    pub bias: [f32; 3],
    pub bgr: bool,
}

impl Normalize {
    /// `v / 255`, RGB (YOLO).
    pub const UNIT_RGB: Self = Self {
        scale: [1.0 / 255.0; 3],
        bias: [0.0; 3],
        bgr: false,
    };
    /// `(v / 255 - 0.5) / 0.5`, BGR (PaddleOCR).
    pub const SIGNED_BGR: Self = Self {
        scale: [2.0 / 255.0; 3],
        bias: [-1.0; 3],
        bgr: true,
    };

    /// The normalised value of channel value `v` for the image's channel `c` (0 = R).
    #[inline]
    fn apply(&self, c: usize, v: f32) -> f32 {
        v * self.scale[c] + self.bias[c]
    }

    /// The plane a source channel goes to.
    #[inline]
    fn plane(&self, c: usize) -> usize {
        if self.bgr { 2 - c } else { c }
    }
}

/// Where a sampled region goes in a planar (C, H, W) buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Target {
    /// Width of one plane of the buffer.
    pub plane_w: usize,
    /// Height of one plane of the buffer.
    pub plane_h: usize,
    /// Left of the written region.
    pub x0: usize,
    /// Top of the written region.
    pub y0: usize,
    /// Width of the written region.
    pub w: usize,
    /// Height of the written region.
    pub h: usize,
}

/// An affine map from target pixel centres to source coordinates:
/// `src = origin + x * dx + y * dy` for target pixel (x, y) of the region.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Affine {
    pub origin: [f32; 2],
    pub dx: [f32; 2],
    pub dy: [f32; 2],
}

impl Affine {
    /// Plain resize of the whole image to `w` x `h` (pixel centres aligned, as OpenCV does).
    pub fn resize(src_w: u32, src_h: u32, w: usize, h: usize) -> Self {
        let sx = src_w as f32 / w as f32;
        let sy = src_h as f32 / h as f32;
        Self {
            origin: [0.5 * sx - 0.5, 0.5 * sy - 0.5],
            dx: [sx, 0.0],
            dy: [0.0, sy],
        }
    }

    /// The parallelogram with corners `tl`, `tr`, `bl` (source pixels) sampled into `w` x `h`.
    pub fn quad(tl: [f32; 2], tr: [f32; 2], bl: [f32; 2], w: usize, h: usize) -> Self {
        let dx = [(tr[0] - tl[0]) / w as f32, (tr[1] - tl[1]) / w as f32];
        let dy = [(bl[0] - tl[0]) / h as f32, (bl[1] - tl[1]) / h as f32];
        Self {
            origin: [
                tl[0] + 0.5 * (dx[0] + dy[0]) - 0.5,
                tl[1] + 0.5 * (dx[1] + dy[1]) - 0.5,
            ],
            dx,
            dy,
        }
    }
}

/// Fills every plane of `dst` (3 planes of `plane_w * plane_h`) with the normalised value of
/// the 8-bit gray level `v` (letterbox borders, batch padding).
pub(crate) fn fill(dst: &mut [f32], v: f32, norm: &Normalize) {
    let plane = dst.len() / 3;
    for c in 0..3 {
        let value = norm.apply(c, v);
        dst[norm.plane(c) * plane..][..plane].fill(value);
    }
}

/// Samples `img` through `map` into the region `t` of the planar buffer `dst`, bilinearly,
/// normalising on the way. Source positions outside the image take the nearest edge pixel.
pub(crate) fn sample(img: &RgbImage, map: &Affine, dst: &mut [f32], t: &Target, norm: &Normalize) {
    if img.width() == 0 || img.height() == 0 || t.w == 0 || t.h == 0 {
        return;
    }
    if map.dx[1] == 0.0 && map.dy[0] == 0.0 {
        sample_axis_aligned(img, map, dst, t, norm);
    } else {
        sample_rotated(img, map, dst, t, norm);
    }
}

/// `floor` by conversion: the default x86-64 target has no rounding instruction, and
/// `f32::floor` becomes a call per pixel.
#[inline]
fn floor_i32(v: f32) -> i32 {
    let i = v as i32;
    if (i as f32) > v { i - 1 } else { i }
}

/// Source taps for one output coordinate: the two neighbouring pixels (clamped) and the
/// weight of the second.
#[inline]
fn taps(v: f32, len: i32, scale: usize) -> (usize, usize, f32) {
    let i = floor_i32(v);
    let a = i.clamp(0, len - 1) as usize * scale;
    let b = (i + 1).clamp(0, len - 1) as usize * scale;
    (a, b, v - i as f32)
}

/// Resizes and letterboxes: the column taps are worked out once, then each output row reads
/// two source rows.
fn sample_axis_aligned(
    img: &RgbImage,
    map: &Affine,
    dst: &mut [f32],
    t: &Target,
    norm: &Normalize,
) {
    let (sw, sh) = (img.width() as i32, img.height() as i32);
    let src = img.as_raw();
    let stride = sw as usize * 3;
    let plane = t.plane_w * t.plane_h;
    let cols: Vec<(usize, usize, f32)> = (0..t.w)
        .map(|x| taps(map.origin[0] + x as f32 * map.dx[0], sw, 3))
        .collect();
    let (p0, rest) = dst.split_at_mut(plane);
    let (p1, rest) = rest.split_at_mut(plane);
    let p2 = &mut rest[..plane];
    let mut by_plane = [p0, p1, p2];
    for y in 0..t.h {
        let (ya, yb, ay) = taps(map.origin[1] + y as f32 * map.dy[1], sh, stride);
        let (ra, rb) = (&src[ya..ya + stride], &src[yb..yb + stride]);
        let at = (t.y0 + y) * t.plane_w + t.x0;
        let [q0, q1, q2] = &mut by_plane;
        let mut rows = [
            Some(&mut q0[at..at + t.w]),
            Some(&mut q1[at..at + t.w]),
            Some(&mut q2[at..at + t.w]),
        ];
        // Output rows in source channel order (R, G, B), whatever the plane order.
        let (Some(r), Some(g), Some(b)) = (
            rows[norm.plane(0)].take(),
            rows[norm.plane(1)].take(),
            rows[norm.plane(2)].take(),
        ) else {
            return;
        };
        for (((&(xa, xb, ax), r), g), b) in cols.iter().zip(r).zip(g).zip(b) {
            let lerp = |c: usize| {
                let top = ra[xa + c] as f32 + (ra[xb + c] as f32 - ra[xa + c] as f32) * ax;
                let bottom = rb[xa + c] as f32 + (rb[xb + c] as f32 - rb[xa + c] as f32) * ax;
                top + (bottom - top) * ay
            };
            *r = norm.apply(0, lerp(0));
            *g = norm.apply(1, lerp(1));
            *b = norm.apply(2, lerp(2));
        }
    }
}

/// Rotated crops: every output pixel maps to its own source position.
fn sample_rotated(img: &RgbImage, map: &Affine, dst: &mut [f32], t: &Target, norm: &Normalize) {
    let (sw, sh) = (img.width() as i32, img.height() as i32);
    let src = img.as_raw();
    let stride = sw as usize * 3;
    let plane = t.plane_w * t.plane_h;
    let planes = [norm.plane(0), norm.plane(1), norm.plane(2)];
    for y in 0..t.h {
        let row_origin = [
            map.origin[0] + y as f32 * map.dy[0],
            map.origin[1] + y as f32 * map.dy[1],
        ];
        let out_row = (t.y0 + y) * t.plane_w + t.x0;
        for x in 0..t.w {
            let (xa, xb, ax) = taps(row_origin[0] + x as f32 * map.dx[0], sw, 3);
            let (ya, yb, ay) = taps(row_origin[1] + x as f32 * map.dx[1], sh, stride);
            let out = out_row + x;
            for c in 0..3 {
                let p00 = src[ya + xa + c] as f32;
                let p01 = src[ya + xb + c] as f32;
                let p10 = src[yb + xa + c] as f32;
                let p11 = src[yb + xb + c] as f32;
                let top = p00 + (p01 - p00) * ax;
                let bottom = p10 + (p11 - p10) * ax;
                let v = top + (bottom - top) * ay;
                dst[planes[c] * plane + out] = norm.apply(c, v);
            }
        }
    }
}

/// Decodes a JPEG or PNG into RGB pixels.
pub fn decode(bytes: &[u8]) -> Result<RgbImage, image::ImageError> {
    Ok(image::load_from_memory(bytes)?.into_rgb8())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_of_a_flat_image_keeps_its_value() {
        let img = RgbImage::from_pixel(7, 5, image::Rgb([255, 0, 51]));
        let (w, h) = (4, 3);
        let mut dst = vec![0.0; 3 * w * h];
        let t = Target {
            plane_w: w,
            plane_h: h,
            x0: 0,
            y0: 0,
            w,
            h,
        };
        sample(
            &img,
            &Affine::resize(7, 5, w, h),
            &mut dst,
            &t,
            &Normalize::UNIT_RGB,
        );
        assert!(dst[..w * h].iter().all(|v| (v - 1.0).abs() < 1e-6));
        assert!(dst[w * h..2 * w * h].iter().all(|v| v.abs() < 1e-6));
        assert!(dst[2 * w * h..].iter().all(|v| (v - 0.2).abs() < 1e-6));
    }

    #[test]
    fn quad_sampling_reads_the_right_region() {
        // Left half black, right half white; sampling the right half gives white.
        let img = RgbImage::from_fn(8, 4, |x, _| {
            if x >= 4 {
                image::Rgb([255; 3])
            } else {
                image::Rgb([0; 3])
            }
        });
        let mut dst = vec![0.0; 3 * 2 * 2];
        let t = Target {
            plane_w: 2,
            plane_h: 2,
            x0: 0,
            y0: 0,
            w: 2,
            h: 2,
        };
        let map = Affine::quad([4.0, 0.0], [8.0, 0.0], [4.0, 4.0], 2, 2);
        sample(&img, &map, &mut dst, &t, &Normalize::SIGNED_BGR);
        assert!(dst.iter().all(|v| (v - 1.0).abs() < 1e-5), "{dst:?}");
    }

    #[test]
    fn both_samplers_agree_on_a_resize() {
        let img = RgbImage::from_fn(37, 23, |x, y| {
            image::Rgb([(x * 7) as u8, (y * 11) as u8, ((x + y) * 3) as u8])
        });
        let (w, h) = (64, 40);
        let t = Target {
            plane_w: w,
            plane_h: h,
            x0: 0,
            y0: 0,
            w,
            h,
        };
        let map = Affine::resize(37, 23, w, h);
        let mut fast = vec![0.0; 3 * w * h];
        let mut slow = vec![0.0; 3 * w * h];
        sample_axis_aligned(&img, &map, &mut fast, &t, &Normalize::SIGNED_BGR);
        sample_rotated(&img, &map, &mut slow, &t, &Normalize::SIGNED_BGR);
        let worst = fast
            .iter()
            .zip(&slow)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(worst < 1e-5, "{worst}");
        assert_eq!(floor_i32(-0.5), -1);
        assert_eq!(floor_i32(2.0), 2);
    }
}
