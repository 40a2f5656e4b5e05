//! Hyperparameter search: a search's trials and the rules of successive halving (ASHA);
//! the `[search]` section itself (space, sampling, rungs) is `crate::spec`'s. Pure: the
//! leader keeps a search's state in its job record and asks [`next_step`] what to run next.
//!
//! Every trial is trained through the data-parallel path (its checkpoints are what lets ASHA
//! pause a trial at a rung and promote it later). A rung is a number of epochs: `min_epochs`,
//! then × `reduction` until `[train] epochs`. A trial that finished a rung is promoted when
//! its validation loss is in the best `1 / reduction` of the trials that finished that rung;
//! a trial never promoted is stopped early when the search ends. When nothing is left to
//! run and no trial reached the last rung, the best trial of the highest rung reached goes
//! on to the end.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::spec::{Dist, Params, SearchSpec, Strategy, apply};

/// Where a trial is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrialState {
    /// Not started.
    Pending,
    /// A task trains it.
    Running,
    /// Finished a rung; waits to be promoted.
    Paused,
    /// Trained to the end (or stopped by its own early stopping).
    Completed,
    /// Not promoted before the search ended.
    Stopped,
    /// Its task failed.
    Failed,
}

impl TrialState {
    /// Lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            TrialState::Pending => "pending",
            TrialState::Running => "running",
            TrialState::Paused => "paused",
            TrialState::Completed => "completed",
            TrialState::Stopped => "stopped",
            TrialState::Failed => "failed",
        }
    }
}

/// One trial of a search, as the leader keeps it in the search job's record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trial {
    /// Trial number (0-based).
    pub index: usize,
    /// Its parameters.
    pub params: Params,
    /// State.
    pub state: TrialState,
    /// Validation loss at the end of each rung it finished.
    pub losses: Vec<f64>,
    /// Epochs trained.
    pub epochs: u32,
    /// The job training it now, or that trained it last (its checkpoint continues it).
    pub job: Option<String>,
    /// The last job's metrics.
    pub metrics: BTreeMap<String, f64>,
    /// Why it failed.
    pub error: Option<String>,
}

/// A search job's state, kept in its record by the leader.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchState {
    /// Every trial.
    pub trials: Vec<Trial>,
    /// Epochs at the end of each rung.
    pub rungs: Vec<u32>,
    /// The job that publishes the best trial's model, once chosen.
    pub publish_job: Option<String>,
    /// The best trial.
    pub best: Option<usize>,
}

impl SearchState {
    /// A search about to start.
    pub fn new(search: &SearchSpec, epochs: u32) -> SearchState {
        SearchState {
            trials: search
                .sample()
                .into_iter()
                .enumerate()
                .map(|(index, params)| Trial {
                    index,
                    params,
                    state: TrialState::Pending,
                    losses: Vec::new(),
                    epochs: 0,
                    job: None,
                    metrics: BTreeMap::new(),
                    error: None,
                })
                .collect(),
            rungs: search.rungs(epochs),
            publish_job: None,
            best: None,
        }
    }
}

/// What a search does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Train this trial to the end of its next rung (start it, or promote it).
    Run(usize),
    /// Wait for running trials.
    Wait,
    /// Nothing left to run: pick the best.
    Finish,
}

/// The next step of a search with `running` trials running and `parallel` allowed at once:
/// promotions first (the highest rung first, the lowest loss first), then new trials.
pub fn next_step(state: &SearchState, reduction: u32, parallel: usize) -> Next {
    let running = state
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Running)
        .count();
    if running >= parallel {
        return Next::Wait;
    }
    let last = state.rungs.len();
    for rung in (0..last.saturating_sub(1)).rev() {
        // Every trial that finished this rung, by loss.
        let mut done: Vec<(f64, usize)> = state
            .trials
            .iter()
            .filter_map(|t| t.losses.get(rung).map(|l| (*l, t.index)))
            .collect();
        done.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let keep = done.len() / reduction.max(2) as usize;
        if let Some((_, i)) = done[..keep].iter().find(|(_, i)| {
            let t = &state.trials[*i];
            t.state == TrialState::Paused && t.losses.len() == rung + 1
        }) {
            return Next::Run(*i);
        }
    }
    if let Some(t) = state.trials.iter().find(|t| t.state == TrialState::Pending) {
        return Next::Run(t.index);
    }
    if running > 0 {
        return Next::Wait;
    }
    // A finite search can end with no trial promoted to the last rung (8 trials with
    // reduction 3: 8 finish the first rung, 2 the second, a third of 2 is none): the best
    // trial of the highest rung reached goes on, so the search always ends with a model.
    if !state
        .trials
        .iter()
        .any(|t| t.state == TrialState::Completed)
        && let Some(t) = state
            .trials
            .iter()
            .filter(|t| t.state == TrialState::Paused)
            .filter_map(|t| t.losses.last().map(|l| (t.losses.len(), *l, t.index)))
            .min_by(|a, b| b.0.cmp(&a.0).then(a.1.total_cmp(&b.1)).then(a.2.cmp(&b.2)))
    {
        return Next::Run(t.2);
    }
    Next::Finish
}

/// The completed trial with the lowest validation loss at its last rung.
pub fn best_trial(state: &SearchState) -> Option<usize> {
    state
        .trials
        .iter()
        .filter(|t| t.state == TrialState::Completed)
        .filter_map(|t| t.losses.last().map(|l| (*l, t.index)))
        .min_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)))
        .map(|(_, i)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn search(strategy: Strategy, trials: usize) -> SearchSpec {
        let mut space = BTreeMap::new();
        space.insert("learning_rate".into(), Dist::LogUniform([1e-4, 1e-2]));
        space.insert(
            "hidden".into(),
            Dist::Choice(vec![serde_json::json!([16]), serde_json::json!([32, 16])]),
        );
        SearchSpec {
            strategy,
            trials: Some(trials),
            parallel: 2,
            seed: 3,
            min_epochs: 1,
            reduction: 3,
            space,
        }
    }

    #[test]
    fn sampling_is_seeded_and_in_range() {
        let s = search(Strategy::Random, 20);
        let a = s.sample();
        assert_eq!(a, s.sample());
        assert_eq!(a.len(), 20);
        for p in &a {
            let lr = p["learning_rate"].as_f64().unwrap();
            assert!((1e-4..=1e-2).contains(&lr), "{lr}");
        }
        let mut grid = search(Strategy::Grid, 0);
        grid.trials = None;
        grid.space.insert("batch_size".into(), Dist::Int([1, 3]));
        grid.space.remove("learning_rate");
        assert_eq!(grid.sample().len(), 6);
    }

    #[test]
    fn rungs_grow_by_the_reduction_up_to_the_epochs() {
        assert_eq!(search(Strategy::Asha, 8).rungs(10), vec![1, 3, 9, 10]);
        assert_eq!(search(Strategy::Asha, 8).rungs(9), vec![1, 3, 9]);
        assert_eq!(search(Strategy::Random, 8).rungs(10), vec![10]);
    }

    #[test]
    fn asha_promotes_the_best_and_stops_the_rest_early() {
        let s = search(Strategy::Asha, 9);
        let mut state = SearchState::new(&s, 9);
        assert_eq!(state.rungs, vec![1, 3, 9]);
        // Trial i's validation loss at rung k: trial 4 is the best at every rung.
        let loss = |i: usize, k: usize| 1.0 + ((i * 7) % 9) as f64 / 10.0 - k as f64 / 100.0;
        let mut runs = Vec::new();
        loop {
            match next_step(&state, 3, 2) {
                Next::Run(i) => {
                    runs.push(i);
                    let t = &mut state.trials[i];
                    t.state = TrialState::Running;
                    // It finishes its rung at once (one trial running at a time).
                    let k = t.losses.len();
                    t.losses.push(loss(i, k));
                    t.epochs = state.rungs[k];
                    t.state = if k + 1 == state.rungs.len() {
                        TrialState::Completed
                    } else {
                        TrialState::Paused
                    };
                }
                Next::Wait => panic!("nothing runs, so nothing to wait for"),
                Next::Finish => break,
            }
        }
        let best = (0..9)
            .min_by(|a, b| loss(*a, 0).total_cmp(&loss(*b, 0)))
            .unwrap();
        assert_eq!(best_trial(&state), Some(best));
        let at_rung = |k: usize| state.trials.iter().filter(|t| t.losses.len() > k).count();
        assert_eq!(at_rung(0), 9);
        // Promotions are asynchronous: a third of the finishers at each moment.
        assert!((3..9).contains(&at_rung(1)), "{}", at_rung(1));
        assert!(at_rung(2) >= 1 && at_rung(2) < at_rung(1), "{}", at_rung(2));
        let epochs: u32 = state.trials.iter().map(|t| t.epochs).sum();
        assert!(
            epochs < 9 * 9,
            "ASHA trained {epochs} epochs, as many as a full random search"
        );
        // Every promotion came from the best third of its rung at the time.
        assert_eq!(runs.iter().filter(|&&i| i == best).count(), 3);
    }

    #[test]
    fn a_search_whose_last_rung_nobody_reached_finishes_its_best_trial() {
        // 8 trials, reduction 3: all finish rung 0, trials 1 and 7 were promoted and
        // finished rung 1; a third of 2 is none, so nobody would reach rung 2.
        let s = search(Strategy::Asha, 8);
        let mut state = SearchState::new(&s, 9);
        for t in &mut state.trials {
            t.state = TrialState::Paused;
            t.losses = vec![0.6 - t.index as f64 / 100.0];
        }
        // Trials 1 and 7 were the best of rung 0.
        state.trials[1].losses[0] = 0.50;
        state.trials[7].losses[0] = 0.51;
        state.trials[1].losses.push(0.49);
        state.trials[7].losses.push(0.48);
        assert_eq!(next_step(&state, 3, 2), Next::Run(7));
        state.trials[7].losses.push(0.47);
        state.trials[7].state = TrialState::Completed;
        assert_eq!(next_step(&state, 3, 2), Next::Finish);
    }

    #[test]
    fn parallel_trials_wait_for_a_free_slot() {
        let s = search(Strategy::Random, 3);
        let mut state = SearchState::new(&s, 5);
        for i in 0..2 {
            assert_eq!(next_step(&state, 3, 2), Next::Run(i));
            state.trials[i].state = TrialState::Running;
        }
        assert_eq!(next_step(&state, 3, 2), Next::Wait);
        state.trials[0].state = TrialState::Completed;
        state.trials[0].losses.push(0.4);
        assert_eq!(next_step(&state, 3, 2), Next::Run(2));
    }
}
