//! The training loop itself (fastai `Learner._do_fit`, `_do_epoch`, `one_batch`,
//! `TrainEvalCallback`, `Recorder` and `ParamScheduler`), with fastai's event order.

use super::fp16::{Precision, with_cpu_autocast};
use super::{Learner, LrSchedule};
use crate::callbacks::{Cancel, Event, is_cancel};
use crate::data::Batch;
use std::sync::Arc;
use tch::Tensor;

impl Learner {
    /// Calls `ev` on every callback in `order`; the callbacks are lent out meanwhile.
    pub(crate) fn event(&mut self, ev: Event) -> crate::Result<()> {
        let mut cbs = std::mem::take(&mut self.cbs);
        cbs.sort_by_key(|c| c.order());
        let mut res = Ok(());
        for cb in cbs.iter_mut() {
            res = cb.call(ev, self);
            if res.is_err() { break; }
        }
        let added = std::mem::replace(&mut self.cbs, cbs);
        self.cbs.extend(added);
        res
    }

    /// fastai `_with_events`: before, body, after; `cancel` from before or body is caught.
    fn with_events(&mut self, before: Event, after: Event, cancel: Cancel,
                   body: impl FnOnce(&mut Self) -> crate::Result<()>) -> crate::Result<()> {
        match self.event(before).and_then(|_| body(self)) {
            Ok(()) => {}
            Err(e) if is_cancel(&e, cancel) => self.event(Event::AfterCancel(cancel))?,
            Err(e) => return Err(e),
        }
        self.event(after)
    }

    /// Runs `n_epoch` epochs; weight decay `wd`, else the learner's, else the optimizer's.
    pub(crate) fn run_fit(&mut self, n_epoch: usize, wd: Option<f64>) -> crate::Result<()> {
        if let Some(wd) = wd.or(self.wd) { self.opt.set_wd(wd); }
        let resume = match self.resume.take() {
            Some(r) if r.phase > self.phase => { self.resume = Some(r); return Ok(()); }
            Some(r) if r.phase == self.phase => Some(r),
            _ => None,
        };
        self.n_epoch = n_epoch;
        self.stop_reason = None;
        self.epoch = 0;
        self.train_iter = 0;
        self.pct_train = 0.0;
        self.recorder.reset(self.metric_names());
        let start = match resume {
            Some(r) => {
                self.train_pass = r.train_pass;
                self.train_iter = r.train_iter;
                self.smooth_loss = r.smooth_loss;
                if let Some(rec) = self.resume_recorder.take() { self.recorder = rec; }
                self.recorder.restore_smooth(r.smooth_count, r.smooth_val);
                self.skip_batches = r.iter;
                r.epoch
            }
            None => 0,
        };
        self.resumed_at = resume;
        if resume.is_some() { self.safe_position = resume; }
        let res = self.with_events(Event::BeforeFit, Event::AfterFit, Cancel::Fit, |l| {
            // `while`, not `for`: callbacks may change `n_epoch` during the fit (the time budget).
            let mut epoch = start;
            while epoch < l.n_epoch {
                l.epoch = epoch;
                l.with_events(Event::BeforeEpoch, Event::AfterEpoch, Cancel::Epoch, |l| {
                    l.do_epoch_train()?;
                    l.do_epoch_validate()
                })?;
                l.safe_position = Some(l.position_after_epoch());
                epoch += 1;
            }
            Ok(())
        });
        self.xb = None; self.yb = None; self.pred = None; self.loss_grad = None;
        self.training = false;
        res
    }

    fn do_epoch_train(&mut self) -> crate::Result<()> {
        let dl = Arc::clone(&self.dls.train);
        self.n_iter = dl.n_batches();
        self.pct_train = self.epoch as f64 / self.n_epoch as f64;
        self.training = true;
        let skip = std::mem::take(&mut self.skip_batches);
        for _ in 0..skip { self.pct_train += 1.0 / (self.n_iter * self.n_epoch) as f64; }
        let pass = self.train_pass;
        let res = self.with_events(Event::BeforeTrain, Event::AfterTrain, Cancel::Train, |l| {
            for (i, b) in dl.batches(pass).enumerate().skip(skip) {
                l.one_batch(i, b?)?;
            }
            Ok(())
        });
        self.train_pass += 1;
        res
    }

    fn do_epoch_validate(&mut self) -> crate::Result<()> {
        if matches!(self.sched, LrSchedule::Sweep { .. }) { return Ok(()); }
        self.training = false;
        let dl = Arc::clone(&self.dls.valid);
        self.n_iter = dl.n_batches();
        for m in &mut self.metrics { m.reset(); }
        let (mut tot, mut cnt) = (0.0, 0i64);
        self.with_events(Event::BeforeValidate, Event::AfterValidate, Cancel::Validate, |l| {
            for (i, b) in dl.batches(0).enumerate() {
                l.one_batch(i, b?)?;
                let bs = l.yb.as_ref().map_or(0, |y| y.size()[0]);
                tot += l.loss * bs as f64;
                cnt += bs;
            }
            Ok(())
        })?;
        let valid_loss = if cnt > 0 { tot / cnt as f64 } else { f64::NAN };
        let mut row = vec![self.recorder.smooth_value(), valid_loss];
        row.extend(self.metrics.iter().map(|m| m.value()));
        self.recorder.values.push(row);
        self.recorder.iters.push(self.recorder.losses.len());
        Ok(())
    }

    /// Validation loss and metrics outside a fit.
    pub(crate) fn run_validation(&mut self) -> crate::Result<Vec<f64>> {
        let dl = Arc::clone(&self.dls.valid);
        self.training = false;
        for m in &mut self.metrics { m.reset(); }
        let (mut tot, mut cnt) = (0.0, 0i64);
        for b in dl.batches(0) {
            let b = b?;
            let x = self.prepare_x(b.x);
            let pred = tch::no_grad(|| self.model.forward_t(&x, false));
            let loss = self.loss_func.loss(&pred, &b.y).double_value(&[]);
            let bs = b.y.size()[0];
            tot += loss * bs as f64;
            cnt += bs;
            for m in &mut self.metrics { m.accumulate(&pred, &b.y); }
        }
        let mut out = vec![if cnt > 0 { tot / cnt as f64 } else { f64::NAN }];
        out.extend(self.metrics.iter().map(|m| m.value()));
        Ok(out)
    }

    pub(crate) fn prepare_x(&self, x: Tensor) -> Tensor {
        if self.channels_last && x.dim() == 4 { super::fp16::channels_last(&x) } else { x }
    }

    fn one_batch(&mut self, i: usize, b: Batch) -> crate::Result<()> {
        self.iter = i;
        self.xb = Some(self.prepare_x(b.x));
        self.yb = Some(b.y);
        if self.training {
            self.apply_schedule();
            if let Some(seed) = self.seed {
                tch::manual_seed(batch_seed(seed, self.train_pass, i as u64));
            }
        }
        match self.event(Event::BeforeBatch).and_then(|_| self.do_one_batch()) {
            Ok(()) => {}
            Err(e) if is_cancel(&e, Cancel::Batch) => self.event(Event::AfterCancel(Cancel::Batch))?,
            Err(e) => return Err(e),
        }
        if self.training { self.record_train_batch(); }
        self.event(Event::AfterBatch)?;
        if self.training { self.safe_position = Some(self.position_after_batch()); }
        if self.training { self.check_sweep()?; }
        Ok(())
    }

    fn do_one_batch(&mut self) -> crate::Result<()> {
        let x = self.xb.as_ref().expect("batch set").shallow_clone();
        let training = self.training;
        let pred = if training {
            self.forward(&x, true)
        } else {
            tch::no_grad(|| self.forward(&x, false))
        };
        self.pred = Some(pred);
        self.event(Event::AfterPred)?;
        let (pred, y) = (self.pred.as_ref().expect("pred"), self.yb.as_ref().expect("targets"));
        let loss = if training { self.loss_func.loss(pred, y) } else { tch::no_grad(|| self.loss_func.loss(pred, y)) };
        self.loss = loss.double_value(&[]);
        self.loss_grad = Some(loss);
        self.event(Event::AfterLoss)?;
        if !training {
            for m in &mut self.metrics { m.accumulate(self.pred.as_ref().expect("pred"), self.yb.as_ref().expect("targets")); }
            return Ok(());
        }
        self.with_events(Event::BeforeBackward, Event::AfterBackward, Cancel::Backward, |l| {
            let lg = l.loss_grad.as_ref().expect("loss");
            // f_backward: a hook's failure (data-parallel training's all-reduce) is an error.
            match &l.scaler {
                Some(s) => (lg * s.scale()).f_backward(),
                None => lg.f_backward(),
            }
            .map_err(|e| anyhow::anyhow!("backward: {e}"))
        })?;
        self.with_events(Event::BeforeStep, Event::AfterStep, Cancel::Step, |l| {
            l.step();
            Ok(())
        })?;
        self.opt.zero_grad();
        Ok(())
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        match self.precision {
            Precision::Fp16 => tch::autocast(true, || self.model.forward_t(x, train)).to_kind(tch::Kind::Float),
            Precision::Bf16Cpu => with_cpu_autocast(|| self.model.forward_t(x, train)).to_kind(tch::Kind::Float),
            Precision::Fp32 => self.model.forward_t(x, train),
        }
    }

    /// The optimizer step, through the loss scaler when mixed precision is on.
    fn step(&mut self) {
        match self.scaler.as_mut() {
            Some(s) => {
                let grads: Vec<Tensor> = self.opt.groups.iter().flatten()
                    .map(|p| p.tensor.grad()).filter(|g| g.defined()).collect();
                if s.unscale_and_update(&grads) { self.opt.step(); }
            }
            None => self.opt.step(),
        }
    }

    /// fastai ParamScheduler.before_batch: the hyper-parameters for this batch.
    fn apply_schedule(&mut self) {
        match &self.sched {
            LrSchedule::Constant => {}
            LrSchedule::OneCycle(oc) => {
                let lrs: Vec<f64> = oc.lr.iter().map(|s| s.at(self.pct_train)).collect();
                let mom = oc.mom.at(self.pct_train);
                self.opt.set_lrs(&lrs);
                self.opt.set_mom(mom);
            }
            LrSchedule::Sweep { sched, num_it, .. } => {
                let lr = sched.at(self.train_iter as f64 / *num_it as f64);
                let n = self.opt.groups.len();
                self.opt.set_lrs(&vec![lr; n]);
            }
        }
    }

    /// fastai TrainEvalCallback.after_batch + Recorder.after_batch (before user callbacks).
    fn record_train_batch(&mut self) {
        let h = self.opt.hypers.last().copied();
        self.smooth_loss = self.recorder.add_batch(self.loss, h.map_or(f64::NAN, |h| h.lr), h.map_or(f64::NAN, |h| h.mom));
        self.pct_train += 1.0 / (self.n_iter * self.n_epoch) as f64;
        self.train_iter += 1;
    }

    /// fastai LRFinder.after_batch: stop when the loss diverges or after `num_it` batches.
    fn check_sweep(&mut self) -> crate::Result<()> {
        if let LrSchedule::Sweep { num_it, stop_div, best, .. } = &mut self.sched {
            if self.smooth_loss < *best { *best = self.smooth_loss; }
            // SIGINT/SIGTERM ends the sweep too (lr_find then restores the weights).
            let interrupted = crate::callbacks::interrupt_requested();
            if (self.smooth_loss > 4.0 * *best && *stop_div) || self.train_iter >= *num_it || self.smooth_loss.is_nan() || interrupted {
                return Err(Cancel::Fit.into());
            }
        }
        Ok(())
    }
}

/// The torch seed of training batch `iter` of pass `pass` (SplitMix64 mixing).
fn batch_seed(seed: u64, pass: u64, iter: u64) -> i64 {
    let mut z = seed ^ pass.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ iter.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    ((z ^ (z >> 31)) >> 1) as i64
}
