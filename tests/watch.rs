//! Watch properties that are about load rather than single answers: a client that stops
//! reading stalls neither writers nor other watchers, and is canceled the etcd way once it
//! falls behind compaction; large responses are fragmented on request.

mod common;

use bytes::Bytes;
use common::Netsy;
use netsy::proto::etcdserverpb::{
    kv_client::KvClient, watch_client::WatchClient, watch_request, CompactionRequest, PutRequest,
    WatchCreateRequest, WatchRequest, WatchResponse,
};
use std::time::{Duration, Instant};
use tonic::transport::Channel;

async fn channel(n: &Netsy) -> Channel {
    Channel::from_shared(format!("http://{}", n.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn open_watch(
    ch: Channel,
    create: WatchCreateRequest,
) -> (
    tokio::sync::mpsc::Sender<WatchRequest>,
    tonic::Streaming<WatchResponse>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(WatchRequest {
        request_union: Some(watch_request::RequestUnion::CreateRequest(create)),
    })
    .await
    .unwrap();
    let stream = WatchClient::new(ch)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    (tx, stream)
}

fn all_keys() -> WatchCreateRequest {
    WatchCreateRequest {
        key: Bytes::from_static(b"\0"),
        range_end: Bytes::from_static(b"\0"),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_watcher_stalls_nobody_and_is_canceled_behind_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start(&format!("file://{}", dir.path().display()), &[]).await;
    let ch = channel(&n).await;
    // A watcher whose client never reads, with 4 KiB values: far more than any buffer.
    let (_slow_tx, mut slow) = open_watch(ch.clone(), all_keys()).await;
    let (_tx, mut healthy) = open_watch(ch.clone(), all_keys()).await;
    let mut kv = KvClient::new(ch.clone());
    // 3000 writes of 8 KiB (24 MB of events) from 8 concurrent clients.
    let value = Bytes::from(vec![b'v'; 8192]);
    let started = Instant::now();
    let writers: Vec<_> = (0..8)
        .map(|w| {
            let (mut kv, value) = (KvClient::new(ch.clone()), value.clone());
            tokio::spawn(async move {
                for i in 0..375 {
                    kv.put(PutRequest {
                        key: Bytes::from(format!("k{w}-{}", i % 20)),
                        value: value.clone(),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.await.unwrap();
    }
    let writes = started.elapsed();
    // The healthy watcher got every event while the other stalled.
    let mut got = 0;
    while got < 3000 {
        let r = tokio::time::timeout(Duration::from_secs(10), healthy.message())
            .await
            .expect("healthy watcher stalled")
            .unwrap()
            .unwrap();
        got += r.events.len();
    }
    assert_eq!(got, 3000);
    // Compact past where the stalled watcher is; when it reads again it gets what was
    // already queued for it, then a cancel carrying the compact revision.
    kv.compact(CompactionRequest {
        revision: 3001,
        physical: true,
    })
    .await
    .unwrap();
    kv.put(PutRequest {
        key: Bytes::from_static(b"wake"),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut delivered = 0;
    let canceled = loop {
        let r = tokio::time::timeout(Duration::from_secs(10), slow.message())
            .await
            .expect("stalled watcher never resolved")
            .unwrap()
            .unwrap();
        delivered += r.events.len();
        if r.canceled {
            break r;
        }
    };
    assert_eq!(canceled.compact_revision, 3001);
    assert!(
        delivered < 3000,
        "the stalled watcher could not have been buffered everything"
    );
    eprintln!("3000 writes took {writes:?} beside a stalled watcher; it got {delivered} events before its cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_responses_are_fragmented_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start(
        &format!("file://{}", dir.path().display()),
        &["--max-request-bytes", "65536"],
    )
    .await;
    let ch = channel(&n).await;
    let mut kv = KvClient::new(ch.clone());
    for i in 0..10 {
        kv.put(PutRequest {
            key: Bytes::from(format!("big{i}")),
            value: Bytes::from(vec![b'x'; 30_000]),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    let (_tx, mut stream) = open_watch(
        ch,
        WatchCreateRequest {
            start_revision: 2,
            fragment: true,
            ..all_keys()
        },
    )
    .await;
    let created = stream.message().await.unwrap().unwrap();
    assert!(created.created);
    let mut parts = Vec::new();
    loop {
        let r = stream.message().await.unwrap().unwrap();
        let last = !r.fragment;
        parts.push(r);
        if last {
            break;
        }
    }
    assert!(parts.len() > 1, "expected fragments");
    let events: usize = parts.iter().map(|p| p.events.len()).sum();
    assert_eq!(events, 10);
    assert!(parts[..parts.len() - 1].iter().all(|p| p.fragment));
}
