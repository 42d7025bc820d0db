//go:build !k8s134

package storage

// What differs in Kubernetes 1.37 (the default build): etcd3.New returns an error, the
// EtcdRangeStream gate, and the suites 1.34 does not have.

import (
	"context"
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
	etcdfeature "k8s.io/apiserver/pkg/storage/feature"
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
	EnableResourceSizeEstimation(storage.KeysFunc) error
}

func newEtcd3Store(t *testing.T, client *kubernetes.Client, compactor etcd3.Compactor, codec runtime.Codec,
	transformer value.Transformer, lease etcd3.LeaseManagerConfig, versioner storage.Versioner) compactingStore {
	s, err := etcd3.New(client, compactor, codec, func() runtime.Object { return &example.Pod{} },
		func() runtime.Object { return &example.PodList{} }, "", "/pods/",
		schema.GroupResource{Resource: "pods"}, transformer, lease,
		etcd3.NewDefaultDecoder(codec, versioner), versioner)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// resetFeatureChecker gives the test a feature support checker of its own, so one test's
// RangeStream fallback does not carry into the next.
func resetFeatureChecker(t *testing.T) {
	orig := etcdfeature.DefaultFeatureSupportChecker
	etcdfeature.DefaultFeatureSupportChecker = etcdfeature.NewDefaultFeatureSupportChecker()
	t.Cleanup(func() { etcdfeature.DefaultFeatureSupportChecker = orig })
}

// rangeStreamModes runs a test with the EtcdRangeStream gate off and on, each time
// with a fresh feature checker.
func rangeStreamModes(t *testing.T, run func(t *testing.T, on bool)) {
	for _, on := range []bool{false, true} {
		t.Run(fmt.Sprintf("rangeStream=%v", on), func(t *testing.T) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, on)
			resetFeatureChecker(t)
			run(t, on)
		})
	}
}

// expectStreams checks that lists went through RangeStream exactly when the gate is on.
func expectStreams(t *testing.T, on bool, recorder *storagetesting.KVRecorder) {
	streams := recorder.GetStreamReadsAndReset()
	if on && streams == 0 {
		t.Error("no list was served by RangeStream")
	}
	// A server without RangeStream answers Unimplemented and the store falls back to
	// paginated ranges, marking the feature unsupported: the attempt is counted either way.
	if on && !etcdfeature.DefaultFeatureSupportChecker.Supports(storage.RangeStream) {
		t.Error("RangeStream was refused and the store fell back to paginated lists")
	}
	if !on && streams > 0 {
		t.Errorf("%d RangeStream calls with the gate off", streams)
	}
}

// rangeCalls is how many range calls, paginated or streamed, the store made since the last
// call.
func rangeCalls(recorder *storagetesting.KVRecorder) uint64 {
	return recorder.GetReadsAndReset() + recorder.GetStreamReadsAndReset()
}

// unsafeDeletionStore is kube-apiserver's wrapper that lets a corrupt object be deleted
// (AllowUnsafeMalformedObjectDeletion) over a test store, keeping its transformer override.
type unsafeDeletionStore struct {
	storage.Interface
	s *testStore
}

func withUnsafeDeletion(s *testStore) *unsafeDeletionStore {
	return &unsafeDeletionStore{Interface: etcd3.NewStoreWithUnsafeCorruptObjectDeletion(s, schema.GroupResource{Resource: "pods"}), s: s}
}

func (u *unsafeDeletionStore) UpdateTransformer(modifier storagetesting.TransformerModifier) func() {
	return u.s.swapTransformer(modifier)
}

// UpdateTransformer makes testStore the suites' InterfaceWithTransformerOverride.
func (s *testStore) UpdateTransformer(modifier storagetesting.TransformerModifier) func() {
	return s.swapTransformer(modifier)
}

func runWatchWithUnsafeDelete(ctx context.Context, t *testing.T, s *testStore) {
	storagetesting.RunTestWatchWithUnsafeDelete(ctx, t, s, corruptObjError(t))
}

func TestDeleteWithConflictAndMissingExpectedTransformOrDecodeError(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
	codec := &failingCodec{Codec: testCodec()}
	ctx, s := newStore(t, withCodec(codec))
	storagetesting.RunTestDeleteWithConflictAndMissingExpectedTransformOrDecodeError(ctx, t, s, codec.setFailing)
}

func TestDeleteWithConflictAndExpectedTransformError(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
	ctx, s := newStore(t)
	failing := &failingTransformer{Transformer: s.transformer.base}
	s.transformer.set(failing)
	storagetesting.RunTestDeleteExpectedTransformOrDecodeError(ctx, t, s, failing.setFailing)
}

func TestDeleteWithConflictAndExpectedDecodeError(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
	codec := &failingCodec{Codec: testCodec()}
	ctx, s := newStore(t, withCodec(codec))
	storagetesting.RunTestDeleteExpectedTransformOrDecodeError(ctx, t, s, codec.setFailing)
}

func TestDeleteWithSuggestionAndMissingExpectedTransformOrDecodeFailure(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
	ctx, s := newStore(t)
	storagetesting.RunTestDeleteWithSuggestionAndMissingExpectedTransformOrDecodeError(ctx, t, s)
}

func TestKeySchema(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestKeySchema(ctx, t, s)
}

func TestGetListWithErrorAggregation(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
	ctx, s := newStore(t)
	storagetesting.RunTestGetListWithErrorAggregation(ctx, t, withUnsafeDeletion(s), corruptObjError(t))
}

func TestGetListWithoutErrorAggregation(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, false)
	ctx, s := newStore(t)
	storagetesting.RunTestGetListWithoutErrorAggregation(ctx, t, s, corruptObjError(t))
}

func TestStats(t *testing.T) {
	for _, sizeBased := range []bool{true, false} {
		t.Run(fmt.Sprintf("SizeBasedListCostEstimate=%v", sizeBased), func(t *testing.T) {
			ctx, s := newStore(t)
			if sizeBased {
				if err := s.EnableResourceSizeEstimation(keysOf(s)); err != nil {
					t.Fatal(err)
				}
			}
			storagetesting.RunTestStats(ctx, t, s, s.codec, s.transformer, sizeBased)
		})
	}
}

// record makes the client count its calls, as upstream's test server does.
func record(client *kubernetes.Client) {
	recorder := storagetesting.NewKubernetesRecorder(client.Kubernetes)
	client.KV = storagetesting.NewKVRecorder(client.KV, recorder)
	client.Kubernetes = recorder
}

// putRevision is the suites' IncreaseRVFunc.
func putRevision(client *clientv3.Client) storagetesting.IncreaseRVFunc {
	return func(ctx context.Context, t *testing.T) int64 { return bumpRevision(ctx, t, client) }
}
