//! How `kestrel predict` and `kestrel-serve` answer for a photo that shows none of the
//! classes (issue 14's `--min-prob`): one rule, shared so that both give the same answer.

/// The label answered when no class reaches the minimum probability.
pub const UNKNOWN: &str = "unknown";

/// `--min-prob`'s default: [`UNKNOWN`] below this highest (calibrated) probability.
/// Provisional: `scripts/bench/recipe_cv.sh` prints, for P from 0.3 to 0.8, the share of
/// out-of-distribution photos (Caltech-101) a pets model answers unknown against the share
/// of its own validation photos (and of its right answers) it loses.
pub const DEFAULT_MIN_PROB: f64 = 0.5;

/// True when a single-label prediction whose highest probability is `top_prob` (in
/// [0, 1]) names its class: `top_prob ≥ min_prob` (`min_prob` 0 always names it).
pub fn is_known(top_prob: f32, min_prob: f64) -> bool {
    top_prob as f64 >= min_prob
}

/// Checks a `--min-prob` value. Errors: outside [0, 1] (or NaN), naming it.
pub fn check_min_prob(min_prob: f64) -> crate::Result<()> {
    anyhow::ensure!((0.0..=1.0).contains(&min_prob), "--min-prob {min_prob}: expected a probability in [0, 1]");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_is_inclusive_and_zero_turns_it_off() {
        assert!(is_known(0.5, 0.5));
        assert!(!is_known(0.4999, 0.5));
        assert!(is_known(0.0, 0.0));
        assert!(check_min_prob(1.0).is_ok() && check_min_prob(-0.1).is_err() && check_min_prob(f64::NAN).is_err());
    }
}
