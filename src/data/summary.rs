//! `summary` (fastai `DataBlock.summary`): every step of the pipeline on one item, then
//! the collated batch, stopping at the first failing step with the step, file and reason.

use super::block::DataBlock;
use super::decode::decode_with_info;
use super::BatchSource;
use crate::util::rng::derived;
use std::fmt::Write as _;

/// The text of a summary and whether every step passed.
#[derive(Debug, Clone)]
pub struct Summary {
    /// The report, one step per line group.
    pub text: String,
    /// False when a step failed; the text's last lines say which, on which file, why.
    pub ok: bool,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

macro_rules! step {
    ($out:ident, $name:expr, $file:expr, $e:expr) => {
        match $e {
            Ok(v) => v,
            Err(e) => {
                let _ = writeln!($out, "\nFAILED at step '{}' on {}:\n  {:#}", $name, $file, e);
                return Summary { text: $out, ok: false };
            }
        }
    };
}

/// Runs `block` step by step on its first training item, then builds one training
/// batch. Never errors: a failure ends the report (`ok = false`).
pub fn summary(block: &DataBlock) -> Summary {
    let mut out = String::new();
    let _ = writeln!(out, "Setting-up type transforms pipelines");
    let src = format!("{:?}", block.source);
    let items = step!(out, "get_items", src, block.items());
    let _ = writeln!(out, "Collecting items from {src}\nFound {} items ({} non-image files ignored)", items.len(), items.n_ignored);
    let ds = step!(out, "datasets (label + split)", src, block.datasets());
    let _ = writeln!(out, "Labeller: {}", block.labeller.describe());
    let _ = writeln!(out, "Splitter: {}", block.splitter.describe());
    let _ = writeln!(out, "2 datasets of sizes {},{}", ds.train.len(), ds.valid.len());
    let _ = writeln!(out, "Vocabulary: {} classes: {}", ds.vocab.len(), preview(ds.vocab.items()));
    for w in &ds.warnings {
        let _ = writeln!(out, "Warning: {w}");
    }
    let i = ds.train[0];
    let path = &ds.items.paths[i];
    let file = path.display().to_string();
    let _ = writeln!(out, "\nBuilding one sample");
    let _ = writeln!(out, "  Source: {file}");
    let label = &ds.labels[i];
    let target = step!(out, "Categorize", file, ds.vocab.index(label));
    let _ = writeln!(out, "  Label: '{label}' -> TensorCategory({target})");
    let _ = writeln!(out, "  Split: train (item {i} of {})", ds.items.len());
    let (img, info) = step!(out, "decode (PILImage.create)", file, decode_with_info(path));
    let _ = writeln!(
        out,
        "  Decoded: {} {}, stored {}x{}, EXIF orientation {} -> RGB8 {}x{} (width x height)",
        info.format, info.color, info.stored_size.0, info.stored_size.1, info.orientation, img.width(), img.height()
    );
    match &block.item_tfm {
        Some(t) => {
            let mut rng = derived(block.seed, 0);
            let r = step!(out, "item transform", file, t.apply(&img, true, &mut rng));
            let _ = writeln!(out, "  Item transform {} -> {}x{}", t.describe(), r.width(), r.height());
        }
        None => {
            let _ = writeln!(out, "  No item transform");
        }
    }
    let _ = writeln!(out, "\nCollating items in a batch");
    let dls = step!(out, "dataloaders", src, block.image_dataloaders());
    let b = step!(out, "collate (one_batch)", "the first training batch", dls.train.one_batch());
    let _ = writeln!(
        out,
        "  x: {:?} {:?} on {:?}\n  y: {:?} {:?}\n  {} training batches of {} per epoch ({} items, drop_last), {} validation batches",
        b.x.size(),
        b.x.kind(),
        b.x.device(),
        b.y.size(),
        b.y.kind(),
        dls.train.n_batches(),
        block.bs,
        dls.train.n_items(),
        dls.valid.n_batches()
    );
    let _ = writeln!(out, "  Batch transforms: {}", if block.batch_tfms.is_some() { "yes" } else { "none" });
    Summary { text: out, ok: true }
}

fn preview(items: &[String]) -> String {
    let shown: Vec<&str> = items.iter().take(8).map(String::as_str).collect();
    if items.len() > shown.len() { format!("{}, ...", shown.join(", ")) } else { shown.join(", ") }
}
