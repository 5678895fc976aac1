//! Batch augmentation throughput on the CPU with 2 threads: a (64, 3, 460, 460) u8 batch
//! to (64, 3, 224, 224) normalised f32 with fastai's default `aug_transforms`, fused (one
//! resample + one lighting pass) against op by op (one resample per transform, separate
//! brightness/contrast passes), measured in the same run.
//!
//! Run: `cargo bench --bench augment` (KESTREL_BENCH_ITERS sets the timed batches, 5).
//! Under `cargo test --all-targets` (no `--bench` argument) it only does a quick smoke
//! run on a batch of 2.

use std::time::Instant;

use kestrel::transforms::{BatchTfms, ImageAug, Normalize, aug_transforms};
use kestrel::util::rng::seeded;
use tch::{Device, Kind, Tensor};

fn time<F: FnMut() -> Tensor>(n: i64, iters: usize, mut f: F) -> f64 {
    let _ = f(); // warm-up
    let start = Instant::now();
    for _ in 0..iters {
        let y = f();
        assert_eq!(y.size(), [n, 3, 224, 224]);
    }
    iters as f64 / start.elapsed().as_secs_f64()
}

fn main() -> kestrel::Result<()> {
    tch::set_num_threads(2);
    let full = std::env::args().any(|a| a == "--bench");
    let iters: usize = std::env::var("KESTREL_BENCH_ITERS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    let (n, iters) = if full { (64, iters) } else { (2, 1) };
    tch::manual_seed(0);
    let x = Tensor::randint(256, [n, 3, 460, 460], (Kind::Uint8, Device::Cpu));
    let t = BatchTfms::new(Some(aug_transforms().with_size(224)), 224, Normalize::imagenet())?;
    let mut rng = seeded(0);
    let batches: Vec<Vec<ImageAug>> = (0..iters + 1).map(|_| t.params(n as usize, 460, 460, true, &mut rng)).collect();
    let (t, x, batches) = (&t, &x, &batches);
    let run = |mode: u8| {
        let mut i = 0;
        move || {
            let p = &batches[i % batches.len()];
            i += 1;
            match mode {
                0 => t.apply_params(x, p),
                1 => t.apply_op_by_op(x, p, false),
                _ => t.apply_op_by_op(x, p, true),
            }
            .expect("augmentation")
        }
    };
    let fused = time(n, iters, run(0));
    let op_small = time(n, iters, run(1));
    let op_full = time(n, iters, run(2));
    if !full {
        println!("augment bench smoke run (batch of {n}); `cargo bench --bench augment` measures");
        return Ok(());
    }
    println!("augment (64,3,460,460) u8 -> (64,3,224,224) f32, CPU, 2 threads, {iters} batches each:");
    println!("  fused (one resample + one lighting pass):          {fused:.3} batches/s");
    println!("  op by op, each transform to 224 px (fastai uncomposed): {op_small:.3} batches/s  -> fused/op-by-op = {:.2}x", fused / op_small);
    println!("  op by op, 460-px intermediates:                    {op_full:.3} batches/s  -> fused/op-by-op = {:.2}x", fused / op_full);
    Ok(())
}
