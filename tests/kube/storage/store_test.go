package storage

import (
	"testing"
	"time"

	"k8s.io/apiserver/pkg/features"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
)

// The store suites of store_tests.go, each over a fresh datastore.

func TestCreate(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestCreate(ctx, t, s, storedObjectValid(s))
}

func TestCreateWithTTL(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestCreateWithTTL(ctx, t, s)
}

func TestCreateWithKeyExist(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestCreateWithKeyExist(ctx, t, s)
}

func TestGet(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGet(ctx, t, s)
}

func TestUnconditionalDelete(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestUnconditionalDelete(ctx, t, s)
}

func TestConditionalDelete(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestConditionalDelete(ctx, t, s)
}

func TestDeleteWithSuggestion(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestDeleteWithSuggestion(ctx, t, s)
}

func TestDeleteWithSuggestionAndConflict(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestDeleteWithSuggestionAndConflict(ctx, t, s)
}

func TestDeleteWithSuggestionOfDeletedObject(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestDeleteWithSuggestionOfDeletedObject(ctx, t, s)
}

func TestValidateDeletionWithSuggestion(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestValidateDeletionWithSuggestion(ctx, t, s)
}

func TestValidateDeletionWithOnlySuggestionValid(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestValidateDeletionWithOnlySuggestionValid(ctx, t, s)
}

func TestDeleteWithConflict(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestDeleteWithConflict(ctx, t, s)
}

func TestPreconditionalDeleteWithSuggestion(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestPreconditionalDeleteWithSuggestion(ctx, t, s)
}

func TestPreconditionalDeleteWithSuggestionPass(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestPreconditionalDeleteWithOnlySuggestionPass(ctx, t, s)
}

func TestListPaging(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestListPaging(ctx, t, s)
}

func TestGetListNonRecursive(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGetListNonRecursive(ctx, t, putRevision(s.client.Client), s)
}

func TestGetListRecursivePrefix(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGetListRecursivePrefix(ctx, t, s)
}

func TestGuaranteedUpdate(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGuaranteedUpdate(ctx, t, s, storedObjectValid(s))
}

func TestGuaranteedUpdateWithTTL(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGuaranteedUpdateWithTTL(ctx, t, s)
}

func TestGuaranteedUpdateChecksStoredData(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGuaranteedUpdateChecksStoredData(ctx, t, s)
}

func TestGuaranteedUpdateWithConflict(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGuaranteedUpdateWithConflict(ctx, t, s)
}

func TestGuaranteedUpdateWithSuggestionAndConflict(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestGuaranteedUpdateWithSuggestionAndConflict(ctx, t, s)
}

func TestTransformationFailure(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestTransformationFailure(ctx, t, s)
}

func TestList(t *testing.T) {
	rangeStreamModes(t, func(t *testing.T, on bool) {
		ctx, s := newStore(t)
		recorder := s.client.KV.(*storagetesting.KVRecorder)
		storagetesting.RunTestList(ctx, t, s, compaction(s), false, s.client.Kubernetes.(*storagetesting.KubernetesRecorder))
		expectStreams(t, on, recorder)
	})
}

func TestConsistentList(t *testing.T) {
	rangeStreamModes(t, func(t *testing.T, _ bool) {
		ctx, s := newStore(t)
		storagetesting.RunTestConsistentList(ctx, t, s, putRevision(s.client.Client), false, true, false)
	})
}

func TestCompactRevision(t *testing.T) {
	// The store learns of a compaction made by someone else through a watch on the
	// compaction key, which ListFromCacheSnapshot turns on.
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, true)
	ctx, s := newStore(t)
	storagetesting.RunTestCompactRevision(ctx, t, s, putRevision(s.client.Client), compaction(s))
}

func TestListContinuation(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestListContinuation(ctx, t, s, listCalls(s))
}

func TestListPaginationRareObject(t *testing.T) {
	// ListFromCacheSnapshot adds a read of the compaction key the call count would see.
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, false)
	ctx, s := newStore(t)
	storagetesting.RunTestListPaginationRareObject(ctx, t, s, listCalls(s))
}

func TestListContinuationWithFilter(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestListContinuationWithFilter(ctx, t, s, listCalls(s))
}

func TestNamespaceScopedList(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestNamespaceScopedList(ctx, t, s)
}

func TestListInconsistentContinuation(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestListInconsistentContinuation(ctx, t, s, compaction(s))
}

func TestListResourceVersionMatch(t *testing.T) {
	ctx, s := newStore(t)
	storagetesting.RunTestListResourceVersionMatch(ctx, t, s)
}

// The watch suites of watcher_tests.go.

func TestWatch(t *testing.T) {
	t.Run("Watch", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestWatch(ctx, t, s)
	})
	t.Run("ClusterScopedWatch", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestClusterScopedWatch(ctx, t, s)
	})
	t.Run("NamespaceScopedWatch", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestNamespaceScopedWatch(ctx, t, s)
	})
	t.Run("DeleteTriggerWatch", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestDeleteTriggerWatch(ctx, t, s)
	})
	t.Run("WatchFromZero", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestWatchFromZero(ctx, t, s, compaction(s))
	})
	t.Run("WatchFromNonZero", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestWatchFromNonZero(ctx, t, s)
	})
	t.Run("DelayedWatchDelivery", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestDelayedWatchDelivery(ctx, t, s)
	})
	t.Run("WatchError", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestWatchError(ctx, t, s)
	})
	t.Run("WatchContextCancel", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestWatchContextCancel(ctx, t, s)
	})
	t.Run("WatcherTimeout", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestWatcherTimeout(ctx, t, s)
	})
	t.Run("WatchDeleteEventObjectHaveLatestRV", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestWatchDeleteEventObjectHaveLatestRV(ctx, t, s)
	})
	t.Run("WatchInitializationSignal", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunTestWatchInitializationSignal(ctx, t, s)
	})
	t.Run("ProgressNotify", func(t *testing.T) {
		ctx, s := newStore(t, withProgressNotify(time.Second))
		storagetesting.RunOptionalTestProgressNotify(ctx, t, s, putRevision(s.client.Client))
	})
	t.Run("WatchWithUnsafeDelete", func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
		ctx, s := newStore(t)
		runWatchWithUnsafeDelete(ctx, t, s)
	})
	t.Run("WatchDispatchBookmarkEvents", func(t *testing.T) {
		ctx, s := newStore(t, withProgressNotify(time.Second))
		storagetesting.RunTestWatchDispatchBookmarkEvents(ctx, t, s, false)
	})
	t.Run("SendInitialEventsBackwardCompatibility", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunSendInitialEventsBackwardCompatibility(ctx, t, s)
	})
	rangeStreamModes(t, func(t *testing.T, _ bool) {
		t.Run("WatchSemantics", func(t *testing.T) {
			ctx, s := newStore(t)
			storagetesting.RunWatchSemantics(ctx, t, s)
		})
		t.Run("WatchSemanticsWithConcurrentDecode", func(t *testing.T) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ConcurrentWatchObjectDecode, true)
			ctx, s := newStore(t)
			storagetesting.RunWatchSemantics(ctx, t, s)
		})
		t.Run("WatchSemanticInitialEventsExtended", func(t *testing.T) {
			ctx, s := newStore(t)
			storagetesting.RunWatchSemanticInitialEventsExtended(ctx, t, s)
		})
		t.Run("WatchListMatchSingle", func(t *testing.T) {
			ctx, s := newStore(t)
			storagetesting.RunWatchListMatchSingle(ctx, t, s)
		})
	})
	t.Run("WatchErrorEventIsBlockingFurtherEvent", func(t *testing.T) {
		ctx, s := newStore(t)
		storagetesting.RunWatchErrorIsBlockingFurtherEvents(ctx, t, s)
	})
}
