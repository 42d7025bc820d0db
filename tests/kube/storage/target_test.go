package storage

// The datastore under test. KUBE_STORAGE_TARGET picks it: "netsy" (the default: a
// `netsy serve` process on a fresh directory store per test, or on a fresh LocalStack
// prefix with NETSY_STORAGE_S3=1; with NETSY_STORAGE_FOLLOWER=1 a second node follows it
// and the suite talks to that follower only; NETSY_BIN names the binary), "etcd" (an embedded etcd
// server from go.etcd.io/etcd/server/v3, the reference the upstream suite runs against) or
// "kine" (a `kine` process, KINE_BIN, on a fresh database per test). Every test gets a store of its own, as upstream's do.

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"

	"netsy.test/kube/internal/servers"
)

// targetOptions are the server settings a test may ask for.
type targetOptions struct {
	// progressNotify is the interval of watch progress notifications (0: the server's
	// default).
	progressNotify time.Duration
	// extra flags of the server.
	extra []string
}

func targetName() string {
	if t := os.Getenv("KUBE_STORAGE_TARGET"); t != "" {
		return t
	}
	return "netsy"
}

// startTarget starts a fresh datastore and returns a client of it, recording its calls
// as upstream's test server does (KVRecorder and KubernetesRecorder).
func startTarget(t testing.TB, opts targetOptions) *kubernetes.Client {
	t.Helper()
	var endpoint string
	switch name := targetName(); name {
	case "netsy":
		endpoint = startNetsy(t, opts)
	case "etcd":
		endpoint = startEtcd(t, opts)
	case "kine":
		endpoint = startKine(t, opts)
	default:
		t.Fatalf("KUBE_STORAGE_TARGET=%q: want netsy, etcd or kine", name)
	}
	client, err := kubernetes.New(clientv3.Config{
		Endpoints:   []string{endpoint},
		DialTimeout: 10 * time.Second,
		Logger:      zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-client"),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	record(client)
	return client
}

// startNetsy starts `netsy serve` on a fresh directory store and waits until it serves.
func startNetsy(t testing.TB, opts targetOptions) string {
	dir := t.TempDir()
	store := filepath.Join(dir, "store")
	if os.Getenv("NETSY_STORAGE_S3") != "" {
		// LocalStack (scripts/localstack.sh), a fresh prefix per test.
		store = fmt.Sprintf("s3://netsy-test/storage-suite-%d", time.Now().UnixNano())
		args := []string{"--s3-endpoint", "http://127.0.0.1:4566", "--s3-force-path-style"}
		t.Setenv("AWS_ACCESS_KEY_ID", "test")
		t.Setenv("AWS_SECRET_ACCESS_KEY", "test")
		t.Setenv("AWS_REGION", "us-east-1")
		opts.extra = args
	}
	args := append([]string{"serve", "--store", store}, opts.extra...)
	if opts.progressNotify > 0 {
		args = append(args, "--progress-notify-interval-ms", strconv.Itoa(int(opts.progressNotify/time.Millisecond)))
	}
	start := func(name string) string {
		return "http://" + servers.Start(t, servers.NetsyBin(t), append(args, "--name", name), "--listen-client-addr", "serving etcd v3 API", dir)
	}
	leader := start("storage-suite")
	if os.Getenv("NETSY_STORAGE_FOLLOWER") == "" {
		return leader
	}
	// A second node on the same store follows the first; the suite talks only to it, so
	// every write is forwarded and every read and watch served from a follower's state.
	follower := start("storage-suite-follower")
	waitFollowing(t, follower, leader)
	return follower
}

// waitFollowing waits until the node at follower reports the node at leader as its leader.
func waitFollowing(t testing.TB, follower, leader string) {
	t.Helper()
	ids := map[string]uint64{}
	for _, ep := range []string{leader, follower} {
		cli, err := clientv3.New(clientv3.Config{Endpoints: []string{ep}, DialTimeout: 10 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			s, err := cli.Status(ctx, ep)
			cancel()
			if err == nil && s.Leader != 0 {
				ids[ep] = s.Leader
				if ep == leader && s.Leader != s.Header.MemberId {
					t.Fatalf("the first node does not lead: %+v", s)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s has no leader: %v", ep, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
		_ = cli.Close()
	}
	if ids[leader] != ids[follower] {
		t.Fatalf("the follower's leader is %x, not %x", ids[follower], ids[leader])
	}
}
func kineBin(t testing.TB) string {
	bin := os.Getenv("KINE_BIN")
	if bin == "" {
		t.Fatal("KUBE_STORAGE_TARGET=kine needs KINE_BIN (scripts/kube.sh builds it)")
	}
	return bin
}

// startKine starts kine on a fresh database: KINE_ENDPOINT (default SQLite) with {dir}
// replaced by a fresh directory and {prefix} by a fresh name (a database, a bucket
// folder) and {natsconf} by the configuration of an embedded NATS server storing in the
// directory, plus KINE_ARGS (split on spaces, {prefix} replaced too), e.g. KINE_ENDPOINT='t4://{dir}/t4' KINE_ARGS='--s3-bucket b --s3-folder
// {prefix} --s3-endpoint http://127.0.0.1:4566' for its t4 backend on S3.
func startKine(t testing.TB, opts targetOptions) string {
	dir := t.TempDir()
	endpoint := os.Getenv("KINE_ENDPOINT")
	if endpoint == "" {
		endpoint = "sqlite://{dir}/state.db?_journal=WAL&cache=shared&_busy_timeout=30000&_txlock=immediate"
	}
	prefix := fmt.Sprintf("kine_%d", time.Now().UnixNano())
	if strings.Contains(endpoint, "{natsconf}") {
		// An embedded NATS server of its own: JetStream in this test's directory.
		conf := filepath.Join(dir, "nats.conf")
		body := fmt.Sprintf("listen: 127.0.0.1:-1\njetstream {\n  store_dir: %q\n}\n", filepath.Join(dir, "jetstream"))
		if err := os.WriteFile(conf, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		endpoint = strings.ReplaceAll(endpoint, "{natsconf}", conf)
	}
	endpoint = strings.ReplaceAll(strings.ReplaceAll(endpoint, "{dir}", dir), "{prefix}", prefix)
	args := []string{"--metrics-bind-address", "0", "--endpoint", endpoint}
	for _, a := range strings.Fields(os.Getenv("KINE_ARGS")) {
		args = append(args, strings.ReplaceAll(a, "{prefix}", prefix))
	}
	if opts.progressNotify > 0 {
		args = append(args, "--watch-progress-notify-interval", opts.progressNotify.String())
	}
	return "http://" + servers.Start(t, kineBin(t), args, "--listen-address", "Kine available at", dir)
}

// startEtcd starts an embedded etcd configured as upstream's test server is.
func startEtcd(t testing.TB, opts targetOptions) string {
	return servers.StartEtcd(t, func(cfg *embed.Config) {
		if opts.progressNotify > 0 {
			cfg.WatchProgressNotifyInterval = opts.progressNotify
		}
	})
}

// bumpRevision writes an unrelated key and returns the revision it made.
func bumpRevision(ctx context.Context, t *testing.T, client *clientv3.Client) int64 {
	resp, err := client.KV.Put(ctx, "increaseRV", "ok")
	if err != nil {
		t.Fatalf("put increaseRV: %v", err)
	}
	return resp.Header.Revision
}
