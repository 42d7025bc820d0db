// Package servers starts the datastores the Go suites talk to: a `netsy serve` process
// (or any server binary that logs a ready line), and an embedded etcd configured as
// kube-apiserver's own etcd3 tests configure theirs.
package servers

import (
	"bufio"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
)

// portLock keeps two servers of one test binary from picking the same free port.
var portLock sync.Mutex

// FreeAddr binds a loopback port and releases it; the caller binds it again at once.
func FreeAddr(t testing.TB) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = l.Close() }()
	return l.Addr().String()
}

// NetsyBin is NETSY_BIN, else the repository's debug build (which `cargo test` makes).
func NetsyBin(t testing.TB) string {
	if bin := os.Getenv("NETSY_BIN"); bin != "" {
		return bin
	}
	_, here, _, _ := runtime.Caller(0) // this file: tests/kube/internal/servers
	bin, err := filepath.Abs(filepath.Join(filepath.Dir(here), "../../../../target/debug/netsy"))
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// Start runs bin with args plus `listenFlag 127.0.0.1:PORT`, waits for ready in its log,
// and stops it at the end of the test; the log is kept in dir and its end printed when
// the test failed. A port taken between picking and binding is picked again. It returns
// the address.
func Start(t testing.TB, bin string, args []string, listenFlag, ready, dir string) string {
	t.Helper()
	for attempt := 0; ; attempt++ {
		portLock.Lock()
		addr := FreeAddr(t)
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
				continue
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
		return addr
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

// StartNetsy runs `netsy serve` with args (a --store among them) and returns its address.
func StartNetsy(t testing.TB, args ...string) string {
	return Start(t, NetsyBin(t), append([]string{"serve"}, args...), "--listen-client-addr", "serving etcd v3 API", t.TempDir())
}

// StartEtcd runs an embedded etcd (the go.etcd.io/etcd/server/v3 the module pins) on a
// fresh directory, as upstream's etcd3 test server does; configure may change the
// configuration first. It returns the client URL.
func StartEtcd(t testing.TB, configure func(*embed.Config)) string {
	portLock.Lock()
	defer portLock.Unlock()
	cfg := embed.NewConfig()
	cfg.UnsafeNoFsync = true
	client := url.URL{Scheme: "http", Host: FreeAddr(t)}
	peer := url.URL{Scheme: "http", Host: FreeAddr(t)}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{client}, []url.URL{client}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{peer}, []url.URL{peer}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zaptest.NewLogger(t, zaptest.Level(zapcore.ErrorLevel)).Named("etcd-server"))
	cfg.Dir = t.TempDir()
	if configure != nil {
		configure(cfg)
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
	return client.String()
}
