//! Plane geometry in normalised image coordinates (x right, y down, both in [0, 1]).

/// A point in normalised image coordinates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f32,
    pub y: f32,
}

impl Point {
    pub fn new(x: f32, y: f32) -> Self {
        Self { x, y }
    }

    pub fn dist(self, o: Point) -> f32 {
        ((self.x - o.x).powi(2) + (self.y - o.y).powi(2)).sqrt()
    }
}

/// (b − a) × (p − a): > 0 on one side of the line a→b, < 0 on the other, 0 on it.
/// With y pointing down: for a = (0.5, 0), b = (0.5, 1), points with x < 0.5 give > 0.
pub fn cross(a: Point, b: Point, p: Point) -> f32 {
    (b.x - a.x) * (p.y - a.y) - (b.y - a.y) * (p.x - a.x)
}

/// The side of the line a→b that `p` is on: 1, -1, or 0 (on the line, within `eps`).
pub fn side(a: Point, b: Point, p: Point) -> i8 {
    const EPS: f32 = 1e-7;
    let c = cross(a, b, p);
    if c > EPS {
        1
    } else if c < -EPS {
        -1
    } else {
        0
    }
}

/// Whether segment p→q crosses or touches segment a→b.
pub fn segments_intersect(p: Point, q: Point, a: Point, b: Point) -> bool {
    let d1 = side(a, b, p);
    let d2 = side(a, b, q);
    let d3 = side(p, q, a);
    let d4 = side(p, q, b);
    if d1 * d2 < 0 && d3 * d4 < 0 {
        return true;
    }
    let on = |s: Point, e: Point, r: Point| {
        r.x >= s.x.min(e.x) && r.x <= s.x.max(e.x) && r.y >= s.y.min(e.y) && r.y <= s.y.max(e.y)
    };
    (d1 == 0 && on(a, b, p)) || (d2 == 0 && on(a, b, q)) || (d3 == 0 && on(p, q, a)) || (d4 == 0 && on(p, q, b))
}

/// Even-odd rule: whether `p` is inside the polygon (points on an edge may go either way).
pub fn contains(polygon: &[Point], p: Point) -> bool {
    let mut inside = false;
    let n = polygon.len();
    let mut j = n.wrapping_sub(1);
    for i in 0..n {
        let (a, b) = (polygon[i], polygon[j]);
        if (a.y > p.y) != (b.y > p.y) && p.x < (b.x - a.x) * (p.y - a.y) / (b.y - a.y) + a.x {
            inside = !inside;
        }
        j = i;
    }
    inside
}

/// Twice the signed area (shoelace); 0 for a degenerate polygon.
pub fn area2(polygon: &[Point]) -> f32 {
    let n = polygon.len();
    (0..n)
        .map(|i| {
            let (a, b) = (polygon[i], polygon[(i + 1) % n]);
            a.x * b.y - b.x * a.y
        })
        .sum()
}

/// Whether two non-adjacent edges of the polygon cross (a bow-tie: inside is ambiguous).
pub fn self_intersects(polygon: &[Point]) -> bool {
    let n = polygon.len();
    for i in 0..n {
        for j in i + 1..n {
            let adjacent = j == i + 1 || (i == 0 && j == n - 1);
            if adjacent {
                continue;
            }
            let (a, b) = (polygon[i], polygon[(i + 1) % n]);
            let (c, d) = (polygon[j], polygon[(j + 1) % n]);
            if segments_intersect(a, b, c, d) {
                return true;
            }
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(x: f32, y: f32) -> Point {
        Point::new(x, y)
    }

    #[test]
    fn the_issue_example_line_puts_the_left_half_on_the_positive_side() {
        // A = (0.5, 0), B = (0.5, 1): (B−A)×(P−A) > 0 for P left of x = 0.5.
        let (a, b) = (p(0.5, 0.0), p(0.5, 1.0));
        assert_eq!(side(a, b, p(0.2, 0.5)), 1);
        assert_eq!(side(a, b, p(0.8, 0.5)), -1);
        assert_eq!(side(a, b, p(0.5, 0.3)), 0);
    }

    #[test]
    fn segments_cross_only_within_their_extent() {
        let (a, b) = (p(0.5, 0.2), p(0.5, 0.6));
        assert!(segments_intersect(p(0.4, 0.4), p(0.6, 0.4), a, b));
        // Passes below the end of the line segment.
        assert!(!segments_intersect(p(0.4, 0.8), p(0.6, 0.8), a, b));
        // Touching counts.
        assert!(segments_intersect(p(0.4, 0.6), p(0.6, 0.6), a, b));
    }

    #[test]
    fn polygon_contains_by_even_odd_rule() {
        let square = [p(0.1, 0.5), p(0.5, 0.5), p(0.5, 1.0), p(0.1, 1.0)];
        assert!(contains(&square, p(0.3, 0.7)));
        assert!(!contains(&square, p(0.6, 0.7)));
        assert!(!contains(&square, p(0.3, 0.4)));
        // Concave: an L shape.
        let l = [p(0.0, 0.0), p(0.2, 0.0), p(0.2, 0.8), p(0.8, 0.8), p(0.8, 1.0), p(0.0, 1.0)];
        assert!(contains(&l, p(0.1, 0.5)));
        assert!(!contains(&l, p(0.5, 0.5)));
        assert!(contains(&l, p(0.5, 0.9)));
    }

    #[test]
    fn bow_ties_and_flat_polygons_are_recognised() {
        let bow = [p(0.0, 0.0), p(1.0, 1.0), p(1.0, 0.0), p(0.0, 1.0)];
        assert!(self_intersects(&bow));
        let square = [p(0.0, 0.0), p(1.0, 0.0), p(1.0, 1.0), p(0.0, 1.0)];
        assert!(!self_intersects(&square));
        assert!(area2(&square).abs() > 1.9);
        assert_eq!(area2(&[p(0.0, 0.0), p(0.5, 0.5), p(1.0, 1.0)]), 0.0);
    }
}
