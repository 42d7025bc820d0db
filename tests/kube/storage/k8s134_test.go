//go:build k8s134

package storage

// What differs in Kubernetes 1.34 (build tag k8s134, module file k8s-1.34.mod): etcd3.New
// returns no error, there is no RangeStream, list cost estimation takes a keys function,
// and the unsafe-delete watch suite corrupts the transformer itself.

import (
	"context"
	"errors"
	"fmt"
	"testing"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"

	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apiserver/pkg/apis/example"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/etcd3"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
)

// compactingStore is the etcd3 store's exported surface the helpers need beyond
// storage.Interface.
type compactingStore interface {
	storage.Interface
	CompactRevision() int64
	SetKeysFunc(storage.KeysFunc)
}

func newEtcd3Store(t *testing.T, client *kubernetes.Client, compactor etcd3.Compactor, codec runtime.Codec,
	transformer value.Transformer, lease etcd3.LeaseManagerConfig, versioner storage.Versioner) compactingStore {
	s := etcd3.New(client, compactor, codec, func() runtime.Object { return &example.Pod{} },
		func() runtime.Object { return &example.PodList{} }, "", "/pods/",
		schema.GroupResource{Resource: "pods"}, transformer, lease,
		etcd3.NewDefaultDecoder(codec, versioner), versioner)
	t.Cleanup(s.Close)
	return s
}

// rangeStreamModes runs the test once: 1.34 lists with paginated ranges only.
func rangeStreamModes(t *testing.T, run func(t *testing.T, on bool)) {
	t.Run("rangeStream=false", func(t *testing.T) { run(t, false) })
}

// expectStreams has nothing to check: 1.34 has no RangeStream.
func expectStreams(*testing.T, bool, *storagetesting.KVRecorder) {}

// rangeCalls is how many range calls the store made since the last call.
func rangeCalls(recorder *storagetesting.KVRecorder) uint64 { return recorder.GetReadsAndReset() }

// alwaysFailing fails every read; wrapped by kube-apiserver's corrupt-object interpreter,
// its error is the corrupt-object error the suite expects.
type alwaysFailing struct{ value.Transformer }

func (alwaysFailing) TransformFromStorage(context.Context, []byte, value.Context) ([]byte, bool, error) {
	return nil, true, errors.New("bits flipped")
}

// CorruptTransformer makes testStore the 1.34 suite's InterfaceWithCorruptTransformer.
func (s *testStore) CorruptTransformer() func() {
	return s.swapTransformer(func(orig value.Transformer) value.Transformer {
		return etcd3.WithCorruptObjErrorHandlingTransformer(alwaysFailing{orig})
	})
}

func runWatchWithUnsafeDelete(ctx context.Context, t *testing.T, s *testStore) {
	storagetesting.RunTestWatchWithUnsafeDelete(ctx, t, s)
}

func TestStats(t *testing.T) {
	for _, sizeBased := range []bool{true, false} {
		t.Run(fmt.Sprintf("SizeBasedListCostEstimate=%v", sizeBased), func(t *testing.T) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.SizeBasedListCostEstimate, sizeBased)
			ctx, s := newStore(t)
			s.SetKeysFunc(keysOf(s))
			storagetesting.RunTestStats(ctx, t, s, s.codec, s.transformer, sizeBased)
		})
	}
}

// record makes the client count its calls, as upstream's test server does.
func record(client *kubernetes.Client) {
	client.KV = storagetesting.NewKVRecorder(client.KV)
	client.Kubernetes = storagetesting.NewKubernetesRecorder(client.Kubernetes)
}

// putRevision is the suites' IncreaseRVFunc (1.34's returns nothing).
func putRevision(client *clientv3.Client) storagetesting.IncreaseRVFunc {
	return func(ctx context.Context, t *testing.T) { bumpRevision(ctx, t, client) }
}
