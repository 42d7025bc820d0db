package storage

// The datastore under test. KUBE_STORAGE_TARGET picks it: "netsy" (the default: a
// `netsy serve` process on a fresh directory store per test, or on a fresh LocalStack
// prefix with NETSY_STORAGE_S3=1; NETSY_BIN names the binary), "etcd" (an embedded etcd server from go.etcd.io/etcd/server/v3, the reference
// the upstream suite runs against) or "kine" (a `kine` process, KINE_BIN, on a fresh
// SQLite file per test). Every test gets a store of its own, as upstream's do.

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
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

var portLock sync.Mutex

// freePort binds a loopback port and releases it; the caller binds it again at once.
func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port
}

func netsyBin(t testing.TB) string {
	if bin := os.Getenv("NETSY_BIN"); bin != "" {
		return bin
	}
	// The repository's debug build, which `cargo test` makes.
	bin, err := filepath.Abs("../../../target/debug/netsy")
	if err != nil {
		t.Fatal(err)
	}
	return bin
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
	args := append([]string{"serve", "--store", store, "--name", "storage-suite"}, opts.extra...)
	if opts.progressNotify > 0 {
		args = append(args, "--progress-notify-interval-ms", strconv.Itoa(int(opts.progressNotify/time.Millisecond)))
	}
	return startProcess(t, netsyBin(t), args, "--listen-client-addr", "serving etcd v3 API", dir)
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
	return startProcess(t, kineBin(t), args, "--listen-address", "Kine available at", dir)
}

// startProcess runs bin with args plus `listenFlag 127.0.0.1:PORT`, waits for ready in
// its log, and stops it at the end of the test. The log is kept in dir and printed when
// the test failed.
func startProcess(t testing.TB, bin string, args []string, listenFlag, ready, dir string) string {
	t.Helper()
	for attempt := 0; ; attempt++ {
		portLock.Lock()
		addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
		logPath := filepath.Join(dir, fmt.Sprintf("server-%d.log", attempt))
		logFile, err := os.Create(logPath)
		if err != nil {
			portLock.Unlock()
			t.Fatal(err)
		}
		cmd := exec.Command(bin, append(append([]string{}, args...), listenFlag, addr)...)
		cmd.Stdout = logFile
		cmd.Stderr = logFile
		cmd.Env = append(os.Environ(), "RUST_LOG=info")
		if err := cmd.Start(); err != nil {
			portLock.Unlock()
			t.Fatalf("start %s: %v", bin, err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		err = waitForLog(logPath, ready, exited, 60*time.Second)
		portLock.Unlock()
		if err != nil {
			_ = cmd.Process.Kill()
			log, _ := os.ReadFile(logPath)
			if attempt < 2 && strings.Contains(string(log), "in use") {
				continue // the port was taken between picking and binding
			}
			t.Fatalf("%s did not start: %v\n%s", bin, err, log)
		}
		t.Cleanup(func() {
			_ = cmd.Process.Kill()
			<-exited
			_ = logFile.Close()
			if t.Failed() {
				log, _ := os.ReadFile(logPath)
				t.Logf("server log (%s):\n%s", bin, tail(string(log), 60))
			}
		})
		return "http://" + addr
	}
}

func waitForLog(path, needle string, exited <-chan error, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("exited: %v", err)
		default:
		}
		if f, err := os.Open(path); err == nil {
			scanner := bufio.NewScanner(f)
			scanner.Buffer(make([]byte, 1<<20), 1<<20)
			for scanner.Scan() {
				if strings.Contains(scanner.Text(), needle) {
					_ = f.Close()
					return nil
				}
			}
			_ = f.Close()
		}
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("no %q in its log within %v", needle, timeout)
}

func tail(s string, lines int) string {
	all := strings.Split(s, "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// startEtcd starts an embedded etcd configured as upstream's test server is.
func startEtcd(t testing.TB, opts targetOptions) string {
	portLock.Lock()
	defer portLock.Unlock()
	cfg := embed.NewConfig()
	cfg.UnsafeNoFsync = true
	clientURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	peerURL := url.URL{Scheme: "http", Host: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	cfg.ListenPeerUrls = []url.URL{peerURL}
	cfg.AdvertisePeerUrls = []url.URL{peerURL}
	cfg.ListenClientUrls = []url.URL{clientURL}
	cfg.AdvertiseClientUrls = []url.URL{clientURL}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-server"))
	cfg.Dir = t.TempDir()
	if opts.progressNotify > 0 {
		cfg.WatchProgressNotifyInterval = opts.progressNotify
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case <-time.After(60 * time.Second):
		e.Server.Stop()
		t.Fatal("etcd took too long to start")
	}
	return clientURL.String()
}

// bumpRevision writes an unrelated key and returns the revision it made.
func bumpRevision(ctx context.Context, t *testing.T, client *clientv3.Client) int64 {
	resp, err := client.KV.Put(ctx, "increaseRV", "ok")
	if err != nil {
		t.Fatalf("put increaseRV: %v", err)
	}
	return resp.Header.Revision
}
