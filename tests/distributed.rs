//! Data-parallel training on libtorch's c10d (Gloo), with 2 processes on 127.0.0.1:
//! the collectives (1 + 2 = 3, broadcast, barrier, timeouts), a dead peer named in the
//! survivor's error, DDP training equal to one process with the same global batch and
//! bit-identical ranks after every step, sharded validation reduced exactly on an odd-size
//! set, the DistributedSampler's coverage, and two network namespaces joined by a veth pair.
//! `kestrel fine-tune` launched as torchrun would: kill -9 of either rank, Ctrl-C on one
//! rank, interrupt and --resume with both ranks, and `--nproc-per-node 2`.
//!
//! The worker processes are this test binary again, running the `child` test with the
//! scenario in KESTREL_DIST_TEST and torchrun's variables (RANK, WORLD_SIZE, MASTER_ADDR,
//! MASTER_PORT) in the environment.

use kestrel::callbacks::Callback;
use kestrel::data::{BatchSource, CategoryMap, DataLoaders, TensorLoader};
use kestrel::distributed::{Backend, DistConfig, DistributedTrainer, ProcessGroup, ReduceOp, Shard, launch::free_port};
use kestrel::learner::{CrossEntropyLossFlat, Learner};
use kestrel::metrics;
use kestrel::models::{Model, ParamInfo};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor, nn, nn::Module};

const SCENARIO: &str = "KESTREL_DIST_TEST";
const BIN: &str = env!("CARGO_BIN_EXE_kestrel");

// ---------------------------------------------------------------- the worker side

fn env_cfg(timeout: Duration) -> DistConfig {
    let v = |k: &str| std::env::var(k).unwrap_or_else(|_| panic!("{k} not set"));
    DistConfig {
        master_addr: v("MASTER_ADDR"),
        master_port: v("MASTER_PORT").parse().unwrap(),
        world: v("WORLD_SIZE").parse().unwrap(),
        rank: v("RANK").parse().unwrap(),
        local_rank: 0,
        backend: Backend::Gloo,
        timeout,
    }
}

/// Runs the scenario named in KESTREL_DIST_TEST (a no-op in an ordinary test run).
#[test]
fn child() {
    let Ok(s) = std::env::var(SCENARIO) else { return };
    tch::set_num_threads(1);
    let code = match s.as_str() {
        "collectives" => collectives(),
        "hold" => hold(),
        "silent" => silent(),
        "train" => train(),
        _ => panic!("unknown scenario {s}"),
    };
    std::process::exit(code);
}

fn collectives() -> i32 {
    let pg = kestrel::distributed::init(&env_cfg(Duration::from_secs(30))).unwrap();
    let r = pg.rank() as f32;
    let t = Tensor::from_slice(&[r + 1.0]);
    pg.allreduce(&t, ReduceOp::Sum).unwrap();
    println!("allreduce {}", t.double_value(&[0]));
    let m = Tensor::from_slice(&[r * 10.0, -r]);
    pg.allreduce(&m, ReduceOp::Max).unwrap();
    println!("max {:?}", Vec::<f32>::try_from(&m).unwrap());
    let c = [Tensor::from_slice(&[r + 1.0, 2.0 * (r + 1.0)]), Tensor::from_slice(&[10.0f32 * (r + 1.0)])];
    pg.allreduce_coalesced(&c, ReduceOp::Sum).unwrap();
    println!("coalesced {:?} {:?}", Vec::<f32>::try_from(&c[0]).unwrap(), Vec::<f32>::try_from(&c[1]).unwrap());
    let b = [Tensor::from_slice(&[r * 7.0 + 5.0; 3]), Tensor::from_slice(&[r as i64 + 40])];
    pg.broadcast(&b, 0).unwrap();
    println!("broadcast {:?} {:?}", Vec::<f32>::try_from(&b[0]).unwrap(), Vec::<i64>::try_from(&b[1]).unwrap());
    // Two async buckets in flight at once.
    let (x, y) = (Tensor::ones([1000], (Kind::Float, Device::Cpu)), Tensor::full([3], r as f64, (Kind::Float, Device::Cpu)));
    let (wx, wy) = (pg.allreduce_start(&x, ReduceOp::Sum).unwrap(), pg.allreduce_start(&y, ReduceOp::Sum).unwrap());
    wx.wait().unwrap();
    wy.wait().unwrap();
    println!("buckets {} {}", x.sum(Kind::Float).double_value(&[]), y.double_value(&[0]));
    pg.barrier().unwrap();
    println!("barrier ok");
    0
}

/// All-reduces every 100 ms until a collective fails; prints the error and exits 3.
fn hold() -> i32 {
    let pg = kestrel::distributed::init(&env_cfg(Duration::from_secs(30))).unwrap();
    println!("ready");
    loop {
        let t = Tensor::from_slice(&[1.0f32]);
        if let Err(e) = pg.allreduce(&t, ReduceOp::Sum) {
            eprintln!("error: {e:#}");
            return 3;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Rank 0 all-reduces with a 2 s timeout while rank 1 never joins.
fn silent() -> i32 {
    let pg = kestrel::distributed::init(&env_cfg(Duration::from_secs(2))).unwrap();
    if pg.rank() == 1 {
        std::thread::sleep(Duration::from_secs(20));
        return 0;
    }
    let t = Tensor::from_slice(&[1.0f32]);
    match pg.allreduce(&t, ReduceOp::Sum) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            3
        }
    }
}

/// A BatchNorm-free, dropout-free MLP (8 → 16 → 4) in two parameter groups.
struct Mlp {
    vs: nn::VarStore,
    l1: nn::Linear,
    l2: nn::Linear,
}

impl Mlp {
    fn new() -> Self {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let p = vs.root();
        let l1 = nn::linear(&p / "0", 8, 16, Default::default());
        let l2 = nn::linear(&p / "1", 16, 4, Default::default());
        Mlp { vs, l1, l2 }
    }
}

impl Model for Mlp {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> Tensor { self.l2.forward(&self.l1.forward(xs).relu()) }
    fn var_store(&self) -> &nn::VarStore { &self.vs }
    fn var_store_mut(&mut self) -> &mut nn::VarStore { &mut self.vs }
    fn params(&self) -> Vec<ParamInfo> {
        let mut n: Vec<String> = self.vs.variables().into_keys().collect();
        n.sort();
        n.into_iter().map(|name| ParamInfo { group: if name.starts_with("0.") { 0 } else { 1 }, is_bn: false, is_bias: name.ends_with("bias"), name }).collect()
    }
    fn n_groups(&self) -> usize { 2 }
}

/// (n, 8) gaussian features and labels of a fixed noisy linear rule (4 classes).
fn data(n: i64, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let x = Tensor::randn([n, 8], (Kind::Float, Device::Cpu));
    let w = Tensor::arange(32, (Kind::Float, Device::Cpu)).reshape([8, 4]).sin();
    let y = (x.matmul(&w) + Tensor::randn([n, 4], (Kind::Float, Device::Cpu)) * 0.8).argmax(-1, false);
    (x, y)
}

/// Writes the parameters (sorted by name, f32 little-endian) after every step.
struct DumpParams {
    dir: PathBuf,
    rank: usize,
    step: usize,
}

impl Callback for DumpParams {
    fn name(&self) -> String { "DumpParams".into() }
    fn after_step(&mut self, l: &mut Learner) -> kestrel::Result<()> {
        self.step += 1;
        std::fs::write(self.dir.join(format!("rank{}_step{}.bin", self.rank, self.step)), flat_params(l))?;
        Ok(())
    }
}

fn flat_params(l: &Learner) -> Vec<u8> {
    l.model_state().iter().flat_map(|(_, t)| Vec::<f32>::try_from(t.reshape([-1])).unwrap()).flat_map(f32::to_le_bytes).collect()
}

/// Global batch 16: one process at bs 16, or 2 ranks at bs 8; 64 training items (no
/// padding), 37 validation items (odd: ranks hold 19 and 18), 2 epochs of Adam at 1e-2.
fn train() -> i32 {
    let dir = PathBuf::from(std::env::var("KESTREL_DIST_OUT").unwrap());
    let world: usize = std::env::var("WORLD_SIZE").unwrap().parse().unwrap();
    let rank: usize = std::env::var("RANK").unwrap().parse().unwrap();
    let (x, y) = data(64, 11);
    let (vx, vy) = data(37, 12);
    let bs = 16 / world;
    let mut train = TensorLoader::new(x, y, bs, true, true, 5, Device::Cpu).unwrap();
    let mut valid = TensorLoader::new(vx.copy(), vy.copy(), 8, false, false, 0, Device::Cpu).unwrap();
    if world > 1 {
        train = train.with_shard(Shard { rank, world, pad: true });
        valid = valid.with_shard(Shard { rank, world, pad: false });
    }
    let dls = DataLoaders { train: Arc::new(train), valid: Arc::new(valid), vocab: CategoryMap::new(["a", "b", "c", "d"]) };
    let mut learn = Learner::new(dls, Box::new(Mlp::new()), Box::new(CrossEntropyLossFlat)).unwrap()
        .with_metrics(vec![metrics::error_rate()])
        .with_cb(Box::new(DumpParams { dir: dir.clone(), rank, step: 0 }));
    if world > 1 {
        // Rank 1 starts from other weights: the broadcast from rank 0 must fix them.
        if rank == 1 {
            tch::no_grad(|| for (_, mut t) in learn.model.var_store().variables() { let _ = t.fill_(0.5); });
        }
        let pg = kestrel::distributed::init(&env_cfg(Duration::from_secs(60))).unwrap();
        learn = learn.with_cb(Box::new(DistributedTrainer::new(pg, Arc::new(AtomicBool::new(false)), "ckpt").unwrap()));
    }
    learn.fit(2, 1e-2).unwrap();
    let last = learn.recorder.values.last().unwrap().clone();
    // The same weights validated by this process alone on the whole validation set.
    learn.dls.valid = Arc::new(TensorLoader::new(vx, vy, 8, false, false, 0, Device::Cpu).unwrap());
    let alone = learn.validate().unwrap();
    let json = serde_json::json!({"valid_loss": last[1], "error_rate": last[2], "alone_loss": alone[0], "alone_error_rate": alone[1]});
    std::fs::write(dir.join(format!("rank{rank}_valid.json")), json.to_string()).unwrap();
    0
}

// ---------------------------------------------------------------- the launching side

/// Starts `world` ranks of `scenario` (ranks in `ranks`), with extra environment; `wrap`
/// prefixes a command (e.g. `ip netns exec ns0`) per rank.
fn spawn(scenario: &str, rank: usize, world: usize, addr: &str, port: u16, env: &[(&str, &str)], wrap: &[String]) -> Child {
    let exe = std::env::current_exe().unwrap();
    let mut c = if wrap.is_empty() { Command::new(&exe) } else { let mut c = Command::new(&wrap[0]); c.args(&wrap[1..]).arg(&exe); c };
    c.args(["child", "--exact", "--nocapture", "--test-threads", "1"])
        .env(SCENARIO, scenario)
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", addr)
        .env("MASTER_PORT", port.to_string())
        .env("OMP_NUM_THREADS", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env { c.env(k, v); }
    c.spawn().unwrap()
}

fn output(c: Child) -> (i32, String) {
    let o = c.wait_with_output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.code().unwrap_or(-1), text)
}

#[test]
fn two_processes_allreduce_broadcast_barrier() {
    let port = free_port().unwrap();
    let cs: Vec<Child> = (0..2).map(|r| spawn("collectives", r, 2, "127.0.0.1", port, &[], &[])).collect();
    for (r, c) in cs.into_iter().enumerate() {
        let (code, out) = output(c);
        eprintln!("--- rank {r}\n{out}");
        assert_eq!(code, 0, "rank {r} failed: {out}");
        assert!(out.contains("allreduce 3"), "1 + 2 = 3 on rank {r}");
        assert!(out.contains("max [10.0, -0.0]") || out.contains("max [10.0, 0.0]"), "max on rank {r}");
        assert!(out.contains("coalesced [3.0, 6.0] [30.0]"), "coalesced on rank {r}");
        assert!(out.contains("broadcast [5.0, 5.0, 5.0] [40]"), "rank 0's values on rank {r}");
        assert!(out.contains("buckets 2000 1"), "two buckets in flight on rank {r}");
        assert!(out.contains("barrier ok"));
    }
}

/// Waits for "ready" on a child's stdout (returns the reader's remaining output later).
fn wait_ready(c: &mut Child) -> std::thread::JoinHandle<String> {
    let mut out = BufReader::new(c.stdout.take().unwrap());
    let mut line = String::new();
    while out.read_line(&mut line).unwrap() > 0 && !line.contains("ready") { line.clear(); }
    std::thread::spawn(move || { let mut s = String::new(); let _ = out.read_to_string(&mut s); s })
}

fn kill_and_check(victim: usize) {
    let port = free_port().unwrap();
    let mut cs: Vec<Child> = (0..2).map(|r| spawn("hold", r, 2, "127.0.0.1", port, &[], &[])).collect();
    let _readers: Vec<_> = cs.iter_mut().map(wait_ready).collect();
    std::thread::sleep(Duration::from_millis(300));
    cs[victim].kill().unwrap(); // SIGKILL
    let _ = cs[victim].wait();
    let t0 = Instant::now();
    let survivor = cs.remove(1 - victim);
    let (code, out) = output(survivor);
    let secs = t0.elapsed().as_secs_f64();
    eprintln!("--- survivor rank {} after {secs:.1} s\n{out}", 1 - victim);
    assert_eq!(code, 3, "the survivor stops with an error");
    assert!(secs < 60.0, "within 60 s");
    assert!(out.contains(&format!("lost peer rank {victim}")), "names the lost peer: {out}");
}

#[test]
fn kill_9_of_rank_1_stops_rank_0_naming_it() {
    kill_and_check(1);
}

#[test]
fn kill_9_of_rank_0_the_store_host_stops_rank_1_naming_it() {
    kill_and_check(0);
}

#[test]
fn a_silent_peer_times_out_naming_it() {
    let port = free_port().unwrap();
    let cs: Vec<Child> = (0..2).map(|r| spawn("silent", r, 2, "127.0.0.1", port, &[], &[])).collect();
    let t0 = Instant::now();
    let mut it = cs.into_iter();
    let (code, out) = output(it.next().unwrap());
    let secs = t0.elapsed().as_secs_f64();
    let mut r1 = it.next().unwrap();
    let _ = r1.kill();
    let _ = r1.wait();
    eprintln!("--- rank 0 after {secs:.1} s\n{out}");
    assert_eq!(code, 3);
    assert!(secs < 15.0, "the 2 s timeout applies");
    assert!(out.contains("lost peer rank 1"), "{out}");
}

#[test]
fn rendezvous_without_a_master_fails_within_the_timeout() {
    let port = free_port().unwrap();
    let cfg = DistConfig { master_addr: "127.0.0.1".into(), master_port: port, world: 2, rank: 1, local_rank: 0, backend: Backend::Gloo, timeout: Duration::from_secs(2) };
    let t0 = Instant::now();
    let e = ProcessGroup::init(&cfg).err().expect("no rank 0");
    assert!(t0.elapsed() < Duration::from_secs(30));
    let msg = format!("{e:#}");
    assert!(msg.contains("rank 1: rendezvous at 127.0.0.1"), "{msg}");
}

fn read_params(dir: &Path, rank: usize, step: usize) -> Vec<f32> {
    std::fs::read(dir.join(format!("rank{rank}_step{step}.bin"))).unwrap().chunks(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

fn json(p: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// Runs the `train` scenario on `world` ranks (through `wrap[r]` and `addr`), returns its folder.
fn run_train(world: usize, addr: &str, wrap: &[Vec<String>]) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let port = free_port().unwrap();
    let d = tmp.path().to_str().unwrap().to_string();
    let cs: Vec<Child> = (0..world)
        .map(|r| spawn("train", r, world, addr, port, &[("KESTREL_DIST_OUT", &d)], wrap.get(r).map_or(&[][..], |w| w.as_slice())))
        .collect();
    for (r, c) in cs.into_iter().enumerate() {
        let (code, out) = output(c);
        assert_eq!(code, 0, "rank {r} of {world}: {out}");
    }
    tmp
}

const STEPS: usize = 8; // 2 epochs × 64 items / global batch 16

fn assert_matches_single(single: &Path, two: &Path) {
    for step in 1..=STEPS {
        let (a, b) = (read_params(two, 0, step), read_params(two, 1, step));
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "ranks differ after step {step}");
    }
    let (s, d) = (read_params(single, 0, STEPS), read_params(two, 0, STEPS));
    let max = s.iter().zip(&d).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    eprintln!("max |2 ranks − 1 process| after {STEPS} steps: {max:e}");
    assert!(max <= 1e-5, "2 ranks vs one process: max difference {max:e}");
    let moved = s.iter().zip(read_params(single, 0, 1)).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(moved > 1e-3, "the weights did train ({moved:e})");
}

#[test]
fn ddp_equals_one_process_with_the_same_global_batch() {
    let single = run_train(1, "127.0.0.1", &[]);
    let two = run_train(2, "127.0.0.1", &[]);
    assert_matches_single(single.path(), two.path());
    // Validation on shards of an odd-size set (19 + 18 items) reduced exactly.
    for r in 0..2 {
        let v = json(&two.path().join(format!("rank{r}_valid.json")));
        let (er, alone) = (v["error_rate"].as_f64().unwrap(), v["alone_error_rate"].as_f64().unwrap());
        // The same number of errors; the rates differ only by the float32 rounding of
        // fastai's per-batch accuracy (batches of 8 vs shards' batches).
        assert_eq!((er * 37.0).round(), (alone * 37.0).round(), "rank {r}: error_rate {er} on 2 ranks vs {alone} alone");
        assert!((er - alone).abs() < 1e-6, "rank {r}: error_rate {er} on 2 ranks vs {alone} alone");
        let (l, la) = (v["valid_loss"].as_f64().unwrap(), v["alone_loss"].as_f64().unwrap());
        assert!((l - la).abs() < 1e-6 * la.abs().max(1.0), "rank {r}: valid_loss {l} vs {la}");
    }
    let s = json(&single.path().join("rank0_valid.json"));
    assert_eq!(s["error_rate"].as_f64(), s["alone_error_rate"].as_f64());
}

#[test]
fn an_epoch_visits_every_item_once_across_ranks() {
    // x = the item's index; 2 ranks, bs 4.
    let visited = |n: i64, world: usize, drop_last: bool| -> Vec<Vec<i64>> {
        (0..world).map(|rank| {
            let x = Tensor::arange(n, (Kind::Int64, Device::Cpu));
            let l = TensorLoader::new(x.copy(), x, 4, true, drop_last, 9, Device::Cpu).unwrap().with_shard(Shard { rank, world, pad: drop_last });
            l.batches(3).flat_map(|b| Vec::<i64>::try_from(b.unwrap().x).unwrap()).collect()
        }).collect()
    };
    // 64 items: every item exactly once, 32 per rank.
    let v = visited(64, 2, true);
    assert!(v.iter().all(|r| r.len() == 32));
    let mut all: Vec<i64> = v.concat();
    all.sort();
    assert_eq!(all, (0..64).collect::<Vec<_>>());
    // 67 items, training: padded to 68 (one item twice), 34 per rank, the last 2 of each
    // rank's share dropped (incomplete batch): 64 visits, no item more than twice, and
    // only the padded item twice.
    let v = visited(67, 2, true);
    let all: Vec<i64> = v.concat();
    assert_eq!(all.len(), 64);
    let mut counts = std::collections::HashMap::new();
    for i in &all { *counts.entry(*i).or_insert(0) += 1; }
    assert!(counts.values().filter(|&&c| c == 2).count() <= 1);
    // 67 items, validation (no padding, no drop): every item exactly once.
    let mut all: Vec<i64> = visited(67, 2, false).concat();
    all.sort();
    assert_eq!(all, (0..67).collect::<Vec<_>>());
}

/// Runs `cmd` and says whether it succeeded.
fn sh(cmd: &[&str]) -> bool {
    Command::new(cmd[0]).args(&cmd[1..]).stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Two network namespaces joined by a veth pair (10.77.0.1/24 and 10.77.0.2/24), deleted on drop.
struct Netns {
    names: [String; 2],
}

impl Netns {
    fn new() -> Result<Self, String> {
        let tag = std::process::id() % 100_000;
        let names = [format!("kd{tag}a"), format!("kd{tag}b")];
        let n = Netns { names: names.clone() };
        let (a, b) = (&names[0], &names[1]);
        let (va, vb) = (format!("v{tag}a"), format!("v{tag}b"));
        let steps: Vec<Vec<String>> = vec![
            vec!["ip".into(), "netns".into(), "add".into(), a.clone()],
            vec!["ip".into(), "netns".into(), "add".into(), b.clone()],
            format!("ip link add {va} type veth peer name {vb}").split(' ').map(String::from).collect(),
            format!("ip link set {va} netns {a}").split(' ').map(String::from).collect(),
            format!("ip link set {vb} netns {b}").split(' ').map(String::from).collect(),
            format!("ip -n {a} addr add 10.77.0.1/24 dev {va}").split(' ').map(String::from).collect(),
            format!("ip -n {b} addr add 10.77.0.2/24 dev {vb}").split(' ').map(String::from).collect(),
            format!("ip -n {a} link set {va} up").split(' ').map(String::from).collect(),
            format!("ip -n {b} link set {vb} up").split(' ').map(String::from).collect(),
            format!("ip -n {a} link set lo up").split(' ').map(String::from).collect(),
            format!("ip -n {b} link set lo up").split(' ').map(String::from).collect(),
        ];
        for s in &steps {
            let s: Vec<&str> = s.iter().map(String::as_str).collect();
            if !sh(&s) { return Err(format!("`{}` failed (needs root and ip netns)", s.join(" "))); }
        }
        Ok(n)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.names { sh(&["ip", "netns", "del", n]); }
    }
}

#[test]
fn two_namespaces_over_a_veth_pair_match_loopback() {
    let ns = match Netns::new() {
        Ok(ns) => ns,
        Err(why) => { eprintln!("skipped: two network namespaces unavailable: {why}"); return; }
    };
    let wrap: Vec<Vec<String>> = ns.names.iter().map(|n| vec!["ip".into(), "netns".into(), "exec".into(), n.clone()]).collect();
    let veth = run_train(2, "10.77.0.1", &wrap);
    let single = run_train(1, "127.0.0.1", &[]);
    assert_matches_single(single.path(), veth.path());
    let lo = run_train(2, "127.0.0.1", &[]);
    for step in 1..=STEPS {
        assert_eq!(read_params(veth.path(), 0, step), read_params(lo.path(), 0, step), "veth vs loopback after step {step}");
    }
}

// ---------------------------------------------------------------- kestrel fine-tune

/// `n` 24×24 PNGs per class (red, green, blue squares on grey, jittered) in `dir`.
fn images(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for (c, name) in ["red", "green", "blue"].iter().enumerate() {
        for k in 0..n {
            let img = image::RgbImage::from_fn(24, 24, |x, y| {
                let inside = (4 + k % 5..16 + k % 5).contains(&x) && (4 + k % 7..14 + k % 7).contains(&y);
                let mut p = [150u8, 150, 150];
                if inside { p = [40, 40, 40]; p[c] = 220; }
                image::Rgb(p)
            });
            img.save(dir.join(format!("{name}_{k}.png"))).unwrap();
        }
    }
}

fn ft_args(data: &str, out: &str, epochs: &str) -> Vec<String> {
    ["fine-tune", "--folder", data, "--label-re", r"^(.+)_\d+\.png$", "--arch", "resnet18", "--no-pretrained",
     "--presize", "24", "--size", "24", "--bs", "4", "--workers", "1", "--epochs", epochs, "--freeze-epochs", "0",
     "--lr", "1e-3", "--lr-find-iters", "5", "--seed", "7", "--out", out]
        .iter().map(|s| s.to_string()).collect()
}

/// Starts `kestrel` as rank `rank` of 2 with torchrun's variables.
fn kestrel_rank(args: &[String], rank: usize, port: u16, env: &[(&str, &str)]) -> Child {
    let mut c = Command::new(BIN);
    c.args(args)
        .env("RANK", rank.to_string()).env("LOCAL_RANK", rank.to_string()).env("WORLD_SIZE", "2")
        .env("MASTER_ADDR", "127.0.0.1").env("MASTER_PORT", port.to_string()).env("OMP_NUM_THREADS", "1")
        .env_remove("KESTREL_INTERRUPT_AFTER")
        .stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env { c.env(k, v); }
    c.spawn().unwrap()
}

#[test]
fn fine_tune_kill_9_of_a_rank_stops_the_other_naming_it() {
    for victim in [1usize, 0] {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("shapes");
        images(&data, 24);
        let out = tmp.path().join("run");
        let args = ft_args(data.to_str().unwrap(), out.to_str().unwrap(), "50");
        let port = free_port().unwrap();
        let mut cs: Vec<Child> = (0..2).map(|r| kestrel_rank(&args, r, port, &[])).collect();
        // Mid-training: after the first epoch's row is in metrics.csv.
        let t0 = Instant::now();
        while !std::fs::read_to_string(out.join("metrics.csv")).is_ok_and(|s| s.lines().count() >= 2) {
            assert!(t0.elapsed() < Duration::from_secs(120), "no epoch finished");
            std::thread::sleep(Duration::from_millis(100));
        }
        cs[victim].kill().unwrap();
        let _ = cs[victim].wait();
        let t1 = Instant::now();
        let (code, text) = output(cs.remove(1 - victim));
        let secs = t1.elapsed().as_secs_f64();
        eprintln!("--- survivor rank {} after {secs:.1} s\n{text}", 1 - victim);
        assert_ne!(code, 0);
        assert!(secs < 60.0);
        assert!(text.contains(&format!("lost peer rank {victim}")), "names rank {victim}: {text}");
    }
}

#[test]
fn fine_tune_interrupt_on_one_rank_then_resume_with_both() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    images(&data, 12);
    let out = tmp.path().join("run");
    let args = ft_args(data.to_str().unwrap(), out.to_str().unwrap(), "2");
    let port = free_port().unwrap();
    // Rank 1 alone is "interrupted" after its 5th batch: both stop after that batch.
    let cs: Vec<Child> = (0..2).map(|r| kestrel_rank(&args, r, port, if r == 1 { &[("KESTREL_INTERRUPT_AFTER", "5")] } else { &[] })).collect();
    let outs: Vec<(i32, String)> = cs.into_iter().map(output).collect();
    for (r, (code, text)) in outs.iter().enumerate() {
        eprintln!("--- rank {r}\n{text}");
        assert_eq!(*code, 130, "rank {r} reports the interrupt (130, as after Ctrl-C)");
    }
    assert!(outs[0].1.contains("resume with:"), "rank 0 prints the resume command");
    assert!(out.join("checkpoint.pth").is_file(), "rank 0 wrote the checkpoint");
    let mut resume = args.clone();
    resume.push("--resume".into());
    let port = free_port().unwrap();
    let cs: Vec<Child> = (0..2).map(|r| kestrel_rank(&resume, r, port, &[])).collect();
    let outs: Vec<(i32, String)> = cs.into_iter().map(output).collect();
    for (r, (code, text)) in outs.iter().enumerate() {
        eprintln!("--- resumed rank {r}\n{text}");
        assert_eq!(*code, 0, "rank {r} finishes");
    }
    // 36 photos, 29 for training: 15 per rank, 3 batches of 4 per epoch; the 5th batch is
    // epoch 1's second.
    assert!(outs[0].1.contains("resuming at phase 1, epoch 1, batch 2"), "continues after the 5th batch");
    assert!(out.join("model.safetensors").is_file() && out.join("report.html").is_file());
    assert!(!out.join("checkpoint.pth").exists(), "the finished run removes its checkpoint");
}

#[test]
fn fine_tune_ctrl_c_on_rank_1_stops_both_with_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    images(&data, 12);
    let out = tmp.path().join("run");
    let args = ft_args(data.to_str().unwrap(), out.to_str().unwrap(), "50");
    let port = free_port().unwrap();
    let cs: Vec<Child> = (0..2).map(|r| kestrel_rank(&args, r, port, &[])).collect();
    let t0 = Instant::now();
    while !std::fs::read_to_string(out.join("metrics.csv")).is_ok_and(|s| s.lines().count() >= 2) {
        assert!(t0.elapsed() < Duration::from_secs(120), "no epoch finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(sh(&["kill", "-INT", &cs[1].id().to_string()]), "SIGINT to rank 1");
    let outs: Vec<(i32, String)> = cs.into_iter().map(output).collect();
    for (r, (code, text)) in outs.iter().enumerate() {
        eprintln!("--- rank {r}\n{text}");
        assert_eq!(*code, 130, "rank {r} reports the interrupt (130, as after Ctrl-C)");
        assert!(text.contains("interrupted"), "rank {r}: {text}");
    }
    assert!(outs[0].1.contains("resume with:") && out.join("checkpoint.pth").is_file(), "rank 0 wrote the checkpoint");
}

#[test]
fn fine_tune_nproc_per_node_2_reports_the_global_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    images(&data, 8);
    let out = tmp.path().join("run");
    let mut args = ft_args(data.to_str().unwrap(), out.to_str().unwrap(), "1");
    // A frozen epoch first: rank 0's lr_find leaves gradients on the body that the other
    // rank does not have; the ranks must still reduce the same tensors.
    let fe = args.iter().position(|a| a == "--freeze-epochs").unwrap();
    args[fe + 1] = "1".into();
    args.extend(["--nproc-per-node".to_string(), "2".to_string()]);
    let o = Command::new(BIN).args(&args).env_remove("KESTREL_INTERRUPT_AFTER").env_remove("RANK").env_remove("WORLD_SIZE").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("{text}");
    assert!(o.status.success());
    assert!(text.contains("data-parallel: 2 processes (gloo), bs 4 per process, global batch 8"));
    assert_eq!(text.matches("; outputs in ").count(), 1, "only rank 0 prints the result");
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(report.contains("4 per process × 2 processes (gloo) = global batch 8"));
}

#[test]
fn fine_tune_too_few_images_per_rank_is_a_clear_error() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("shapes");
    images(&data, 4); // 12 photos, 10 for training: 5 per rank, fewer than --bs 8
    let out = tmp.path().join("run");
    let mut args = ft_args(data.to_str().unwrap(), out.to_str().unwrap(), "1");
    let bs = args.iter().position(|a| a == "--bs").unwrap();
    args[bs + 1] = "8".into();
    args.extend(["--nproc-per-node".to_string(), "2".to_string()]);
    let o = Command::new(BIN).args(&args).env_remove("KESTREL_INTERRUPT_AFTER").env_remove("RANK").env_remove("WORLD_SIZE").output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    eprintln!("{text}");
    assert!(!o.status.success());
    assert!(text.contains("per process for 2 processes, fewer than the batch size 8"), "{text}");
}
