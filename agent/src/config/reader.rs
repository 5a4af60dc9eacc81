//! A strict, spanned TOML reader that collects every problem instead of stopping at the
//! first one.
//!
//! serde's derived `Deserialize` (even with `deny_unknown_fields`) returns on the first
//! error, so an installer fixing a config would go round the edit/check loop once per
//! mistake. Here each section is walked by hand: every key is looked up once, type
//! errors and missing keys are recorded with the key's line, and whatever is left over
//! at the end of a table is reported as unknown.

use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};

/// One problem found in a config file: which file, which field, which line, what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub file: PathBuf,
    /// 1-based line, when the problem can be pinned to one.
    pub line: Option<usize>,
    /// Dotted path of the field, e.g. `cameras[1].fps` (`cameras[1]` is the second camera).
    pub field: String,
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: ", self.file.display(), line)?,
            None => write!(f, "{}: ", self.file.display())?,
        }
        if self.field.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.field, self.message)
        }
    }
}

/// Collects issues for one file and turns byte spans into line numbers.
pub struct Issues<'s> {
    file: PathBuf,
    src: &'s str,
    pub list: Vec<Issue>,
}

impl<'s> Issues<'s> {
    pub fn new(file: &Path, src: &'s str) -> Self {
        Self { file: file.to_path_buf(), src, list: Vec::new() }
    }

    pub fn line_of(&self, span: &Range<usize>) -> usize {
        let end = span.start.min(self.src.len());
        self.src.as_bytes()[..end].iter().filter(|&&b| b == b'\n').count() + 1
    }

    /// Any URL in `message` is shown with its secrets masked (check-config output and
    /// command replies are read by people who need not know camera passwords).
    pub fn push(&mut self, field: &str, span: Option<&Range<usize>>, message: impl Into<String>) {
        let line = span.map(|s| self.line_of(s));
        let message = super::redact_urls_in(&message.into());
        self.list.push(Issue { file: self.file.clone(), line, field: field.to_string(), message });
    }
}

/// A value read from TOML: the conversion says in words what it expected.
pub trait FromToml: Sized {
    fn from_toml(v: &DeValue<'_>) -> Result<Self, String>;
}

impl FromToml for String {
    fn from_toml(v: &DeValue<'_>) -> Result<Self, String> {
        v.as_str().map(str::to_string).ok_or_else(|| expected("a string", v))
    }
}

impl FromToml for bool {
    fn from_toml(v: &DeValue<'_>) -> Result<Self, String> {
        v.as_bool().ok_or_else(|| expected("true or false", v))
    }
}

impl FromToml for f64 {
    fn from_toml(v: &DeValue<'_>) -> Result<Self, String> {
        if let Some(f) = v.as_float() {
            let x = f.as_str().replace('_', "").parse::<f64>().map_err(|e| e.to_string())?;
            // nan and ±inf are valid TOML but no setting means them; letting one through
            // would reach a Duration or an Instant and panic there.
            if !x.is_finite() {
                return Err(format!("expected a finite number, found {}", f.as_str()));
            }
            return Ok(x);
        }
        if let Some(i) = v.as_integer() {
            return i64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
                .map(|i| i as f64)
                .map_err(|e| e.to_string());
        }
        Err(expected("a number", v))
    }
}

impl FromToml for u64 {
    fn from_toml(v: &DeValue<'_>) -> Result<Self, String> {
        let i = v.as_integer().ok_or_else(|| expected("a whole number", v))?;
        u64::from_str_radix(&i.as_str().replace('_', ""), i.radix())
            .map_err(|_| format!("expected a whole number ≥ 0, found {}", i.as_str()))
    }
}

impl FromToml for usize {
    fn from_toml(v: &DeValue<'_>) -> Result<Self, String> {
        u64::from_toml(v).and_then(|n| usize::try_from(n).map_err(|e| e.to_string()))
    }
}

impl<T: FromToml> FromToml for Vec<T> {
    fn from_toml(v: &DeValue<'_>) -> Result<Self, String> {
        let arr = v.as_array().ok_or_else(|| expected("an array", v))?;
        arr.iter()
            .enumerate()
            .map(|(i, item)| T::from_toml(item.get_ref()).map_err(|e| format!("item {i}: {e}")))
            .collect()
    }
}

impl<T: FromToml, const N: usize> FromToml for [T; N] {
    fn from_toml(v: &DeValue<'_>) -> Result<Self, String> {
        let items: Vec<T> = Vec::from_toml(v)?;
        let len = items.len();
        items.try_into().map_err(|_| format!("expected {N} items, found {len}"))
    }
}

fn expected(what: &str, v: &DeValue<'_>) -> String {
    format!("expected {what}, found {}", v.type_str())
}

/// A keyword-valued field (`transport = "tcp"`): implemented by the config's policy enums.
pub trait Keyword: Sized + Copy + 'static {
    /// Every accepted spelling and its value; the first is listed first in errors.
    const ALL: &'static [(&'static str, Self)];
}

/// Reads one TOML table, remembering which keys were consumed.
pub struct TableReader<'t, 'i> {
    path: String,
    table: &'t DeTable<'i>,
    span: Range<usize>,
    /// Every key looked up, present or not: the accepted keys listed for an unknown one.
    asked: Vec<String>,
}

impl<'t, 'i> TableReader<'t, 'i> {
    pub fn new(path: impl Into<String>, table: &'t DeTable<'i>, span: Range<usize>) -> Self {
        Self { path: path.into(), table, span, asked: Vec::new() }
    }

    pub fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_string() } else { format!("{}.{}", self.path, key) }
    }

    /// The table's own span (its header), for problems that concern the table as a whole.
    pub fn span(&self) -> &Range<usize> {
        &self.span
    }

    /// Every key of the table, in file order (for tables whose keys are names, not fields).
    pub fn keys(&self) -> Vec<String> {
        self.table.iter().map(|(k, _)| k.get_ref().to_string()).collect()
    }

    /// The raw value of `key`, marking it used.
    pub fn raw(&mut self, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
        if !self.asked.iter().any(|k| k == key) {
            self.asked.push(key.to_string());
        }
        self.table.iter().find(|(k, _)| k.get_ref() == key).map(|(_, v)| v)
    }

    /// `key` if present and well-typed; a type error is recorded and gives `None`.
    pub fn opt<T: FromToml>(&mut self, issues: &mut Issues<'_>, key: &str) -> Option<T> {
        let v = self.raw(key)?;
        match T::from_toml(v.get_ref()) {
            Ok(t) => Some(t),
            Err(e) => {
                issues.push(&self.field_path(key), Some(&v.span()), e);
                None
            }
        }
    }

    /// Like [`opt`](Self::opt), but a missing key is an issue too.
    pub fn req<T: FromToml>(&mut self, issues: &mut Issues<'_>, key: &str) -> Option<T> {
        if self.table.iter().all(|(k, _)| k.get_ref() != key) {
            self.asked.push(key.to_string());
            issues.push(&self.field_path(key), Some(&self.span), "missing required field");
            return None;
        }
        self.opt(issues, key)
    }

    /// A number that must lie in `lo..=hi`: outside it (or of the wrong type) the problem
    /// is recorded, naming the bounds, and the result is `None`, so callers fall back to a
    /// default and never build a value from an out-of-range number.
    pub fn num_in<T>(&mut self, issues: &mut Issues<'_>, key: &str, lo: T, hi: T, unit: &str) -> Option<T>
    where
        T: FromToml + PartialOrd + fmt::Display + Copy,
    {
        let v = self.opt::<T>(issues, key)?;
        if v >= lo && v <= hi {
            return Some(v);
        }
        let span = self.raw(key).map(|r| r.span());
        let unit = if unit.is_empty() { String::new() } else { format!(" {unit}") };
        issues.push(&self.field_path(key), span.as_ref(), format!("must be from {lo} to {hi}{unit}, got {v}"));
        None
    }

    /// A duration in seconds (a number, fractions allowed) within `lo..=hi` seconds.
    pub fn secs_in(&mut self, issues: &mut Issues<'_>, key: &str, lo: f64, hi: f64) -> Option<std::time::Duration> {
        self.num_in::<f64>(issues, key, lo, hi, "seconds").map(std::time::Duration::from_secs_f64)
    }

    /// A keyword field with a default.
    pub fn keyword<K: Keyword>(&mut self, issues: &mut Issues<'_>, key: &str, default: K) -> K {
        let Some(v) = self.raw(key) else { return default };
        let names = || K::ALL.iter().map(|(n, _)| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
        match v.get_ref().as_str() {
            Some(s) => match K::ALL.iter().find(|(n, _)| *n == s) {
                Some((_, k)) => *k,
                None => {
                    issues.push(
                        &self.field_path(key),
                        Some(&v.span()),
                        format!("unknown value \"{s}\", expected one of {}", names()),
                    );
                    default
                }
            },
            None => {
                issues.push(
                    &self.field_path(key),
                    Some(&v.span()),
                    expected(&format!("one of {}", names()), v.get_ref()),
                );
                default
            }
        }
    }

    /// An array of tables (`[[cameras]]`), each with its own reader.
    pub fn tables(&mut self, issues: &mut Issues<'_>, key: &str) -> Vec<TableReader<'t, 'i>> {
        let Some(v) = self.raw(key) else { return Vec::new() };
        let path = self.field_path(key);
        let Some(arr) = v.get_ref().as_array() else {
            issues.push(&path, Some(&v.span()), expected("an array of tables", v.get_ref()));
            return Vec::new();
        };
        let mut out = Vec::new();
        for (i, item) in arr.iter().enumerate() {
            match item.get_ref().as_table() {
                Some(t) => out.push(TableReader::new(format!("{path}[{i}]"), t, item.span())),
                None => issues.push(&format!("{path}[{i}]"), Some(&item.span()), expected("a table", item.get_ref())),
            }
        }
        out
    }

    /// A sub-table (`[mqtt]`); `required` reports a missing one.
    pub fn table(&mut self, issues: &mut Issues<'_>, key: &str, required: bool) -> Option<TableReader<'t, 'i>> {
        let Some(v) = self.raw(key) else {
            if required {
                issues.push(&self.field_path(key), None, "missing required section");
            }
            return None;
        };
        match v.get_ref().as_table() {
            Some(t) => Some(TableReader::new(self.field_path(key), t, v.span())),
            None => {
                issues.push(&self.field_path(key), Some(&v.span()), expected("a table", v.get_ref()));
                None
            }
        }
    }

    /// Reports every key that no one asked for, listing the accepted ones.
    pub fn finish(self, issues: &mut Issues<'_>) {
        for (k, _) in self.table.iter() {
            let name: &str = k.get_ref().as_ref();
            if !self.asked.iter().any(|a| a == name) {
                issues.push(
                    &self.field_path(name),
                    Some(&k.span()),
                    format!("unknown field, expected one of: {}", self.asked.join(", ")),
                );
            }
        }
    }
}
