//! The tensor shapes a manifest implies, and the comparison with what a session
//! declares. A model update relies on this to refuse an artifact whose outputs do not
//! fit its manifest before swapping it in, so every static dimension is checked.

use super::manifest::{Layout, ModelSpec, OutputSpec};

/// One expected dimension.
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    /// The batch: the manifest's `input.shape[0]` (`-1` = dynamic).
    Batch(i64),
    /// Anything (TF OD's detection slots).
    Any,
    /// Exactly this, for the reason given.
    Is(i64, String),
}

impl Dim {
    fn show(&self) -> String {
        match self {
            Dim::Batch(-1) => "N".into(),
            Dim::Batch(n) | Dim::Is(n, _) => n.to_string(),
            Dim::Any => "?".into(),
        }
    }
}

/// `[N, H, W, 3]` or `[N, 3, H, W]`, as in the manifest.
pub fn input(spec: &ModelSpec) -> Vec<Dim> {
    let s = spec.input.shape;
    let (h, w) = spec.input_size();
    let hw = |v: u32, what: &str| Dim::Is(i64::from(v), format!("input {what} from input.shape"));
    let c = Dim::Is(3, "RGB channels".into());
    match spec.input.layout {
        Layout::NHWC => vec![Dim::Batch(s[0]), hw(h, "height"), hw(w, "width"), c],
        Layout::NCHW => vec![Dim::Batch(s[0]), c, hw(h, "height"), hw(w, "width")],
    }
}

/// Each output the decoder reads, with its expected shape.
pub fn outputs(spec: &ModelSpec) -> Vec<(&str, Vec<Dim>)> {
    let n = Dim::Batch(spec.input.shape[0]);
    let c = spec.labels.len() as i64;
    let labels = format!("{c} label{} in the labels file", if c == 1 { "" } else { "s" });
    let anchors = |a: usize| Dim::Is(a as i64, "output.anchors".into());
    match &spec.output {
        OutputSpec::SsdDecoded { boxes, scores, anchors: a } => vec![
            (boxes.as_str(), vec![n.clone(), anchors(*a), Dim::Is(4, "box corners".into())]),
            (scores.as_str(), vec![n, anchors(*a), Dim::Is(1 + c, format!("background + {labels}"))]),
        ],
        OutputSpec::Tfod { boxes, scores, classes, num_detections } => vec![
            (boxes.as_str(), vec![n.clone(), Dim::Any, Dim::Is(4, "box corners".into())]),
            (scores.as_str(), vec![n.clone(), Dim::Any]),
            (classes.as_str(), vec![n.clone(), Dim::Any]),
            (num_detections.as_str(), vec![n]),
        ],
        OutputSpec::Yolov8 { output, anchors: a } => {
            vec![(output.as_str(), vec![n, Dim::Is(4 + c, format!("4 box values + {labels}")), anchors(*a)])]
        }
        OutputSpec::Yolov5 { output, anchors: a } => vec![(
            output.as_str(),
            vec![n, anchors(*a), Dim::Is(5 + c, format!("4 box values + objectness + {labels}"))],
        )],
    }
}

/// Compares a declared shape (`-1` = dynamic) with the expected one: the rank, and
/// every dimension the model fixes. A dynamic dimension accepts what the manifest says.
pub fn check(kind: &str, name: &str, got: &[i64], want: &[Dim]) -> Result<(), String> {
    let implied = want.iter().map(Dim::show).collect::<Vec<_>>().join(", ");
    let head = format!("{kind} {name:?} has shape {got:?}, the manifest implies [{implied}]");
    if got.len() != want.len() {
        return Err(format!("{head}: rank {} instead of {}", got.len(), want.len()));
    }
    for (i, (&g, w)) in got.iter().zip(want).enumerate() {
        if g < 0 {
            continue;
        }
        match w {
            Dim::Batch(-1) => {
                return Err(format!(
                    "{head}: dim {i} (batch) is fixed at {g}, but input.shape[0] = -1 says the batch is dynamic"
                ));
            }
            Dim::Batch(n) if g != *n => {
                return Err(format!("{head}: dim {i} (batch) is {g}, input.shape[0] says {n}"));
            }
            Dim::Is(v, why) if g != *v => return Err(format!("{head}: dim {i} is {g}, expected {v} ({why})")),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn is(v: i64) -> Dim {
        Dim::Is(v, "why".into())
    }

    #[test]
    fn dynamic_model_dims_accept_the_manifest() {
        assert_eq!(check("input", "x", &[-1, -1, -1, 3], &[Dim::Batch(-1), is(300), is(300), is(3)]), Ok(()));
        assert_eq!(check("input", "x", &[-1, 300], &[Dim::Batch(1), is(300)]), Ok(()));
        assert_eq!(check("output", "y", &[2, 7], &[Dim::Batch(2), Dim::Any]), Ok(()));
    }

    #[test]
    fn shape_mismatches_name_the_dimension_and_the_reason() {
        let e =
            check("output", "scores", &[-1, 1917, 3], &[Dim::Batch(-1), is(1917), Dim::Is(2, "1 + classes".into())]);
        assert_eq!(
            e,
            Err("output \"scores\" has shape [-1, 1917, 3], the manifest implies [N, 1917, 2]: dim 2 is 3, expected 2 (1 + classes)"
                .into())
        );
        let e = check("output", "o", &[1, 84, 8400], &[Dim::Batch(-1), is(84), is(8400)]).unwrap_err();
        assert!(e.contains("dim 0 (batch) is fixed at 1") && e.contains("dynamic"), "{e}");
        let e = check("output", "o", &[1, 84], &[Dim::Batch(1), is(84), is(8400)]).unwrap_err();
        assert!(e.ends_with("rank 2 instead of 3"), "{e}");
        let e = check("input", "x", &[4, 3, 64, 64], &[Dim::Batch(1), is(3), is(64), is(64)]).unwrap_err();
        assert!(e.ends_with("dim 0 (batch) is 4, input.shape[0] says 1"), "{e}");
    }
}
