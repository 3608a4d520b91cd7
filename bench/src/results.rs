//! What a run produces, as written to `comparison.json` (so the report can be made again
//! from it with `--report-from`).

use serde::{Deserialize, Serialize};

use crate::plan::{Case, Plan, System};
use crate::servers::Usage;
use crate::stats::LatencySummary;

/// One system's measurement of one case, one repeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunResult {
    pub case: Case,
    pub system: System,
    /// 1-based.
    pub repeat: u32,
    pub outcome: Outcome,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Outcome {
    Measured(Measured),
    Failed(String),
    /// The system has no configuration for the case's durability class.
    NotApplicable(String),
}

/// Figures of one measured window.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Measured {
    /// Messages counted (what `Workload::rate_meaning` says).
    pub messages: u64,
    pub seconds: f64,
    /// messages / seconds.
    pub rate: f64,
    /// Value bytes per second over 10^6.
    pub mb_per_s: f64,
    /// Published msgs/s, for workloads that also consume.
    pub second_rate: Option<f64>,
    pub latency: Option<LatencySummary>,
    /// The server's user + system CPU seconds in the window.
    pub server_cpu_seconds: f64,
    /// The server's resident memory at the end of the window, KiB.
    pub rss_kib: u64,
    /// The server's highest resident memory, KiB.
    pub hwm_kib: u64,
    pub note: Option<String>,
}

impl Measured {
    pub fn new(messages: u64, seconds: f64, size: usize, cpu_seconds: f64, usage: Usage) -> Measured {
        let rate = if seconds > 0.0 { messages as f64 / seconds } else { 0.0 };
        Measured {
            messages,
            seconds,
            rate,
            mb_per_s: rate * size as f64 / 1e6,
            second_rate: None,
            latency: None,
            server_cpu_seconds: cpu_seconds,
            rss_kib: usage.rss_kib,
            hwm_kib: usage.hwm_kib,
            note: None,
        }
    }

    pub fn with_latency(mut self, latency: Option<LatencySummary>) -> Measured {
        self.latency = latency;
        self
    }
}

/// Memory of a server holding a retained backlog in its memory configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Footprint {
    pub system: System,
    pub messages: u64,
    pub size: usize,
    pub outcome: Result<Usage, String>,
}

/// The machine and software a run was made on.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory: String,
    pub kernel: String,
    pub rustc: String,
    pub commit: String,
    pub date: String,
    pub versions: Vec<(String, String)>,
    pub load_before: String,
    pub load_after: String,
    pub wall_seconds: f64,
}

/// Everything one run measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub plan: Plan,
    pub runs: Vec<RunResult>,
    pub footprints: Vec<Footprint>,
}
