//! Thompson-sampling allocation (Thompson 1933; Chapelle & Li 2011): each arm's rate has a
//! Beta(1 + successes, 1 + failures) posterior; traffic follows the posterior probability
//! that each arm is the best, estimated by Monte Carlo draws, with a floor every arm keeps
//! so that none is starved of the data that could change the verdict.

use rand::Rng;
use rand_distr::{Beta, Distribution};

use crate::error::{ModelError, Result};

/// An arm's outcomes so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Arm {
    /// Outcomes recorded.
    pub trials: u64,
    /// Of which successes (conversions, visits).
    pub successes: u64,
}

/// The posterior probability that each arm has the highest rate, from `draws` joint
/// draws of the arms' Beta posteriors (ties go to the first).
pub fn prob_best(arms: &[Arm], draws: usize, rng: &mut impl Rng) -> Result<Vec<f64>> {
    let posteriors = arms
        .iter()
        .map(|a| {
            if a.successes > a.trials {
                return Err(ModelError::Unsupported(format!(
                    "an arm has {} successes in {} trials",
                    a.successes, a.trials
                )));
            }
            Beta::new(
                1.0 + a.successes as f64,
                1.0 + (a.trials - a.successes) as f64,
            )
            .map_err(|e| ModelError::Internal(e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut wins = vec![0usize; arms.len()];
    for _ in 0..draws.max(1) {
        let mut best = (0, f64::NEG_INFINITY);
        for (i, b) in posteriors.iter().enumerate() {
            let x = b.sample(rng);
            if x > best.1 {
                best = (i, x);
            }
        }
        wins[best.0] += 1;
    }
    let total = draws.max(1) as f64;
    Ok(wins.into_iter().map(|w| w as f64 / total).collect())
}

/// Traffic shares from `p` (probabilities summing to 1) with every arm at least `floor`
/// (`floor × arms ≤ 1`): arms below the floor get it, the others share the rest in
/// proportion to `p`, repeated until none falls below.
pub fn shares(p: &[f64], floor: f64) -> Vec<f64> {
    let n = p.len();
    if n == 0 {
        return Vec::new();
    }
    let floor = floor.clamp(0.0, 1.0 / n as f64);
    let mut pinned = vec![false; n];
    loop {
        let free = 1.0 - floor * pinned.iter().filter(|x| **x).count() as f64;
        let mass: f64 = (0..n).filter(|&i| !pinned[i]).map(|i| p[i]).sum();
        let out: Vec<f64> = (0..n)
            .map(|i| {
                if pinned[i] {
                    floor
                } else if mass > 0.0 {
                    free * p[i] / mass
                } else {
                    free / (n - pinned.iter().filter(|x| **x).count()) as f64
                }
            })
            .collect();
        let newly: Vec<usize> = (0..n).filter(|&i| !pinned[i] && out[i] < floor).collect();
        if newly.is_empty() {
            return out;
        }
        for i in newly {
            pinned[i] = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn a_clear_winner_takes_the_traffic_above_the_floors() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let arms = [
            Arm {
                trials: 3000,
                successes: 300,
            },
            Arm {
                trials: 3000,
                successes: 540,
            },
            Arm {
                trials: 3000,
                successes: 450,
            },
        ];
        let p = prob_best(&arms, 10_000, &mut rng).unwrap();
        assert!(p[1] > 0.99, "{p:?}");
        let s = shares(&p, 0.05);
        assert!((s.iter().sum::<f64>() - 1.0).abs() < 1e-12);
        assert!(s[0] >= 0.05 - 1e-12 && s[2] >= 0.05 - 1e-12, "{s:?}");
        assert!(s[1] > 0.89, "{s:?}");
        // No data: every arm is equally likely best.
        let p = prob_best(&[Arm::default(); 4], 20_000, &mut rng).unwrap();
        assert!(p.iter().all(|x| (x - 0.25).abs() < 0.02), "{p:?}");
    }
}
