// Package storage runs Kubernetes' storage conformance suites
// (k8s.io/apiserver/pkg/storage/testing, the RunTest… functions upstream runs against
// etcd in pkg/storage/etcd3) against Netsy, through kube-apiserver's own etcd3 store
// and etcd client. The suites are imported as a library; this file only builds the
// stores the way upstream's etcd3 tests do, with exported API.
package storage

import (
	"context"
	"errors"
	"io"
	"os"
	"sync"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"google.golang.org/grpc/grpclog"

	"k8s.io/apimachinery/pkg/api/apitesting"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apiserver/pkg/apis/example"
	examplev1 "k8s.io/apiserver/pkg/apis/example/v1"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/etcd3"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/utils/clock"
)

var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
)

// valuePrefix is what the test transformer prepends to every stored value.
const valuePrefix = "test!"

func init() {
	metav1.AddToGroupVersion(scheme, metav1.SchemeGroupVersion)
	utilruntime.Must(example.AddToScheme(scheme))
	utilruntime.Must(examplev1.AddToScheme(scheme))
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
}

// swappableTransformer is the store's value transformer, replaceable while the store runs:
// the suites that corrupt or re-prefix stored values swap it, as upstream's tests swap the
// store's own field.
type swappableTransformer struct {
	mu   sync.RWMutex
	base *storagetesting.PrefixTransformer
	cur  value.Transformer
}

func newSwappableTransformer() *swappableTransformer {
	base := storagetesting.NewPrefixTransformer([]byte(valuePrefix), false)
	return &swappableTransformer{base: base, cur: base}
}

func (s *swappableTransformer) current() value.Transformer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.cur
}

func (s *swappableTransformer) set(t value.Transformer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cur = t
}

func (s *swappableTransformer) TransformFromStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, bool, error) {
	return s.current().TransformFromStorage(ctx, data, dataCtx)
}

func (s *swappableTransformer) TransformToStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, error) {
	return s.current().TransformToStorage(ctx, data, dataCtx)
}

// failingTransformer fails every read while failing is set (the suites' setFailing).
type failingTransformer struct {
	value.Transformer
	mu      sync.Mutex
	failing bool
}

func (f *failingTransformer) setFailing(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing = on
}

func (f *failingTransformer) TransformFromStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, bool, error) {
	f.mu.Lock()
	failing := f.failing
	f.mu.Unlock()
	if failing {
		return nil, false, errors.New("synthetic transform error")
	}
	return f.Transformer.TransformFromStorage(ctx, data, dataCtx)
}

// failingCodec fails every decode while failing is set.
type failingCodec struct {
	runtime.Codec
	mu      sync.Mutex
	failing bool
}

func (f *failingCodec) setFailing(on bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.failing = on
}

func (f *failingCodec) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	f.mu.Lock()
	failing := f.failing
	f.mu.Unlock()
	if failing {
		return nil, nil, errors.New("synthetic decode error")
	}
	return f.Codec.Decode(data, defaults, into)
}

// testStore is one store over a fresh datastore.
type testStore struct {
	compactingStore
	client      *kubernetes.Client
	transformer *swappableTransformer
	codec       runtime.Codec
}

// UpdatePrefixTransformer makes testStore the suites' InterfaceWithPrefixTransformer.
func (s *testStore) UpdatePrefixTransformer(modifier storagetesting.PrefixTransformerModifier) func() {
	orig := s.transformer.current()
	copied := *s.transformer.base
	s.transformer.set(modifier(&copied))
	return func() { s.transformer.set(orig) }
}

// swapTransformer replaces the store's transformer by modifier's and returns the undo.
func (s *testStore) swapTransformer(modifier func(value.Transformer) value.Transformer) func() {
	orig := s.transformer.current()
	s.transformer.set(modifier(orig))
	return func() { s.transformer.set(orig) }
}

type setup struct {
	target targetOptions
	codec  runtime.Codec
}

type option func(*setup)

func withProgressNotify(d time.Duration) option {
	return func(s *setup) { s.target.progressNotify = d }
}

func withCodec(c runtime.Codec) option { return func(s *setup) { s.codec = c } }

// newStore starts a fresh datastore and builds kube-apiserver's etcd3 store on it, with
// the options upstream's etcd3 tests use (pods of the example API group under /pods/,
// a prefixing transformer, 1 s lease reuse).
func newStore(t *testing.T, opts ...option) (context.Context, *testStore) {
	t.Helper()
	cfg := setup{codec: testCodec()}
	for _, o := range opts {
		o(&cfg)
	}
	client := startTarget(t, cfg.target)
	transformer := newSwappableTransformer()
	versioner := storage.APIObjectVersioner{}
	compactor := etcd3.NewCompactor(client.Client, 0, clock.RealClock{}, nil)
	t.Cleanup(compactor.Stop)
	lease := etcd3.NewDefaultLeaseManagerConfig()
	lease.ReuseDurationSeconds = 1
	s := newEtcd3Store(t, client, compactor, cfg.codec, transformer, lease, versioner)
	return context.Background(), &testStore{compactingStore: s, client: client, transformer: transformer, codec: cfg.codec}
}

// storedObjectValid checks what the store wrote under key: the transformer's prefix, an
// object that decodes, without resourceVersion or selfLink.
func storedObjectValid(s *testStore) storagetesting.KeyValidation {
	return func(ctx context.Context, t *testing.T, key string) {
		resp, err := s.client.KV.Get(ctx, key)
		if err != nil {
			t.Fatalf("get %s: %v", key, err)
		}
		if len(resp.Kvs) == 0 {
			t.Fatalf("no value stored at %s", key)
		}
		decoded, err := runtime.Decode(s.codec, resp.Kvs[0].Value[len(valuePrefix):])
		if err != nil {
			t.Fatalf("decode %s: %v", key, err)
		}
		pod := decoded.(*example.Pod)
		if pod.ResourceVersion != "" {
			t.Errorf("stored object has resourceVersion %q", pod.ResourceVersion)
		}
		if pod.SelfLink != "" {
			t.Errorf("stored object has selfLink %q", pod.SelfLink)
		}
	}
}

// compaction compacts the datastore at resourceVersion through kube-apiserver's own
// compaction call, and waits until the store has seen it when it watches for it.
func compaction(s *testStore) storagetesting.Compaction {
	return func(ctx context.Context, t *testing.T, resourceVersion string) {
		rv, err := storage.APIObjectVersioner{}.ParseResourceVersion(resourceVersion)
		if err != nil {
			t.Fatal(err)
		}
		var current int64
		current, _, _, err = etcd3.Compact(ctx, s.client.Client, current, int64(rv))
		if err != nil {
			_, _, _, err = etcd3.Compact(ctx, s.client.Client, current, int64(rv))
		}
		if err != nil {
			t.Fatal(err)
		}
		if !utilfeature.DefaultFeatureGate.Enabled(features.ListFromCacheSnapshot) {
			return
		}
		deadline := time.Now().Add(30 * time.Second)
		for s.CompactRevision() != int64(rv) {
			if time.Now().After(deadline) {
				t.Fatalf("store saw compaction at %d, want %d", s.CompactRevision(), rv)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

// corruptObjError is the error kube-apiserver's store makes of a value it cannot
// transform; the suites inject it and expect it collected, not fatal.
func corruptObjError(t *testing.T) error {
	failing := &failingTransformer{Transformer: storagetesting.NewPrefixTransformer([]byte(valuePrefix), false)}
	failing.setFailing(true)
	_, _, err := etcd3.WithCorruptObjErrorHandlingTransformer(failing).TransformFromStorage(context.Background(), nil, nil)
	if err == nil {
		t.Fatal("the corrupt-object transformer returned no error")
	}
	return err
}

// listCalls checks how many objects the store read and how many range calls it made for
// a paginated list: kube-apiserver grows its page size when pages come back short.
func listCalls(s *testStore) storagetesting.CallsValidation {
	const maxLimit = 10000
	recorder := s.client.KV.(*storagetesting.KVRecorder)
	return func(t *testing.T, pageSize, processed uint64) {
		if reads := s.transformer.base.GetReadsAndReset(); reads != processed {
			t.Errorf("objects read: %d, want %d", reads, processed)
		}
		calls := uint64(1)
		if pageSize != 0 {
			limit := pageSize
			for sum := uint64(1); sum < processed; {
				limit = min(limit*2, maxLimit)
				sum += limit
				calls++
			}
		}
		if got := rangeCalls(recorder); got != calls {
			t.Fatalf("range calls: %d, want %d", got, calls)
		}
	}
}

// keysOf lists the keys under /pods/ for size-based list cost estimation.
func keysOf(s *testStore) storage.KeysFunc {
	return func(ctx context.Context) ([]string, error) {
		resp, err := s.client.KV.Get(ctx, "/pods/", clientv3.WithPrefix(), clientv3.WithKeysOnly())
		if err != nil {
			return nil, err
		}
		keys := make([]string, 0, len(resp.Kvs))
		for _, kv := range resp.Kvs {
			keys = append(keys, string(kv.Key))
		}
		return keys, nil
	}
}

func testCodec() runtime.Codec { return apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion) }
