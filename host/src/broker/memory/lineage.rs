//! The memory broker's lineage: each job's parent and children, and the `held` flag that keeps a
//! child's record past the result TTL until its parent releases it.

use async_trait::async_trait;

use super::MemoryBroker;
use crate::broker::{BrokerError, JobRef, Lineage, MAX_CHILDREN_LISTED};
use crate::job::JobState;

#[async_trait]
impl Lineage for MemoryBroker {
    async fn adopt(&self, parent: &JobRef, children: &[JobRef]) -> Result<(), BrokerError> {
        let mut state = self.lock();
        for child in children {
            if let Some(job) = state.get(&child.queue, &child.id) {
                job.parent = Some(parent.clone());
                job.held = true;
                job.expires_at = None;
            }
        }
        if let Some(job) = state.get(&parent.queue, &parent.id) {
            let mut listed: std::collections::HashSet<JobRef> =
                job.children.iter().cloned().collect();
            for child in children {
                if job.children.len() < MAX_CHILDREN_LISTED && listed.insert(child.clone()) {
                    job.children.push(child.clone());
                }
            }
        }
        Ok(())
    }

    async fn release_children(&self, parent: &JobRef) -> Result<(), BrokerError> {
        let mut state = self.lock();
        let Some(children) = state
            .get(&parent.queue, &parent.id)
            .map(|j| j.children.clone())
        else {
            return Ok(());
        };
        let expires_at = state.now + self.result_ttl.as_millis() as u64;
        for child in children {
            if let Some(job) = state.get(&child.queue, &child.id)
                && job.held
            {
                job.held = false;
                if matches!(job.state, JobState::Succeeded | JobState::Cancelled) {
                    job.expires_at = Some(expires_at);
                }
            }
        }
        Ok(())
    }
}
