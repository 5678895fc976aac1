//! Crash safety: SIGTERM does what Ctrl-C does (finish the batch, checkpoint, print the
//! resume command, exit non-zero) within 10 s in every phase; `--checkpoint-every` makes
//! `kill -9` lose at most that much work, and `--resume` then ends with the metrics of an
//! uninterrupted run; truncated or damaged checkpoints and model files are errors, never
//! panics; a full disk (RLIMIT_FSIZE) while writing leaves the previous file intact.

mod torch_rng;
use torch_rng::torch_rng;

use kestrel::callbacks::{Callback, InterruptCallback};
use kestrel::data::{CategoryMap, DataLoaders, TensorLoader};
use kestrel::learner::{CrossEntropyLossFlat, Learner};
use kestrel::models::SimpleCnn;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

const BIN: &str = env!("CARGO_BIN_EXE_kestrel");

// ---------------------------------------------------------------- library level

/// `n` 16×16 images of 3 classes: class `c` has its channel `c` bright, plus noise.
fn tensors(n: usize, seed: i64) -> (Tensor, Tensor) {
    tch::manual_seed(seed);
    let y = Tensor::randint(3, [n as i64], (tch::Kind::Int64, Device::Cpu));
    let x = Tensor::randn([n as i64, 3, 16, 16], (tch::Kind::Float, Device::Cpu)) * 0.5
        + y.one_hot(3).to_kind(tch::Kind::Float).view([n as i64, 3, 1, 1]);
    (x, y)
}

fn learner(dir: &Path) -> Learner {
    tch::set_num_threads(1);
    let (x, y) = tensors(40, 1);
    let (vx, vy) = tensors(24, 2);
    let dls = DataLoaders {
        train: Arc::new(TensorLoader::new(x, y, 8, true, true, 7, Device::Cpu).unwrap()),
        valid: Arc::new(TensorLoader::new(vx, vy, 8, false, false, 0, Device::Cpu).unwrap()),
        vocab: CategoryMap::new(["a", "b", "c"]),
    };
    tch::manual_seed(3);
    let model = SimpleCnn::new(8, 16, 3, Device::Cpu);
    Learner::new(dls, Box::new(model), Box::new(CrossEntropyLossFlat)).unwrap().with_seed(3).with_model_dir(dir)
}

/// Sets the interrupt flag when the `n`-th validation batch ends (a signal during validation).
struct SignalInValidation { flag: Arc<AtomicBool>, n: usize, seen: usize }
impl Callback for SignalInValidation {
    fn name(&self) -> String { "SignalInValidation".into() }
    fn order(&self) -> i32 { 10 }
    fn after_batch(&mut self, l: &mut Learner) -> kestrel::Result<()> {
        if !l.training && l.phase == 1 {
            self.seen += 1;
            if self.seen == self.n { self.flag.store(true, Ordering::SeqCst); }
        }
        Ok(())
    }
}

#[test]
fn interrupt_in_validation_resumes_to_the_same_model_and_table() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let full = {
        let mut l = learner(dir.path());
        l.fine_tune(2, 1e-2).unwrap();
        (l.model_state(), l.recorder.values.clone(), l.recorder.losses.clone())
    };
    let flag = Arc::new(AtomicBool::new(false));
    let mut l = learner(dir.path());
    l.cbs.push(Box::new(SignalInValidation { flag: flag.clone(), n: 2, seen: 0 }));
    l.cbs.push(Box::new(InterruptCallback::new(flag, "ckpt", None)));
    l.start_fit_clock();
    l.fine_tune(2, 1e-2).unwrap();
    assert_eq!(l.stop_reason.as_deref(), Some("interrupted"));
    let mut r = learner(dir.path());
    let pos = r.load_checkpoint("ckpt").unwrap();
    // The 2nd validation batch of the unfrozen phase's first epoch: its training is done.
    assert_eq!((pos.phase, pos.epoch, pos.iter), (1, 0, 5), "{pos:?}");
    // The checkpoint holds the time taken so far; the resumed clock continues it.
    assert!(pos.fit_secs > 0.0 && pos.fit_secs <= l.fit_secs(), "{} vs {}", pos.fit_secs, l.fit_secs());
    r.start_fit_clock();
    r.fine_tune(2, 1e-2).unwrap();
    assert!(r.fit_secs() > pos.fit_secs);
    let differ: Vec<&String> = full.0.iter().zip(r.model_state()).filter(|((_, a), (_, b))| !a.equal(b)).map(|((n, _), _)| n).collect();
    assert!(differ.is_empty(), "weights differ: {differ:?}");
    assert_eq!(r.recorder.values, full.1, "the resumed table has every epoch, equal");
    assert_eq!(r.recorder.losses, full.2, "the resumed loss curve is whole");
}

#[test]
fn truncated_or_damaged_checkpoints_are_errors_not_panics() {
    let _rng = torch_rng();
    let dir = tempfile::tempdir().unwrap();
    let mut l = learner(dir.path());
    l.fit_one_cycle(1, 1e-2).unwrap();
    let path = l.save("ckpt", Some(l.position_after_epoch())).unwrap();
    let good = std::fs::read(&path).unwrap();
    let mut fresh = learner(dir.path());
    let n = good.len();
    let mut cases: Vec<Vec<u8>> = [0, 1, 8, 100, n / 3, n / 2, n - 22, n - 1].iter().map(|&k| good[..k].to_vec()).collect();
    for at in [n / 7, n / 4, n / 2, 3 * n / 4, n - 30] {
        let mut b = good.clone();
        for d in 0..8 { b[at + d] ^= 0x5a; }
        cases.push(b);
    }
    for (i, bytes) in cases.iter().enumerate() {
        std::fs::write(&path, bytes).unwrap();
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fresh.load("ckpt")));
        let r = r.unwrap_or_else(|_| panic!("case {i} ({} bytes) panicked", bytes.len()));
        let e = format!("{:#}", r.expect_err(&format!("case {i} ({} bytes) loaded", bytes.len())));
        assert!(e.contains("ckpt.pth"), "case {i}: the error names the file: {e}");
    }
    std::fs::write(&path, &good).unwrap();
    fresh.load("ckpt").unwrap();
}

// ---------------------------------------------------------------- the command line

/// `n` 40×40 images per class (`red_0.png` …) of 3 classes.
fn shapes(dir: &Path, n: u32) {
    std::fs::create_dir_all(dir).unwrap();
    for (c, name) in ["red", "green", "blue"].iter().enumerate() {
        for k in 0..n {
            let mut img = image::RgbImage::from_pixel(40, 40, image::Rgb([220, 220, 220]));
            let (x0, y0) = (4 + (k * 7) % 20, 4 + (k * 11) % 20);
            for y in y0..y0 + 14 {
                for x in x0..x0 + 14 {
                    let mut p = [30u8, 30, 30];
                    p[c] = 200;
                    img.put_pixel(x, y, image::Rgb(p));
                }
            }
            img.save(dir.join(format!("{name}_{k}.png"))).unwrap();
        }
    }
}

/// fine-tune on `images` into `out`: EfficientNet-Lite0 from scratch at 32 px, bs 8
/// (3 training batches per epoch), 1 frozen + 1 unfrozen epoch, seed 7, lr 2e-3.
fn args(images: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["fine-tune", "--folder", images.to_str().unwrap(), "--label-re", r"^(.+)_\d+\.png$",
        "--arch", "efficientnet_lite0", "--no-pretrained", "--presize", "40", "--size", "32", "--bs", "8",
        "--workers", "1", "--epochs", "1", "--freeze-epochs", "1", "--lr-find-iters", "2", "--seed", "7", "--precision", "fp32",
        "--out", out.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

fn command(a: &[String]) -> Command {
    let mut c = Command::new(BIN);
    c.args(a).env("OMP_NUM_THREADS", "1").env_remove("KESTREL_INTERRUPT_AFTER");
    c
}

fn output(c: &mut Command) -> Output {
    let o = c.output().expect("run kestrel");
    eprintln!("--- status {:?}\n{}{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    o
}

fn spawn(a: &[String]) -> Child {
    command(a).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("start kestrel")
}

/// A temporary folder holding [`shapes`]' 12 photos per class in `shapes/`.
fn shapes_tmp() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("shapes");
    shapes(&images, 12);
    (tmp, images)
}

/// The command printed on the line after "resume with:" in `stderr`.
fn printed_resume_command(stderr: &str) -> String {
    stderr.lines().skip_while(|l| !l.contains("resume with:")).nth(1).expect("the resume command is printed").trim().to_string()
}

/// Runs a printed command line as a user pastes it into a shell.
fn run_printed(cmd: &str) -> Output {
    output(Command::new("sh").arg("-c").arg(cmd).env("OMP_NUM_THREADS", "1").env_remove("KESTREL_INTERRUPT_AFTER"))
}

/// Waits until `file` exists (the process is then past that point).
fn wait_for(file: &Path, child: &mut Child) {
    let t = Instant::now();
    while !file.exists() {
        assert!(child.try_wait().unwrap().is_none(), "kestrel ended before writing {}", file.display());
        assert!(t.elapsed() < Duration::from_secs(900), "no {} after 900 s", file.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn signal(child: &Child, sig: i32) {
    // SAFETY: sending a signal to our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

/// Sends SIGTERM to `child` (interrupted `during` something, for the log) and waits for it:
/// it must exit with status 130 (as after Ctrl-C) within 10 s, without a panic. Returns its
/// stderr.
fn sigterm(child: Child, during: &str) -> String {
    let t = Instant::now();
    signal(&child, libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    let answered = t.elapsed();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("SIGTERM during {during} answered in {:.2} s\n{stderr}", answered.as_secs_f64());
    assert_eq!(o.status.code(), Some(130), "an interrupted run exits with 130");
    assert!(answered < Duration::from_secs(10), "answered in {answered:?}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    stderr
}

/// The last row of metrics.csv as numbers, without its time column.
fn last_metrics(out: &Path) -> Vec<f64> {
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    let last = csv.lines().last().unwrap();
    let cells: Vec<&str> = last.split(',').collect();
    cells[..cells.len() - 1].iter().map(|c| c.parse().unwrap()).collect()
}

/// metrics.csv without its time column: the header and every epoch's numbers.
fn tables(out: &Path) -> Vec<String> {
    let csv = std::fs::read_to_string(out.join("metrics.csv")).unwrap();
    csv.lines().map(|l| l.rsplit_once(',').unwrap().0.to_string()).collect()
}

fn assert_same_metrics(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-6, "metrics differ: {a:?} vs {b:?}");
    }
}

#[test]
fn sigterm_and_kill_9_resume_to_the_uninterrupted_metrics() {
    let (tmp, images) = shapes_tmp();
    let reference = tmp.path().join("reference");
    assert!(output(&mut command(&args(&images, &reference, &[]))).status.success());
    let want = last_metrics(&reference);

    // SIGTERM once training has started: the batch finishes, the checkpoint is written,
    // the resume command printed, the exit status is non-zero, all within 10 s.
    let out = tmp.path().join("term");
    let a = args(&images, &out, &["--checkpoint-every", "1b"]);
    let mut child = spawn(&a);
    wait_for(&out.join("checkpoint.pth"), &mut child);
    let stderr = sigterm(child, "training");
    let cmd = printed_resume_command(&stderr);
    assert!(cmd.ends_with("--resume") && cmd.contains("--checkpoint-every 1b"), "{cmd}");
    let o = run_printed(&cmd);
    assert!(o.status.success(), "the printed command resumes and finishes");
    assert_same_metrics(&last_metrics(&out), &want);
    assert_eq!(tables(&out), tables(&reference), "metrics.csv holds the uninterrupted run's tables");

    // kill -9 (no chance to react) after a periodic checkpoint: --resume continues from it.
    let out = tmp.path().join("kill");
    let a = args(&images, &out, &["--checkpoint-every", "2b"]);
    let mut child = spawn(&a);
    wait_for(&out.join("checkpoint.pth"), &mut child);
    std::thread::sleep(Duration::from_millis(200));
    signal(&child, libc::SIGKILL);
    let o = child.wait_with_output().unwrap();
    assert!(!o.status.success());
    if out.join("model.safetensors").exists() {
        eprintln!("the run finished before kill -9 arrived; nothing to resume");
    } else {
        let mut r = a.clone();
        r.push("--resume".into());
        let o = output(&mut command(&r));
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains("resuming at phase"));
        assert_same_metrics(&last_metrics(&out), &want);
        assert_eq!(tables(&out), tables(&reference), "metrics.csv holds the uninterrupted run's tables");
    }
    assert!(out.join("report.html").is_file() && !out.join("checkpoint.pth").exists());
}

/// A second signal stops at once, without waiting for the batch: it names the last
/// complete checkpoint and the command that resumes from it, exits with 130, and that
/// command finishes the run. Batches of 224 px keep the first signal's batch running
/// while the second arrives.
#[test]
fn a_second_signal_stops_at_once_naming_the_last_checkpoint() {
    let (tmp, images) = shapes_tmp();
    let out = tmp.path().join("run");
    let mut a = args(&images, &out, &["--checkpoint-every", "1b"]);
    for (opt, v) in [("--presize", "256"), ("--size", "224")] {
        let i = a.iter().position(|s| s == opt).unwrap();
        a[i + 1] = v.into();
    }
    let mut child = spawn(&a);
    wait_for(&out.join("checkpoint.pth"), &mut child);
    let t = Instant::now();
    signal(&child, libc::SIGTERM);
    std::thread::sleep(Duration::from_millis(50));
    signal(&child, libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr).into_owned();
    eprintln!("two SIGTERMs answered in {:.2} s\n{stderr}", t.elapsed().as_secs_f64());
    assert_eq!(o.status.code(), Some(130), "{stderr}");
    assert!(t.elapsed() < Duration::from_secs(10));
    assert!(stderr.contains("stopping at once (a second signal)") && stderr.contains("The last complete checkpoint is"), "{stderr}");
    let o = run_printed(&printed_resume_command(&stderr));
    assert!(o.status.success(), "the printed command resumes and finishes");
    assert!(out.join("model.safetensors").is_file() && !out.join("checkpoint.pth").exists());
}

#[test]
fn sigterm_before_training_exits_at_once_with_nothing_to_resume() {
    let (tmp, images) = shapes_tmp();
    let out = tmp.path().join("run");
    // A long lr_find: the signal arrives while it (or the set-up before it) runs.
    let mut a = args(&images, &out, &[]);
    let i = a.iter().position(|s| s == "--lr-find-iters").unwrap();
    a[i + 1] = "100000".into();
    // fine-tune sweeps only when asked (--lr-find), for at most the training's batches:
    // many epochs keep the sweep long.
    a.push("--lr-find".into());
    let e = a.iter().position(|s| s == "--epochs").unwrap();
    a[e + 1] = "1000".into();
    let mut child = spawn(&a);
    wait_for(&out.join("show_batch.png"), &mut child);
    std::thread::sleep(Duration::from_millis(300));
    let stderr = sigterm(child, "fine-tune's lr_find sweep");
    assert!(stderr.contains("run the same command again") || stderr.contains("run the command again"), "{stderr}");
    assert!(!out.join("checkpoint.pth").exists());
}

#[test]
fn sigterm_during_the_lr_find_command_prints_the_command_to_rerun() {
    let (tmp, images) = shapes_tmp();
    let png = tmp.path().join("lr.png");
    let a: Vec<String> = ["lr-find", "--folder", images.to_str().unwrap(), "--label-re", r"^(.+)_\d+\.png$",
        "--arch", "efficientnet_lite0", "--no-pretrained", "--presize", "40", "--size", "32", "--bs", "8",
        "--workers", "1", "--num-it", "100000", "--out", png.to_str().unwrap()].iter().map(|s| s.to_string()).collect();
    let child = spawn(&a);
    std::thread::sleep(Duration::from_secs(3));
    let stderr = sigterm(child, "kestrel lr-find");
    assert!(stderr.contains("interrupted during lr_find") && stderr.contains("run the same command again") && stderr.contains("lr-find"), "{stderr}");
    assert!(!png.exists(), "no plot of an interrupted sweep");
}

/// Runs `a` with a file-size limit of `limit` bytes (RLIMIT_FSIZE, as a full disk: writes
/// beyond it fail with EFBIG).
fn with_fsize_limit(a: &[String], limit: u64) -> Output {
    let mut c = command(a);
    // SAFETY: setrlimit is async-signal-safe; called in the child between fork and exec.
    unsafe {
        c.pre_exec(move || {
            let l = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &l) != 0 { return Err(std::io::Error::last_os_error()); }
            Ok(())
        });
    }
    output(&mut c)
}

#[test]
fn full_disk_keeps_the_previous_checkpoint_and_model_and_damaged_files_are_refused() {
    let (tmp, images) = shapes_tmp();
    let run = tmp.path().join("run");
    // Interrupted after the last training batch (3 frozen + 3 unfrozen): every resume
    // below only validates and writes the outputs.
    let o = output(command(&args(&images, &run, &[])).env("KESTREL_INTERRUPT_AFTER", "6"));
    assert!(!o.status.success());
    let ckpt = run.join("checkpoint.pth");
    let ckpt_bytes = std::fs::read(&ckpt).unwrap();
    let resume = |extra: &[&str]| { let mut e = vec!["--resume"]; e.extend(extra); args(&images, &run, &e) };

    // The disk fills while the checkpoint is written: an error, the old checkpoint intact,
    // no temporary file left.
    let o = with_fsize_limit(&resume(&["--checkpoint-every", "1e"]), 1 << 20);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "an error, not a crash: {stderr}");
    assert!(stderr.contains("checkpoint.pth") && stderr.contains("too large"), "{stderr}");
    assert_eq!(std::fs::read(&ckpt).unwrap(), ckpt_bytes, "the previous checkpoint is intact");
    let leftovers = || -> Vec<String> {
        std::fs::read_dir(&run).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".tmp")).collect()
    };
    assert!(leftovers().is_empty(), "no temporary file is left: {:?}", leftovers());

    // A model file written, then the disk fills while the next one is written.
    assert!(output(&mut command(&resume(&[]))).status.success());
    let model = run.join("model.safetensors");
    let model_bytes = std::fs::read(&model).unwrap();
    std::fs::write(&ckpt, &ckpt_bytes).unwrap();
    let o = with_fsize_limit(&resume(&[]), 1 << 20);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "an error, not a crash: {stderr}");
    assert!(stderr.contains("model.safetensors") && stderr.contains("too large"), "{stderr}");
    assert_eq!(std::fs::read(&model).unwrap(), model_bytes, "the previous model file is intact");
    assert!(leftovers().is_empty(), "no temporary file is left: {:?}", leftovers());

    // A truncated or damaged checkpoint: --resume says so, naming the file (no panic).
    let n = ckpt_bytes.len();
    for (what, bytes) in [("truncated", ckpt_bytes[..n / 2].to_vec()), ("empty", vec![]), ("damaged", {
        let mut b = ckpt_bytes.clone();
        for d in 0..64 { b[n / 3 + d] ^= 0xff; }
        b
    })] {
        std::fs::write(&ckpt, &bytes).unwrap();
        let o = output(&mut command(&resume(&[])));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: an error, not a panic: {stderr}");
        assert!(stderr.contains("checkpoint.pth"), "{what}: {stderr}");
    }

    // A truncated or damaged model file: predict says so, naming it.
    let photo = images.join("red_0.png");
    let n = model_bytes.len();
    let broken = tmp.path().join("broken.safetensors");
    for (what, bytes) in [("truncated", model_bytes[..n - 100].to_vec()), ("header cut", model_bytes[..50].to_vec()), ("damaged", {
        let mut b = model_bytes.clone();
        b[n - 1000] ^= 0xff;
        b
    })] {
        std::fs::write(&broken, &bytes).unwrap();
        let o = output(Command::new(BIN).args(["predict", broken.to_str().unwrap(), photo.to_str().unwrap(), "--device", "cpu"]));
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{what}: {stderr}");
        assert!(stderr.contains("broken.safetensors"), "{what}: {stderr}");
    }
}

/// An interrupted `--time` run prints a resume command that runs as printed: `--resume`
/// does not take `--time`, so the budget becomes `--epochs N`, the unfrozen epochs it fitted.
/// Resuming with another `--bs`, split or recipe is refused, naming each.
#[test]
fn an_interrupted_time_budget_run_resumes_as_printed() {
    let (tmp, images) = shapes_tmp();
    let run = tmp.path().join("run");
    let mut a = args(&images, &run, &["--time", "8s", "--lr", "2e-3"]);
    let i = a.iter().position(|s| s == "--epochs").unwrap();
    a.drain(i..i + 2); // --time replaces --epochs
    // Interrupted in the second batch of the first unfrozen epoch.
    let o = output(command(&a).env("KESTREL_INTERRUPT_AFTER", "5"));
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    let cmd = printed_resume_command(&stderr);
    assert!(!cmd.contains("--time") && cmd.contains("--epochs ") && cmd.ends_with("--resume"), "{cmd}");
    // The same command at another batch size is refused: the checkpoint's batch position
    // belongs to the interrupted run's batches.
    let changed = cmd.replace(" --bs 8 ", " --bs 16 ");
    assert_ne!(changed, cmd);
    let o = run_printed(&changed);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("--bs 8 (this command: 16)"), "{stderr}");
    // So is another validation split, or another recipe: the metrics would not be the
    // interrupted run's (a new user's resume without --valid-pct's value scored better).
    let changed = format!("{} --valid-pct 0.3 --label-smoothing 0.1", cmd.trim_end_matches(" --resume")) + " --resume";
    let o = run_printed(&changed);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("--valid-pct 0.2 (this command: 0.3)")
            && stderr.contains("--label-smoothing (not given) (this command: 0.1)"), "{stderr}");
    let o = run_printed(&cmd);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("resuming at phase 1"));
    assert!(run.join("model.safetensors").is_file());
}

/// A photo of the validation set that cannot be decoded stops the run at the end of the
/// first epoch's training: that training is kept in the checkpoint, and the printed command
/// with --skip-bad resumes from it (validation first) and finishes.
#[test]
fn a_bad_photo_met_in_validation_keeps_the_training_done() {
    let (tmp, images) = shapes_tmp();
    let bytes = std::fs::read(images.join("red_0.png")).unwrap();
    std::fs::write(images.join("red_50.png"), &bytes[..bytes.len() / 2]).unwrap();
    let list = tmp.path().join("valid.txt");
    std::fs::write(&list, "red_50.png\nred_1.png\ngreen_1.png\nblue_1.png\n").unwrap();
    let out = tmp.path().join("run");
    let o = output(&mut command(&args(&images, &out, &["--valid-list", list.to_str().unwrap()])));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("red_50.png") && stderr.contains("the training done so far is kept"), "{stderr}");
    assert!(out.join("checkpoint.pth").is_file());
    let cmd = format!("{} --skip-bad", printed_resume_command(&stderr));
    let o = run_printed(&cmd);
    assert!(o.status.success(), "the printed command with --skip-bad finishes");
    // 33 training photos at bs 8: 4 batches done, validation next.
    assert!(String::from_utf8_lossy(&o.stdout).contains("resuming at phase 0, epoch 0, batch 4"), "{}", String::from_utf8_lossy(&o.stdout));
    assert!(out.join("model.safetensors").is_file());
}
