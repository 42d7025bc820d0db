// Command etcd is the etcd server of go.etcd.io/etcd/server/v3, built from the Go module
// proxy: the current etcd the differential, etcdctl and Kubernetes suites compare Netsy
// with (Debian ships only 3.4).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
