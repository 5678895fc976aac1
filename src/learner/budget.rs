//! Training for a given time (Ultralytics `train(time=...)`): the learner measures how long
//! an epoch takes and fits the number of epochs — and with it the length of the one-cycle
//! schedule — to the budget.

use super::{FineTuneOptions, Learner};
use crate::callbacks::Callback;
use anyhow::bail;
use std::time::{Duration, Instant};

/// Name of the [`TimeBudget`] callback (to find and remove it).
const NAME: &str = "TimeBudget";

/// Until the first unfrozen epoch is measured, its time is guessed as the frozen epoch's
/// times this factor (backward through the whole body costs more than through the head).
const UNFROZEN_GUESS: f64 = 1.5;

/// Parses a duration as common CLI tools write them: numbers with a unit `s`, `m` or `h`,
/// one or several (`60s`, `5m`, `1.5h`, `1h30m`, `2m30s`). (Ultralytics' `time` is a
/// plain number of hours; here the unit is required, so `--time 2` is not taken as 2 hours
/// or 2 seconds by guess.)
///
/// Errors: a part with no unit, an unknown unit, a number that is not finite and ≥ 0, a
/// total of zero, or a total of more than 10⁹ s.
pub fn parse_duration(s: &str) -> crate::Result<Duration> {
    let t = s.trim();
    let (mut total, mut num) = (0.0f64, String::new());
    for c in t.chars() {
        let mult = match c {
            's' => 1.0,
            'm' => 60.0,
            'h' => 3600.0,
            c if c.is_ascii_digit() || c == '.' => {
                num.push(c);
                continue;
            }
            c => bail!("duration {s:?}: unexpected {c:?}; expected numbers with a unit s, m or h, such as 60s, 5m, 1.5h or 1h30m"),
        };
        match num.parse::<f64>() {
            Ok(v) if v.is_finite() => total += v * mult,
            _ => bail!("duration {s:?}: {num:?} before '{c}' is not a number"),
        }
        num.clear();
    }
    if !num.is_empty() || t.is_empty() {
        bail!("duration {s:?}: expected a number with a unit s, m or h, such as 60s, 5m, 1.5h or 1h30m");
    }
    if !(total > 0.0 && total < 1e9) {
        bail!("duration {s:?} is not a positive time under 10^9 s");
    }
    Ok(Duration::from_secs_f64(total))
}

/// The callback behind [`Learner::fine_tune_for`]: during the fit of phase `phase` it sets
/// [`Learner::n_epoch`] so that training ends at `deadline`, to within half an epoch when
/// epochs take equally long:
/// - at the start of the fit, from the previous phase's last epoch time ×1.5 (a guess);
/// - a quarter into the first epoch (at least 2 batches), from the measured batch time
///   times the batches per epoch, plus the last validation time;
/// - after every epoch, from the mean time of the last (up to) 3 epochs: as many more
///   epochs as fit in the time left, rounded to the nearest (none when less than half an
///   epoch is left).
///
/// Changing `n_epoch` stretches or shrinks the rest of the one-cycle schedule from the
/// current position (as Ultralytics rebuilds its scheduler after the first epoch).
#[derive(Debug)]
pub struct TimeBudget {
    deadline: Instant,
    phase: usize,
    epoch_start: Option<Instant>,
    valid_start: Option<Instant>,
    valid_secs: f64,
    last_epoch_secs: Option<f64>,
    /// Durations of the epochs of the fitted phase so far, seconds.
    phase_epochs: Vec<f64>,
    estimated: bool,
}

impl TimeBudget {
    /// Fits the length of the fits of phase `phase` (fine_tune: 1, the unfrozen one) to end at `deadline`.
    pub fn new(deadline: Instant, phase: usize) -> Self {
        TimeBudget { deadline, phase, epoch_start: None, valid_start: None, valid_secs: 0.0, last_epoch_secs: None, phase_epochs: Vec::new(), estimated: false }
    }

    /// Seconds left before the deadline (negative when past it).
    fn left(&self, now: Instant) -> f64 {
        match self.deadline.checked_duration_since(now) {
            Some(d) => d.as_secs_f64(),
            None => -now.duration_since(self.deadline).as_secs_f64(),
        }
    }

    /// Epochs that fit in `secs` at `epoch_secs` each, rounded to the nearest (at least 1).
    fn epochs_in(secs: f64, epoch_secs: f64) -> usize {
        if epoch_secs <= 0.0 { return 1; }
        (secs / epoch_secs).round().max(1.0).min(1e6) as usize
    }
}

impl Callback for TimeBudget {
    fn name(&self) -> String { NAME.into() }
    /// Before the progress bar (70) reads `n_epoch`.
    fn order(&self) -> i32 { -10 }

    fn before_fit(&mut self, l: &mut Learner) -> crate::Result<()> {
        self.estimated = false;
        self.phase_epochs.clear();
        if l.phase == self.phase && let Some(t) = self.last_epoch_secs {
            l.n_epoch = Self::epochs_in(self.left(Instant::now()), t * UNFROZEN_GUESS);
        }
        Ok(())
    }

    fn before_epoch(&mut self, _l: &mut Learner) -> crate::Result<()> {
        self.epoch_start = Some(Instant::now());
        Ok(())
    }

    fn after_batch(&mut self, l: &mut Learner) -> crate::Result<()> {
        let k = (l.n_iter / 4).max(2).min(l.n_iter);
        if l.phase != self.phase || !l.training || l.epoch != 0 || self.estimated || l.iter + 1 != k {
            return Ok(());
        }
        let Some(start) = self.epoch_start else { return Ok(()) };
        self.estimated = true;
        let epoch = start.elapsed().as_secs_f64() / k as f64 * l.n_iter as f64 + self.valid_secs;
        l.n_epoch = Self::epochs_in(self.left(start), epoch);
        Ok(())
    }

    fn before_validate(&mut self, _l: &mut Learner) -> crate::Result<()> {
        self.valid_start = Some(Instant::now());
        Ok(())
    }

    fn after_validate(&mut self, _l: &mut Learner) -> crate::Result<()> {
        if let Some(s) = self.valid_start.take() { self.valid_secs = s.elapsed().as_secs_f64(); }
        Ok(())
    }

    fn after_epoch(&mut self, l: &mut Learner) -> crate::Result<()> {
        let now = Instant::now();
        let Some(start) = self.epoch_start else { return Ok(()) };
        let t = now.duration_since(start).as_secs_f64();
        self.last_epoch_secs = Some(t);
        if l.phase != self.phase { return Ok(()); }
        self.phase_epochs.push(t);
        // The mean of the last (up to) 3 epochs: recent speed, smoothed.
        let recent = &self.phase_epochs[self.phase_epochs.len().saturating_sub(3)..];
        let mean = recent.iter().sum::<f64>() / recent.len() as f64;
        let left = self.left(now);
        l.n_epoch = l.epoch + 1 + if left > 0.0 { (left / mean).round() as usize } else { 0 };
        Ok(())
    }
}

impl Learner {
    /// fastai `fine_tune` within a time budget (Ultralytics `time`): the frozen phase as
    /// `o.freeze_epochs` says, then as many unfrozen epochs as fit in what is left of
    /// `budget`, measured from this call, with the one-cycle schedule over them (see
    /// [`TimeBudget`]). Validation after each epoch counts in the budget. Training ends
    /// within about half an epoch of the budget (at least one unfrozen epoch is run);
    /// returns the number of unfrozen epochs run.
    ///
    /// Errors: as [`Learner::fine_tune_with`].
    pub fn fine_tune_for(&mut self, budget: Duration, base_lr: f64, o: FineTuneOptions) -> crate::Result<usize> {
        self.cbs.push(Box::new(TimeBudget::new(Instant::now() + budget, 1)));
        let r = self.fine_tune_with(1, base_lr, o);
        self.cbs.retain(|c| c.name() != NAME);
        r.map(|_| if self.phase == 1 { self.n_epoch } else { 0 })
    }
}
