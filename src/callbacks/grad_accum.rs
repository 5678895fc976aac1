//! fastai `GradientAccumulation`.

use super::{Callback, Cancel};
use crate::learner::Learner;

/// Accumulates gradients over batches until `n_acc` items were seen, then steps (fastai
/// `GradientAccumulation`): each loss is scaled by `bs / n_acc` for backward; until
/// `n_acc` items are counted the batch is cancelled before the step, so neither step nor
/// zero_grad happen.
#[derive(Debug, Clone)]
pub struct GradientAccumulation {
    /// Items per optimizer step (fastai default 32).
    pub n_acc: i64,
    count: i64,
}

impl GradientAccumulation {
    /// Steps every `n_acc` items.
    pub fn new(n_acc: i64) -> Self { GradientAccumulation { n_acc, count: 0 } }
}

impl Callback for GradientAccumulation {
    fn name(&self) -> String { "GradientAccumulation".into() }
    fn order(&self) -> i32 { 6 }
    fn before_fit(&mut self, _: &mut Learner) -> crate::Result<()> { self.count = 0; Ok(()) }
    fn after_loss(&mut self, l: &mut Learner) -> crate::Result<()> {
        if !l.training { return Ok(()); }
        let bs = l.yb.as_ref().map_or(1, |y| y.size()[0]);
        if let Some(lg) = &l.loss_grad { l.loss_grad = Some(lg / (self.n_acc as f64 / bs as f64)); }
        Ok(())
    }
    fn before_step(&mut self, l: &mut Learner) -> crate::Result<()> {
        self.count += l.yb.as_ref().map_or(1, |y| y.size()[0]);
        if self.count < self.n_acc { return Err(Cancel::Batch.into()); }
        self.count = 0;
        Ok(())
    }
}
