//! Quality scorers, each equal to the reference ML teams already trust on the same inputs.
//!
//! - [`squad`]: SQuAD v2 exact match and F1 (the official evaluation script);
//! - [`gsm8k`]: GSM8K final-answer extraction in the marked-or-last, the official and
//!   lm-evaluation-harness's modes;
//! - [`pass_at_k`]: HumanEval's unbiased pass@k estimator.

pub mod gsm8k;
pub mod squad;

/// The unbiased pass@k estimator of Chen et al. (2021) in its numerically stable product form:
/// `1 - prod_{i = n-c+1}^{n} (1 - k / i)`, which is 1 when `n - c < k`.
pub fn pass_at_k(n: u64, c: u64, k: u64) -> f64 {
    assert!(c <= n && k >= 1 && k <= n, "pass_at_k needs c <= n and 1 <= k <= n");
    if n - c < k {
        return 1.0;
    }
    1.0 - ((n - c + 1)..=n).map(|i| 1.0 - k as f64 / i as f64).product::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The closed form 1 - C(n-c, k) / C(n, k), computed exactly for small numbers.
    fn binomial_form(n: u64, c: u64, k: u64) -> f64 {
        fn choose(n: u64, k: u64) -> f64 {
            if k > n {
                return 0.0;
            }
            (0..k).map(|i| (n - i) as f64 / (i + 1) as f64).product()
        }
        1.0 - choose(n - c, k) / choose(n, k)
    }

    #[test]
    fn pass_at_k_matches_the_binomial_definition() {
        for (n, c, k) in [(10, 3, 1), (10, 3, 5), (20, 0, 3), (20, 20, 1), (5, 1, 5), (100, 7, 10)] {
            let got = pass_at_k(n, c, k);
            assert!((got - binomial_form(n, c, k)).abs() < 1e-12, "{n} {c} {k}: {got}");
        }
        assert_eq!(pass_at_k(1, 1, 1), 1.0);
        assert_eq!(pass_at_k(1, 0, 1), 0.0);
        assert!((pass_at_k(10, 3, 1) - 0.3).abs() < 1e-15);
    }
}
