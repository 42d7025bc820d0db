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

/// One server to measure, `name=http://host:port`; `name=http://a:port,http://b:port`
/// sends the watch workload's watches to the second (a follower of the first, to measure
/// how long after a write is acknowledged another node shows it). The idle workload counts
/// the S3 requests of every endpoint named (the nodes of one cluster).
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub endpoint: String,
    pub watch_endpoint: Option<String>,
    /// Every endpoint named, the first included.
    pub nodes: Vec<String>,
}

fn endpoint(s: &str) -> Result<String, String> {
    let endpoint = if s.contains("://") {
        s.to_string()
    } else {
        format!("http://{s}")
    };
    if !endpoint.starts_with("http://") {
        return Err(format!(
            "{endpoint}: only plain http:// endpoints are benchmarked"
        ));
    }
    Ok(endpoint)
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (name, endpoints) = s.split_once('=').unwrap_or(("target", s));
        let nodes = endpoints
            .split(',')
            .map(endpoint)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Target {
            name: name.to_string(),
            endpoint: nodes[0].clone(),
            watch_endpoint: nodes.get(1).cloned(),
            nodes,
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
    /// latency, acknowledgement-to-event latency, lost events (watches on the target's
    /// second endpoint if it names one).
    Watch,
    /// 90 % linearizable gets, 10 % puts.
    Mixed,
    /// Load --memory-keys keys of --memory-value-size bytes; resident memory growth per key.
    Memory,
    /// An idle control plane of as many nodes as the target names endpoints: each node's
    /// kubelet renews its node lease and its apiserver its identity lease every 10 s, the
    /// controller-manager and scheduler leaders theirs every 2 s, and an event is written
    /// every 5 s; S3 requests by kind over all the nodes and what they cost a month.
    Idle,
    /// Kubernetes-shaped: the clients update shared objects as GuaranteedUpdate does (a get,
    /// then CAS on mod_revision, retried from the current object on a conflict), while 4 watch streams
    /// with prev_kv (kube-apiserver's watch caches) follow the prefix and one client lists
    /// it in pages of 500 ten times a second; acknowledged writes/s.
    Kubernetes,
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
            Workload::Kubernetes => "kubernetes",
            Workload::Idle => "idle",
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

#[cfg(test)]
mod tests {
    use super::Target;

    #[test]
    fn a_target_names_one_endpoint_or_a_second_for_watches() {
        let t: Target = "netsy=127.0.0.1:2379".parse().unwrap();
        assert_eq!(
            (t.name.as_str(), t.endpoint.as_str(), t.watch_endpoint),
            ("netsy", "http://127.0.0.1:2379", None)
        );
        let t: Target = "pair=http://a:2379,b:2379".parse().unwrap();
        assert_eq!(t.endpoint, "http://a:2379");
        assert_eq!(t.watch_endpoint.as_deref(), Some("http://b:2379"));
        assert_eq!(t.nodes, ["http://a:2379", "http://b:2379"]);
        let t: Target = "three=a:1,b:2,c:3".parse().unwrap();
        assert_eq!(t.nodes.len(), 3);
        assert!("x=https://a:2379".parse::<Target>().is_err());
        assert!("x=a:2379,https://b:2379".parse::<Target>().is_err());
    }
}
