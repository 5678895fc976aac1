//! Training-data throughput of the pets recipe, kestrel against fastai: decode +
//! `Resize(460)` presizing + `aug_transforms(size=224, min_scale=0.75)` + normalisation,
//! one training pass (shuffled, drop_last) over the training rows (`is_valid` false) of a
//! `labels.csv` (column `fname`), with 2 worker threads and 2 torch threads: the pets
//! sample's by default, or `KESTREL_PIPELINE_DATA`'s (a folder with a `labels.csv` in the
//! same form, e.g. `../shared/data/caltech101`). Prints images/s; when fastai's number for
//! the same photos is given in `KESTREL_FASTAI_PIPELINE_IPS` (scripts/bench/
//! fastai_pipeline.py prints it; the comparison scripts pass it), also the ratio (issue 7's
//! target: ≥ 3×).

use kestrel::data::{BatchSource, CsvTable, ImageDataLoader, ItemTfm, Items, LoaderConfig};
use kestrel::learner::vision_batch_tfms;
use kestrel::models::Arch;
use std::sync::Arc;
use std::time::Instant;

/// The allocator of the `kestrel` binary, so the loader runs as it does there.
#[global_allocator]
static ALLOC: kestrel::util::alloc::ZeroByMemset = kestrel::util::alloc::ZeroByMemset;

fn main() {
    let data = match std::env::var_os("KESTREL_PIPELINE_DATA") {
        Some(d) => std::path::PathBuf::from(d),
        None => match kestrel::util::testdata::pets_sample_or_skip("bench pipeline") {
            Some(p) => p,
            None => return,
        },
    };
    tch::set_num_threads(2);
    let table = CsvTable::read(&data.join("labels.csv")).expect("labels.csv");
    let valid: Vec<bool> = table.column("is_valid").expect("an is_valid column").iter().map(|v| v.eq_ignore_ascii_case("true")).collect();
    let items = Items::from_csv(table, "fname", None, "").expect("a fname column");
    let paths: Vec<_> = items.paths.into_iter().zip(valid).filter(|(_, v)| !v).map(|(p, _)| p).collect();
    let tfms = Arc::new(vision_batch_tfms(Arch::EfficientNetLite0, 224, 0.75).expect("batch tfms"));
    let cfg = LoaderConfig { bs: 32, shuffle: true, drop_last: true, seed: 42, workers: 2, prefetch: 2,
                             device: tch::Device::Cpu, train: true, skip_bad: false, weights: None };
    let dl = ImageDataLoader::new(paths.clone(), vec![0; paths.len()], Some(ItemTfm::resize(460)), Some(tfms), cfg).expect("loader");
    for b in dl.batches(99).take(2) { b.expect("warm-up batch"); } // file cache, allocator
    let t = Instant::now();
    let mut n = 0;
    for b in dl.batches(0) {
        n += b.expect("batch").x.size()[0];
    }
    let ips = n as f64 / t.elapsed().as_secs_f64();
    println!("pipeline ({}): decode + Resize(460) + aug_transforms(224, min_scale 0.75) + Normalize, {n} photos, 2 workers", data.display());
    println!("  kestrel: {ips:8.1} images/s");
    if let Some(f) = std::env::var("KESTREL_FASTAI_PIPELINE_IPS").ok().and_then(|v| v.parse::<f64>().ok()) {
        println!("  fastai : {f:8.1} images/s (DataLoader, 2 workers)");
        println!("  ratio kestrel/fastai: {:.2}x (target >= 3x)", ips / f);
    }
}
