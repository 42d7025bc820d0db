//! Named places where a test can make the process die, to prove that a crash at the worst
//! moment (a chunk stored but not yet acknowledged, a snapshot half written, a clean-up half
//! done) loses no acknowledged write. Random `kill -9` rarely lands exactly there.
//!
//! `NETSY_CRASHPOINT=NAME:N` aborts the process (as `kill -9` would: no destructors, no
//! flushing, no lease release) the N-th time the point NAME is reached. Unset, a point costs
//! one relaxed load. It is read once at start, is for tests only, and is documented as such.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Armed {
    name: String,
    at: u64,
    hits: AtomicU64,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let spec = std::env::var("NETSY_CRASHPOINT").ok()?;
            let (name, at) = spec.rsplit_once(':').unwrap_or((spec.as_str(), "1"));
            let at = at.parse().ok().filter(|n| *n > 0)?;
            tracing::warn!(point = name, at, "crash point armed (testing only)");
            Some(Armed {
                name: name.to_string(),
                at,
                hits: AtomicU64::new(0),
            })
        })
        .as_ref()
}

/// Every point, for tests choosing one and for the check that each is reachable.
pub const POINTS: &[&str] = &[
    "chunk-before-put",
    "chunk-after-put",
    "store-before-link",
    "segment-before-sync",
    "snapshot-before-put",
    "snapshot-after-put",
    "cleanup-after-delete",
];

/// Aborts the process if `name` is the armed point and this is its N-th hit.
pub fn hit(name: &'static str) {
    debug_assert!(POINTS.contains(&name), "unlisted crash point {name}");
    let Some(a) = armed() else { return };
    if a.name == name && a.hits.fetch_add(1, Ordering::Relaxed) + 1 == a.at {
        eprintln!("netsy: crash point {name} reached (hit {}), aborting", a.at);
        std::process::abort();
    }
}
