//! etcd's own database (a bbolt file in etcd's layout), written from a state and read back:
//! what `etcdctl snapshot save` receives from Netsy, what `netsy snapshot restore` loads,
//! and what etcd's HashKV is computed over. With it every etcd backup tool works on Netsy,
//! and a cluster can move from etcd to Netsy and back with etcd's own commands.

pub mod bolt;
pub mod hash;
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
