//! Data pipeline throughput: decode + `Resize(460)` + collate over the 370 pets-sample
//! photos with 1 and 2 worker threads; prints images/s for each (best of `PASSES` passes,
//! interleaved, against the noise of a shared machine) and the 2-vs-1 ratio (target ≥ 1.8).

use kestrel::data::{BatchSource, ImageDataLoader, ItemTfm, LoaderConfig, get_image_files};
use std::time::Instant;

const PASSES: usize = 3;

fn images_per_s(paths: &[std::path::PathBuf], workers: usize) -> f64 {
    let cfg = LoaderConfig {
        bs: 64,
        shuffle: false,
        drop_last: false,
        seed: 42,
        workers,
        prefetch: 2,
        device: tch::Device::Cpu,
        train: true,
        skip_bad: false,
        weights: None,
    };
    let dl = ImageDataLoader::new(paths.to_vec(), vec![0; paths.len()], Some(ItemTfm::resize(460)), None, cfg).expect("loader");
    let t = Instant::now();
    let mut n = 0;
    for b in dl.batches(0) {
        n += b.expect("batch").x.size()[0];
    }
    n as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let Some(pets) = kestrel::util::testdata::pets_sample_or_skip("bench data") else { return };
    tch::set_num_threads(1);
    let paths = get_image_files(&pets.join("images"), true).expect("images").files;
    images_per_s(&paths, 2); // warm the file cache
    let (mut one, mut two) = (0f64, 0f64);
    for _ in 0..PASSES {
        one = one.max(images_per_s(&paths, 1));
        two = two.max(images_per_s(&paths, 2));
    }
    println!("data: decode + Resize(460) + collate, {} photos, best of {PASSES} passes", paths.len());
    println!("  1 worker : {one:8.1} images/s");
    println!("  2 workers: {two:8.1} images/s");
    println!("  ratio 2 vs 1: {:.2}x (target >= 1.8x)", two / one);
}
