//! Netsy: an etcd replacement for Kubernetes whose only durable state is a bucket.
//!
//! See ARCHITECTURE.md for the map: `format` (the .netsy file), `store` (object stores),
//! `mvcc` (the in-memory multi-version state), `log` (group commit, recovery, leadership),
//! `lease` and `watch` (runtime parts of those etcd features), `cluster` (followers, forwarding,
//! roles), `api` (the gRPC services),
//! `server` (wiring), `inspect` (the CLI's file viewer).

pub mod api;
pub mod auth;
pub mod authority;
pub mod bench;
pub mod clock;
pub mod cluster;
pub mod coalesce;
pub mod crashpoint;
pub mod etcd_backend;
pub mod format;
#[doc(hidden)]
pub mod fuzz;
pub mod http;
pub mod inspect;
pub mod lease;
pub mod log;
pub mod metrics;
pub mod mvcc;
pub mod proto;
pub mod server;
pub mod store;
pub mod tls;
pub mod watch;
