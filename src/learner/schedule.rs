//! Hyper-parameter schedules (fastai `callback/schedule.py`): annealing functions of the
//! training progress `pos` ∈ [0, 1], their combination, and the one-cycle policy.

use std::f64::consts::PI;

/// The shape of one annealing piece (fastai `sched_lin`, `sched_cos`, `sched_no`, `sched_exp`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SchedKind {
    /// `start + pos·(end − start)`.
    Lin,
    /// `start + (1 + cos(π·(1 − pos)))·(end − start)/2`.
    Cos,
    /// Constant `start`.
    No,
    /// `start·(end/start)^pos` (start must be > 0).
    Exp,
}

/// One annealing piece from `start` to `end` (fastai `SchedLin`/`SchedCos`/`SchedNo`/`SchedExp`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sched {
    /// The curve's shape.
    pub kind: SchedKind,
    /// Value at `pos = 0`.
    pub start: f64,
    /// Value at `pos = 1`.
    pub end: f64,
}

impl Sched {
    /// fastai `SchedLin(start, end)`.
    pub fn lin(start: f64, end: f64) -> Self { Sched { kind: SchedKind::Lin, start, end } }
    /// fastai `SchedCos(start, end)`.
    pub fn cos(start: f64, end: f64) -> Self { Sched { kind: SchedKind::Cos, start, end } }
    /// fastai `SchedNo(start, end)`: always `start`.
    pub fn no(start: f64, end: f64) -> Self { Sched { kind: SchedKind::No, start, end } }
    /// fastai `SchedExp(start, end)`.
    pub fn exp(start: f64, end: f64) -> Self { Sched { kind: SchedKind::Exp, start, end } }

    /// The value at `pos` (0 → `start`, 1 → `end`), computed with fastai's formula in f64.
    pub fn at(&self, pos: f64) -> f64 {
        let (s, e) = (self.start, self.end);
        match self.kind {
            SchedKind::Lin => s + pos * (e - s),
            SchedKind::Cos => s + (1.0 + (PI * (1.0 - pos)).cos()) * (e - s) / 2.0,
            SchedKind::No => s,
            SchedKind::Exp => s * (e / s).powf(pos),
        }
    }
}

/// Pieces run one after another, each over a fraction of training (fastai `combine_scheds`).
///
/// fastai keeps the cumulative fractions in a float32 tensor and computes the position
/// inside a piece in float32; this type does the same so that values agree to the bit
/// with fastai's (then the piece itself is evaluated in f64 like fastai).
#[derive(Debug, Clone, PartialEq)]
pub struct CombinedSched {
    cum: Vec<f32>,
    scheds: Vec<Sched>,
}

/// fastai `combine_scheds(pcts, scheds)`: `pcts` (fractions summing to 1, each ≥ 0) and
/// `scheds` of the same length.
///
/// Errors: lengths differ, a fraction is negative, or they do not sum to 1 (±1e-9).
pub fn combine_scheds(pcts: &[f64], scheds: Vec<Sched>) -> crate::Result<CombinedSched> {
    anyhow::ensure!(pcts.len() == scheds.len() && !pcts.is_empty(),
        "combine_scheds: {} fractions for {} schedules", pcts.len(), scheds.len());
    anyhow::ensure!(pcts.iter().all(|p| *p >= 0.0), "combine_scheds: negative fraction in {pcts:?}");
    let sum: f64 = pcts.iter().sum();
    anyhow::ensure!((sum - 1.0).abs() < 1e-9, "combine_scheds: fractions {pcts:?} sum to {sum}, not 1");
    let mut cum = vec![0f32];
    let mut acc = 0f32;
    for p in pcts {
        acc += *p as f32;
        cum.push(acc);
    }
    Ok(CombinedSched { cum, scheds })
}

impl CombinedSched {
    /// The value at training progress `pos` ∈ [0, 1].
    pub fn at(&self, pos: f64) -> f64 {
        let p = pos as f32;
        let lim = self.cum.len() - 2;
        let idx = self.cum.iter().rposition(|c| p >= *c).unwrap_or(0).min(lim);
        let actual = (p - self.cum[idx]) / (self.cum[idx + 1] - self.cum[idx]);
        self.scheds[idx].at(actual as f64)
    }
}

/// fastai `combined_cos(pct, start, middle, end)`: cosine from `start` to `middle` over the
/// first `pct` of training, then cosine from `middle` to `end`. `pct` in (0, 1).
pub fn combined_cos(pct: f64, start: f64, middle: f64, end: f64) -> CombinedSched {
    CombinedSched {
        cum: vec![0.0, pct as f32, pct as f32 + (1.0 - pct) as f32],
        scheds: vec![Sched::cos(start, middle), Sched::cos(middle, end)],
    }
}

/// The one-cycle policy of fastai's `fit_one_cycle` for one parameter group: learning
/// rate `combined_cos(pct_start, lr_max/div, lr_max, lr_max/div_final)` and momentum
/// `combined_cos(pct_start, moms.0, moms.1, moms.2)`.
#[derive(Debug, Clone, PartialEq)]
pub struct OneCycle {
    /// One learning-rate schedule per parameter group.
    pub lr: Vec<CombinedSched>,
    /// The momentum schedule (same for all groups).
    pub mom: CombinedSched,
}

impl OneCycle {
    /// Schedules for groups with maximum learning rates `lr_max` (one per group).
    pub fn new(lr_max: &[f64], div: f64, div_final: f64, pct_start: f64, moms: (f64, f64, f64)) -> Self {
        OneCycle {
            lr: lr_max.iter().map(|l| combined_cos(pct_start, l / div, *l, l / div_final)).collect(),
            mom: combined_cos(pct_start, moms.0, moms.1, moms.2),
        }
    }
}

/// fastcore `even_mults(start, stop, n)`: `n` values stepping geometrically from `start`
/// to `stop` (`[stop]` when `n == 1`).
pub fn even_mults(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![stop];
    }
    let step = (stop / start).powf(1.0 / (n as f64 - 1.0));
    (0..n).map(|i| start * step.powf(i as f64)).collect()
}

/// A learning rate as fastai accepts it: one value, or a `slice` spread over the groups.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Lr {
    /// The same rate for every group.
    Scalar(f64),
    /// `slice(lo, hi)`: geometric spread from `lo` (first group) to `hi` (last), [`even_mults`].
    Slice(f64, f64),
    /// `slice(hi)`: `hi/10` for every group but the last, `hi` for the last.
    SliceHi(f64),
}

impl Lr {
    /// The per-group rates for `n` groups (fastai `Optimizer.set_hyper` with a slice).
    pub fn per_group(&self, n: usize) -> Vec<f64> {
        match *self {
            Lr::Scalar(v) => vec![v; n],
            Lr::Slice(lo, hi) => even_mults(lo, hi, n),
            Lr::SliceHi(hi) => {
                let mut v = vec![hi / 10.0; n.saturating_sub(1)];
                v.push(hi);
                v
            }
        }
    }
    /// The rate of the last group (what fastai's Recorder logs).
    pub fn max(&self) -> f64 {
        match *self {
            Lr::Scalar(v) | Lr::Slice(_, v) | Lr::SliceHi(v) => v,
        }
    }
}

impl From<f64> for Lr {
    fn from(v: f64) -> Self { Lr::Scalar(v) }
}
