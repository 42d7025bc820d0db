// Package etcdapi compares Netsy's answers with etcd 3.7's, chunk by chunk, for the parts
// of the etcd API that only a current Go client speaks (RangeStream, in the default
// Kubernetes 1.37 build; 1.34's etcd client has none); the Rust differential suite covers
// the rest with etcd 3.4 and 3.7.
package etcdapi
