//! Fitting frames into the model input and mapping boxes back out.
//!
//! With `resize = "stretch"` the GStreamer pipeline already scaled the frame to the
//! input size and a box normalised to the input is a box normalised to the frame.
//! With `resize = "letterbox"` the frame keeps its aspect ratio: it is scaled to
//! [`Placement::letterbox`]'s content rectangle, centred, and the rest is filled with
//! the pad value, as Ultralytics' `LetterBox` does. The frame arrives stretched to the
//! input size (the pipeline scales every camera of a model to one size), so
//! [`letterbox`] resamples it into the content rectangle; a frame that already has
//! the content size is copied as is. Either way the content rectangle shows the whole
//! frame, so [`Placement::to_frame`] maps boxes back exactly.

use super::detection::BBox;

/// Where the frame's content sits in the model input, in input pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub input_w: u32,
    pub input_h: u32,
    pub left: u32,
    pub top: u32,
    pub content_w: u32,
    pub content_h: u32,
}

impl Placement {
    /// The frame fills the input (stretch).
    pub fn full(input_w: u32, input_h: u32) -> Self {
        Placement { input_w, input_h, left: 0, top: 0, content_w: input_w, content_h: input_h }
    }

    /// Ultralytics' letterbox geometry for a `native_w` x `native_h` frame: scale by
    /// `r = min(W / w, H / h)`, round the scaled size half to even (Python's `round`),
    /// and put the odd pixel of padding, if any, right and bottom.
    pub fn letterbox(native_w: u32, native_h: u32, input_w: u32, input_h: u32) -> Self {
        let (nw, nh) = (f64::from(native_w.max(1)), f64::from(native_h.max(1)));
        let r = (f64::from(input_w) / nw).min(f64::from(input_h) / nh);
        let fit = |v: f64, max: u32| ((v * r).round_ties_even() as u32).clamp(1, max.max(1));
        let (content_w, content_h) = (fit(nw, input_w), fit(nh, input_h));
        Placement {
            input_w,
            input_h,
            left: (input_w - content_w) / 2,
            top: (input_h - content_h) / 2,
            content_w,
            content_h,
        }
    }

    /// A box in input pixels (corners) to a box normalised to the frame.
    pub fn to_frame_px(&self, x1: f32, y1: f32, x2: f32, y2: f32) -> BBox {
        let (cw, ch) = (f64::from(self.content_w), f64::from(self.content_h));
        let fx = |x: f32| (f64::from(x) - f64::from(self.left)) / cw;
        let fy = |y: f32| (f64::from(y) - f64::from(self.top)) / ch;
        let (x, y) = (fx(x1), fy(y1));
        BBox { x: x as f32, y: y as f32, w: (fx(x2) - x) as f32, h: (fy(y2) - y) as f32 }
    }

    /// A box normalised to the input (corners) to a box normalised to the frame.
    pub fn to_frame(&self, x1: f32, y1: f32, x2: f32, y2: f32) -> BBox {
        let (w, h) = (self.input_w as f32, self.input_h as f32);
        if self.left == 0 && self.top == 0 && self.content_w == self.input_w && self.content_h == self.input_h {
            // Stretch: no arithmetic, so the default model's boxes stay bit-identical.
            return BBox { x: x1, y: y1, w: x2 - x1, h: y2 - y1 };
        }
        self.to_frame_px(x1 * w, y1 * h, x2 * w, y2 * h)
    }
}

/// Writes `src` (packed RGB rows of `stride` bytes, `src_w` x `src_h`) into `dst`
/// (packed RGB, `p.input_w` x `p.input_h`), resampled bilinearly (pixel centres, as
/// videoscale's bilinear method) into the content rectangle and padded with `pad`.
pub fn letterbox(src: &[u8], src_w: u32, src_h: u32, stride: usize, p: &Placement, pad: u8, dst: &mut [u8]) {
    let (iw, cw, ch) = (p.input_w as usize, p.content_w as usize, p.content_h as usize);
    dst.fill(pad);
    // One (first index, second index, weight of the second) per output column / row;
    // when the sizes agree every weight is 0 and the copy is exact.
    let taps = |out: usize, inp: u32| -> Vec<(usize, usize, f32)> {
        let (scale, last) = (inp as f32 / out as f32, inp.max(1) as usize - 1);
        (0..out)
            .map(|o| {
                let s = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
                let i0 = (s.floor() as usize).min(last);
                (i0, (i0 + 1).min(last), (s - i0 as f32).clamp(0.0, 1.0))
            })
            .collect()
    };
    let (xs, ys) = (taps(cw, src_w), taps(ch, src_h));
    for (oy, &(y0, y1, fy)) in ys.iter().enumerate() {
        let (r0, r1) = (&src[y0 * stride..], &src[y1 * stride..]);
        let row = (p.top as usize + oy) * iw * 3 + p.left as usize * 3;
        for (ox, &(x0, x1, fx)) in xs.iter().enumerate() {
            for c in 0..3 {
                let top = f32::from(r0[x0 * 3 + c]) * (1.0 - fx) + f32::from(r0[x1 * 3 + c]) * fx;
                let bottom = f32::from(r1[x0 * 3 + c]) * (1.0 - fx) + f32::from(r1[x1 * 3 + c]) * fx;
                dst[row + ox * 3 + c] = (top * (1.0 - fy) + bottom * fy + 0.5) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn letterbox_geometry_matches_ultralytics() {
        // 1280x720 into 640x640: r = 0.5, 640x360 content, 140 rows of padding above.
        assert_eq!(
            Placement::letterbox(1280, 720, 640, 640),
            Placement { input_w: 640, input_h: 640, left: 0, top: 140, content_w: 640, content_h: 360 }
        );
        // Portrait 480x640 into 640x640: 480 wide, 80 columns each side.
        let p = Placement::letterbox(480, 640, 640, 640);
        assert_eq!((p.left, p.top, p.content_w, p.content_h), (80, 0, 480, 640));
        // 100x49 into 64x64: r = 0.64, 31.36 rows -> 31, 33 rows of padding: 16 above, 17 below.
        let p = Placement::letterbox(100, 49, 64, 64);
        assert_eq!((p.left, p.top, p.content_w, p.content_h), (0, 16, 64, 31));
        // Same aspect ratio as the input: no padding at all.
        assert_eq!(Placement::letterbox(1920, 1080, 64, 36), Placement::full(64, 36));
    }

    #[test]
    fn boxes_map_back_from_the_content_rectangle_to_the_frame() {
        let p = Placement::letterbox(1280, 720, 640, 640);
        // The content rectangle's corners are the frame's corners.
        let b = p.to_frame_px(0.0, 140.0, 640.0, 500.0);
        assert_eq!((b.x, b.y, b.w, b.h), (0.0, 0.0, 1.0, 1.0));
        // A box in the middle of the frame: x 0.25..0.5, y 0.5..0.75.
        let b = p.to_frame(160.0 / 640.0, 320.0 / 640.0, 320.0 / 640.0, 410.0 / 640.0);
        for (got, want) in [(b.x, 0.25), (b.y, 0.5), (b.w, 0.25), (b.h, 0.25)] {
            assert!((got - want).abs() < 1e-6, "{b:?}");
        }
        // Stretch leaves normalised boxes untouched.
        let b = Placement::full(300, 300).to_frame(0.1, 0.2, 0.3, 0.5);
        assert_eq!((b.x, b.y), (0.1, 0.2));
        assert!((b.w - 0.2).abs() < 1e-7 && (b.h - 0.3).abs() < 1e-7);
    }

    #[test]
    fn letterbox_copies_a_frame_of_content_size_and_pads_the_rest() {
        // A 4x2 frame (distinct bytes) into 4x4: rows 1..3 hold it unchanged.
        let src: Vec<u8> = (0..24).collect();
        let p = Placement::letterbox(4, 2, 4, 4);
        assert_eq!((p.top, p.content_h), (1, 2));
        let mut dst = vec![0u8; 4 * 4 * 3];
        letterbox(&src, 4, 2, 12, &p, 114, &mut dst);
        assert!(dst[..12].iter().all(|&v| v == 114) && dst[36..].iter().all(|&v| v == 114));
        assert_eq!(&dst[12..36], &src[..]);
    }

    #[test]
    fn letterbox_resamples_a_stretched_frame_into_the_content_rectangle() {
        // The pipeline delivers a 2x2 stretch of a 4:1 frame; the input is 4x4, so the
        // content is 4x1 (top 1). Row 0 is black, row 1 white: the one content row
        // sits halfway between them, columns are interpolated from the two.
        let mut src = vec![0u8; 2 * 2 * 3];
        src[6..].fill(200);
        src[..3].copy_from_slice(&[100, 100, 100]);
        let p = Placement::letterbox(400, 100, 4, 4);
        assert_eq!((p.left, p.top, p.content_w, p.content_h), (0, 1, 4, 1));
        let mut dst = vec![0u8; 4 * 4 * 3];
        letterbox(&src, 2, 2, 6, &p, 7, &mut dst);
        let row: Vec<u8> = dst[12..24].iter().step_by(3).copied().collect();
        // Column sources 0, 0.25, 0.75, 1 -> top row 100, 75, 25, 0; bottom row 200.
        assert_eq!(row, vec![150, 138, 113, 100]);
        assert!(dst[..12].iter().chain(&dst[24..]).all(|&v| v == 7));
    }
}
