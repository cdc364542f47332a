//! When requests start: a closed loop (fixed concurrency), an open loop (a request rate with
//! constant, Poisson or gamma-distributed gaps, reproducible from a seed), or a trace replayed
//! on its own start offsets.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, Gamma};

use crate::error::{CoreError, Result};

/// How the gaps between an open loop's request starts are drawn.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arrival {
    /// Exactly `1 / rate` apart.
    Constant,
    /// Exponential gaps with mean `1 / rate` (a Poisson process).
    Poisson,
    /// Gamma gaps with mean `1 / rate` and shape `burstiness`: below 1 is burstier than
    /// Poisson, above 1 more regular, 1 equals Poisson (vLLM's `--burstiness` convention).
    Gamma {
        /// The gamma distribution's shape parameter (> 0).
        burstiness: f64,
    },
}

impl Arrival {
    /// Parses `constant`, `poisson` or `gamma` (with `burstiness`).
    pub fn parse(name: &str, burstiness: f64) -> Result<Arrival> {
        if !(burstiness > 0.0 && burstiness.is_finite()) {
            return Err(CoreError::config(format!("burstiness must be a positive number, got {burstiness}")));
        }
        match name {
            "constant" => Ok(Arrival::Constant),
            "poisson" if burstiness == 1.0 => Ok(Arrival::Poisson),
            // A burstiness other than 1 turns Poisson into gamma, as vLLM does.
            "poisson" | "gamma" => Ok(Arrival::Gamma { burstiness }),
            other => Err(CoreError::config(format!("arrival must be 'constant', 'poisson' or 'gamma', got {other:?}"))),
        }
    }
}

/// The load shape of a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// `concurrency` requests in flight; each finished request frees its slot for the next.
    Closed {
        /// Number of requests in flight at once.
        concurrency: usize,
    },
    /// Requests start at `rate` per second on absolute deadlines, whatever the server does.
    Open {
        /// Mean requests per second.
        rate: f64,
        /// Gap distribution.
        arrival: Arrival,
        /// Seed of the gap generator.
        seed: u64,
        /// Optional cap on requests in flight; a request over the cap waits (visible as
        /// queue delay) but keeps its intended start.
        max_concurrency: Option<usize>,
    },
    /// Request `i` starts `offsets_ns[i]` after the measured phase's start (a replayed trace,
    /// already scaled by its speed-up), on absolute deadlines like the open loop.
    Trace {
        /// Start offsets in nanoseconds, non-decreasing, from 0 or later.
        offsets_ns: Vec<i64>,
        /// Optional cap on requests in flight, as in the open loop.
        max_concurrency: Option<usize>,
    },
}

impl Schedule {
    /// Start offsets in nanoseconds from the measured phase's start for `n` requests of an open
    /// loop (the first at 0). A closed loop has no fixed offsets and returns `None`.
    pub fn offsets_ns(&self, n: usize) -> Option<Vec<i64>> {
        if let Schedule::Trace { offsets_ns, .. } = self {
            return Some(offsets_ns.iter().copied().take(n).collect());
        }
        let Schedule::Open { rate, arrival, seed, .. } = *self else {
            return None;
        };
        let mean_gap_s = 1.0 / rate;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut t = 0.0f64;
        let mut out = Vec::with_capacity(n);
        // The first request goes at 0; each next one after one drawn gap.
        for i in 0..n {
            if i > 0 {
                t += match arrival {
                    Arrival::Constant => mean_gap_s,
                    Arrival::Poisson => Exp::new(rate).expect("rate validated").sample(&mut rng),
                    Arrival::Gamma { burstiness } => {
                        Gamma::new(burstiness, mean_gap_s / burstiness).expect("burstiness validated").sample(&mut rng)
                    }
                };
            }
            out.push((t * 1e9).round() as i64);
        }
        Some(out)
    }

    /// Checks the parameters and says what to fix.
    pub fn validate(&self) -> Result<()> {
        match self {
            Schedule::Closed { concurrency } if *concurrency == 0 => {
                Err(CoreError::config("concurrency must be at least 1"))
            }
            Schedule::Open { rate, .. } if !(*rate > 0.0 && rate.is_finite()) => {
                Err(CoreError::config(format!("request_rate must be a positive number, got {rate}")))
            }
            Schedule::Open { max_concurrency: Some(0), .. } | Schedule::Trace { max_concurrency: Some(0), .. } => {
                Err(CoreError::config("concurrency must be at least 1 (or None for no cap)"))
            }
            Schedule::Trace { offsets_ns, .. } if offsets_ns.is_empty() => {
                Err(CoreError::config("a trace needs at least one request"))
            }
            Schedule::Trace { offsets_ns, .. } => {
                match offsets_ns.iter().enumerate().find(|&(i, &t)| t < 0 || (i > 0 && t < offsets_ns[i - 1])) {
                    Some((i, t)) => Err(CoreError::config(format!(
                        "trace offsets must be non-decreasing and from 0 on: offset {i} is {t} ns"
                    ))),
                    None => Ok(()),
                }
            }
            _ => Ok(()),
        }
    }
}

/// Sleeps until `deadline` with sub-millisecond accuracy. tokio's timer wheel has 1 ms
/// granularity and may wake up to 1 ms late, which would show up as schedule error, so this
/// sleeps on the timer until 1 ms before and then yields to other tasks until the instant passes.
pub async fn precise_sleep_until(deadline: tokio::time::Instant) {
    let coarse = deadline.checked_sub(std::time::Duration::from_millis(1));
    if let Some(coarse) = coarse {
        if tokio::time::Instant::now() < coarse {
            tokio::time::sleep_until(coarse).await;
        }
    }
    while tokio::time::Instant::now() < deadline {
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps_s(offsets: &[i64]) -> Vec<f64> {
        offsets.windows(2).map(|w| (w[1] - w[0]) as f64 / 1e9).collect()
    }

    fn mean_and_cv(g: &[f64]) -> (f64, f64) {
        let mean = g.iter().sum::<f64>() / g.len() as f64;
        let var = g.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (g.len() - 1) as f64;
        (mean, var.sqrt() / mean)
    }

    fn open(rate: f64, arrival: Arrival, seed: u64) -> Schedule {
        Schedule::Open { rate, arrival, seed, max_concurrency: None }
    }

    #[test]
    fn constant_rate_is_exact() {
        let o = open(4.0, Arrival::Constant, 0).offsets_ns(5).unwrap();
        assert_eq!(o, vec![0, 250_000_000, 500_000_000, 750_000_000, 1_000_000_000]);
    }

    #[test]
    fn poisson_gaps_have_the_right_mean_and_unit_cv() {
        let o = open(10.0, Arrival::Poisson, 7).offsets_ns(20_001).unwrap();
        let (mean, cv) = mean_and_cv(&gaps_s(&o));
        // 20k exponential gaps: the mean is within ~3% and the coefficient of variation ~1.
        assert!((mean - 0.1).abs() < 0.003, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.03, "cv {cv}");
    }

    #[test]
    fn gamma_burstiness_sets_the_spread() {
        // Gamma with shape k has CV 1/sqrt(k).
        for k in [0.25, 4.0] {
            let o = open(10.0, Arrival::Gamma { burstiness: k }, 3).offsets_ns(20_001).unwrap();
            let (mean, cv) = mean_and_cv(&gaps_s(&o));
            assert!((mean - 0.1).abs() < 0.006, "k={k} mean gap {mean}");
            assert!((cv - 1.0 / k.sqrt()).abs() < 0.06, "k={k} cv {cv}");
        }
    }

    #[test]
    fn schedules_are_reproducible_from_the_seed() {
        let a = open(5.0, Arrival::Poisson, 42).offsets_ns(100).unwrap();
        let b = open(5.0, Arrival::Poisson, 42).offsets_ns(100).unwrap();
        let c = open(5.0, Arrival::Poisson, 43).offsets_ns(100).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.windows(2).all(|w| w[1] >= w[0]));
    }

    #[test]
    fn a_trace_keeps_its_offsets_and_rejects_bad_ones() {
        let t = Schedule::Trace { offsets_ns: vec![0, 5, 5, 9], max_concurrency: None };
        assert!(t.validate().is_ok());
        assert_eq!(t.offsets_ns(3).unwrap(), vec![0, 5, 5]);
        let back = Schedule::Trace { offsets_ns: vec![0, 5, 4], max_concurrency: None };
        assert!(back.validate().unwrap_err().to_string().contains("offset 2 is 4 ns"));
        assert!(Schedule::Trace { offsets_ns: vec![], max_concurrency: None }.validate().is_err());
        assert!(Schedule::Trace { offsets_ns: vec![0], max_concurrency: Some(0) }.validate().is_err());
    }

    #[test]
    fn bad_parameters_are_rejected_with_a_reason() {
        assert!(Arrival::parse("weibull", 1.0).unwrap_err().to_string().contains("arrival"));
        assert!(Arrival::parse("gamma", 0.0).unwrap_err().to_string().contains("burstiness"));
        assert_eq!(Arrival::parse("poisson", 1.0).unwrap(), Arrival::Poisson);
        assert_eq!(Arrival::parse("poisson", 2.0).unwrap(), Arrival::Gamma { burstiness: 2.0 });
        assert!(Schedule::Closed { concurrency: 0 }.validate().is_err());
        assert!(open(-1.0, Arrival::Poisson, 0).validate().is_err());
    }
}
