//! Scheduled runs: the coordinator's methods over `schedules/`.

use super::{Coordinator, Edit, Leadership, Versioned, decode, encode, put};
use crate::error::{Error, Result};
use crate::kv::{Compare, TxnOp};
use crate::records::JobRecord;
use crate::schedule::Schedule;

impl Coordinator {
    fn schedule_key(&self, name: &str) -> String {
        self.key(&format!("schedules/{name}"))
    }

    /// Store a new schedule (any scheduler); [`Error::Conflict`] when the name is taken.
    pub async fn create_schedule(&self, s: &Schedule) -> Result<()> {
        let key = self.schedule_key(&s.name);
        let out = self.cas(&key, 0, vec![put(key.clone(), encode(s))]).await?;
        if !out.succeeded {
            return Err(Error::Conflict { key });
        }
        Ok(())
    }

    /// One schedule.
    pub async fn get_schedule(&self, name: &str) -> Result<Option<Versioned<Schedule>>> {
        self.get_versioned(&self.schedule_key(name)).await
    }

    /// Every schedule, by name.
    pub async fn schedules(&self) -> Result<Vec<Versioned<Schedule>>> {
        self.kv
            .range(&self.key("schedules/"))
            .await?
            .iter()
            .map(decode)
            .collect()
    }

    /// Pause or resume a schedule (any scheduler). Resuming moves its next due time past
    /// now: the due times it slept through do not fire.
    pub async fn set_schedule_paused(
        &self,
        name: &str,
        paused: bool,
        now_ms: i64,
    ) -> Result<Schedule> {
        self.update(&self.schedule_key(name), |s: Option<Schedule>| {
            let mut s = s.ok_or_else(|| no_schedule(name))?;
            if s.paused == paused {
                return Ok(Edit::Keep(s));
            }
            s.paused = paused;
            if !paused {
                s.next_ms = s.timing.next_after(now_ms, s.created_ms);
            }
            Ok(Edit::Write(s))
        })
        .await
    }

    /// Delete a schedule (any scheduler); its runs stay as jobs.
    pub async fn delete_schedule(&self, name: &str) -> Result<Schedule> {
        let Some(s) = self.get_schedule(name).await? else {
            return Err(no_schedule(name));
        };
        let key = self.schedule_key(name);
        let out = self
            .cas(&key, s.revision, vec![TxnOp::Delete { key: key.clone() }])
            .await?;
        if !out.succeeded {
            return Err(Error::Conflict { key });
        }
        Ok(s.value)
    }

    /// Fire a schedule's due run (leader only): the run's job is stored and the schedule
    /// records it in one transaction, fenced on leadership and on the schedule's revision,
    /// and only if no job has the run's id: a due time fires at most once, whatever fails.
    pub async fn fire_schedule(
        &self,
        leadership: &Leadership,
        old: &Versioned<Schedule>,
        new: &Schedule,
        job: &JobRecord,
    ) -> Result<i64> {
        let job_key = self.job_key(&job.id);
        let key = self.schedule_key(&new.name);
        let job_is_new = vec![Compare::ModRevision {
            key: job_key.clone(),
            revision: 0,
        }];
        let then = vec![
            put(job_key, encode(job)),
            put(self.active_key(&job.id), Vec::new()),
            put(key.clone(), encode(new)),
        ];
        self.fenced_if(leadership, &key, old.revision, job_is_new, then)
            .await
    }

    /// Record a due time that did not fire (leader only; fenced like any leader write).
    pub async fn skip_schedule(
        &self,
        leadership: &Leadership,
        old: &Versioned<Schedule>,
        new: &Schedule,
    ) -> Result<i64> {
        let key = self.schedule_key(&new.name);
        self.fenced(
            leadership,
            &key,
            old.revision,
            vec![put(key.clone(), encode(new))],
        )
        .await
    }
}

fn no_schedule(name: &str) -> Error {
    Error::NoSuchSchedule(name.to_string())
}
