//! One behaviour suite every backend must pass: memory and local directory in unit tests,
//! S3 against LocalStack in `tests/`. The log relies on exactly these properties, so a new
//! backend is correct when this suite passes.
//!
//! Each function uses its own key namespace and panics on the first deviation.

use super::{ObjectStore, PutMode, StoreError};
use bytes::Bytes;

/// Runs every check.
pub async fn run_all(store: &dyn ObjectStore) {
    put_get_overwrite(store).await;
    create_if_absent(store).await;
    update_if_match(store).await;
    list_prefix_and_start_after(store).await;
    get_range(store).await;
    delete(store).await;
    racing_creates_have_one_winner(store).await;
}

pub async fn put_get_overwrite(store: &dyn ObjectStore) {
    let err = store.get("c1/missing").await.unwrap_err();
    assert!(matches!(err, StoreError::NotFound { .. }), "{err}");
    let data = Bytes::from((0..=255u8).collect::<Vec<_>>());
    let etag = store
        .put("c1/obj", data.clone(), PutMode::Overwrite)
        .await
        .unwrap();
    let got = store.get("c1/obj").await.unwrap();
    assert_eq!(got.data, data);
    assert_eq!(got.etag, etag);
    store
        .put("c1/obj", Bytes::from_static(b"two"), PutMode::Overwrite)
        .await
        .unwrap();
    assert_eq!(store.get("c1/obj").await.unwrap().data, "two");
}

pub async fn create_if_absent(store: &dyn ObjectStore) {
    store
        .put("c2/obj", Bytes::from_static(b"first"), PutMode::Create)
        .await
        .unwrap();
    let err = store
        .put("c2/obj", Bytes::from_static(b"second"), PutMode::Create)
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "second create must conflict, got {err}");
    assert_eq!(store.get("c2/obj").await.unwrap().data, "first");
}

pub async fn update_if_match(store: &dyn ObjectStore) {
    let err = store
        .put(
            "c3/obj",
            Bytes::from_static(b"x"),
            PutMode::Update("\"nope\"".into()),
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "update of a missing object: {err}");
    let v1 = store
        .put("c3/obj", Bytes::from_static(b"v1"), PutMode::Create)
        .await
        .unwrap();
    let v2 = store
        .put(
            "c3/obj",
            Bytes::from_static(b"v2"),
            PutMode::Update(v1.clone()),
        )
        .await
        .unwrap();
    assert_ne!(v1, v2);
    let err = store
        .put("c3/obj", Bytes::from_static(b"v3"), PutMode::Update(v1))
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Precondition { .. }), "{err}");
    let got = store.get("c3/obj").await.unwrap();
    assert_eq!(got.data, "v2");
    assert_eq!(got.etag, v2);
}

pub async fn list_prefix_and_start_after(store: &dyn ObjectStore) {
    let keys = [
        "c4/chunks/0002/0000000000000000002.netsy",
        "c4/chunks/0001/0000000000000000001.netsy",
        "c4/chunks/0003/0000000000000000003.netsy",
        "c4/snapshots/0000000000000000002.netsy",
        "c4x/other",
    ];
    for k in keys {
        store
            .put(k, Bytes::from(k.as_bytes().to_vec()), PutMode::Overwrite)
            .await
            .unwrap();
    }
    let all: Vec<_> = store
        .list("c4/", None)
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        all,
        vec![
            "c4/chunks/0001/0000000000000000001.netsy",
            "c4/chunks/0002/0000000000000000002.netsy",
            "c4/chunks/0003/0000000000000000003.netsy",
            "c4/snapshots/0000000000000000002.netsy",
        ]
    );
    let chunks = store.list("c4/chunks/", None).await.unwrap();
    assert_eq!(chunks.len(), 3);
    assert_eq!(chunks[0].size, keys[1].len() as u64);
    let after: Vec<_> = store
        .list(
            "c4/chunks/",
            Some("c4/chunks/0001/0000000000000000001.netsy"),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(
        after,
        vec![
            "c4/chunks/0002/0000000000000000002.netsy",
            "c4/chunks/0003/0000000000000000003.netsy",
        ]
    );
    let partial = store.list("c4/chunks/000", None).await.unwrap();
    assert_eq!(partial.len(), 3);
    assert!(store.list("c4/none/", None).await.unwrap().is_empty());
}

pub async fn get_range(store: &dyn ObjectStore) {
    store
        .put(
            "c5/obj",
            Bytes::from_static(b"0123456789"),
            PutMode::Overwrite,
        )
        .await
        .unwrap();
    assert_eq!(store.get_range("c5/obj", 2, 5).await.unwrap(), "234");
    assert_eq!(store.get_range("c5/obj", 8, 100).await.unwrap(), "89");
}

pub async fn delete(store: &dyn ObjectStore) {
    store
        .put("c6/obj", Bytes::from_static(b"x"), PutMode::Create)
        .await
        .unwrap();
    store.delete("c6/obj").await.unwrap();
    assert!(matches!(
        store.get("c6/obj").await,
        Err(StoreError::NotFound { .. })
    ));
    store.delete("c6/obj").await.unwrap();
    // A deleted key can be created again.
    store
        .put("c6/obj", Bytes::from_static(b"y"), PutMode::Create)
        .await
        .unwrap();
}

pub async fn racing_creates_have_one_winner(store: &dyn ObjectStore) {
    let results = futures::future::join_all((0..16).map(|i| {
        store.put(
            "c7/contended",
            Bytes::from(format!("writer-{i}")),
            PutMode::Create,
        )
    }))
    .await;
    let winners: Vec<_> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| r.is_ok())
        .map(|(i, _)| i)
        .collect();
    assert_eq!(winners.len(), 1, "{results:?}");
    for r in &results {
        if let Err(e) = r {
            assert!(e.is_conflict(), "{e}");
        }
    }
    let stored = store.get("c7/contended").await.unwrap().data;
    assert_eq!(stored, format!("writer-{}", winners[0]));
}
