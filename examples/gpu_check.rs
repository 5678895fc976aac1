//! The CUDA checks of `scripts/gpu-check.sh`, one table row each (`check | result | number`):
//! fp16 training with the GradScaler, bfloat16, channels-last, the batch augmentation on CUDA
//! equal to the CPU's within 1e-4, NCCL with world size 1, and (with `--nccl-rank R` set by
//! the script when ≥ 2 GPUs are visible) one rank of the 2-process NCCL all-reduce.
//! Exits 2 with a clear message when libtorch sees no CUDA GPU.

use kestrel::data::{CategoryMap, DataLoaders, TensorLoader};
use kestrel::distributed::{Backend, DistConfig, ProcessGroup, ReduceOp, has_nccl, launch::free_port};
use kestrel::learner::{CrossEntropyLossFlat, Learner, vision_batch_tfms};
use kestrel::models::{Arch, Model, SimpleCnn, VisionModel};
use kestrel::transforms::BatchTransform;
use std::sync::Arc;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

fn row(check: &str, ok: bool, number: &str) -> bool {
    println!("| {check} | {} | {number} |", if ok { "PASS" } else { "FAIL" });
    ok
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double).to_device(Device::Cpu) - b.to_kind(Kind::Double).to_device(Device::Cpu)).abs().max().double_value(&[])
}

/// A few epochs of a small CNN on separable synthetic data: (first loss, last loss).
fn train(dev: Device, fp16: bool) -> kestrel::Result<(f64, f64)> {
    tch::manual_seed(0);
    let y = Tensor::arange(256, (Kind::Int64, Device::Cpu)).remainder(4);
    let x = Tensor::randn([256, 3, 32, 32], (Kind::Float, Device::Cpu)) * 0.5 + y.view([-1, 1, 1, 1]).to_kind(Kind::Float);
    let dls = DataLoaders {
        train: Arc::new(TensorLoader::new(x.copy(), y.copy(), 32, true, true, 1, dev)?),
        valid: Arc::new(TensorLoader::new(x, y, 64, false, false, 0, dev)?),
        vocab: CategoryMap::new(["a", "b", "c", "d"]),
    };
    let mut learn = Learner::new(dls, Box::new(SimpleCnn::new(8, 16, 4, dev)), Box::new(CrossEntropyLossFlat))?;
    if fp16 { learn.to_fp16()?; }
    learn.fit_one_cycle(3, 1e-2)?;
    let l = &learn.recorder.losses;
    Ok((l[0], *l.last().unwrap_or(&f64::NAN)))
}

fn nccl_allreduce(rank: usize, world: usize, port: u16) -> kestrel::Result<f64> {
    let cfg = DistConfig {
        master_addr: "127.0.0.1".into(), master_port: port, world, rank, local_rank: rank, backend: Backend::Nccl,
        timeout: Duration::from_secs(60),
    };
    let pg = ProcessGroup::init(&cfg)?;
    let t = Tensor::full([4], (rank + 1) as f64, (Kind::Float, Device::Cuda(rank)));
    pg.allreduce(&t, ReduceOp::Sum)?;
    let b = Tensor::full([2], rank as f64 + 7.0, (Kind::Float, Device::Cuda(rank)));
    pg.broadcast(std::slice::from_ref(&b), 0)?;
    pg.barrier()?;
    anyhow::ensure!(b.double_value(&[0]) == 7.0, "broadcast gave {}", b.double_value(&[0]));
    Ok(t.double_value(&[0]))
}

fn main() -> kestrel::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--nccl-rank") {
        // One rank of the 2-process NCCL check (started by scripts/gpu-check.sh).
        let rank: usize = args[i + 1].parse()?;
        let port: u16 = args[i + 3].parse()?;
        let v = nccl_allreduce(rank, 2, port)?;
        println!("rank {rank}: allreduce {v}");
        std::process::exit(if v == 3.0 { 0 } else { 1 });
    }
    if !tch::Cuda::is_available() {
        eprintln!("gpu-check: libtorch sees no CUDA GPU (tch::Cuda::is_available() is false): run this on a machine with an NVIDIA GPU and driver");
        std::process::exit(2);
    }
    let dev = Device::Cuda(0);
    let mut ok = true;
    println!("| check | result | number |\n|---|---|---|");

    // fp16 autocast + GradScaler: the loss falls as in float32.
    match (train(dev, true), train(dev, false)) {
        (Ok((a, b)), Ok((c, d))) => ok &= row("fp16 + GradScaler training (loss first → last; fp32)", b < a * 0.7 && b.is_finite(),
                                              &format!("{a:.3} → {b:.3}; fp32 {c:.3} → {d:.3}")),
        (e1, e2) => ok &= row("fp16 + GradScaler training", false, &format!("{:?} / {:?}", e1.err(), e2.err())),
    }

    // bfloat16 and channels-last forward of ResNet-18 against float32 NCHW.
    tch::manual_seed(0);
    let m = VisionModel::new(Arch::Resnet18, 10, dev)?;
    let x = Tensor::randn([8, 3, 224, 224], (Kind::Float, dev));
    let ref32 = tch::no_grad(|| m.forward_t(&x, false));
    let scale = ref32.abs().max().double_value(&[]).max(1e-6);
    let bf = tch::no_grad(|| tch::autocast(true, || m.forward_t(&x, false)));
    let d = max_diff(&bf, &ref32) / scale;
    ok &= row("fp16 autocast forward vs fp32 (max rel. diff)", d < 2e-2, &format!("{d:.2e}"));
    let mut mb = VisionModel::new(Arch::Resnet18, 10, dev)?;
    mb.var_store_mut().copy(m.var_store())?;
    mb.var_store_mut().bfloat16();
    let ob = tch::no_grad(|| mb.forward_t(&x.to_kind(Kind::BFloat16), false));
    let d = max_diff(&ob, &ref32) / scale;
    ok &= row("bf16 forward vs fp32 (max rel. diff)", d < 1e-1, &format!("{d:.2e}"));
    let mut mc = VisionModel::new(Arch::Resnet18, 10, dev)?;
    mc.var_store_mut().copy(m.var_store())?;
    tch::no_grad(|| for (_, mut v) in mc.var_store().variables() {
        if v.dim() == 4 { let cl = kestrel::learner::fp16::channels_last(&v.detach()); v.set_data(&cl); }
    });
    let oc = tch::no_grad(|| mc.forward_t(&kestrel::learner::fp16::channels_last(&x), false));
    let d = max_diff(&oc, &ref32) / scale;
    ok &= row("channels-last forward vs NCHW (max rel. diff)", d < 1e-3, &format!("{d:.2e}"));

    // The batch augmentation (aug_transforms(224, min_scale 0.75) + Normalize) on CUDA and CPU.
    let tfms = vision_batch_tfms(Arch::EfficientNetLite0, 224, 0.75)?;
    let u8b = (Tensor::rand([8, 3, 300, 260], (Kind::Float, Device::Cpu)) * 255.0).to_kind(Kind::Uint8);
    let mut r1 = kestrel::util::rng::seeded(5);
    let mut r2 = kestrel::util::rng::seeded(5);
    let cpu = tfms.apply(&u8b, true, &mut r1)?;
    let gpu = tfms.apply(&u8b.to_device(dev), true, &mut r2)?;
    let d = max_diff(&gpu, &cpu);
    ok &= row("batch augmentation CUDA vs CPU (max abs. diff, normalised units)", d <= 1e-4, &format!("{d:.2e}"));

    // NCCL, world size 1.
    if has_nccl() {
        let r = nccl_allreduce(0, 1, free_port()?);
        ok &= row("NCCL world size 1: allreduce, broadcast, barrier", r.as_ref().is_ok_and(|v| *v == 1.0), &format!("{r:?}"));
    } else {
        ok &= row("NCCL world size 1", false, "this kestrel was built without NCCL (see build.rs)");
    }
    std::process::exit(if ok { 0 } else { 1 });
}
