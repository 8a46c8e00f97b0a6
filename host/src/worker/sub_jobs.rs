//! Sub-jobs: a running job's `enqueue` calls, put on the broker for real.
//!
//! A sub-job goes on its parent's queue with default limits. Its id is the parent's id and the
//! call's position (`<parent>.1`, `<parent>.2`, …), so a parent that is retried after fanning
//! out enqueues the same ids again and creates no duplicates.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::broker::{Broker, enqueue_checked};
use crate::invocation::{Invocation, bytes_to_json};
use crate::modules::ModuleHash;
use crate::sandbox::{EnqueueFuture, JobInfo, Limits, SubJobSink};

/// Enqueues a run's sub-jobs on the broker and remembers their ids.
pub struct BrokerSubJobs {
    broker: Arc<dyn Broker>,
    ceilings: Limits,
    calls: AtomicU32,
    ids: Arc<Mutex<Vec<String>>>,
}

impl BrokerSubJobs {
    /// A sink for one run.
    pub fn new(broker: Arc<dyn Broker>, ceilings: &Limits) -> Self {
        BrokerSubJobs {
            broker,
            ceilings: *ceilings,
            calls: AtomicU32::new(0),
            ids: Arc::default(),
        }
    }

    /// Ids enqueued so far, in call order.
    pub fn ids(&self) -> Vec<String> {
        self.ids.lock().expect("not poisoned").clone()
    }
}

impl SubJobSink for BrokerSubJobs {
    fn enqueue(&self, parent: &JobInfo, module: String, args: Vec<u8>) -> EnqueueFuture {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        let broker = self.broker.clone();
        let ids = self.ids.clone();
        let ceilings = self.ceilings;
        let parent = parent.clone();
        Box::pin(async move {
            let hash: ModuleHash = module.parse().map_err(|e| format!("{e}"))?;
            let mut inv = Invocation::new(hash);
            inv.args = bytes_to_json(&args);
            inv.queue = parent.queue.clone();
            inv.id = Some(format!("{}.{n}", parent.id));
            let job = inv.prepare(&ceilings).map_err(|e| e.to_string())?;
            enqueue_checked(broker.as_ref(), std::slice::from_ref(&job))
                .await
                .map_err(|e| e.to_string())?;
            let id = job.id().to_owned();
            ids.lock().expect("not poisoned").push(id.clone());
            Ok(id)
        })
    }
}
