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

/// A multi-label model's answer (fastai's `MultiCategory` decoding): the indices of every
/// label whose probability is above `thresh`, vocabulary order (possibly none).
pub fn labels_above(probs: &[f32], thresh: f64) -> Vec<usize> {
    (0..probs.len()).filter(|&i| probs[i] as f64 > thresh).collect()
}

/// The name of a multi-label answer: its labels joined by spaces (as in the training CSV's
/// label cells), or `none`.
pub fn multi_label_name(labels: &[usize], vocab: &[String]) -> String {
    if labels.is_empty() { "none".to_owned() } else { labels.iter().map(|&i| vocab[i].as_str()).collect::<Vec<_>>().join(" ") }
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
    fn multi_label_answers_are_every_label_strictly_above_the_threshold() {
        let vocab: Vec<String> = ["cat", "dog", "pug"].map(String::from).to_vec();
        assert_eq!(labels_above(&[0.5, 0.51, 0.9], 0.5), [1, 2]);
        assert_eq!(multi_label_name(&[1, 2], &vocab), "dog pug");
        assert!(labels_above(&[0.1, 0.5], 0.5).is_empty());
        assert_eq!(multi_label_name(&[], &vocab), "none");
    }

    #[test]
    fn the_threshold_is_inclusive_and_zero_turns_it_off() {
        assert!(is_known(0.5, 0.5));
        assert!(!is_known(0.4999, 0.5));
        assert!(is_known(0.0, 0.0));
        assert!(check_min_prob(1.0).is_ok() && check_min_prob(-0.1).is_err() && check_min_prob(f64::NAN).is_err());
    }
}
