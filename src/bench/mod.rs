//! `netsy bench`: the same gRPC client, the same workloads, against Netsy and etcd.
//!
//! Claims about speed are only worth the comparison they come with, so every workload runs
//! against each target in turn (one process, same machine, same client code: the etcd v3
//! gRPC stubs compiled from etcd's protos) and the report prints ratios to the first target.
//! Timing lives here and nowhere in the test suite.

mod report;
pub mod startup;
mod workloads;

pub use report::{print_table, Outcome};
use std::time::Duration;

/// One server to measure, `name=http://host:port`.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub endpoint: String,
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, endpoint) = s.split_once('=').unwrap_or(("target", s));
        let endpoint = if endpoint.contains("://") {
            endpoint.to_string()
        } else {
            format!("http://{endpoint}")
        };
        if !endpoint.starts_with("http://") {
            return Err(format!(
                "{endpoint}: only plain http:// endpoints are benchmarked"
            ));
        }
        Ok(Target {
            name: name.to_string(),
            endpoint,
        })
    }
}

/// What a workload does; see `netsy bench --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Puts of random keys among --keys.
    Put,
    /// Linearizable gets of preloaded keys.
    Get,
    /// Serializable gets of preloaded keys.
    GetSerializable,
    /// Kubernetes GuaranteedUpdate: Txn(mod_revision == last ? put : get) on the client's keys.
    Txn,
    /// Prefix range with limit 500 over 10,000 preloaded keys (a paginated list's first page).
    List,
    /// --watchers watch streams on one prefix while the clients put: events/s, put-to-event
    /// latency, lost events.
    Watch,
    /// 90 % linearizable gets, 10 % puts.
    Mixed,
    /// Load --memory-keys keys of --memory-value-size bytes; resident memory growth per key.
    Memory,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::GetSerializable => "get-serializable",
            Workload::Txn => "txn",
            Workload::List => "list",
            Workload::Watch => "watch",
            Workload::Mixed => "mixed",
            Workload::Memory => "memory",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub clients: usize,
    pub connections: usize,
    pub duration: Duration,
    pub keys: usize,
    pub value_size: usize,
    pub watchers: usize,
    /// memory: keys loaded and their value size.
    pub memory_keys: usize,
    pub memory_value_size: usize,
}

/// Runs every workload against every target, in that order (workload-major, so the targets
/// of one workload run back to back under the same machine conditions).
pub async fn run(
    targets: &[Target],
    workloads: &[Workload],
    options: &Options,
) -> anyhow::Result<Vec<Outcome>> {
    let mut outcomes = Vec::new();
    let run_id = format!("{:08x}", rand::random::<u32>());
    for &w in workloads {
        for t in targets {
            eprintln!("bench: {} on {} ({})", w.name(), t.name, t.endpoint);
            let prefix = format!("/bench/{run_id}/{}/", w.name());
            let outcome = workloads::run(t, w, options, &prefix).await?;
            eprintln!("bench:   {}", outcome.summary());
            outcomes.push(outcome);
        }
    }
    Ok(outcomes)
}
