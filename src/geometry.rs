//! Geometry shared by the stages: boxes in normalised image coordinates, as the models
//! report them, the insight store keeps them and the API shows them.

use serde::{Deserialize, Serialize};

/// A box in normalised image coordinates (0..1): left, top, width, height.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct BBox {
    /// Left edge.
    pub x: f32,
    /// Top edge.
    pub y: f32,
    /// Width.
    pub w: f32,
    /// Height.
    pub h: f32,
}

impl BBox {
    /// The box from pixel corners, clamped to the image and normalised by its size.
    pub fn from_pixels(x0: f32, y0: f32, x1: f32, y1: f32, width: u32, height: u32) -> Self {
        let (w, h) = (width as f32, height as f32);
        let x0 = x0.clamp(0.0, w);
        let x1 = x1.clamp(0.0, w);
        let y0 = y0.clamp(0.0, h);
        let y1 = y1.clamp(0.0, h);
        Self {
            x: x0 / w,
            y: y0 / h,
            w: (x1 - x0).max(0.0) / w,
            h: (y1 - y0).max(0.0) / h,
        }
    }

    /// Intersection over union with `other`: 1 for the same box, 0 when they do not meet.
    pub fn iou(&self, other: &BBox) -> f32 {
        let iw = ((self.x + self.w).min(other.x + other.w) - self.x.max(other.x)).max(0.0);
        let ih = ((self.y + self.h).min(other.y + other.h) - self.y.max(other.y)).max(0.0);
        let inter = iw * ih;
        let union = self.w * self.h + other.w * other.h - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bbox_is_clamped_and_normalised() {
        let b = BBox::from_pixels(-10.0, 10.0, 50.0, 200.0, 100, 100);
        assert_eq!(
            b,
            BBox {
                x: 0.0,
                y: 0.1,
                w: 0.5,
                h: 0.9
            }
        );
    }

    #[test]
    fn iou_of_same_apart_and_half_overlapping_boxes() {
        let a = BBox {
            x: 0.0,
            y: 0.0,
            w: 0.5,
            h: 0.5,
        };
        assert_eq!(a.iou(&a), 1.0);
        assert_eq!(a.iou(&BBox { x: 0.5, ..a }), 0.0);
        let half = BBox { x: 0.25, ..a };
        assert!((a.iou(&half) - 1.0 / 3.0).abs() < 1e-6);
        let empty = BBox {
            w: 0.0,
            h: 0.0,
            ..a
        };
        assert_eq!(empty.iou(&empty), 0.0);
    }
}
