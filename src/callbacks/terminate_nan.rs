//! fastai `TerminateOnNaNCallback`.

use super::{Callback, Cancel};
use crate::learner::Learner;

/// Stops training as soon as a training batch's loss is NaN or infinite (fastai
/// `TerminateOnNaNCallback`, order −9). Sets [`Learner::stop_reason`] to a message naming
/// the epoch and batch, logs it (`log::warn!`), and cancels the fit (the fit returns `Ok`).
#[derive(Debug, Default, Clone)]
pub struct TerminateOnNaNCallback;

impl Callback for TerminateOnNaNCallback {
    fn name(&self) -> String { "TerminateOnNaN".into() }
    fn order(&self) -> i32 { -9 }
    fn after_batch(&mut self, l: &mut Learner) -> crate::Result<()> {
        if l.training && !l.loss.is_finite() {
            let msg = format!("TerminateOnNaN: the training loss is {} at epoch {}, batch {} (of {}); training stopped",
                              l.loss, l.epoch, l.iter, l.n_iter);
            log::warn!("{msg}");
            l.stop_reason = Some(msg);
            return Err(Cancel::Fit.into());
        }
        Ok(())
    }
}
