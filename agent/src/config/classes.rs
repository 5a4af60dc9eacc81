//! `[class_groups]`: names for sets of labels (`vehicle = [car, bus, truck]`).

use super::ModelConfig;
use super::reader::{Issues, TableReader};

/// `[class_groups]` (optional section): `name = ["label", ...]`. A group names classes
/// that a platform wants under one stable name whatever the model calls them (`vehicle =
/// ["car", "bus", "truck", "motorcycle"]`). A zone's or line's `classes` may name groups;
/// counts and events report them. Names: 1 to 64 of `A-Z a-z 0-9 _ -`, not a class name of
/// any model; each member a class of at least one model; at most [`MAX_CLASS_GROUPS`].
#[derive(Debug, Clone, PartialEq)]
pub struct ClassGroup {
    pub name: String,
    pub members: Vec<String>,
}

impl ClassGroup {
    /// The group's class ids in a model with these labels (members it lacks are skipped).
    pub fn ids_in(&self, labels: &[String]) -> Vec<u32> {
        let mut ids: Vec<u32> =
            self.members.iter().filter_map(|m| labels.iter().position(|l| l == m).map(|i| i as u32)).collect();
        ids.sort_unstable();
        ids
    }
}

/// Most groups in `[class_groups]`, and most members of one.
pub const MAX_CLASS_GROUPS: usize = 64;

/// `[class_groups]`: every problem reported, the valid groups kept, sorted by name.
pub(super) fn read_class_groups(
    issues: &mut Issues<'_>,
    mut t: TableReader<'_, '_>,
    models: &[ModelConfig],
    check_members: bool,
) -> Vec<ClassGroup> {
    let mut groups = Vec::new();
    let keys = t.keys();
    if keys.len() > MAX_CLASS_GROUPS {
        let s = t.span().clone();
        issues.push("class_groups", Some(&s), format!("at most {MAX_CLASS_GROUPS} groups, found {}", keys.len()));
    }
    for name in keys.into_iter().take(MAX_CLASS_GROUPS) {
        let Some(members) = t.opt::<Vec<String>>(issues, &name) else { continue };
        let span = t.raw(&name).map(|v| v.span());
        let field = t.field_path(&name);
        let mut problems = Vec::new();
        if name.is_empty() || name.len() > 64 || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b))
        {
            problems.push("a group name is 1 to 64 of A-Z a-z 0-9 _ -".to_string());
        }
        if let Some(m) = models.iter().find(|m| m.spec.labels.contains(&name)) {
            problems.push(format!("\"{name}\" is a class of model \"{}\": a group needs a name of its own", m.name));
        }
        if members.is_empty() || members.len() > 256 {
            problems.push(format!("needs 1 to 256 class names, found {}", members.len()));
        }
        for (i, m) in members.iter().enumerate() {
            if members[..i].contains(m) {
                problems.push(format!("\"{m}\" is listed twice"));
            } else if check_members && !models.iter().any(|md| md.spec.labels.contains(m)) {
                let mut all: Vec<&str> =
                    models.iter().flat_map(|md| md.spec.labels.iter().map(String::as_str)).collect();
                all.sort_unstable();
                all.dedup();
                problems.push(format!("\"{m}\" is not a class of any model (their classes: {})", all.join(", ")));
            }
        }
        if problems.is_empty() {
            groups.push(ClassGroup { name, members });
        } else {
            for p in problems {
                issues.push(&field, span.as_ref(), p);
            }
        }
    }
    t.finish(issues);
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    groups
}
