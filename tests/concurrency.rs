//! etcd's Lock and Election services, the same script against etcd and Netsy (and a
//! Netsy follower): who holds a lock and when a waiter gets it, a waiter that gives up
//! leaving no key behind, a holder's lease ending its hold; an election's leader, its
//! proclamations as observers see them, resignation handing over, and the errors etcd
//! answers (stale leader key, no leader), compared code and message.

mod common;

use bytes::Bytes;
use common::{Etcd, Netsy};
use netsy::proto::etcdserverpb::{
    kv_client::KvClient, lease_client::LeaseClient, LeaseGrantRequest, LeaseRevokeRequest,
    RangeRequest,
};
use netsy::proto::v3electionpb::{
    election_client::ElectionClient, CampaignRequest, LeaderKey, LeaderRequest, ProclaimRequest,
    ResignRequest,
};
use netsy::proto::v3lockpb::{lock_client::LockClient, LockRequest, UnlockRequest};
use std::time::Duration;
use tonic::transport::Channel;

#[derive(Clone)]
struct Side {
    lock: LockClient<Channel>,
    election: ElectionClient<Channel>,
    lease: LeaseClient<Channel>,
    kv: KvClient<Channel>,
}

impl Side {
    async fn connect(addr: &str) -> Side {
        let ch = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Side {
            lock: LockClient::new(ch.clone()),
            election: ElectionClient::new(ch.clone()),
            lease: LeaseClient::new(ch.clone()),
            kv: KvClient::new(ch),
        }
    }

    async fn grant(&mut self) -> i64 {
        let r = self.lease.lease_grant(LeaseGrantRequest { ttl: 60, id: 0 });
        r.await.unwrap().into_inner().id
    }

    async fn keys(&mut self, prefix: &str) -> Vec<String> {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().unwrap() += 1;
        let r = self.kv.range(RangeRequest {
            key: Bytes::copy_from_slice(prefix.as_bytes()),
            range_end: end.into(),
            ..Default::default()
        });
        let kvs = r.await.unwrap().into_inner().kvs;
        kvs.iter()
            .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
            .collect()
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Runs the script against one server; returns what must be equal across servers.
async fn script(mut s: Side) -> Vec<String> {
    let mut seen = Vec::new();
    // A lock: the first caller holds it at once, the second waits for the unlock.
    let (la, lb, lc) = (s.grant().await, s.grant().await, s.grant().await);
    let held = s
        .lock
        .lock(LockRequest {
            name: b("L"),
            lease: la,
        })
        .await
        .unwrap();
    let key_a = held.into_inner().key;
    assert_eq!(key_a, Bytes::from(format!("L/{la:x}")));
    let mut waiter = s.clone();
    let b_wait = tokio::spawn(async move {
        waiter
            .lock
            .lock(LockRequest {
                name: b("L"),
                lease: lb,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!b_wait.is_finished(), "the second locker got a held lock");
    // A third waiter gives up: its key goes with it.
    let mut quitter = s.clone();
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        quitter.lock.lock(LockRequest {
            name: b("L"),
            lease: lc,
        }),
    )
    .await;
    assert!(gave_up.is_err(), "the third locker got a held lock");
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.push(format!("keys while held: {}", s.keys("L/").await.len()));
    s.lock.unlock(UnlockRequest { key: key_a }).await.unwrap();
    let key_b = tokio::time::timeout(Duration::from_secs(10), b_wait)
        .await
        .expect("the waiter got the lock once it was unlocked")
        .unwrap()
        .unwrap()
        .into_inner()
        .key;
    assert_eq!(key_b, Bytes::from(format!("L/{lb:x}")));
    // The holder's lease revoked: the next waiter gets the lock.
    let mut waiter = s.clone();
    let a_wait = tokio::spawn(async move {
        waiter
            .lock
            .lock(LockRequest {
                name: b("L"),
                lease: la,
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!a_wait.is_finished());
    s.lease
        .lease_revoke(LeaseRevokeRequest { id: lb })
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), a_wait).await;
    seen.push(format!(
        "lock after the holder's lease went: {}",
        got.is_ok()
    ));

    // An election.
    let (ea, eb) = (s.grant().await, s.grant().await);
    let none = s.election.leader(LeaderRequest { name: b("E") }).await;
    seen.push(format!(
        "no leader: {:?}",
        none.map_err(|e| (e.code(), e.message().to_string()))
            .map(|_| ())
    ));
    let won = s
        .election
        .campaign(CampaignRequest {
            name: b("E"),
            lease: ea,
            value: b("a"),
        })
        .await
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert_eq!(won.key, Bytes::from(format!("E/{ea:x}")));
    let mut observer = s.clone();
    let mut observed = observer
        .election
        .observe(LeaderRequest { name: b("E") })
        .await
        .unwrap()
        .into_inner();
    let mut challenger = s.clone();
    let b_campaign = tokio::spawn(async move {
        challenger
            .election
            .campaign(CampaignRequest {
                name: b("E"),
                lease: eb,
                value: b("b"),
            })
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!b_campaign.is_finished(), "two leaders");
    s.election
        .proclaim(ProclaimRequest {
            leader: Some(won.clone()),
            value: b("a2"),
        })
        .await
        .unwrap();
    let leader = s
        .election
        .leader(LeaderRequest { name: b("E") })
        .await
        .unwrap();
    seen.push(format!(
        "leader value: {:?}",
        leader.into_inner().kv.unwrap().value
    ));
    let stale = LeaderKey {
        rev: won.rev + 1000,
        ..won.clone()
    };
    let e = s
        .election
        .proclaim(ProclaimRequest {
            leader: Some(stale),
            value: b("x"),
        })
        .await
        .unwrap_err();
    seen.push(format!("stale proclaim: {:?} {}", e.code(), e.message()));
    let e = s
        .election
        .resign(ResignRequest { leader: None })
        .await
        .unwrap_err();
    seen.push(format!(
        "resign without a leader key: {:?} {}",
        e.code(),
        e.message()
    ));
    s.election
        .resign(ResignRequest { leader: Some(won) })
        .await
        .unwrap();
    let b_won = tokio::time::timeout(Duration::from_secs(10), b_campaign)
        .await
        .expect("the challenger won once the leader resigned")
        .unwrap()
        .unwrap()
        .into_inner()
        .leader
        .unwrap();
    assert_eq!(b_won.key, Bytes::from(format!("E/{eb:x}")));
    let mut values = Vec::new();
    while values.len() < 3 {
        let msg = tokio::time::timeout(Duration::from_secs(10), observed.message())
            .await
            .expect("observe answers")
            .unwrap()
            .unwrap();
        values.push(String::from_utf8_lossy(&msg.kv.unwrap().value).into_owned());
    }
    seen.push(format!("observed: {values:?}"));
    seen
}

async fn compare(follower: bool) {
    let etcd = Etcd::start().await;
    let want = script(Side::connect(&etcd.addr).await).await;
    let store = if follower {
        common::s3_store("probe").await;
        format!(
            "s3://{}/{}",
            common::s3_bucket(),
            common::unique_prefix("conc")
        )
    } else {
        format!("file://{}", tempfile::tempdir().unwrap().keep().display())
    };
    let mut nodes = vec![Netsy::start(&store, &["--name", "n0"]).await];
    if follower {
        nodes.push(Netsy::start(&store, &["--name", "n1"]).await);
    }
    let got = script(Side::connect(&nodes.last().unwrap().addr).await).await;
    eprintln!("{want:#?}");
    assert_eq!(got, want, "Netsy (left) and etcd (right) differ");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_match_etcd() {
    compare(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_and_election_match_etcd_through_a_follower() {
    compare(true).await;
}
