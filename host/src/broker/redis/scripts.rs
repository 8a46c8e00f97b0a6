//! The Lua scripts and how one is called: [`SCRIPTS`] (each job script is `lua/common.lua`
//! followed by its own file) and [`Call`], one call's keys and arguments, sent as `EVALSHA` —
//! followed on the same connection by `WAIT` when the broker makes durable writes and the script
//! changes a job's state.

use std::sync::LazyLock;

use redis::{Cmd, Script, ToRedisArgs};

/// A script, and whether a durable write waits for replicas after it.
pub(super) struct Lua {
    pub(super) script: Script,
    /// Whether the script changes what must survive a failover (jobs, their states and results,
    /// batches, cron entries, limits). Leases, heartbeats, progress, egress slots and reads do
    /// not wait: losing one in a failover costs a job a second run, never the job.
    pub(super) durable: bool,
}

macro_rules! job_script {
    ($name:literal, $durable:expr) => {
        Lua {
            script: Script::new(concat!(
                include_str!("lua/common.lua"),
                include_str!(concat!("lua/", $name, ".lua"))
            )),
            durable: $durable,
        }
    };
}

macro_rules! plain_script {
    ($name:literal, $durable:expr) => {
        Lua {
            script: Script::new(include_str!(concat!("lua/", $name, ".lua"))),
            durable: $durable,
        }
    };
}

/// Every script the broker runs.
pub(super) struct Scripts {
    pub(super) enqueue: Lua,
    pub(super) fetch: Lua,
    pub(super) heartbeat: Lua,
    pub(super) ack: Lua,
    pub(super) release: Lua,
    pub(super) maintain: Lua,
    pub(super) due: Lua,
    pub(super) watch: Lua,
    pub(super) dead: Lua,
    pub(super) run_now: Lua,
    pub(super) cancel: Lua,
    pub(super) cron_put: Lua,
    pub(super) cron_remove: Lua,
    pub(super) cron_fire: Lua,
    pub(super) progress: Lua,
    pub(super) pause: Lua,
    pub(super) limits: Lua,
    pub(super) batch_enqueue: Lua,
    pub(super) batch_settle: Lua,
    pub(super) batch_callback: Lua,
    pub(super) put_module: Lua,
    pub(super) module_op_begin: Lua,
    pub(super) module_op_done: Lua,
    pub(super) module_orphan: Lua,
    pub(super) egress_acquire: Lua,
    pub(super) egress_renew: Lua,
    pub(super) lineage: Lua,
}

pub(super) static SCRIPTS: LazyLock<Scripts> = LazyLock::new(|| Scripts {
    enqueue: job_script!("enqueue", true),
    fetch: job_script!("fetch", false),
    heartbeat: job_script!("heartbeat", false),
    ack: job_script!("ack", true),
    release: job_script!("release", true),
    maintain: job_script!("maintain", true),
    due: job_script!("due", false),
    watch: job_script!("watch", false),
    dead: job_script!("dead", true),
    run_now: job_script!("run_now", true),
    cancel: job_script!("cancel", true),
    cron_put: job_script!("cron_put", true),
    cron_remove: job_script!("cron_remove", true),
    cron_fire: job_script!("cron_fire", true),
    progress: job_script!("progress", false),
    pause: job_script!("pause", true),
    limits: job_script!("limits", true),
    batch_enqueue: job_script!("batch_enqueue", true),
    batch_settle: job_script!("batch_settle", true),
    batch_callback: job_script!("batch_callback", true),
    put_module: plain_script!("put_module", true),
    module_op_begin: plain_script!("module_op_begin", true),
    module_op_done: plain_script!("module_op_done", true),
    module_orphan: plain_script!("module_orphan", true),
    egress_acquire: plain_script!("egress_acquire", false),
    egress_renew: plain_script!("egress_renew", false),
    lineage: job_script!("lineage", true),
});

/// One call of a script: its keys (`KEYS`) and arguments (`ARGV`).
pub(super) struct Call<'s> {
    pub(super) lua: &'s Lua,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl<'s> Call<'s> {
    /// A call of `lua` with no keys or arguments yet.
    pub(super) fn new(lua: &'s Lua) -> Self {
        Call {
            lua,
            keys: Vec::new(),
            args: Vec::new(),
        }
    }

    /// Adds a key (`KEYS[n]`).
    pub(super) fn key(&mut self, key: impl ToRedisArgs) -> &mut Self {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds an argument (`ARGV[n]`).
    pub(super) fn arg(&mut self, arg: impl ToRedisArgs) -> &mut Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    /// `EVALSHA` of the script with the keys and arguments.
    pub(super) fn evalsha(&self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.lua.script.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        cmd
    }
}
