//! Every Redis key wasmq uses, built in one place. A queue's keys share its `{queue}` hash tag, so
//! every job script touches one Redis Cluster slot; module bytes are tagged by their own digest.

use crate::job::JobState;
use crate::modules::ModuleHash;

/// Every Redis key wasmq uses, built in one place.
#[derive(Clone, Debug)]
pub struct Keys {
    prefix: String,
}

/// The keys of one queue, in the order job scripts take them.
#[derive(Clone, Debug)]
pub struct QueueKeys {
    /// `KEYS[1..=7]`: ready, scheduled, leased, dead, wake, seq, stats.
    pub keys: [String; 7],
    /// Prefix of job hashes: `wasmq:{q}:job:`.
    pub job_prefix: String,
    /// Prefix of waiter lists: `wasmq:{q}:done:`.
    pub done_prefix: String,
    /// Cron entries (`KEYS[8]` of the cron scripts) and their next ticks (`KEYS[9]`).
    pub cron: [String; 2],
    /// Indexes of recently succeeded and cancelled jobs (zsets: finished at ms → id), kept by the
    /// scripts that end jobs (`list_final` in `lua/common.lua`).
    pub finished: [String; 2],
    /// Batch ends not yet settled (hash: batch id → jobs ended, written by the scripts that end
    /// jobs) and batches due their callback (set of batch ids): the two steps after a batch
    /// job ends (`lua/batch_settle.lua`, `lua/batch_callback.lua`).
    pub batches: [String; 2],
}

impl QueueKeys {
    /// The sorted set listing jobs in `state`, and whether it lists newest first.
    pub fn listing(&self, state: JobState) -> (&str, bool) {
        match state {
            JobState::Ready => (&self.keys[0], false),
            JobState::Scheduled => (&self.keys[1], false),
            JobState::Leased => (&self.keys[2], false),
            JobState::Dead => (&self.keys[3], true),
            JobState::Succeeded => (&self.finished[0], true),
            JobState::Cancelled => (&self.finished[1], true),
        }
    }
}

impl Keys {
    /// Keys under `prefix` (normally `wasmq`).
    pub fn new(prefix: &str) -> Self {
        Keys {
            prefix: prefix.to_owned(),
        }
    }

    /// The keys of `queue`.
    pub fn queue(&self, queue: &str) -> QueueKeys {
        let base = format!("{}:{{{queue}}}:", self.prefix);
        QueueKeys {
            keys: [
                "ready",
                "scheduled",
                "leased",
                "dead",
                "wake",
                "seq",
                "stats",
            ]
            .map(|k| format!("{base}{k}")),
            job_prefix: format!("{base}job:"),
            done_prefix: format!("{base}done:"),
            cron: [format!("{base}cron"), format!("{base}cron_next")],
            finished: [format!("{base}succeeded"), format!("{base}cancelled")],
            batches: [format!("{base}batch_ends"), format!("{base}batches_due")],
        }
    }

    /// The job hash of `id` in `queue`.
    pub fn job(&self, queue: &str, id: &str) -> String {
        format!("{}:{{{queue}}}:job:{id}", self.prefix)
    }

    /// Batch `id` of `queue`: its hash (total, pending, callback) and the list of its job ids.
    pub fn batch(&self, queue: &str, id: &str) -> [String; 2] {
        let hash = format!("{}:{{{queue}}}:batch:{id}", self.prefix);
        let jobs = format!("{hash}:jobs");
        [hash, jobs]
    }

    /// What fetch request `request` on `queue` leased (kept for the lease's length, so that the
    /// request sent again gets the same leases).
    pub fn fetch_request(&self, queue: &str, request: &str) -> String {
        format!("{}:{{{queue}}}:fetch:{request}", self.prefix)
    }

    /// The waiter list of `id` in `queue`.
    pub fn done(&self, queue: &str, id: &str) -> String {
        format!("{}:{{{queue}}}:done:{id}", self.prefix)
    }

    /// The worker registry: name → `WorkerInfo` JSON.
    pub fn workers(&self) -> String {
        format!("{}:workers", self.prefix)
    }

    /// The set of queue names.
    pub fn queues(&self) -> String {
        format!("{}:queues", self.prefix)
    }

    /// The module index.
    pub fn module_index(&self) -> String {
        format!("{}:{{modules}}:index", self.prefix)
    }

    /// Module uploads and deletions under way (hash: hex digest → `<ms>:<token>`, when it
    /// began): what a process that died between writing a module's bytes and its index entry
    /// (or between unlisting and deleting them) leaves, for the maintenance pass to clean up.
    pub fn module_ops(&self) -> String {
        format!("{}:{{modules}}:ops", self.prefix)
    }

    /// The hosts that have an egress limit (a set).
    pub fn egress_index(&self) -> String {
        format!("{}:egress", self.prefix)
    }

    /// A host's egress keys, in the order the acquire script takes them: its limit (hash:
    /// `concurrency`, `rate`, `per_ms`), its held slots (zset: token → lease deadline) and its
    /// recent starts (zset: token → start ms). One hash tag, so one slot.
    pub fn egress(&self, host: &str) -> [String; 3] {
        let base = format!("{}:{{egress:{host}}}:", self.prefix);
        [
            format!("{base}limit"),
            format!("{base}slots"),
            format!("{base}starts"),
        ]
    }

    /// Sealed secrets: name → `nonce ‖ ciphertext`.
    pub fn secrets(&self) -> String {
        format!("{}:secrets", self.prefix)
    }

    /// The modules that have a grant (a set of hashes).
    pub fn grant_index(&self) -> String {
        format!("{}:grants", self.prefix)
    }

    /// A module's grant: the set of its HTTP destinations and the set of its secret names
    /// (one hash tag, so one slot).
    pub fn grant(&self, hash: ModuleHash) -> [String; 2] {
        let base = format!("{}:{{grant:{}}}:", self.prefix, hash.hex());
        [format!("{base}http"), format!("{base}secrets")]
    }

    /// The bytes of a module, under a hash tag of their own: on a cluster, modules spread over
    /// the masters instead of all sitting on the index's.
    pub fn module_bytes(&self, hash: ModuleHash) -> String {
        format!("{}:{{module:{}}}:bytes", self.prefix, hash.hex())
    }

    /// Where module bytes were kept before they had a hash tag of their own (still read, so
    /// modules uploaded then keep working; single Redis only, as clusters came after).
    pub fn module_bytes_legacy(&self, hash: ModuleHash) -> String {
        format!("{}:{{modules}}:bytes:{}", self.prefix, hash.hex())
    }
}

/// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash tag — the text between the
/// first `{` and the next `}`, when not empty — or of the whole key, modulo 16384.
pub fn hash_slot(key: &[u8]) -> u16 {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16384
}

fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[cfg(test)]
mod tests {
    use super::hash_slot;

    /// Slots Redis itself gives (`CLUSTER KEYSLOT`).
    #[test]
    fn hash_slots_match_redis() {
        assert_eq!(hash_slot(b"foo"), 12182);
        assert_eq!(hash_slot(b"bar"), 5061);
        assert_eq!(hash_slot(b"wasmq:{default}:ready"), hash_slot(b"default"));
        assert_eq!(hash_slot(b"a{}b"), hash_slot(b"a{}b"));
        assert_ne!(hash_slot(b"{}x"), hash_slot(b"x"));
    }
}
