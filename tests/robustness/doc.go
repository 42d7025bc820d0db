// Package robustness runs three `netsy serve` processes on one LocalStack prefix under
// Kubernetes-shaped load while their leader is killed (kill -9), paused (SIGSTOP past its
// lease) or stopped (SIGTERM) every few seconds, and checks what the clients observed:
// every acknowledged write present at its revision, no revision acknowledged twice, every
// node's watch stream gap-free and in order across the failovers, and the history of puts,
// gets and compare-and-swaps on a few keys, made through every node, linearizable by
// porcupine's checker (as etcd's robustness tests check etcd). It prints how long writes
// stopped after each kind of failover.
//
// Environment: NETSY_BIN (default ../../target/debug/netsy), NETSY_TEST_S3_ENDPOINT and
// NETSY_TEST_BUCKET (LocalStack, as the Rust suites), ROBUSTNESS_DURATION (default 2m),
// ROBUSTNESS_EVERY (the time between failovers, default 10s), ROBUSTNESS_KINDS (the
// failovers to rotate through, comma-separated, e.g. "SIGSTOP,kill -9"), ROBUSTNESS_OUT
// (where the nodes' logs and, when the check fails, porcupine's visualisation go; default
// the test's temporary directory).
package robustness
