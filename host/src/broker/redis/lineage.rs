//! The Redis broker's lineage: a parent's `children` field (one `queue id` per line), and on each
//! child its `parent` and the `held` flag that keeps its record past the result TTL
//! (`lua/lineage.lua`; `ack.lua` and `cancelled()` leave a held record unexpired).

use std::collections::BTreeMap;

use async_trait::async_trait;

use super::{RedisBroker, SCRIPTS};
use crate::broker::{BrokerError, JobRef, Lineage};

/// `queue id`, as the scripts store a job reference.
pub(super) fn job_ref_line(job: &JobRef) -> String {
    format!("{} {}", job.queue, job.id)
}

/// Parses one stored `queue id` line.
pub(super) fn parse_job_ref(line: &str) -> Option<JobRef> {
    let (queue, id) = line.split_once(' ')?;
    Some(JobRef {
        queue: queue.to_owned(),
        id: id.to_owned(),
    })
}

fn by_queue(jobs: &[JobRef]) -> BTreeMap<&str, Vec<&str>> {
    let mut map: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for job in jobs {
        map.entry(job.queue.as_str())
            .or_default()
            .push(job.id.as_str());
    }
    map
}

#[async_trait]
impl Lineage for RedisBroker {
    async fn adopt(&self, parent: &JobRef, children: &[JobRef]) -> Result<(), BrokerError> {
        if children.is_empty() {
            return Ok(());
        }
        // Held first: a child is never listed on its parent without being kept for it.
        for (queue, ids) in by_queue(children) {
            let mut inv = self.queue_script(&SCRIPTS.lineage, queue);
            inv.arg("hold").arg(job_ref_line(parent)).arg(&ids);
            self.declare_jobs(&mut inv, queue, ids, false);
            let _: u64 = self.script(&inv).await?;
        }
        let mut inv = self.queue_script(&SCRIPTS.lineage, &parent.queue);
        inv.arg("children").arg(&parent.id);
        self.declare_jobs(&mut inv, &parent.queue, [parent.id.as_str()], false);
        for child in children {
            inv.arg(job_ref_line(child));
        }
        let _: u64 = self.script(&inv).await?;
        Ok(())
    }

    async fn release_children(&self, parent: &JobRef) -> Result<(), BrokerError> {
        let key = self.keys.job(&parent.queue, &parent.id);
        let listed: Option<String> = self
            .query(redis::cmd("HGET").arg(key).arg("children").clone())
            .await?;
        let children: Vec<JobRef> = listed
            .iter()
            .flat_map(|l| l.lines())
            .filter_map(parse_job_ref)
            .collect();
        for (queue, ids) in by_queue(&children) {
            let mut inv = self.queue_script(&SCRIPTS.lineage, queue);
            inv.arg("release").arg(self.ttl_secs()).arg(&ids);
            self.declare_jobs(&mut inv, queue, ids, false);
            let _: u64 = self.script(&inv).await?;
        }
        Ok(())
    }
}
