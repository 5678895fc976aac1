//! Calibrated probabilities: the expected calibration error and the reliability diagram
//! of Guo et al. 2017 ("On Calibration of Modern Neural Networks", ICML), and temperature
//! scaling, the one-parameter fix that paper recommends: probabilities
//! `softmax(logits / T)` with `T` fitted on the validation set by minimising the negative
//! log-likelihood. Dividing the logits by one positive number never changes the argmax,
//! so the error rate stays the same; only the confidence moves.
//!
//! Every function takes probabilities or logits (N, C) and class indices (N) as tensors
//! and computes in f64 on the CPU. Log-probabilities are logits up to a per-row constant,
//! which softmax ignores, so temperature scaling works from probabilities too (also from
//! TTA's averaged probabilities, which have no logits).

use crate::export::Calibration;
use crate::learner::plot::{Series, line_plot};
use anyhow::{bail, ensure};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Number of equal-width confidence bins of the ECE and the reliability diagram (Guo et
/// al. 2017 use 15).
pub const ECE_BINS: usize = 15;

/// Temperatures searched by [`fit_temperature`]: T in [`T_MIN`, `T_MAX`].
pub const T_MIN: f64 = 0.05;
/// Upper end of the temperature search.
pub const T_MAX: f64 = 20.0;

/// Smallest probability taken into a logarithm (probabilities that underflowed to 0).
const P_FLOOR: f64 = 1e-30;

/// Rows of a (N, C) matrix, row-major, in f64, with the targets as indices.
struct Rows {
    v: Vec<f64>,
    n: usize,
    c: usize,
    y: Vec<usize>,
}

impl Rows {
    fn new(m: &Tensor, targets: &Tensor, what: &str) -> crate::Result<Self> {
        ensure!(m.dim() == 2, "{what}: expected a (N, C) matrix, got shape {:?}", m.size());
        let (n, c) = (m.size()[0] as usize, m.size()[1] as usize);
        ensure!(n > 0 && c > 0, "{what}: empty matrix {:?}", m.size());
        ensure!(targets.size() == [n as i64], "{what}: {n} rows but targets of shape {:?}", targets.size());
        let v = Vec::<f64>::try_from(m.to_device(Device::Cpu).to_kind(Kind::Double).flatten(0, -1))?;
        if let Some(i) = v.iter().position(|x| x.is_nan()) {
            bail!("{what}: NaN at row {}, column {}", i / c, i % c);
        }
        let t = Vec::<i64>::try_from(targets.to_device(Device::Cpu).to_kind(Kind::Int64))?;
        let mut y = Vec::with_capacity(n);
        for (i, &t) in t.iter().enumerate() {
            ensure!(t >= 0 && (t as usize) < c, "{what}: target {t} of row {i} is not a class index in 0..{c}");
            y.push(t as usize);
        }
        Ok(Rows { v, n, c, y })
    }

    fn row(&self, i: usize) -> &[f64] {
        &self.v[i * self.c..(i + 1) * self.c]
    }
}

/// One confidence bin of the reliability diagram: the predictions whose confidence (the
/// largest probability) lies in (`lo`, `hi`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReliabilityBin {
    /// Lower edge (excluded; the first bin also holds confidence 0).
    pub lo: f64,
    /// Upper edge (included).
    pub hi: f64,
    /// Predictions in the bin.
    pub count: usize,
    /// Share of them that are right, in [0, 1] (0 for an empty bin).
    pub accuracy: f64,
    /// Their mean confidence, in [0, 1] (0 for an empty bin).
    pub confidence: f64,
}

fn bins_of(p: &Rows, n_bins: usize) -> Vec<ReliabilityBin> {
    let mut acc = vec![(0usize, 0usize, 0f64); n_bins];
    for i in 0..p.n {
        let r = p.row(i);
        let (pred, conf) = r.iter().enumerate().fold((0, f64::MIN), |b, (j, &x)| if x > b.1 { (j, x) } else { b });
        let b = ((conf * n_bins as f64).ceil() as usize).clamp(1, n_bins) - 1;
        acc[b].0 += 1;
        acc[b].1 += usize::from(pred == p.y[i]);
        acc[b].2 += conf;
    }
    acc.iter()
        .enumerate()
        .map(|(b, &(count, right, conf))| ReliabilityBin {
            lo: b as f64 / n_bins as f64,
            hi: (b + 1) as f64 / n_bins as f64,
            count,
            accuracy: if count > 0 { right as f64 / count as f64 } else { 0.0 },
            confidence: if count > 0 { conf / count as f64 } else { 0.0 },
        })
        .collect()
}

/// The reliability diagram's bins (Guo et al. 2017, section 2): `n_bins` equal-width bins
/// of the confidence `max_c probs[i, c]`, bin m holding ((m−1)/M, m/M].
///
/// `probs`: probabilities (N, C), any float kind; `targets`: class indices (N).
/// Errors: shapes that do not match, an empty matrix, NaN, a target outside 0..C, `n_bins` 0.
pub fn reliability(probs: &Tensor, targets: &Tensor, n_bins: usize) -> crate::Result<Vec<ReliabilityBin>> {
    ensure!(n_bins > 0, "reliability: at least one bin is needed");
    Ok(bins_of(&Rows::new(probs, targets, "reliability")?, n_bins))
}

fn ece_of(bins: &[ReliabilityBin]) -> f64 {
    let n: usize = bins.iter().map(|b| b.count).sum();
    bins.iter().map(|b| b.count as f64 / n as f64 * (b.accuracy - b.confidence).abs()).sum()
}

/// Expected calibration error (Guo et al. 2017, eq. 3): `Σ_m |B_m|/n · |acc(B_m) − conf(B_m)|`
/// over the bins of [`reliability`]; in [0, 1], 0 for perfectly calibrated probabilities.
/// Use [`ECE_BINS`] (15) bins as the paper does.
///
/// Errors: as [`reliability`].
pub fn ece(probs: &Tensor, targets: &Tensor, n_bins: usize) -> crate::Result<f64> {
    Ok(ece_of(&reliability(probs, targets, n_bins)?))
}

/// Mean negative log-likelihood (natural log) of the targets under `probs` (N, C):
/// `mean_i −ln probs[i, y_i]` (probabilities below 1e-30 count as 1e-30).
///
/// Errors: as [`reliability`].
pub fn nll(probs: &Tensor, targets: &Tensor) -> crate::Result<f64> {
    let p = Rows::new(probs, targets, "nll")?;
    Ok((0..p.n).map(|i| -p.row(i)[p.y[i]].max(P_FLOOR).ln()).sum::<f64>() / p.n as f64)
}

/// Logits of `probs` (N, C): `ln max(p, 1e-30)`, equal to the model's logits up to a
/// per-row constant (which softmax and [`fit_temperature`] ignore). `f32` like `probs`'s kind.
pub fn logits_from_probs(probs: &Tensor) -> Tensor {
    probs.to_kind(Kind::Double).clamp_min(P_FLOOR).log().to_kind(probs.kind())
}

/// Probabilities `softmax(logits / t)` (N, C) `f32` (temperature scaling; `t` > 0).
pub fn apply_temperature(logits: &Tensor, t: f64) -> Tensor {
    (logits.to_kind(Kind::Double) / t).softmax(-1, Kind::Float)
}

/// Mean NLL of `softmax(z / t)` for rows `idx` (numerically stable log-sum-exp).
fn nll_at(z: &Rows, idx: &[usize], t: f64) -> f64 {
    let mut s = 0.0;
    for &i in idx {
        let r = z.row(i);
        let m = r.iter().fold(f64::MIN, |a, &x| a.max(x)) / t;
        let lse = m + r.iter().map(|&x| (x / t - m).exp()).sum::<f64>().ln();
        s += lse - r[z.y[i]] / t;
    }
    s / idx.len() as f64
}

/// The temperature minimising the NLL of `softmax(z / T)` over rows `idx`: golden-section
/// search on ln T over [ln T_MIN, ln T_MAX] (the NLL is convex in 1/T, so unimodal in ln T).
fn fit_rows(z: &Rows, idx: &[usize]) -> f64 {
    let g = (5f64.sqrt() - 1.0) / 2.0;
    let (mut a, mut b) = (T_MIN.ln(), T_MAX.ln());
    let f = |u: f64| nll_at(z, idx, u.exp());
    let (mut c, mut d) = (b - g * (b - a), a + g * (b - a));
    let (mut fc, mut fd) = (f(c), f(d));
    while b - a > 1e-6 {
        if fc <= fd {
            b = d;
            d = c;
            fd = fc;
            c = b - g * (b - a);
            fc = f(c);
        } else {
            a = c;
            c = d;
            fc = fd;
            d = a + g * (b - a);
            fd = f(d);
        }
    }
    ((a + b) / 2.0).exp()
}

/// Temperature scaling (Guo et al. 2017, section 4.2): the T in [0.05, 20] that minimises
/// the mean NLL of `softmax(logits / T)` against `targets`, to about 1e-6 relative.
/// `logits` (N, C): logits or log-probabilities (see [`logits_from_probs`]). T > 1 softens
/// over-confident probabilities, T < 1 sharpens under-confident ones.
///
/// Errors: as [`reliability`]; an infinite logit.
pub fn fit_temperature(logits: &Tensor, targets: &Tensor) -> crate::Result<f64> {
    let z = Rows::new(logits, targets, "fit_temperature")?;
    ensure!(z.v.iter().all(|x| x.is_finite()), "fit_temperature: the logits must be finite");
    Ok(fit_rows(&z, &(0..z.n).collect::<Vec<_>>()))
}

/// [`fit_rows`], or 1 (no scaling) when the fit ends at a bound of [`T_MIN`, `T_MAX`]: the
/// NLL then has no minimum inside, as when every item is classified right (sharper is
/// always better there, T → 0, and every later prediction, even of a photo of none of the
/// classes, would get probability 1).
fn fit_rows_or_one(z: &Rows, idx: &[usize]) -> f64 {
    let t = fit_rows(z, idx);
    if t <= T_MIN * 1.001 || t >= T_MAX / 1.001 { 1.0 } else { t }
}

/// Calibration of a validation set's probabilities: the fitted temperature, ECE and NLL
/// before and after, and honest after-values from 2-fold cross-fitting (T fitted on the
/// even-indexed items and measured on the odd ones, and the other way round, pooled),
/// because values measured on the set T was fitted on are optimistic. A fit that ends at
/// a bound of [`T_MIN`, `T_MAX`] (no minimum inside: every item right, for one) leaves
/// T = 1, the plain softmax.
///
/// `probs`: probabilities (N, C); `targets`: class indices (N); N ≥ 2.
/// Errors: as [`reliability`]; fewer than 2 items.
pub fn calibrate(probs: &Tensor, targets: &Tensor) -> crate::Result<CalibrationResult> {
    let z0 = logits_from_probs(probs);
    let z = Rows::new(&z0, targets, "calibrate")?;
    ensure!(z.n >= 2, "calibrate: at least 2 validation items are needed, got {}", z.n);
    let all: Vec<usize> = (0..z.n).collect();
    let t = fit_rows_or_one(&z, &all);
    let after = apply_temperature(&z0, t);
    let (even, odd): (Vec<usize>, Vec<usize>) = all.iter().partition(|&&i| i % 2 == 0);
    let (te, to) = (fit_rows_or_one(&z, &even), fit_rows_or_one(&z, &odd));
    // Each half scaled by the temperature fitted on the other half.
    let t_of: Vec<f64> = (0..z.n).map(|i| if i % 2 == 0 { to } else { te }).collect();
    let cross = (z0.to_kind(Kind::Double) / Tensor::from_slice(&t_of).unsqueeze(1)).softmax(-1, Kind::Float);
    let bins_before = reliability(probs, targets, ECE_BINS)?;
    let bins_after = reliability(&after, targets, ECE_BINS)?;
    let cal = Calibration {
        temperature: t,
        n_fitted: z.n,
        ece_before: ece_of(&bins_before),
        ece_after: ece_of(&bins_after),
        nll_before: nll(probs, targets)?,
        nll_after: nll(&after, targets)?,
        ece_after_crossfit: ece(&cross, targets, ECE_BINS)?,
        nll_after_crossfit: nll(&cross, targets)?,
    };
    Ok(CalibrationResult { calibration: cal, bins_before, bins_after })
}

/// What [`calibrate`] returns.
#[derive(Debug, Clone)]
pub struct CalibrationResult {
    /// The temperature and the numbers stored in the model file.
    pub calibration: Calibration,
    /// Reliability bins of the uncalibrated probabilities.
    pub bins_before: Vec<ReliabilityBin>,
    /// Reliability bins after temperature scaling (fitted and measured on the same set).
    pub bins_after: Vec<ReliabilityBin>,
}

/// Draws the reliability diagram as a PNG at `path`: accuracy against mean confidence of
/// each non-empty bin, before and after temperature scaling, with the diagonal of perfect
/// calibration (Guo et al. 2017, figure 1), ECE values in the legend.
///
/// Errors: the file cannot be written.
pub fn plot_reliability(r: &CalibrationResult, path: &Path) -> crate::Result<()> {
    let pts = |b: &[ReliabilityBin]| b.iter().filter(|b| b.count > 0).map(|b| (b.confidence, b.accuracy)).collect();
    let c = &r.calibration;
    let series = [
        Series { name: "perfect calibration".into(), points: vec![(0.0, 0.0), (1.0, 1.0)] },
        Series { name: format!("softmax (ECE {:.3})", c.ece_before), points: pts(&r.bins_before) },
        Series { name: format!("temperature {:.2} (ECE {:.3})", c.temperature, c.ece_after), points: pts(&r.bins_after) },
    ];
    line_plot(path, &format!("Reliability diagram ({ECE_BINS} bins, {} validation items)", c.n_fitted),
              "confidence (mean of the bin)", "accuracy", false, &series, &[])
}
