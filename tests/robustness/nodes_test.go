package robustness

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

func env(name, fallback string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return fallback
}

func netsyBin(t testing.TB) string {
	if bin := os.Getenv("NETSY_BIN"); bin != "" {
		return bin
	}
	_, here, _, _ := runtime.Caller(0) // tests/robustness/nodes_test.go
	bin, err := filepath.Abs(filepath.Join(filepath.Dir(here), "../../target/debug/netsy"))
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// node is one `netsy serve` process, restarted on the same port after each kill, as an
// autoscaling group replaces a VM behind the same address.
type node struct {
	t       testing.TB
	name    string
	addr    string
	store   string
	dir     string
	cmd     *exec.Cmd
	exited  chan error
	started int
	// s3 carries every request of this node to LocalStack; peers carries what other nodes
	// send it (its advertised URL): each can be cut on its own.
	s3, peers *proxy
}

func freeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

func newCluster(t *testing.T, n int) []*node {
	store := fmt.Sprintf("s3://%s/robustness-%016x", env("NETSY_TEST_BUCKET", "netsy-test"), rand.Uint64())
	dir := env("ROBUSTNESS_OUT", t.TempDir())
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	endpoint, err := url.Parse(env("NETSY_TEST_S3_ENDPOINT", "http://127.0.0.1:4566"))
	if err != nil {
		t.Fatal(err)
	}
	var nodes []*node
	for i := range n {
		nd := &node{t: t, name: fmt.Sprintf("n%d", i), addr: freeAddr(t), store: store, dir: dir}
		nd.s3, nd.peers = newProxy(t, endpoint.Host), newProxy(t, nd.addr)
		nd.start()
		nodes = append(nodes, nd)
		t.Cleanup(func() { nd.kill9() })
	}
	return nodes
}

func (n *node) logPath() string {
	return filepath.Join(n.dir, fmt.Sprintf("%s-%d.log", n.name, n.started))
}

func (n *node) start() {
	n.started++
	log, err := os.Create(n.logPath())
	if err != nil {
		n.t.Fatal(err)
	}
	cmd := exec.Command(netsyBin(n.t), "serve", "--store", n.store, "--name", n.name,
		"--listen-client-addr", n.addr, "--advertise-client-urls", "http://"+n.peers.addr,
		// Snapshots and clean-up during the run, so that restarts load a snapshot and a
		// follower that falls behind a clean-up has to reload.
		"--snapshot-every-records", "3000", "--snapshot-grace-seconds", "20")
	cmd.Env = append(os.Environ(), "AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test",
		"AWS_REGION=us-east-1", "NETSY_S3_FORCE_PATH_STYLE=true", "RUST_LOG=info",
		"NETSY_S3_ENDPOINT=http://"+n.s3.addr)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	_ = log.Close()
	n.cmd, n.exited = cmd, make(chan error, 1)
	go func() { n.exited <- cmd.Wait() }()
}

func (n *node) signal(s syscall.Signal) {
	if n.cmd != nil {
		_ = n.cmd.Process.Signal(s)
	}
}

func (n *node) kill9() {
	if n.cmd == nil {
		return
	}
	n.signal(syscall.SIGCONT)
	_ = n.cmd.Process.Kill()
	<-n.exited
	n.cmd = nil
}

// terminate sends SIGTERM and waits for the process to exit on its own.
func (n *node) terminate() error {
	n.signal(syscall.SIGTERM)
	select {
	case err := <-n.exited:
		n.cmd = nil
		return err
	case <-time.After(30 * time.Second):
		n.kill9()
		return fmt.Errorf("%s did not exit within 30 s of SIGTERM", n.name)
	}
}

func (n *node) log() string {
	out := ""
	for i := 1; i <= n.started; i++ {
		b, _ := os.ReadFile(filepath.Join(n.dir, fmt.Sprintf("%s-%d.log", n.name, i)))
		out += fmt.Sprintf("--- %s, process %d ---\n%s", n.name, i, tail(string(b), 40))
	}
	return out
}

func tail(s string, lines int) string {
	count := 0
	for i := len(s) - 1; i >= 0; i-- {
		if s[i] == '\n' {
			count++
			if count > lines {
				return s[i+1:]
			}
		}
	}
	return s
}

// client is an etcd client of one node only, so the test decides where each request goes.
func (n *node) client(t testing.TB) *clientv3.Client {
	cli, err := clientv3.New(clientv3.Config{
		Endpoints:   []string{n.addr},
		DialTimeout: 2 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cli.Close() })
	return cli
}

// died fails the test when the process exited without being told to.
func (n *node) died() {
	if n.cmd == nil {
		return
	}
	select {
	case err := <-n.exited:
		n.cmd = nil
		n.t.Fatalf("%s exited on its own (%v):\n%s", n.name, err, n.log())
	default:
	}
}

// leader asks every node for its status until one reports itself leading.
func leader(t testing.TB, nodes []*node, clients []*clientv3.Client, within time.Duration) int {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for i, cli := range clients {
			nodes[i].died()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			s, err := cli.Status(ctx, nodes[i].addr)
			cancel()
			if err == nil && s.Leader != 0 && s.Leader == s.Header.MemberId {
				return i
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	msg := ""
	for _, n := range nodes {
		msg += n.log()
	}
	t.Fatalf("no node leads within %v:\n%s", within, msg)
	return -1
}
