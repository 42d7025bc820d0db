package robustness

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"time"

	"github.com/anishathalye/porcupine"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// recorder collects what every client saw, stamped on one monotonic clock.
type recorder struct {
	start time.Time
	mu    sync.Mutex
	ops   []porcupine.Operation
	acks  []int64 // when each write was acknowledged (all workloads)
	// writes: the Kubernetes-shaped workload's acknowledged writes.
	writes []ackedWrite
	errors map[string]int
	// unexpected: failures with a code etcd clients do not expect from a failover.
	unexpected []string
}

type ackedWrite struct {
	key, value string // value "" for a delete
	revision   int64
}

func newRecorder() *recorder { return &recorder{start: time.Now(), errors: map[string]int{}} }

func (r *recorder) now() int64 { return int64(time.Since(r.start)) }

func (r *recorder) ack(w *ackedWrite) {
	at := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	r.acks = append(r.acks, at)
	if w != nil {
		r.writes = append(r.writes, *w)
	}
}

// failed counts a failed request by its gRPC code and description.
func (r *recorder) failed(err error) {
	code, msg := codes.Unknown, err.Error()
	var etcdErr rpctypes.EtcdError
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		code, msg = codes.DeadlineExceeded, "the client's deadline"
	case errors.Is(err, context.Canceled):
		code, msg = codes.Canceled, "the client's cancel"
	case errors.As(err, &etcdErr):
		code, msg = etcdErr.Code(), etcdErr.Error()
	default:
		if s, ok := status.FromError(err); ok {
			code, msg = s.Code(), s.Message()
		}
	}
	r.mu.Lock()
	r.errors[code.String()+": "+msg]++
	if code != codes.Unavailable && code != codes.DeadlineExceeded && code != codes.Canceled {
		// Clients retry, or re-send elsewhere, on these codes only; anything else around a
		// failover reaches kube-apiserver's callers as an error of the request itself.
		r.unexpected = append(r.unexpected, code.String()+": "+msg)
	}
	r.mu.Unlock()
}

const requestTimeout = 3 * time.Second

// linearizable runs puts, linearizable gets and compare-and-swaps on a few keys through
// one node, recording each as a porcupine operation.
func linearizable(ctx context.Context, r *recorder, cli *clientv3.Client, id int, keys []string) {
	rng := rand.New(rand.NewPCG(uint64(id), 7))
	last := map[string]string{} // the value this client last read of each key
	for seq := 0; ctx.Err() == nil; seq++ {
		key := keys[rng.IntN(len(keys))]
		value := fmt.Sprintf("c%d-%d", id, seq)
		var in kvInput
		var out kvOutput
		call := r.now()
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		var err error
		switch p := rng.IntN(10); {
		case p < 4:
			in = kvInput{kind: opGet, key: key}
			var resp *clientv3.GetResponse
			if resp, err = cli.Get(rctx, key); err == nil {
				if len(resp.Kvs) > 0 {
					out.value = string(resp.Kvs[0].Value)
				}
				last[key] = out.value
			}
		case p < 7:
			in = kvInput{kind: opPut, key: key, value: value}
			_, err = cli.Put(rctx, key, value)
		default:
			in = kvInput{kind: opCAS, key: key, value: value, expect: last[key]}
			cmp := clientv3.Compare(clientv3.Value(key), "=", in.expect)
			if in.expect == "" {
				cmp = clientv3.Compare(clientv3.CreateRevision(key), "=", 0)
			}
			var resp *clientv3.TxnResponse
			resp, err = cli.Txn(rctx).If(cmp).Then(clientv3.OpPut(key, value)).Else(clientv3.OpGet(key)).Commit()
			if err == nil {
				out.succeeded = resp.Succeeded
				if resp.Succeeded {
					last[key] = value
				} else {
					if kvs := resp.Responses[0].GetResponseRange().Kvs; len(kvs) > 0 {
						out.value = string(kvs[0].Value)
					}
					last[key] = out.value
				}
			}
		}
		cancel()
		ret := r.now()
		if err != nil {
			if ctx.Err() != nil && errors.Is(err, context.Canceled) && in.kind == opGet {
				return
			}
			r.failed(err)
			if in.kind == opGet {
				// A failed read observed nothing.
				time.Sleep(50 * time.Millisecond)
				continue
			}
			out.unknown = true
			time.Sleep(50 * time.Millisecond)
		} else if in.kind != opGet && (in.kind == opPut || out.succeeded) {
			r.ack(nil)
		}
		r.mu.Lock()
		r.ops = append(r.ops, porcupine.Operation{ClientId: id, Input: in, Call: call, Output: out, Return: ret})
		r.mu.Unlock()
	}
}

// kubernetes does what kube-apiserver does to its store: creates and optimistic-concurrency
// updates and deletes of objects (a Txn comparing the mod revision it last read), events
// bound to a lease kept alive, and paginated lists.
func kubernetes(ctx context.Context, r *recorder, cli *clientv3.Client, id int) {
	rng := rand.New(rand.NewPCG(uint64(id), 11))
	known := map[string]int64{} // key -> mod revision last read (absent: unknown)
	var lease clientv3.LeaseID
	for seq := 0; ctx.Err() == nil; seq++ {
		rctx, cancel := context.WithTimeout(ctx, requestTimeout)
		err := kubeStep(rctx, r, cli, id, seq, rng, known, &lease)
		cancel()
		if err != nil && ctx.Err() == nil {
			r.failed(err)
			time.Sleep(50 * time.Millisecond)
		}
	}
}

func kubeStep(ctx context.Context, r *recorder, cli *clientv3.Client, id, seq int, rng *rand.Rand,
	known map[string]int64, lease *clientv3.LeaseID) error {
	switch p := rng.IntN(20); {
	case p == 0:
		// A paginated list, as a reflector's initial list.
		resp, err := cli.Get(ctx, "/registry/pods/", clientv3.WithPrefix(), clientv3.WithLimit(20))
		if err != nil {
			return err
		}
		_, err = cli.Get(ctx, string(resp.Kvs[len(resp.Kvs)-1].Key)+"\x00",
			clientv3.WithRange(clientv3.GetPrefixRangeEnd("/registry/pods/")), clientv3.WithRev(resp.Header.Revision), clientv3.WithLimit(20))
		return err
	case p < 4:
		// An event, on a lease (kube-apiserver attaches events to leases).
		if *lease == 0 {
			l, err := cli.Grant(ctx, 120)
			if err != nil {
				return err
			}
			*lease = l.ID
		}
		key := fmt.Sprintf("/registry/events/default/ev-%d-%d", id, seq)
		value := fmt.Sprintf("event %d-%d", id, seq)
		resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", 0)).
			Then(clientv3.OpPut(key, value, clientv3.WithLease(*lease))).Commit()
		if err != nil {
			return err
		}
		if resp.Succeeded {
			r.ack(&ackedWrite{key: key, value: value, revision: resp.Header.Revision})
		}
		if seq%40 == 0 {
			_, err = cli.KeepAliveOnce(ctx, *lease)
		}
		return err
	}
	key := fmt.Sprintf("/registry/pods/default/pod-%d-%d", id, rng.IntN(10))
	value := fmt.Sprintf("pod %d-%d", id, seq)
	rev, ok := known[key]
	if !ok {
		resp, err := cli.Get(ctx, key)
		if err != nil {
			return err
		}
		rev = 0
		if len(resp.Kvs) > 0 {
			rev = resp.Kvs[0].ModRevision
		}
		known[key] = rev
	}
	op := clientv3.OpPut(key, value)
	if rev != 0 && rng.IntN(5) == 0 {
		op, value = clientv3.OpDelete(key), ""
	}
	delete(known, key) // unknown until this answers
	resp, err := cli.Txn(ctx).If(clientv3.Compare(clientv3.ModRevision(key), "=", rev)).
		Then(op).Else(clientv3.OpGet(key)).Commit()
	if err != nil {
		return err
	}
	if !resp.Succeeded {
		kvs := resp.Responses[0].GetResponseRange().Kvs
		known[key] = 0
		if len(kvs) > 0 {
			known[key] = kvs[0].ModRevision
		}
		return nil
	}
	r.ack(&ackedWrite{key: key, value: value, revision: resp.Header.Revision})
	if value == "" {
		known[key] = 0
	} else {
		known[key] = resp.Header.Revision
	}
	return nil
}

// event is what a watch delivered.
type event struct {
	revision int64
	key      string
	value    string // "" for a delete
}

// watcher keeps one watch of /registry/ open on a node from revision 1, as a watch cache
// does, and re-watches from the next revision when the server ends it.
type watcher struct {
	node     int
	cli      *clientv3.Client
	ctx      context.Context
	mu       sync.Mutex
	events   []event
	header   int64 // the newest revision a progress notification vouched for
	restarts int
	problem  string
}

func (w *watcher) run() {
	next := int64(1)
	for w.ctx.Err() == nil {
		ch := w.cli.Watch(clientv3.WithRequireLeader(w.ctx), "/registry/", clientv3.WithPrefix(), clientv3.WithRev(next))
		for resp := range ch {
			if err := resp.Err(); err != nil {
				if resp.CompactRevision != 0 {
					w.fail(fmt.Sprintf("compacted at %d, but nothing compacts", resp.CompactRevision))
				}
				break
			}
			w.mu.Lock()
			for _, e := range resp.Events {
				ev := event{revision: e.Kv.ModRevision, key: string(e.Kv.Key), value: string(e.Kv.Value)}
				if e.Type == clientv3.EventTypeDelete {
					ev.value = ""
				}
				w.events = append(w.events, ev)
				next = ev.revision + 1
			}
			if resp.IsProgressNotify() {
				// Every event up to here has been sent (etcd's progress guarantee).
				w.header = max(w.header, resp.Header.Revision)
			}
			w.mu.Unlock()
		}
		w.mu.Lock()
		w.restarts++
		w.mu.Unlock()
		time.Sleep(100 * time.Millisecond)
	}
}

func (w *watcher) fail(msg string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.problem == "" {
		w.problem = msg
	}
}
