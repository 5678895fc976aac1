//! The class vocabulary (fastai `CategoryMap`).

use anyhow::bail;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// Sorted unique class names with index ↔ label lookup (fastai `CategoryMap`, sorted as
/// Rust sorts strings: by Unicode code point, so `Abyssinian` < `american_bulldog`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryMap {
    items: Vec<String>,
}

impl CategoryMap {
    /// The vocabulary of `labels`: sorted, duplicates removed.
    pub fn new<S: AsRef<str>>(labels: impl IntoIterator<Item = S>) -> Self {
        let set: BTreeSet<String> = labels.into_iter().map(|s| s.as_ref().to_owned()).collect();
        Self { items: set.into_iter().collect() }
    }

    /// Number of classes.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// True when there are no classes.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The class names, index order.
    pub fn items(&self) -> &[String] {
        &self.items
    }

    /// The name of class `index`, or `None` when out of range.
    pub fn label(&self, index: usize) -> Option<&str> {
        self.items.get(index).map(String::as_str)
    }

    /// The index of `label`. Errors: a label not in the vocabulary, naming it.
    pub fn index(&self, label: &str) -> crate::Result<usize> {
        match self.items.binary_search_by(|s| s.as_str().cmp(label)) {
            Ok(i) => Ok(i),
            Err(_) => bail!("label '{label}' is not in the vocabulary of {} classes", self.items.len()),
        }
    }
}
