package e2e

// A control plane on Netsy: the processes, their certificates and their flags.

import (
	"bufio"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"netsy.test/kube/internal/servers"
)

// config is what the environment chooses (scripts/kube-e2e.sh sets it).
type config struct {
	netsyBin string
	kubeBins string
	store    string // "dir" or "s3"
	mtls     bool
}

func loadConfig(t *testing.T) config {
	c := config{
		netsyBin: os.Getenv("NETSY_BIN"),
		kubeBins: os.Getenv("KUBE_BIN_DIR"),
		store:    envOr("KUBE_E2E_STORE", "dir"),
		mtls:     envOr("KUBE_E2E_TLS", "mtls") == "mtls",
	}
	if c.netsyBin == "" || c.kubeBins == "" {
		t.Fatal("NETSY_BIN and KUBE_BIN_DIR must be set (scripts/kube-e2e.sh sets them)")
	}
	return c
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// process is a started server; its log is kept in a file and shown when the test fails.
type process struct {
	name   string
	cmd    *exec.Cmd
	log    string
	exited chan error
}

func start(t *testing.T, dir, name, bin string, args []string, env ...string) *process {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout = f
	cmd.Stderr = f
	cmd.Env = append(os.Environ(), env...)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	p := &process{name: name, cmd: cmd, log: logPath, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait(); _ = f.Close() }()
	return p
}

// stop sends SIGTERM and waits (SIGKILL after 20 s).
func (p *process) stop() {
	if p.cmd.ProcessState != nil {
		return
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
	case <-time.After(20 * time.Second):
		_ = p.cmd.Process.Kill()
		<-p.exited
	}
}

func (p *process) tail(lines int) string {
	b, _ := os.ReadFile(p.log)
	all := strings.Split(string(b), "\n")
	if len(all) > lines {
		all = all[len(all)-lines:]
	}
	return strings.Join(all, "\n")
}

// cluster is Netsy, kube-apiserver, kube-controller-manager and kube-scheduler.
type cluster struct {
	cfg        config
	dir        string
	netsyAddr  string
	netsyArgs  []string
	netsyEnv   []string
	netsy      *process
	apiserver  *process
	others     []*process
	apiAddr    string
	kubeconfig string
	token      string
	certs      certFiles
}

// startCluster brings the control plane up and tears it down at the end of the test.
func startCluster(t *testing.T) *cluster {
	cfg := loadConfig(t)
	dir := t.TempDir()
	c := &cluster{cfg: cfg, dir: dir, netsyAddr: servers.FreeAddr(t), apiAddr: servers.FreeAddr(t), token: "e2e-admin-token"}
	certs := writeCerts(t, dir)
	c.certs = certs
	c.netsyArgs = []string{"serve", "--name", "e2e", "--listen-client-addr", c.netsyAddr}
	switch cfg.store {
	case "dir":
		c.netsyArgs = append(c.netsyArgs, "--store", filepath.Join(dir, "store"))
	case "s3":
		prefix := fmt.Sprintf("kube-e2e-%d", time.Now().UnixNano())
		c.netsyArgs = append(c.netsyArgs, "--store", "s3://"+envOr("NETSY_TEST_BUCKET", "netsy-test")+"/"+prefix,
			"--s3-endpoint", envOr("NETSY_TEST_S3_ENDPOINT", "http://127.0.0.1:4566"), "--s3-force-path-style")
		c.netsyEnv = []string{"AWS_ACCESS_KEY_ID=test", "AWS_SECRET_ACCESS_KEY=test", "AWS_REGION=us-east-1"}
	default:
		t.Fatalf("KUBE_E2E_STORE=%q: want dir or s3", cfg.store)
	}
	scheme := "http"
	if cfg.mtls {
		scheme = "https"
		c.netsyArgs = append(c.netsyArgs, "--cert-file", certs.serverCert, "--key-file", certs.serverKey,
			"--trusted-ca-file", certs.ca, "--client-cert-auth")
	}
	c.startNetsy(t)

	tokens := filepath.Join(dir, "tokens.csv")
	must(t, os.WriteFile(tokens, []byte(c.token+",admin,admin,system:masters\n"), 0o600))
	apiArgs := []string{
		"--etcd-servers=" + scheme + "://" + c.netsyAddr,
		// Short, so that compaction happens while the test runs.
		"--etcd-compaction-interval=15s",
		"--event-ttl=20s",
		"--service-account-key-file=" + certs.saPub,
		"--service-account-signing-key-file=" + certs.saKey,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--token-auth-file=" + tokens,
		"--authorization-mode=Node,RBAC",
		"--secure-port=" + port(c.apiAddr),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		// The endpoint reconciler refuses a loopback advertise address.
		"--endpoint-reconciler-type=none",
		"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"--service-cluster-ip-range=10.96.0.0/16",
		"--enable-garbage-collector=true",
	}
	if cfg.mtls {
		apiArgs = append(apiArgs, "--etcd-cafile="+certs.ca, "--etcd-certfile="+certs.clientCert, "--etcd-keyfile="+certs.clientKey)
	}
	c.apiserver = start(t, dir, "kube-apiserver", filepath.Join(cfg.kubeBins, "kube-apiserver"), apiArgs)
	t.Cleanup(func() {
		for _, p := range c.others {
			p.stop()
		}
		c.apiserver.stop()
		c.netsy.stop()
		if t.Failed() {
			for _, p := range append([]*process{c.netsy, c.apiserver}, c.others...) {
				t.Logf("--- %s log (last lines):\n%s", p.name, p.tail(40))
			}
		}
	})
	c.kubeconfig = filepath.Join(dir, "kubeconfig")
	must(t, os.WriteFile(c.kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster: {server: "https://%s", insecure-skip-tls-verify: true}
users:
- name: admin
  user: {token: %s}
contexts:
- name: e2e
  context: {cluster: e2e, user: admin}
current-context: e2e
`, c.apiAddr, c.token)), 0o600))
	c.waitReady(t, 120*time.Second)

	kcm := []string{
		"--kubeconfig=" + c.kubeconfig,
		"--authentication-kubeconfig=" + c.kubeconfig,
		"--authorization-kubeconfig=" + c.kubeconfig,
		"--leader-elect=true",
		"--service-account-private-key-file=" + certs.saKey,
		"--root-ca-file=" + filepath.Join(dir, "apiserver-certs", "apiserver.crt"),
		"--use-service-account-credentials=false",
		"--secure-port=0",
		"--controllers=*",
	}
	c.others = append(c.others, start(t, dir, "kube-controller-manager", filepath.Join(cfg.kubeBins, "kube-controller-manager"), kcm))
	sched := []string{
		"--kubeconfig=" + c.kubeconfig,
		"--authentication-kubeconfig=" + c.kubeconfig,
		"--authorization-kubeconfig=" + c.kubeconfig,
		"--leader-elect=true",
		"--secure-port=0",
	}
	c.others = append(c.others, start(t, dir, "kube-scheduler", filepath.Join(cfg.kubeBins, "kube-scheduler"), sched))
	return c
}

func (c *cluster) startNetsy(t *testing.T) {
	c.netsy = start(t, c.dir, "netsy", c.cfg.netsyBin, c.netsyArgs, append(c.netsyEnv, "RUST_LOG=info")...)
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-c.netsy.exited:
			t.Fatalf("netsy exited: %v\n%s", err, c.netsy.tail(30))
		default:
		}
		if logHas(c.netsy.log, "serving etcd v3 API") {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("netsy did not start:\n%s", c.netsy.tail(30))
}

// restartNetsy stops Netsy (SIGTERM) and starts it again on the same store and port.
func (c *cluster) restartNetsy(t *testing.T) {
	c.netsy.stop()
	// The log file is appended to: only the new process's line counts.
	must(t, os.Rename(c.netsy.log, c.netsy.log+".1"))
	c.startNetsy(t)
}

func logHas(path, needle string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer func() { _ = f.Close() }()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 1<<20), 1<<20)
	for s.Scan() {
		if strings.Contains(s.Text(), needle) {
			return true
		}
	}
	return false
}

func port(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// get fetches path from the apiserver with the admin token.
func (c *cluster) get(path string) (int, string, error) {
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	req, _ := http.NewRequest("GET", "https://"+c.apiAddr+path, nil)
	req.Header.Set("Authorization", "Bearer "+c.token)
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// netsyMetrics reads Netsy's /metrics on its client port (with the client certificate
// when it requires one).
func (c *cluster) netsyMetrics(t *testing.T) string {
	scheme, tlsConfig := "http", &tls.Config{}
	if c.cfg.mtls {
		scheme = "https"
		cert, err := tls.LoadX509KeyPair(c.certs.clientCert, c.certs.clientKey)
		must(t, err)
		pool := x509.NewCertPool()
		ca, err := os.ReadFile(c.certs.ca)
		must(t, err)
		pool.AppendCertsFromPEM(ca)
		tlsConfig = &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool}
	}
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{TLSClientConfig: tlsConfig}}
	resp, err := client.Get(scheme + "://" + c.netsyAddr + "/metrics")
	must(t, err)
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	must(t, err)
	return string(body)
}

func (c *cluster) waitReady(t *testing.T, timeout time.Duration) {
	deadline := time.Now().Add(timeout)
	last := ""
	for time.Now().Before(deadline) {
		select {
		case err := <-c.apiserver.exited:
			t.Fatalf("kube-apiserver exited: %v\n%s", err, c.apiserver.tail(40))
		default:
		}
		code, body, err := c.get("/readyz")
		if err == nil && code == 200 && strings.TrimSpace(body) == "ok" {
			return
		}
		last = fmt.Sprintf("%d %v %s", code, err, body)
		time.Sleep(500 * time.Millisecond)
	}
	t.Fatalf("kube-apiserver not ready within %v: %s\n%s", timeout, last, c.apiserver.tail(40))
}

// kubectl runs kubectl with the admin kubeconfig and returns its output; a failure fails
// the test unless allowFail.
func (c *cluster) kubectl(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.kubectlErr(args...)
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return out
}

func (c *cluster) kubectlErr(args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(c.cfg.kubeBins, "kubectl"), append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// kubectlIn runs kubectl with stdin.
func (c *cluster) kubectlIn(t *testing.T, stdin string, args ...string) string {
	t.Helper()
	cmd := exec.Command(filepath.Join(c.cfg.kubeBins, "kubectl"), append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// eventually polls cond until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, detail := cond()
		if ok {
			return
		}
		last = detail
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v (last: %s)", what, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

type certFiles struct {
	ca, serverCert, serverKey, clientCert, clientKey, saKey, saPub string
}

// writeCerts makes a CA, a server certificate for 127.0.0.1 and localhost, a client
// certificate (kube-apiserver's to Netsy), and the service-account signing key.
func writeCerts(t *testing.T, dir string) certFiles {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	must(t, err)
	now := time.Now().Add(-time.Hour)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "netsy-e2e-ca"},
		NotBefore: now, NotAfter: now.Add(48 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	must(t, err)
	caCert, err := x509.ParseCertificate(caDER)
	must(t, err)
	leaf := func(name string, serial int64, usage x509.ExtKeyUsage) (string, string) {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		must(t, err)
		tmpl := &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: now, NotAfter: now.Add(48 * time.Hour),
			KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
			ExtKeyUsage: []x509.ExtKeyUsage{usage},
			DNSNames:    []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
		must(t, err)
		keyDER, err := x509.MarshalECPrivateKey(key)
		must(t, err)
		certPath, keyPath := filepath.Join(dir, name+".pem"), filepath.Join(dir, name+"-key.pem")
		writePEM(t, certPath, "CERTIFICATE", der)
		writePEM(t, keyPath, "EC PRIVATE KEY", keyDER)
		return certPath, keyPath
	}
	c := certFiles{ca: filepath.Join(dir, "ca.pem")}
	writePEM(t, c.ca, "CERTIFICATE", caDER)
	c.serverCert, c.serverKey = leaf("server", 2, x509.ExtKeyUsageServerAuth)
	c.clientCert, c.clientKey = leaf("client", 3, x509.ExtKeyUsageClientAuth)
	sa, err := rsa.GenerateKey(rand.Reader, 2048)
	must(t, err)
	c.saKey, c.saPub = filepath.Join(dir, "sa.key"), filepath.Join(dir, "sa.pub")
	writePEM(t, c.saKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(sa))
	pub, err := x509.MarshalPKIXPublicKey(&sa.PublicKey)
	must(t, err)
	writePEM(t, c.saPub, "PUBLIC KEY", pub)
	return c
}

func writePEM(t *testing.T, path, typ string, der []byte) {
	must(t, os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600))
}

func writeFile(path, content string) error { return os.WriteFile(path, []byte(content), 0o644) }
