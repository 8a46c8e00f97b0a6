//! Sub-jobs: a running job's `enqueue` calls, put on the broker for real.
//!
//! A sub-job goes on its parent's queue with default limits. Its id is the parent's id and the
//! call's position (`<parent>.1`, `<parent>.2`, …), so a parent that is retried after fanning
//! out enqueues the same ids again and creates no duplicates.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use crate::broker::WorkerBroker;
use crate::intake::Intake;
use crate::invocation::{Invocation, bytes_to_json};
use crate::job::{JobInfo, Limits};
use crate::modules::ModuleHash;
use crate::sandbox::{EnqueueFuture, SubJobSink};

/// Enqueues a run's sub-jobs on the broker and remembers their ids.
pub struct BrokerSubJobs {
    broker: Arc<dyn WorkerBroker>,
    intake: Intake,
    calls: AtomicU32,
    ids: Arc<Mutex<Vec<String>>>,
}

impl BrokerSubJobs {
    /// A sink for one run.
    pub fn new(broker: Arc<dyn WorkerBroker>, ceilings: &Limits) -> Self {
        BrokerSubJobs {
            broker,
            intake: Intake::new(*ceilings),
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
        let intake = self.intake;
        let parent = parent.clone();
        Box::pin(async move {
            let hash: ModuleHash = module.parse().map_err(|e| format!("{e}"))?;
            let mut inv = Invocation::new(hash);
            inv.args = bytes_to_json(&args);
            inv.queue = parent.queue.clone();
            inv.id = Some(format!("{}.{n}", parent.id));
            let job = intake.job(inv).map_err(|e| e.to_string())?;
            intake
                .enqueue(broker.as_ref(), std::slice::from_ref(&job))
                .await
                .map_err(|e| e.to_string())?;
            let id = job.id().to_owned();
            ids.lock().expect("not poisoned").push(id.clone());
            Ok(id)
        })
    }
}
