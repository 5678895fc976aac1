//! fastai's optimizers (`fastai/optimizer.py`): Adam (with decoupled weight decay) and SGD
//! with momentum, over parameter groups with per-group hyper-parameters.

use anyhow::{Context, bail};
use tch::{Kind, Tensor};

/// Which update rule the optimizer applies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum OptKind {
    /// fastai `Adam`: `weight_decay`, `average_grad(dampening=True)`, `average_sqr_grad`,
    /// `step_stat`, `adam_step`.
    Adam,
    /// fastai `SGD`: `weight_decay`, then `average_grad` (no dampening) and `momentum_step`
    /// when `mom != 0`, else `sgd_step`.
    Sgd,
}

/// The hyper-parameters of one parameter group.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Hypers {
    /// Learning rate.
    pub lr: f64,
    /// Momentum / β1 (fastai `mom`; scheduled by `fit_one_cycle`).
    pub mom: f64,
    /// β2 of Adam (fastai `sqr_mom`).
    pub sqr_mom: f64,
    /// Adam's ε, added to the root of the debiased squared average.
    pub eps: f64,
    /// Decoupled weight decay: `p ← p·(1 − lr·wd)` before the step (fastai `true_wd`).
    pub wd: f64,
}

impl Hypers {
    /// fastai `Adam` defaults: mom 0.9, sqr_mom 0.99, eps 1e-5, wd 0.01.
    pub fn adam(lr: f64) -> Self { Hypers { lr, mom: 0.9, sqr_mom: 0.99, eps: 1e-5, wd: 0.01 } }
    /// fastai `SGD` defaults: mom 0, wd 0.
    pub fn sgd(lr: f64) -> Self { Hypers { lr, mom: 0.0, sqr_mom: 0.99, eps: 1e-5, wd: 0.0 } }
}

/// One optimized tensor and its state.
#[derive(Debug)]
pub struct OptParam {
    /// The variable's name in the model's `VarStore`.
    pub name: String,
    /// The variable (shares storage with the model).
    pub tensor: Tensor,
    /// False for BatchNorm and bias parameters (fastai `wd_bn_bias=False`).
    pub do_wd: bool,
    /// True for BatchNorm parameters: trainable even in frozen groups (fastai `train_bn`).
    pub force_train: bool,
    /// Moving average of the gradients (`grad_avg`), created on the first step.
    pub grad_avg: Option<Tensor>,
    /// Moving average of the squared gradients (`sqr_avg`, Adam), created on the first step.
    pub sqr_avg: Option<Tensor>,
    /// Number of steps taken (Adam's `step`).
    pub step: i64,
}

/// fastai's `Optimizer` with the Adam or SGD callbacks: parameter groups, per-group hyper
/// parameters, freezing (`frozen_idx`), per-parameter state.
#[derive(Debug)]
pub struct Optimizer {
    /// The update rule.
    pub kind: OptKind,
    /// Parameters per group (0 = first body group … last = head).
    pub groups: Vec<Vec<OptParam>>,
    /// Hyper-parameters per group.
    pub hypers: Vec<Hypers>,
    /// Groups before this index are frozen (fastai `frozen_idx`).
    pub frozen_idx: usize,
}

impl Optimizer {
    /// An optimizer over `groups` with `base` hyper-parameters in every group.
    ///
    /// Errors: no group.
    pub fn new(kind: OptKind, groups: Vec<Vec<OptParam>>, base: Hypers) -> crate::Result<Self> {
        anyhow::ensure!(!groups.is_empty(), "the optimizer needs at least one parameter group");
        let hypers = vec![base; groups.len()];
        Ok(Optimizer { kind, groups, hypers, frozen_idx: 0 })
    }

    /// Sets the learning rate of every group from `lrs` (one per group).
    pub fn set_lrs(&mut self, lrs: &[f64]) {
        for (h, l) in self.hypers.iter_mut().zip(lrs) { h.lr = *l; }
    }
    /// Sets the momentum of every group.
    pub fn set_mom(&mut self, mom: f64) {
        for h in &mut self.hypers { h.mom = mom; }
    }
    /// Sets the weight decay of every group.
    pub fn set_wd(&mut self, wd: f64) {
        for h in &mut self.hypers { h.wd = wd; }
    }

    /// fastai `freeze_to(n)`: groups `< n` stop requiring gradients (except parameters with
    /// `force_train`, i.e. BatchNorm), groups `>= n` train. Negative `n` counts from the end.
    pub fn freeze_to(&mut self, n: isize) {
        let len = self.groups.len() as isize;
        let idx = if n >= 0 { n } else { len + n }.clamp(0, len) as usize;
        if idx >= self.groups.len() {
            log::warn!("freezing {idx} groups; the model has {}: the whole model is frozen", self.groups.len());
        }
        self.frozen_idx = idx;
        for (g, ps) in self.groups.iter().enumerate() {
            for p in ps {
                let _ = p.tensor.set_requires_grad(g >= idx || p.force_train);
            }
        }
    }

    /// Sets every gradient to zero (fastai `zero_grad`: gradients stay allocated).
    pub fn zero_grad(&mut self) {
        for p in self.groups.iter().flatten() {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.detach_();
                let _ = g.zero_();
            }
        }
    }

    /// All parameters that take part in the next step: requiring gradients and having one.
    fn each_with_grad(&mut self, mut f: impl FnMut(&mut OptParam, &Hypers, OptKind)) {
        let kind = self.kind;
        for (ps, h) in self.groups.iter_mut().zip(&self.hypers) {
            for p in ps.iter_mut() {
                if p.tensor.requires_grad() && p.tensor.grad().defined() {
                    f(p, h, kind);
                }
            }
        }
    }

    /// One optimizer step (fastai `Optimizer.step` with the Adam or SGD callbacks), in
    /// place and without recording gradients. Frozen parameters are skipped.
    pub fn step(&mut self) {
        tch::no_grad(|| {
            self.each_with_grad(|p, h, kind| {
                let g = p.tensor.grad();
                let mut t = p.tensor.shallow_clone();
                if p.do_wd && h.wd != 0.0 {
                    let _ = t.g_mul_scalar_(1.0 - h.lr * h.wd);
                }
                match kind {
                    OptKind::Adam => {
                        // fastai's formulas with in-place ops and one temporary per parameter:
                        // grad_avg = mom·grad_avg + (1 − mom)·g (lerp), sqr_avg likewise with g²,
                        // p −= lr/debias1 · grad_avg / (√(sqr_avg/debias2) + eps).
                        let ga = p.grad_avg.get_or_insert_with(|| g.zeros_like());
                        let _ = ga.lerp_(&g, 1.0 - h.mom);
                        let mut tmp = &g * &g;
                        let sa = p.sqr_avg.get_or_insert_with(|| g.zeros_like());
                        let _ = sa.lerp_(&tmp, 1.0 - h.sqr_mom);
                        p.step += 1;
                        let debias1 = debias(h.mom, 1.0 - h.mom, p.step);
                        let debias2 = debias(h.sqr_mom, 1.0 - h.sqr_mom, p.step);
                        if h.lr != 0.0 {
                            let _ = sa.sqrt_out(&tmp);
                            let _ = tmp.g_div_scalar_(debias2.sqrt());
                            let _ = tmp.g_add_scalar_(h.eps);
                            let _ = tmp.g_mul_scalar_(-debias1 / h.lr);
                            let _ = t.addcdiv_(&*ga, &tmp);
                        }
                    }
                    OptKind::Sgd if h.mom != 0.0 => {
                        let ga = p.grad_avg.get_or_insert_with(|| g.zeros_like());
                        let _ = ga.g_mul_scalar_(h.mom);
                        let _ = ga.g_add_(&g);
                        let _ = t.g_add_(&(&*ga * -h.lr));
                    }
                    OptKind::Sgd => {
                        let _ = t.g_add_(&(&g * -h.lr));
                    }
                }
            })
        });
    }

    /// The per-parameter state as named tensors (`opt.<param>.grad_avg`, `.sqr_avg`,
    /// `.step`) plus the hyper-parameters (`opt.hypers`, f64, groups × 5), for checkpoints.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for p in self.groups.iter().flatten() {
            if let Some(t) = &p.grad_avg { out.push((format!("opt.{}.grad_avg", p.name), t.copy())); }
            if let Some(t) = &p.sqr_avg { out.push((format!("opt.{}.sqr_avg", p.name), t.copy())); }
            out.push((format!("opt.{}.step", p.name), Tensor::from(p.step)));
        }
        let hs: Vec<f64> = self.hypers.iter().flat_map(|h| [h.lr, h.mom, h.sqr_mom, h.eps, h.wd]).collect();
        out.push(("opt.hypers".into(), Tensor::from_slice(&hs)));
        out.push(("opt.frozen_idx".into(), Tensor::from(self.frozen_idx as i64)));
        out
    }

    /// Restores what [`Optimizer::state_tensors`] wrote (parameters matched by name).
    ///
    /// Errors: a step count or the hyper-parameters are missing, or the group count differs.
    pub fn load_state_tensors(&mut self, named: &std::collections::HashMap<String, Tensor>) -> crate::Result<()> {
        let hs = named.get("opt.hypers").context("checkpoint has no optimizer hyper-parameters (opt.hypers)")?;
        let hs: Vec<f64> = Vec::<f64>::try_from(hs.to_kind(Kind::Double))?;
        if hs.len() != 5 * self.groups.len() {
            bail!("checkpoint has hyper-parameters for {} groups, the optimizer has {}", hs.len() / 5, self.groups.len());
        }
        for (h, c) in self.hypers.iter_mut().zip(hs.chunks(5)) {
            *h = Hypers { lr: c[0], mom: c[1], sqr_mom: c[2], eps: c[3], wd: c[4] };
        }
        for p in self.groups.iter_mut().flatten() {
            let step = named.get(&format!("opt.{}.step", p.name))
                .with_context(|| format!("checkpoint has no optimizer state for parameter {}", p.name))?;
            p.step = step.f_int64_value(&[]).with_context(|| format!("damaged optimizer step of parameter {}", p.name))?;
            let dev = p.tensor.device();
            let state = |what: &str| -> crate::Result<Option<Tensor>> {
                let Some(t) = named.get(&format!("opt.{}.{what}", p.name)) else { return Ok(None) };
                if t.size() != p.tensor.size() {
                    bail!("damaged optimizer state: {what} of {} has shape {:?}, the parameter {:?}", p.name, t.size(), p.tensor.size());
                }
                Ok(Some(t.to_device(dev)))
            };
            let (g, s) = (state("grad_avg")?, state("sqr_avg")?);
            p.grad_avg = g;
            p.sqr_avg = s;
        }
        if let Some(f) = named.get("opt.frozen_idx") {
            self.freeze_to(f.f_int64_value(&[]).context("damaged opt.frozen_idx")? as isize);
        }
        Ok(())
    }
}

/// fastai `debias(mom, damp, step)`: `damp·(1 − mom^step)/(1 − mom)`.
pub fn debias(mom: f64, damp: f64, step: i64) -> f64 {
    damp * (1.0 - mom.powf(step as f64)) / (1.0 - mom)
}
