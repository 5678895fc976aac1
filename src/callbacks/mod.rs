//! Callbacks (fastai `callback/core.py`): code that runs at fixed points of the training
//! loop, reads and changes the [`Learner`]'s state, and may cancel part of the loop.
//!
//! The loop, as in fastai's `Learner.fit`:
//! ```text
//! before_fit
//!   for each epoch: before_epoch
//!     before_train   for each batch: before_batch, after_pred, after_loss,
//!                                    before_backward, after_backward, before_step, after_step,
//!                                    after_batch
//!     after_train
//!     before_validate  (same batch events, without backward/step)  after_validate
//!   after_epoch
//! after_fit
//! ```
//! A callback cancels by returning `Err(Cancel::X.into())`: the loop skips the rest of
//! that part, calls `after_cancel_x`, then still calls `after_x` (fastai `CancelXException`).

mod csv_logger;
mod early_stopping;
mod ema;
mod grad_accum;
mod grad_clip;
mod interrupt;
mod mixup;
mod progress;
mod recorder;
mod resource_usage;
mod save_model;
mod terminate_nan;

pub use csv_logger::CSVLogger;
pub use early_stopping::EarlyStoppingCallback;
pub use ema::EmaCallback;
pub use grad_accum::GradientAccumulation;
pub use grad_clip::GradientClip;
pub use interrupt::{
    GRACE, INTERRUPT_AFTER_ENV, INTERRUPTED_STATUS, InterruptCallback, Interrupted, SAVE_GRACE, SavingGuard, exit_status, install_handler,
    interrupt_requested, set_resume_hint,
};
pub use mixup::{MixHandler, MixKind, cutmix_inputs, mix_loss, mixup_inputs, rand_bbox, sample_beta};
pub use progress::{ProgressCallback, format_time};
pub use recorder::Recorder;
pub use resource_usage::{EpochUsage, ResourceUsageCallback};
pub use save_model::{SaveCheckpoint, SaveModelCallback};
pub use terminate_nan::TerminateOnNaNCallback;

use crate::learner::Learner;

/// A point of the training loop (fastai's event names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Event {
    BeforeFit, BeforeEpoch, BeforeTrain, BeforeBatch, AfterPred, AfterLoss, BeforeBackward,
    AfterBackward, BeforeStep, AfterStep, AfterBatch, AfterTrain, BeforeValidate, AfterValidate,
    AfterEpoch, AfterFit, AfterCancel(Cancel),
}

/// What a callback cancels (fastai `CancelFitException`, …), returned as an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Cancel {
    /// Stop training altogether (`after_cancel_fit`, then `after_fit`).
    #[error("training cancelled")]
    Fit,
    /// End this epoch.
    #[error("epoch cancelled")]
    Epoch,
    /// End this epoch's training phase (validation still runs).
    #[error("training phase cancelled")]
    Train,
    /// Skip this epoch's validation.
    #[error("validation cancelled")]
    Validate,
    /// Skip the rest of this batch (no step, no zero_grad).
    #[error("batch cancelled")]
    Batch,
    /// Skip the backward pass.
    #[error("backward cancelled")]
    Backward,
    /// Skip the optimizer step.
    #[error("step cancelled")]
    Step,
}

/// Code run at the events of the training loop (fastai `Callback`). Every method has an
/// empty default; each receives the whole learner (fastai's `self.learn`): model,
/// optimizer, the current batch (`xb`, `yb`, `pred`, `loss_grad`, `loss`), position
/// (`epoch`, `iter`, `train_iter`, `pct_train`, `training`) and the recorder.
#[allow(missing_docs, unused_variables)]
pub trait Callback: Send {
    /// Name for messages.
    fn name(&self) -> String;
    /// Callbacks run in increasing `order` (fastai `order`; default 0).
    fn order(&self) -> i32 { 0 }
    fn before_fit(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn before_epoch(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn before_train(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn before_batch(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn after_pred(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn after_loss(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn before_backward(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn after_backward(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn before_step(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn after_step(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn after_batch(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn after_train(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn before_validate(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn after_validate(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn after_epoch(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    fn after_fit(&mut self, l: &mut Learner) -> crate::Result<()> { Ok(()) }
    /// After the part named by `what` was cancelled (fastai `after_cancel_*`).
    fn after_cancel(&mut self, what: Cancel, l: &mut Learner) -> crate::Result<()> { Ok(()) }

    /// Dispatches `ev` to the method of the same name.
    fn call(&mut self, ev: Event, l: &mut Learner) -> crate::Result<()> {
        match ev {
            Event::BeforeFit => self.before_fit(l),
            Event::BeforeEpoch => self.before_epoch(l),
            Event::BeforeTrain => self.before_train(l),
            Event::BeforeBatch => self.before_batch(l),
            Event::AfterPred => self.after_pred(l),
            Event::AfterLoss => self.after_loss(l),
            Event::BeforeBackward => self.before_backward(l),
            Event::AfterBackward => self.after_backward(l),
            Event::BeforeStep => self.before_step(l),
            Event::AfterStep => self.after_step(l),
            Event::AfterBatch => self.after_batch(l),
            Event::AfterTrain => self.after_train(l),
            Event::BeforeValidate => self.before_validate(l),
            Event::AfterValidate => self.after_validate(l),
            Event::AfterEpoch => self.after_epoch(l),
            Event::AfterFit => self.after_fit(l),
            Event::AfterCancel(c) => self.after_cancel(c, l),
        }
    }
}

/// True when `e` is the cancellation `what`.
pub fn is_cancel(e: &anyhow::Error, what: Cancel) -> bool {
    e.downcast_ref::<Cancel>() == Some(&what)
}
