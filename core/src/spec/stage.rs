//! A job is a short pipeline of stages. The spec decides which: `features → train →
//! publish`, `features → score → audience`, or the same without `features` when the job
//! reads its `[data] source` directly. The leader runs the feature stage as a step of its
//! own (its output, a feature table in object storage, is what later stages read), then
//! the rest as one task; each executor-side stage is one function of the executor's runner.

use serde::{Deserialize, Serialize};

use super::JobSpec;

/// One stage of a job's pipeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Run the `[features]` SQL on the cluster into a feature table (Parquet shards and a
    /// manifest), unless an earlier attempt finished it.
    Features,
    /// Train the model on the table (alone, or as a data-parallel group).
    Train,
    /// Write the artifact and register the version.
    Publish,
    /// Score the table's rows with a registered model; each worker its own shards.
    Score,
    /// Pick the audience from the scores and write it as a new immutable version.
    Audience,
}

impl Stage {
    /// The stage's name in logs and docs.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Features => "features",
            Stage::Train => "train",
            Stage::Publish => "publish",
            Stage::Score => "score",
            Stage::Audience => "audience",
        }
    }
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl JobSpec {
    /// The job's whole pipeline, in order.
    pub fn stages(&self) -> Vec<Stage> {
        let mut stages = Vec::new();
        if self.features.is_some() {
            stages.push(Stage::Features);
        }
        if self.score.is_some() {
            stages.extend([Stage::Score, Stage::Audience]);
        } else {
            stages.push(Stage::Train);
            if self.train.publish {
                stages.push(Stage::Publish);
            }
        }
        stages
    }

    /// The leader's steps: the feature stage alone (one executor drives the SQL), then
    /// every other stage as one task (placed on the job's workers).
    pub fn steps(&self) -> Vec<Vec<Stage>> {
        let (features, rest): (Vec<Stage>, Vec<Stage>) = self
            .stages()
            .into_iter()
            .partition(|s| *s == Stage::Features);
        [features, rest]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect()
    }

    /// What the job makes, for listings: `score` (an audience), `uplift`, or the model
    /// type.
    pub fn kind(&self) -> &'static str {
        if self.score.is_some() {
            "score"
        } else if self.data.treatment.is_some() {
            "uplift"
        } else {
            self.model.kind.as_str()
        }
    }

    /// Where a search's rungs count to, and in what: `[model] trees` for boosted trees
    /// (rungs count trees) and for a blend (whose one rung is the whole blend, its MLP
    /// trained to the end first), else `[train] epochs`.
    pub fn rung_budget(&self) -> (u32, &'static str) {
        if matches!(
            self.model.kind,
            super::ModelKind::Gbdt | super::ModelKind::Blend
        ) {
            (u32::try_from(self.model.trees).unwrap_or(u32::MAX), "trees")
        } else {
            (self.train.epochs, "epochs")
        }
    }

    /// Executors a task of the job's main step runs on (a data-parallel training group or
    /// scoring workers); `None`: one, alone.
    pub fn workers(&self) -> Option<u32> {
        match &self.score {
            Some(s) => s.workers,
            None => self.train.workers,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> JobSpec {
        JobSpec::from_toml(
            &format!("name = \"p\"\n[data]\nsource = \"x.csv\"\nlabel = \"y\"\n{extra}"),
            "test",
        )
        .unwrap()
    }

    #[test]
    fn the_spec_decides_the_pipeline_and_the_leader_runs_features_on_its_own() {
        use Stage::*;
        let plain = spec("");
        assert_eq!(plain.stages(), [Train, Publish]);
        assert_eq!(plain.steps(), [vec![Train, Publish]]);
        let unpublished = spec("[train]\npublish = false\n");
        assert_eq!(unpublished.stages(), [Train]);
        let features = "[features]\nsql = \"SELECT * FROM t\"\n[[features.sources]]\nname = \"t\"\npath = \"t.csv\"\n";
        let trained = spec(&format!(
            "{features}[features.split]\nmethod = \"hash\"\nkey = \"id\"\ntest_percent = 20\n"
        ));
        assert_eq!(trained.stages(), [Features, Train, Publish]);
        assert_eq!(trained.steps(), [vec![Features], vec![Train, Publish]]);
        let scored = spec(&format!(
            "{features}[score]\nmodel = \"m\"\nkey = [\"id\"]\nworkers = 2\n"
        ));
        assert_eq!(scored.stages(), [Features, Score, Audience]);
        assert_eq!(scored.steps(), [vec![Features], vec![Score, Audience]]);
        assert_eq!(scored.workers(), Some(2));
    }
}
