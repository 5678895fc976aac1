//! Per-epoch CPU time, kernel share, page faults and peak memory of the training phase.

use super::Callback;
use crate::learner::Learner;
use crate::util::rusage::Usage;
use std::sync::{Arc, Mutex};

/// The resource usage of one epoch's training phase (batches, data loading, optimizer
/// steps; not validation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EpochUsage {
    /// Phase of the fit ([`Learner::phase`]: 0 frozen, 1 unfrozen for `fine_tune`).
    pub phase: usize,
    /// Epoch within the phase, 0-based.
    pub epoch: usize,
    /// Wall time of the training phase, seconds.
    pub wall_s: f64,
    /// CPU time, page faults and peak RSS (process-wide, every thread) during it.
    pub usage: Usage,
}

/// Measures each epoch's training phase with `getrusage` ([`Usage`]): user and kernel
/// CPU time, minor page faults, peak RSS. The records are shared through
/// [`ResourceUsageCallback::records`], so they can be read after the callback was moved
/// into a learner.
#[derive(Debug, Default, Clone)]
pub struct ResourceUsageCallback {
    records: Arc<Mutex<Vec<EpochUsage>>>,
    start: Option<(Usage, std::time::Instant)>,
}

impl ResourceUsageCallback {
    /// A callback with no record yet.
    pub fn new() -> Self { Self::default() }
    /// The shared list of records, one per finished training phase, in order.
    pub fn records(&self) -> Arc<Mutex<Vec<EpochUsage>>> { Arc::clone(&self.records) }
}

impl Callback for ResourceUsageCallback {
    fn name(&self) -> String { "ResourceUsage".into() }
    fn before_train(&mut self, _: &mut Learner) -> crate::Result<()> {
        self.start = Some((Usage::now(), std::time::Instant::now()));
        Ok(())
    }
    fn after_train(&mut self, l: &mut Learner) -> crate::Result<()> {
        if let Some((u0, t0)) = self.start.take() {
            let r = EpochUsage { phase: l.phase, epoch: l.epoch, wall_s: t0.elapsed().as_secs_f64(), usage: Usage::now().since(&u0) };
            self.records.lock().unwrap_or_else(|e| e.into_inner()).push(r);
        }
        Ok(())
    }
}
