//! The learning-rate finder (fastai `LRFinder`, `lr_find` and the suggestion functions
//! `valley`, `minimum`, `steep`, `slide` of `callback/schedule.py`; Smith 2015,
//! "Cyclical Learning Rates for Training Neural Networks").

use super::{Learner, LrSchedule, Sched};
use crate::learner::plot::{Series, line_plot};
use std::path::Path;

/// Options of [`Learner::lr_find`], fastai's defaults.
#[derive(Debug, Clone, Copy)]
pub struct LrFindOptions {
    /// First learning rate (1e-7).
    pub start_lr: f64,
    /// Last learning rate (10).
    pub end_lr: f64,
    /// Number of batches of the sweep (100; at least 6).
    pub num_it: usize,
    /// Stop when the smoothed loss exceeds 4× its minimum (true).
    pub stop_div: bool,
}

impl Default for LrFindOptions {
    fn default() -> Self { LrFindOptions { start_lr: 1e-7, end_lr: 10.0, num_it: 100, stop_div: true } }
}

/// One suggested learning rate and the point (lr, loss) fastai marks on the plot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Suggestion {
    /// The suggested learning rate.
    pub lr: f64,
    /// The marked point's lr.
    pub point_lr: f64,
    /// The marked point's (smoothed) loss.
    pub point_loss: f64,
}

/// What [`Learner::lr_find`] found.
#[derive(Debug, Clone)]
pub struct LrFindResult {
    /// Learning rate at each batch of the sweep.
    pub lrs: Vec<f64>,
    /// Smoothed loss after each batch.
    pub losses: Vec<f64>,
    /// fastai's default: from the longest descending valley.
    pub valley: Suggestion,
    /// The lr at the loss minimum divided by 10.
    pub minimum: Suggestion,
    /// The lr where the loss falls fastest.
    pub steep: Suggestion,
    /// fastai's interval slide rule.
    pub slide: Suggestion,
}

/// The shortest sweep [`Learner::lr_find`] runs, in batches (`lr-find --num-it` refuses
/// fewer; fine-tune's sweep, capped at the training's batches, needs a run this long).
pub const MIN_NUM_IT: usize = 10;

impl Learner {
    /// fastai `lr_find`: trains from the current weights with the lr growing exponentially
    /// from `start_lr` to `end_lr` over `num_it` batches (all groups the same lr, no
    /// validation, no user callbacks), stops early when the smoothed loss passes 4× its
    /// minimum, then restores the model and optimizer exactly as they were. Suggestions are
    /// computed on the recorded curve without its first `num_it/10` and last 5 points and
    /// up to the first NaN, as fastai does.
    ///
    /// Errors: `num_it` below [`MIN_NUM_IT`] (a sweep that short crosses the whole lr range
    /// in a few steps and its suggestions are noise); a data or model error; the sweep
    /// stopped too early to suggest anything (fewer than `num_it/10 + 7` batches).
    pub fn lr_find(&mut self, o: LrFindOptions) -> crate::Result<LrFindResult> {
        anyhow::ensure!(o.start_lr > 0.0 && o.end_lr > o.start_lr,
            "lr_find needs 0 < start_lr < end_lr, got start_lr={} end_lr={}", o.start_lr, o.end_lr);
        anyhow::ensure!(o.num_it >= MIN_NUM_IT,
            "lr_find over {} batches: too few to suggest a learning rate (at least {MIN_NUM_IT}: fastai's suggestions \
             leave out the first tenth and the last 5 points)", o.num_it);
        let num_it = o.num_it;
        let n_batches = self.dls.train.n_batches();
        anyhow::ensure!(n_batches > 0, "lr_find: the training loader yields no batch");
        let model = self.model_state();
        let opt = self.opt.state_tensors().into_iter().collect();
        let (cbs, pass, resume) = (std::mem::take(&mut self.cbs), self.train_pass, self.resume.take());
        self.sched = LrSchedule::Sweep { sched: Sched::exp(o.start_lr, o.end_lr), num_it, stop_div: o.stop_div, best: f64::INFINITY };
        self.phase = 0;
        let res = self.run_fit(num_it / n_batches + 1, None);
        self.sched = LrSchedule::Constant;
        self.opt.zero_grad();
        self.cbs = cbs;
        self.train_pass = pass;
        self.resume = resume;
        self.safe_position = None; // the sweep's positions; its weights are undone below
        self.set_model_state(&model)?;
        self.opt.load_state_tensors(&opt)?;
        res?;
        let (lrs, losses) = (self.recorder.lrs.clone(), self.recorder.losses.clone());
        let lo = num_it / 10;
        let mut hi = losses.len().saturating_sub(5);
        if let Some(nan) = losses[lo.min(hi)..hi].iter().position(|l| l.is_nan()) { hi = lo + nan; }
        if hi <= lo + 1 {
            let why = if losses.len() < num_it {
                "the loss diverged early (raise num_it: lr-find --num-it, fine-tune --lr-find-iters; or lower start_lr: --start-lr)"
            } else {
                "fastai's suggestions leave out the first tenth and the last 5 points (use at least 10 iterations: lr-find --num-it, fine-tune --lr-find-iters)"
            };
            anyhow::bail!("lr_find ran {} batches: too few to suggest a learning rate ({why})", losses.len());
        }
        let (l32, s32): (Vec<f32>, Vec<f32>) = (lrs[lo..hi].iter().map(|v| *v as f32).collect(), losses[lo..hi].iter().map(|v| *v as f32).collect());
        Ok(LrFindResult {
            valley: valley(&l32, &s32), minimum: minimum(&l32, &s32), steep: steep(&l32, &s32), slide: slide(&l32, &s32),
            lrs, losses,
        })
    }
}

impl LrFindResult {
    /// fastai `plot_lr_find`: loss against lr (log x axis) without the last 5 points, with
    /// the four suggestions marked at fastai's points (for `minimum`, the loss minimum itself)
    /// and named with the learning rate each suggests, as an 800×500 PNG at `path`.
    ///
    /// Errors: the file cannot be written.
    pub fn plot(&self, path: &Path) -> crate::Result<()> {
        let n = self.lrs.len().saturating_sub(5).max(1).min(self.lrs.len());
        let pts = self.lrs[..n].iter().zip(&self.losses[..n]).map(|(a, b)| (*a, *b)).collect();
        let marks = [("valley", self.valley), ("minimum", self.minimum), ("steep", self.steep), ("slide", self.slide)]
            .iter().map(|(n, s)| (format!("{n}: {:.2e}", s.lr), s.point_lr, s.point_loss)).collect::<Vec<_>>();
        line_plot(path, "Learning rate finder", "Learning Rate", "Loss", true,
                  &[Series { name: "smoothed loss".into(), points: pts }], &marks)
    }
}

fn sugg(lr: f64, point_lr: f64, point_loss: f64) -> Suggestion { Suggestion { lr, point_lr, point_loss } }

/// fastai `valley`: finds the longest decreasing subsequence of the losses (the
/// "valley", from `start` to `end`) and suggests the lr at index
/// `start + int(len/3) + int(len/3/2)` with `len = end − start`.
/// Inputs in float32 like fastai's tensors; `lrs` and `losses` of equal, non-zero length.
pub fn valley(lrs: &[f32], losses: &[f32]) -> Suggestion {
    let n = losses.len();
    let (mut max_start, mut max_end) = (0isize, 0usize);
    let mut lds = vec![1usize; n];
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 { lds[i] = lds[j] + 1; }
            if lds[max_end] < lds[i] {
                max_end = i;
                // as in fastai, this may be −1 (the valley starts at the first point)
                max_start = max_end as isize - lds[max_end] as isize;
            }
        }
    }
    let sections = (max_end as isize - max_start) as f64 / 3.0;
    let idx = max_start + sections as isize + (sections / 2.0) as isize;
    // a negative index counts from the end, like Python's
    let idx = if idx < 0 { (n as isize + idx) as usize } else { idx as usize };
    sugg(lrs[idx] as f64, lrs[idx] as f64, losses[idx] as f64)
}

fn nearest(lrs: &[f32], lr: f64) -> usize {
    (0..lrs.len()).min_by(|a, b| (lrs[*a] as f64 - lr).abs().total_cmp(&(lrs[*b] as f64 - lr).abs())).unwrap_or(0)
}

/// fastai `minimum`: the lr at the lowest loss, divided by 10.
pub fn minimum(lrs: &[f32], losses: &[f32]) -> Suggestion {
    let i = (0..losses.len()).fold(0, |b, i| if losses[i] < losses[b] { i } else { b });
    let lr_min = lrs[i] as f64;
    sugg(lr_min / 10.0, lr_min, losses[nearest(lrs, lr_min)] as f64)
}

/// fastai `steep`: the lr where `Δloss / Δlog(lr)` is most negative.
pub fn steep(lrs: &[f32], losses: &[f32]) -> Suggestion {
    let n = losses.len();
    let grads: Vec<f32> = (0..n - 1).map(|i| (losses[i + 1] - losses[i]) / (lrs[i + 1].ln() - lrs[i].ln())).collect();
    let i = (0..grads.len()).fold(0, |b, i| if grads[i] < grads[b] { i } else { b });
    let lr = lrs[i] as f64;
    sugg(lr, lr, losses[nearest(lrs, lr)] as f64)
}

/// fastai `slide(lr_diff=15, thresh=0.005, adjust_value=1)`: walking left from the end,
/// the first lr where the loss gradient (numpy `gradient`) 15 points apart differs by at
/// most `thresh`.
pub fn slide(lrs: &[f32], losses: &[f32]) -> Suggestion {
    let n = losses.len() as isize;
    let g: Vec<f32> = (0..n as usize).map(|i| match i {
        0 if n > 1 => losses[1] - losses[0],
        _ if i as isize == n - 1 && n > 1 => losses[i] - losses[i - 1],
        _ if n > 2 => (losses[i + 1] - losses[i - 1]) / 2.0,
        _ => 0.0,
    }).collect();
    let at = |k: isize| (n + k) as usize;
    let lr_diff = 15isize;
    let (mut r, mut l) = (-1isize, -1 - lr_diff);
    let mut local = lrs[at(l.max(-n))];
    while l >= -n && (g[at(r)] - g[at(l)]).abs() > 0.005f32 {
        local = lrs[at(l)];
        r -= 1;
        l -= 1;
    }
    let s = local as f64;
    let logs: Vec<f64> = lrs.iter().map(|v| (*v as f64).log10()).collect();
    sugg(s, s, interp(s.log10(), &logs, losses))
}

/// numpy `interp` on increasing `xs`.
fn interp(x: f64, xs: &[f64], ys: &[f32]) -> f64 {
    if x <= xs[0] { return ys[0] as f64; }
    for i in 1..xs.len() {
        if x <= xs[i] {
            let t = (x - xs[i - 1]) / (xs[i] - xs[i - 1]);
            return ys[i - 1] as f64 + t * (ys[i] as f64 - ys[i - 1] as f64);
        }
    }
    *ys.last().expect("non-empty") as f64
}
