// Package e2e runs a real Kubernetes control plane (kube-apiserver, kube-controller-manager
// and kube-scheduler built from k8s.io/kubernetes) on Netsy and drives it with kubectl:
// what a cluster does in its first minutes, a watch across a Netsy restart and a
// compaction, objects near the size limit, custom resources, server-side apply, chunked
// lists, leader election, event expiry, 410 Gone, finalizers and garbage collection.
package e2e

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestKubernetes(t *testing.T) {
	c := startCluster(t)

	t.Run("ReadyzReportsEtcd", func(t *testing.T) {
		out := c.kubectl(t, "get", "--raw", "/readyz?verbose")
		for _, check := range []string{"[+]etcd ok", "[+]etcd-readiness ok", "readyz check passed"} {
			if !strings.Contains(out, check) {
				t.Errorf("/readyz?verbose has no %q:\n%s", check, out)
			}
		}
	})

	t.Run("Namespaces", func(t *testing.T) {
		c.kubectl(t, "create", "namespace", "e2e")
		out := c.kubectl(t, "get", "namespaces", "-o", "name")
		for _, ns := range []string{"default", "kube-system", "kube-public", "kube-node-lease", "e2e"} {
			if !strings.Contains(out, "namespace/"+ns+"\n") {
				t.Errorf("no namespace %s in:\n%s", ns, out)
			}
		}
	})

	t.Run("WatchAcrossRestartAndCompaction", func(t *testing.T) { watchAcrossRestartAndCompaction(t, c) })

	t.Run("DeploymentReplicaSetPods", func(t *testing.T) {
		c.kubectl(t, "-n", "e2e", "create", "deployment", "web", "--image=registry.invalid/pause:1", "--replicas=3")
		eventually(t, 90*time.Second, "ReplicaSet and 3 Pods made by the controllers", func() (bool, string) {
			rs, _ := c.kubectlErr("-n", "e2e", "get", "replicasets", "-l", "app=web", "-o", "name")
			pods, _ := c.kubectlErr("-n", "e2e", "get", "pods", "-l", "app=web", "-o", "name")
			return strings.Count(rs, "replicaset.apps/web-") == 1 && strings.Count(pods, "pod/web-") == 3, rs + pods
		})
		// No nodes: the scheduler marks them unschedulable and they stay Pending.
		eventually(t, 60*time.Second, "the scheduler reports the pods unschedulable", func() (bool, string) {
			out, _ := c.kubectlErr("-n", "e2e", "get", "pods", "-l", "app=web", "-o",
				`jsonpath={range .items[*]}{.status.phase}/{.status.conditions[?(@.type=="PodScheduled")].reason}{"\n"}{end}`)
			return strings.Count(out, "Pending/Unschedulable") == 3, out
		})
	})

	t.Run("Service", func(t *testing.T) {
		c.kubectl(t, "-n", "e2e", "create", "service", "clusterip", "web", "--tcp=80:8080")
		ip := c.kubectl(t, "-n", "e2e", "get", "service", "web", "-o", "jsonpath={.spec.clusterIP}")
		if !strings.HasPrefix(ip, "10.96.") {
			t.Errorf("service clusterIP %q not from 10.96.0.0/16", ip)
		}
	})

	t.Run("ConfigMapAndSecretNear1MiB", func(t *testing.T) {
		// The API's limit for a ConfigMap's or Secret's data is 1 MiB.
		value := strings.Repeat("0123456789abcdef", 1000*1024/16)
		file := filepath.Join(c.dir, "big.txt")
		must(t, writeFile(file, value))
		c.kubectl(t, "-n", "e2e", "create", "configmap", "big", "--from-file=big="+file)
		c.kubectl(t, "-n", "e2e", "create", "secret", "generic", "big", "--from-file=big="+file)
		got := c.kubectl(t, "-n", "e2e", "get", "configmap", "big", "-o", "jsonpath={.data.big}")
		if got != value {
			t.Errorf("configmap value: %d bytes back, %d stored", len(got), len(value))
		}
		sec := c.kubectl(t, "-n", "e2e", "get", "secret", "big", "-o", "jsonpath={.data.big}")
		if len(sec) < len(value)*4/3 {
			t.Errorf("secret value: %d base64 bytes back for %d stored", len(sec), len(value))
		}
	})

	t.Run("CustomResources", func(t *testing.T) {
		c.kubectlIn(t, crd, "apply", "-f", "-")
		c.kubectl(t, "wait", "--for=condition=Established", "--timeout=60s", "crd/widgets.e2e.netsy.io")
		for i := 0; i < 5; i++ {
			c.kubectlIn(t, fmt.Sprintf(widget, i, i), "-n", "e2e", "apply", "-f", "-")
		}
		out := c.kubectl(t, "-n", "e2e", "get", "widgets", "-o", "jsonpath={range .items[*]}{.spec.size}{\" \"}{end}")
		if out != "0 1 2 3 4 " {
			t.Errorf("widgets' sizes: %q", out)
		}
	})

	t.Run("ServerSideApply", func(t *testing.T) {
		c.kubectlIn(t, ssaConfigMap("a"), "-n", "e2e", "apply", "--server-side", "--field-manager=first", "-f", "-")
		// Another manager changing the same field conflicts unless it forces.
		if out, err := c.kubectlErrIn(ssaConfigMap("b"), "-n", "e2e", "apply", "--server-side", "--field-manager=second", "-f", "-"); err == nil || !strings.Contains(out, "conflict") {
			t.Errorf("a second manager's apply did not conflict: %v %s", err, out)
		}
		c.kubectlIn(t, ssaConfigMap("b"), "-n", "e2e", "apply", "--server-side", "--field-manager=second", "--force-conflicts", "-f", "-")
		managers := c.kubectl(t, "-n", "e2e", "get", "configmap", "applied", "--show-managed-fields", "-o", "jsonpath={.metadata.managedFields[*].manager}")
		value := c.kubectl(t, "-n", "e2e", "get", "configmap", "applied", "-o", "jsonpath={.data.key}")
		if value != "b" || !strings.Contains(managers, "second") {
			t.Errorf("after the forced apply: value %q, managers %q", value, managers)
		}
	})

	t.Run("ChunkedListOfThousands", func(t *testing.T) {
		const n = 2000
		c.kubectl(t, "create", "namespace", "bulk")
		var list strings.Builder
		list.WriteString(`{"apiVersion":"v1","kind":"List","items":[`)
		for i := 0; i < n; i++ {
			if i > 0 {
				list.WriteString(",")
			}
			fmt.Fprintf(&list, `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"cm-%05d"},"data":{"i":"%d"}}`, i, i)
		}
		list.WriteString("]}")
		c.kubectlIn(t, list.String(), "-n", "bulk", "create", "-f", "-")
		for _, chunk := range []string{"--chunk-size=100", "--chunk-size=500", "--chunk-size=0"} {
			out := c.kubectl(t, "-n", "bulk", "get", "configmaps", chunk, "-o", "name")
			if got := strings.Count(out, "configmap/cm-"); got != n {
				t.Errorf("%s: %d configmaps listed, want %d", chunk, got, n)
			}
		}
		// Paginated straight from storage (an exact resourceVersion is not served by the
		// watch cache): every page continues where the last one stopped.
		rv := c.listRV(t, "bulk")
		seen, cont := 0, ""
		for pages := 0; ; pages++ {
			path := "/api/v1/namespaces/bulk/configmaps?limit=300&resourceVersion=" + rv + "&resourceVersionMatch=Exact"
			if cont != "" {
				path = "/api/v1/namespaces/bulk/configmaps?limit=300&continue=" + cont
			}
			var page struct {
				Metadata struct{ Continue string } `json:"metadata"`
				Items    []json.RawMessage         `json:"items"`
			}
			must(t, json.Unmarshal([]byte(c.kubectl(t, "get", "--raw", path)), &page))
			seen += len(page.Items)
			cont = page.Metadata.Continue
			if cont == "" || pages > 20 {
				break
			}
		}
		if seen != n+1 { // and the namespace's kube-root-ca.crt
			t.Errorf("paginated list at %s: %d items, want %d", rv, seen, n+1)
		}
	})

	t.Run("LeaderElectionLeases", func(t *testing.T) {
		renew := map[string]string{}
		for _, name := range []string{"kube-controller-manager", "kube-scheduler"} {
			eventually(t, 60*time.Second, name+" holds its lease", func() (bool, string) {
				out, _ := c.kubectlErr("-n", "kube-system", "get", "lease", name, "-o", "jsonpath={.spec.holderIdentity} {.spec.renewTime}")
				parts := strings.Fields(out)
				if len(parts) == 2 {
					renew[name] = parts[1]
				}
				return len(parts) == 2, out
			})
		}
		for name, first := range renew {
			eventually(t, 30*time.Second, name+" renews its lease", func() (bool, string) {
				out, _ := c.kubectlErr("-n", "kube-system", "get", "lease", name, "-o", "jsonpath={.spec.renewTime}")
				return out != "" && out != first, out
			})
		}
	})

	t.Run("EventsExpireWithTheirLease", func(t *testing.T) {
		// --event-ttl=20s: the event is written with a lease and gone once it expires.
		c.kubectlIn(t, event, "-n", "e2e", "create", "-f", "-")
		c.kubectl(t, "-n", "e2e", "get", "event", "e2e-expiring")
		eventually(t, 90*time.Second, "the event expires", func() (bool, string) {
			out, err := c.kubectlErr("-n", "e2e", "get", "event", "e2e-expiring")
			return err != nil && strings.Contains(out, "NotFound"), out
		})
	})

	t.Run("FinalizersAndGarbageCollection", func(t *testing.T) {
		c.kubectl(t, "-n", "e2e", "create", "configmap", "owner")
		uid := c.kubectl(t, "-n", "e2e", "get", "configmap", "owner", "-o", "jsonpath={.metadata.uid}")
		c.kubectlIn(t, fmt.Sprintf(owned, uid), "-n", "e2e", "create", "-f", "-")
		c.kubectl(t, "-n", "e2e", "delete", "configmap", "owner", "--cascade=background")
		eventually(t, 90*time.Second, "the garbage collector deletes the owned object", func() (bool, string) {
			out, err := c.kubectlErr("-n", "e2e", "get", "configmap", "dependent")
			return err != nil && strings.Contains(out, "NotFound"), out
		})
		c.kubectlIn(t, finalized, "-n", "e2e", "create", "-f", "-")
		c.kubectl(t, "-n", "e2e", "delete", "configmap", "finalized", "--wait=false")
		ts := c.kubectl(t, "-n", "e2e", "get", "configmap", "finalized", "-o", "jsonpath={.metadata.deletionTimestamp}")
		if ts == "" {
			t.Fatal("a deleted object with a finalizer has no deletionTimestamp")
		}
		c.kubectl(t, "-n", "e2e", "patch", "configmap", "finalized", "--type=merge", "-p", `{"metadata":{"finalizers":null}}`)
		eventually(t, 30*time.Second, "the object goes once its finalizer is removed", func() (bool, string) {
			out, err := c.kubectlErr("-n", "e2e", "get", "configmap", "finalized")
			return err != nil && strings.Contains(out, "NotFound"), out
		})
	})

	t.Run("ApiserverReadsFromItsWatchCache", func(t *testing.T) {
		metrics := c.kubectl(t, "get", "--raw", "/metrics")
		// Consistent lists served from the watch cache, which kube-apiserver only does when
		// etcd's Status.version says RequestWatchProgress works.
		if !hasPositive(metrics, `apiserver_watch_cache_consistent_read_total{fallback="false"`, `success="true"`) {
			t.Errorf("no consistent read served from the watch cache:\n%s", grepLines(metrics, "apiserver_watch_cache_consistent_read_total"))
		}
		// ... and so it asks Netsy for watch progress to know its cache is fresh.
		if netsy := c.netsyMetrics(t); !hasPositive(netsy, `netsy_watch_progress_requests_total{outcome="answered"}`) {
			t.Errorf("kube-apiserver sent Netsy no watch progress request:\n%s", grepLines(netsy, "netsy_watch_progress_requests_total"))
		}
		// WatchList: informers' initial lists streamed as watch events.
		if !hasPositive(metrics, "apiserver_watch_list_duration_seconds_count") {
			t.Errorf("no WatchList request served:\n%s", grepLines(metrics, "apiserver_watch_list"))
		}
		if strings.Contains(metrics, `kubernetes_feature_enabled{name="EtcdRangeStream",stage="BETA"} 1`) &&
			!hasPositive(metrics, `etcd_requests_total{group="",operation="listStream"`) {
			t.Errorf("EtcdRangeStream is on but no list was streamed:\n%s", grepLines(metrics, "etcd_requests_total"))
		}
	})
}

// watchAcrossRestartAndCompaction keeps `kubectl get -w` open on a namespace while
// ConfigMaps are created before and after a Netsy restart and after a compaction, and
// checks that it saw every one, once, in order; and that a list at a resourceVersion the
// compaction removed answers 410 Gone.
func watchAcrossRestartAndCompaction(t *testing.T, c *cluster) {
	c.kubectl(t, "create", "namespace", "watched")
	cmd := exec.Command(filepath.Join(c.cfg.kubeBins, "kubectl"), "--kubeconfig", c.kubeconfig,
		"-n", "watched", "get", "configmaps", "-w", "--output-watch-events", "-o", "json")
	stdout, err := cmd.StdoutPipe()
	must(t, err)
	must(t, cmd.Start())
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var mu sync.Mutex
	var seen []string
	go func() {
		dec := json.NewDecoder(bufio.NewReader(stdout))
		for {
			var ev struct {
				Type   string `json:"type"`
				Object struct {
					Metadata struct {
						Name string `json:"name"`
					} `json:"metadata"`
				} `json:"object"`
			}
			if dec.Decode(&ev) != nil {
				return
			}
			if ev.Type == "ADDED" && strings.HasPrefix(ev.Object.Metadata.Name, "w-") {
				mu.Lock()
				seen = append(seen, ev.Object.Metadata.Name)
				mu.Unlock()
			}
		}
	}()
	next := 0
	// Right after Netsy's restart kube-apiserver may still be reconnecting: a create is
	// retried as a client would, and one whose first answer was lost finds it exists.
	create := func(n int) {
		for i := 0; i < n; i++ {
			name := fmt.Sprintf("w-%03d", next)
			eventually(t, 60*time.Second, "create configmap "+name, func() (bool, string) {
				out, err := c.kubectlErr("-n", "watched", "create", "configmap", name)
				return err == nil || strings.Contains(out, "AlreadyExists"), out
			})
			next++
		}
	}
	create(10)
	c.restartNetsy(t)
	c.waitReady(t, 60*time.Second)
	create(10)
	// A list at this resourceVersion works now and answers 410 once the apiserver's
	// periodic compaction (--etcd-compaction-interval=15s) has passed it.
	old := c.listRV(t, "watched")
	path := "/api/v1/namespaces/watched/configmaps?resourceVersion=" + old + "&resourceVersionMatch=Exact"
	c.kubectl(t, "get", "--raw", path)
	create(1)
	eventually(t, 90*time.Second, "a list at compacted resourceVersion "+old+" answers 410 Gone", func() (bool, string) {
		code, body, err := c.get(path)
		return err == nil && code == 410 && strings.Contains(body, `"reason":"Expired"`), fmt.Sprintf("%d %v %.200s", code, err, body)
	})
	create(9)
	want := make([]string, next)
	for i := range want {
		want[i] = fmt.Sprintf("w-%03d", i)
	}
	eventually(t, 60*time.Second, "the watch saw every ConfigMap once, in order", func() (bool, string) {
		mu.Lock()
		defer mu.Unlock()
		return strings.Join(seen, ",") == strings.Join(want, ","), strings.Join(seen, ",")
	})
}

// listRV is the resourceVersion of a list of the namespace's ConfigMaps.
func (c *cluster) listRV(t *testing.T, ns string) string {
	var list struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
	}
	must(t, json.Unmarshal([]byte(c.kubectl(t, "get", "--raw", "/api/v1/namespaces/"+ns+"/configmaps?limit=1")), &list))
	if list.Metadata.ResourceVersion == "" {
		t.Fatal("a list without resourceVersion")
	}
	return list.Metadata.ResourceVersion
}

// hasPositive reports whether a metric line starting with prefix (and containing every
// part of also) has a value above zero.
func hasPositive(metrics, prefix string, also ...string) bool {
	for _, line := range strings.Split(metrics, "\n") {
		if !strings.HasPrefix(line, prefix) {
			continue
		}
		ok := true
		for _, a := range also {
			ok = ok && strings.Contains(line, a)
		}
		fields := strings.Fields(line)
		if v, err := strconv.ParseFloat(fields[len(fields)-1], 64); ok && err == nil && v > 0 {
			return true
		}
	}
	return false
}

func grepLines(metrics, what string) string {
	re := regexp.MustCompile("(?m)^" + regexp.QuoteMeta(what) + ".*$")
	return strings.Join(re.FindAllString(metrics, 20), "\n")
}

func (c *cluster) kubectlErrIn(stdin string, args ...string) (string, error) {
	cmd := exec.Command(filepath.Join(c.cfg.kubeBins, "kubectl"), append([]string{"--kubeconfig", c.kubeconfig}, args...)...)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

const crd = `apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.e2e.netsy.io
spec:
  group: e2e.netsy.io
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
`

const widget = `apiVersion: e2e.netsy.io/v1
kind: Widget
metadata: {name: widget-%d}
spec: {size: %d}
`

func ssaConfigMap(value string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: applied}
data: {key: %q}
`, value)
}

const event = `apiVersion: v1
kind: Event
metadata: {name: e2e-expiring}
involvedObject: {kind: ConfigMap, name: big, namespace: e2e, apiVersion: v1}
reason: E2E
message: an event that expires with its lease
type: Normal
`

const owned = `apiVersion: v1
kind: ConfigMap
metadata:
  name: dependent
  ownerReferences:
  - {apiVersion: v1, kind: ConfigMap, name: owner, uid: %q}
`

const finalized = `apiVersion: v1
kind: ConfigMap
metadata:
  name: finalized
  finalizers: [e2e.netsy.io/hold]
`
