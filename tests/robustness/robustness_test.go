package robustness

import (
	"context"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// failover is one thing done to the leader.
type failover struct {
	kind string
	at   int64 // on the recorder's clock
	node int
}

func durationEnv(t *testing.T, name string, fallback time.Duration) time.Duration {
	v := os.Getenv(name)
	if v == "" {
		return fallback
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return d
}

func TestFailoversKeepEveryPromise(t *testing.T) {
	duration := durationEnv(t, "ROBUSTNESS_DURATION", 2*time.Minute)
	every := durationEnv(t, "ROBUSTNESS_EVERY", 10*time.Second)
	nodes := newCluster(t, 3)
	admin := make([]*clientv3.Client, len(nodes))
	for i, n := range nodes {
		admin[i] = n.client(t)
	}
	leader(t, nodes, admin, 60*time.Second)
	for i := range nodes { // every node follows before the load starts
		waitHasLeader(t, nodes, admin, i)
	}

	r := newRecorder()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	// The watches outlive the load: they are checked once it stops.
	watching, stopWatching := context.WithCancel(context.Background())
	defer stopWatching()
	var wg sync.WaitGroup
	keys := []string{"/lin/a", "/lin/b", "/lin/c"}
	var watchers []*watcher
	for i, n := range nodes {
		for c := range 2 {
			cli := n.client(t)
			id := i*2 + c
			wg.Go(func() { linearizable(ctx, r, cli, id, keys) })
		}
		for c := range 2 {
			cli := n.client(t)
			id := i*2 + c
			wg.Go(func() { kubernetes(ctx, r, cli, id) })
		}
		w := &watcher{node: i, cli: n.client(t), ctx: watching}
		watchers = append(watchers, w)
		go w.run()
	}

	// Every `every`, do the next thing to the leader: kill -9 (a lost VM) and restart it;
	// SIGSTOP past its lease then SIGCONT (a paused VM that comes back as a deposed
	// leader); cut it from S3 but not from clients and peers, then reconnect it; SIGTERM
	// and restart (an autoscaling group replacing a VM); cut it from its peers (their
	// streams, read-index rounds and forwarded writes) but not from S3 and its clients.
	kinds := []string{"kill -9", "SIGSTOP", "S3 cut", "SIGTERM", "peer cut", "kill -9"}
	if k := os.Getenv("ROBUSTNESS_KINDS"); k != "" {
		kinds = strings.Split(k, ",")
	}
	var events []failover
	end := time.Now().Add(duration)
	for i := 0; time.Now().Add(every).Before(end) || i == 0; i++ {
		time.Sleep(every)
		l := leader(t, nodes, admin, 30*time.Second)
		f := failover{kind: kinds[i%len(kinds)], at: r.now(), node: l}
		events = append(events, f)
		switch f.kind {
		case "kill -9":
			nodes[l].kill9()
			nodes[l].start()
		case "SIGTERM":
			if err := nodes[l].terminate(); err != nil {
				t.Errorf("%v\n%s", err, nodes[l].log())
			}
			nodes[l].start()
		case "SIGSTOP":
			nodes[l].signal(syscall.SIGSTOP)
			time.Sleep(6 * time.Second) // twice the 3 s lease
			nodes[l].signal(syscall.SIGCONT)
		case "S3 cut":
			nodes[l].s3.cut(true)
			time.Sleep(8 * time.Second)
			nodes[l].s3.cut(false)
		case "peer cut":
			nodes[l].peers.cut(true)
			time.Sleep(8 * time.Second)
			nodes[l].peers.cut(false)
		}
		now := leader(t, nodes, admin, 30*time.Second)
		t.Logf("%6.1fs %s of the leader %s; %s leads at %.1fs", time.Duration(f.at).Seconds(), f.kind,
			nodes[l].name, nodes[now].name, time.Duration(r.now()).Seconds())
	}
	time.Sleep(every)
	stop()
	wg.Wait()
	final := leader(t, nodes, admin, 30*time.Second)
	for i := range nodes {
		waitHasLeader(t, nodes, admin, i)
	}

	reportFailovers(t, r, events)
	history := authoritative(t, admin[final])
	checkAcknowledged(t, r, history)
	checkWatches(t, watchers, history)
	checkLinearizable(t, r)
	if len(r.errors) > 0 {
		t.Logf("requests that failed (expected around failovers), by error: %v", r.errors)
	}
	if len(r.unexpected) > 0 {
		t.Errorf("%d requests failed with a code clients do not retry on, e.g. %q", len(r.unexpected), r.unexpected[0])
	}
}

func waitHasLeader(t *testing.T, nodes []*node, admin []*clientv3.Client, i int) {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		s, err := admin[i].Status(ctx, nodes[i].addr)
		cancel()
		if err == nil && s.Leader != 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("%s never found a leader:\n%s", nodes[i].name, nodes[i].log())
}

// reportFailovers prints, for each kind, the longest gap between acknowledged writes after
// each failover (p50 and max), and fails if writes did not come back at all.
func reportFailovers(t *testing.T, r *recorder, events []failover) {
	acks := slices.Clone(r.acks)
	slices.Sort(acks)
	gaps := map[string][]time.Duration{}
	for i, f := range events {
		until := int64(math.MaxInt64)
		if i+1 < len(events) {
			until = events[i+1].at
		}
		last, gap, resumed := f.at, int64(0), false
		for _, a := range acks {
			if a <= f.at || a >= until {
				continue
			}
			gap, last, resumed = max(gap, a-last), a, true
		}
		if !resumed {
			t.Errorf("no write was acknowledged after the %s at %.1fs", f.kind, time.Duration(f.at).Seconds())
			continue
		}
		gaps[f.kind] = append(gaps[f.kind], time.Duration(gap))
	}
	var kinds []string
	for k := range gaps {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	for _, k := range kinds {
		g := gaps[k]
		slices.Sort(g)
		t.Logf("failover after %s of the leader: longest gap between acknowledged writes p50 %v, max %v (%d failovers: %v)",
			k, g[len(g)/2].Round(time.Millisecond), g[len(g)-1].Round(time.Millisecond), len(g), g)
	}
	t.Logf("%d writes acknowledged in %d failovers", len(acks), len(events))
}

// authoritative reads the whole history of /registry/ from revision 1 through a fresh
// watch, until a progress notification vouches that it has everything.
func authoritative(t *testing.T, cli *clientv3.Client) []event {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	head, err := cli.Get(ctx, "/registry/", clientv3.WithPrefix(), clientv3.WithCountOnly())
	if err != nil {
		t.Fatal(err)
	}
	w := &watcher{cli: cli, ctx: ctx}
	go w.run()
	waitProgress(t, w, head.Header.Revision)
	return w.events
}

func waitProgress(t *testing.T, w *watcher, head int64) {
	deadline := time.Now().Add(60 * time.Second)
	for {
		w.mu.Lock()
		done := w.header >= head
		w.mu.Unlock()
		if done {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the watch on node %d never caught up with revision %d (progress at %d)", w.node, head, w.header)
		}
		_ = w.cli.RequestProgress(clientv3.WithRequireLeader(w.ctx))
		time.Sleep(200 * time.Millisecond)
	}
}

// checkAcknowledged: every acknowledged write is in the history at the revision it was
// acknowledged with, and no revision was acknowledged twice.
func checkAcknowledged(t *testing.T, r *recorder, history []event) {
	at := map[int64]event{}
	for i, e := range history {
		if i > 0 && e.revision <= history[i-1].revision {
			t.Fatalf("history out of order at revision %d", e.revision)
		}
		at[e.revision] = e
	}
	byRevision := map[int64]ackedWrite{}
	for _, w := range r.writes {
		if other, ok := byRevision[w.revision]; ok {
			t.Errorf("revision %d acknowledged twice: %+v and %+v", w.revision, other, w)
		}
		byRevision[w.revision] = w
		e, ok := at[w.revision]
		if !ok || e.key != w.key || e.value != w.value {
			t.Errorf("acknowledged write %s=%q at revision %d is lost (the history has %+v)", w.key, w.value, w.revision, e)
		}
	}
	t.Logf("%d acknowledged Kubernetes-shaped writes found at their revisions; history of %d events", len(r.writes), len(history))
}

// checkWatches: each node's watch delivered the history, gap-free and in order.
func checkWatches(t *testing.T, watchers []*watcher, history []event) {
	head := history[len(history)-1].revision
	for _, w := range watchers {
		waitProgress(t, w, head)
		w.mu.Lock()
		got, problem, restarts := slices.Clone(w.events), w.problem, w.restarts
		w.mu.Unlock()
		if problem != "" {
			t.Errorf("watch on node %d: %s", w.node, problem)
		}
		n := min(len(got), len(history))
		for i := range n {
			if got[i] != history[i] {
				t.Errorf("watch on node %d: event %d is %+v, the history has %+v (a gap or a reorder)", w.node, i, got[i], history[i])
				break
			}
		}
		if len(got) != len(history) {
			t.Errorf("watch on node %d: %d events, the history has %d", w.node, len(got), len(history))
		}
		t.Logf("watch on node %d: %d events in order, re-watched %d times", w.node, len(got), restarts)
	}
}

func checkLinearizable(t *testing.T, r *recorder) {
	ops, dropped := settleUnknown(r.ops)
	var kinds [3]int
	for _, op := range ops {
		kinds[op.Input.(kvInput).kind]++
	}
	res, info := porcupine.CheckOperationsVerbose(kvModel, ops, 3*time.Minute)
	t.Logf("linearizability: %d operations (%d gets, %d puts, %d compare-and-swaps; %d unacknowledged writes nobody saw dropped): %s",
		len(ops), kinds[opGet], kinds[opPut], kinds[opCAS], dropped, res)
	if res != porcupine.Ok {
		out := env("ROBUSTNESS_OUT", t.TempDir())
		path := filepath.Join(out, "linearizability.html")
		_ = os.MkdirAll(out, 0o755)
		if err := porcupine.VisualizePath(kvModel, info, path); err != nil {
			t.Logf("visualisation: %v", err)
		}
		t.Errorf("the history is not linearizable (%s); porcupine's visualisation: %s", res, path)
	}
}

// The checker is not vacuous: a read older than an acknowledged write fails it.
func TestModelRejectsAStaleRead(t *testing.T) {
	op := func(kind opKind, value string, call, ret int64, out kvOutput) porcupine.Operation {
		return porcupine.Operation{Input: kvInput{kind: kind, key: "k", value: value}, Call: call, Output: out, Return: ret}
	}
	ok := []porcupine.Operation{
		op(opPut, "1", 0, 10, kvOutput{}),
		op(opGet, "", 11, 20, kvOutput{value: "1"}),
	}
	if porcupine.CheckOperations(kvModel, ok) != true {
		t.Fatal("a fresh read was refused")
	}
	stale := []porcupine.Operation{
		op(opPut, "1", 0, 10, kvOutput{}),
		op(opPut, "2", 11, 20, kvOutput{}),
		op(opGet, "", 21, 30, kvOutput{value: "1"}),
	}
	if porcupine.CheckOperations(kvModel, stale) {
		t.Fatal("a stale read was accepted")
	}
	// An unacknowledged put someone saw took effect; one nobody saw is dropped.
	kept, dropped := settleUnknown([]porcupine.Operation{
		op(opPut, "1", 0, math.MaxInt64, kvOutput{unknown: true}),
		op(opPut, "2", 0, math.MaxInt64, kvOutput{unknown: true}),
		op(opGet, "", 40, 50, kvOutput{value: "1"}),
	})
	if dropped != 1 || len(kept) != 2 || kept[0].Return != 50 {
		t.Fatalf("settleUnknown: %d dropped, kept %+v", dropped, kept)
	}
	if !strings.Contains(kvModel.DescribeOperation(kept[0].Input, kept[0].Output), "unknown") {
		t.Fatal("an unknown outcome is not described as such")
	}
}
