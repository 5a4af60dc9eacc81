//! What a detector finds, in the terms every later stage uses: boxes normalised to the
//! camera's frame and detections with a class id. A leaf: it imports nothing of the
//! stages, so the decoders, the tracker, the rules and the messages share it without
//! importing each other.

use serde::Serialize;

/// A box normalised to [0, 1] of the frame, origin top-left.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BBox {
    pub x: f32,
    pub y: f32,
    pub w: f32,
    pub h: f32,
}

impl BBox {
    pub fn area(&self) -> f32 {
        self.w.max(0.0) * self.h.max(0.0)
    }

    pub fn iou(&self, other: &BBox) -> f32 {
        let x1 = self.x.max(other.x);
        let y1 = self.y.max(other.y);
        let x2 = (self.x + self.w).min(other.x + other.w);
        let y2 = (self.y + self.h).min(other.y + other.h);
        let inter = (x2 - x1).max(0.0) * (y2 - y1).max(0.0);
        let union = self.area() + other.area() - inter;
        if union <= 0.0 { 0.0 } else { inter / union }
    }
}

/// One detected object. `class_id` indexes the model's labels (background excluded).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub class_id: u32,
    pub score: f32,
    pub bbox: BBox,
}

/// Clips to the frame; a box with nothing left inside it is dropped.
pub fn clip(b: BBox) -> Option<BBox> {
    let x1 = b.x.clamp(0.0, 1.0);
    let y1 = b.y.clamp(0.0, 1.0);
    let x2 = (b.x + b.w).clamp(0.0, 1.0);
    let y2 = (b.y + b.h).clamp(0.0, 1.0);
    (x2 > x1 && y2 > y1).then_some(BBox { x: x1, y: y1, w: x2 - x1, h: y2 - y1 })
}
