//! etcd's own database (a bbolt file in etcd's layout), written from a state and read back:
//! what `etcdctl snapshot save` receives from Netsy, what `netsy snapshot restore` loads,
//! and what etcd's HashKV is computed over. With it every etcd backup tool works on Netsy,
//! and a cluster can move from etcd to Netsy and back with etcd's own commands.

pub mod bolt;
pub mod hash;
pub mod restore;
pub mod schema;

use crate::mvcc::State;
use std::fs::File;

/// Writes `state` as etcd's database into an anonymous temporary file (a snapshot can be
/// larger than is comfortable to hold twice in memory); returns it rewound, and its size.
pub fn write_db(state: &State, alarms: &[u64]) -> Result<(File, u64), bolt::BoltError> {
    use std::io::{BufWriter, Seek, SeekFrom};
    let file = tempfile::tempfile()?;
    let mut w = bolt::Writer::new(BufWriter::with_capacity(1 << 20, file))?;
    for (name, entries) in schema::buckets(state, alarms) {
        w.bucket(name, entries)?;
    }
    let (out, size) = w.finish()?;
    let mut file = out.into_inner().map_err(|e| e.into_error())?;
    file.seek(SeekFrom::Start(0))?;
    Ok((file, size))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
    use std::io::Read;

    /// The written database holds what the schema says, and Hash is computed over exactly
    /// what a reader of that database sees (less the entries etcd's hash ignores).
    #[test]
    fn written_database_reads_back_and_hashes_as_written() {
        let mut st = State::new();
        for i in 0..3000 {
            st.put(&PutRequest {
                key: format!("k/{:05}", i % 1000).into_bytes().into(),
                value: vec![b'v'; i % 700].into(),
                ..Default::default()
            })
            .unwrap();
        }
        st.delete_range(&DeleteRangeRequest {
            key: b"k/00010".to_vec().into(),
            ..Default::default()
        })
        .unwrap();
        st.put_lease(crate::mvcc::Lease { id: 5, ttl: 60 });
        st.compact(1500);
        let (mut file, size) = write_db(&st, &[3]).unwrap();
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, size);
        let db = bolt::Db::open(&bytes).unwrap();
        let mut h = 0;
        let mut keys = 0;
        for name in db.bucket_names().unwrap() {
            h = crc32c::crc32c_append(h, &name);
            db.for_each(&name, |k, v| -> Result<(), bolt::BoltError> {
                if name == schema::KEY {
                    keys += 1;
                    let (main, _, tomb) = schema::parse_revision_key(k).unwrap();
                    let kv = schema::decode_key_value(v).unwrap();
                    assert!(tomb || kv.mod_revision == main);
                }
                if !hash::ignored(&name, k) {
                    h = crc32c::crc32c_append(h, k);
                    h = crc32c::crc32c_append(h, v);
                }
                Ok(())
            })
            .unwrap();
        }
        assert_eq!(keys, st.versions_count());
        assert_eq!(h, hash::hash(&st, &[3]));
        let mut leases = vec![];
        db.for_each(schema::LEASE, |k, v| -> Result<(), bolt::BoltError> {
            leases.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        assert_eq!(leases.len(), 1);
    }
}
