//! Labelling functions (fastai `get_y`): `RegexLabeller` on the file name, `parent_label`,
//! `ColReader` on a CSV column, or any closure.

use super::items::Items;
use anyhow::{Context, bail};
use regex::Regex;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// fastai's pet-breed pattern from the book (chapter 5): the breed is everything before
/// the last `_<number>` of the file name. The extension is matched case-insensitively.
pub const PETS_PATTERN: &str = r"^(.+)_\d+\.(?i:jpg)$";

/// A closure labeller: the path of an item → its label.
pub type LabelFn = Arc<dyn Fn(&Path) -> crate::Result<String> + Send + Sync>;

/// How to get an item's label (fastai `get_y`).
#[derive(Clone)]
pub enum Labeller {
    /// First capture group of a regex applied to the file name (fastai
    /// `using_attr(RegexLabeller(pat), 'name')`).
    NameRegex(Regex),
    /// The name of the folder holding the file (fastai `parent_label`).
    Parent,
    /// A column of the items' CSV table (fastai `ColReader(col, label_delim=...)`). With a
    /// delimiter the cell is also split into several labels ([`multi_labels`]), kept for
    /// multi-label classification; the single-label pipeline uses the whole cell.
    Col {
        /// Column name.
        col: String,
        /// Delimiter of multi-label cells, e.g. `' '`.
        label_delim: Option<char>,
    },
    /// The class folder of a folder layout: component `depth` of the path below `root`
    /// (0 for `root/<class>/…`, 1 for `root/train/<class>/…`), so photos nested deeper in
    /// a class folder keep its label (fastai `parent_label` for the usual depth).
    ClassFolder {
        /// The dataset folder the depth counts from.
        root: PathBuf,
        /// Number of folders between `root` and the class folder.
        depth: usize,
    },
    /// Any function of the path.
    Func(LabelFn),
}

impl std::fmt::Debug for Labeller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Labeller {
    /// A [`Labeller::NameRegex`] from a pattern. Errors: an invalid regex, or one without a
    /// capture group.
    pub fn name_regex(pattern: &str) -> crate::Result<Self> {
        let re = Regex::new(pattern).with_context(|| format!("invalid label regex '{pattern}'"))?;
        if re.captures_len() < 2 {
            bail!("label regex '{pattern}' has no capture group: put the label part in parentheses, e.g. {PETS_PATTERN}");
        }
        Ok(Self::NameRegex(re))
    }

    /// A one-line description for messages and `summary`.
    pub fn describe(&self) -> String {
        match self {
            Self::NameRegex(re) => format!("RegexLabeller('{}') on the file name", re.as_str()),
            Self::Parent => "parent_label (name of the folder holding the file)".into(),
            Self::Col { col, .. } => format!("ColReader('{col}')"),
            Self::ClassFolder { depth: 0, .. } => "the class folder (first folder below the dataset folder)".into(),
            Self::ClassFolder { .. } => "parent_label of the class folders (first folder below train/ and valid/)".into(),
            Self::Func(_) => "a label function".into(),
        }
    }

    /// The label of item `i`. Errors: why this item gets no label.
    pub fn label(&self, items: &Items, i: usize) -> crate::Result<String> {
        let path = &items.paths[i];
        match self {
            Self::NameRegex(re) => {
                let name = path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default();
                match re.captures(&name).and_then(|c| c.get(1)) {
                    Some(m) => Ok(m.as_str().to_owned()),
                    None => bail!("'{name}' does not match"),
                }
            }
            Self::Parent => match path.parent().and_then(Path::file_name) {
                Some(n) => Ok(n.to_string_lossy().into_owned()),
                None => bail!("{} has no parent folder", path.display()),
            },
            Self::Col { col, .. } => {
                let t = items.table("ColReader")?;
                let c = t.col(col)?;
                let cell = t.rows[i][c].trim();
                if cell.is_empty() {
                    bail!("{}: empty '{col}' cell at line {}", t.path.display(), i + 2);
                }
                Ok(cell.to_owned())
            }
            Self::ClassFolder { root, depth } => {
                let rel = path.strip_prefix(root).with_context(|| format!("{} is not under {}", path.display(), root.display()))?;
                let parts: Vec<_> = rel.components().collect();
                if parts.len() < depth + 2 {
                    bail!("{} is not inside a class folder (expected {}<class>/<image>)", path.display(),
                          parts.iter().take(*depth).map(|c| format!("{}/", c.as_os_str().to_string_lossy())).collect::<String>());
                }
                Ok(parts[*depth].as_os_str().to_string_lossy().into_owned())
            }
            Self::Func(f) => f(path),
        }
    }

    /// The labels of all items. A labeller that fails on some items does not stop at the
    /// first: the error says how many failed and shows the first few next to the labeller.
    pub fn label_all(&self, items: &Items) -> crate::Result<Vec<String>> {
        let mut labels = Vec::with_capacity(items.len());
        let mut failed = Vec::new();
        for i in 0..items.len() {
            match self.label(items, i) {
                Ok(l) => labels.push(l),
                Err(e) => failed.push(format!("{} ({e:#})", items.paths[i].display())),
            }
        }
        if !failed.is_empty() {
            let shown: Vec<_> = failed.iter().take(5).map(|s| format!("  {s}")).collect();
            bail!(
                "{} of {} items got no label from {}; first ones:\n{}",
                failed.len(),
                items.len(),
                self.describe(),
                shown.join("\n")
            );
        }
        Ok(labels)
    }
}

/// Splits a multi-label cell on `delim`, trimming and dropping empty parts (fastai
/// `ColReader(label_delim=...)` + `MultiCategorize`).
pub fn multi_labels(cell: &str, delim: char) -> Vec<String> {
    cell.split(delim).map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect()
}
