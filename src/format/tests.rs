use super::*;
use crate::proto::netsy::{FileKind, Record, RecordKind};

const GO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/go-netsy");

fn go_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{GO_DIR}/{name}")).unwrap()
}

fn go_records(name: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(format!("{GO_DIR}/{name}"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn go_reference_files_decode_with_every_field_equal() {
    for (file, compression) in [
        ("chunk-plain", FileCompression::None),
        ("chunk-zstd", FileCompression::Zstd),
        ("chunk-binary-zstd", FileCompression::Zstd),
    ] {
        let data = decode(file, &go_file(&format!("{file}.netsy"))).unwrap();
        let want = go_records(&format!("{file}.records.jsonl"));
        assert_eq!(data.header.compression, compression as i32, "{file}");
        assert_eq!(data.header.kind, FileKind::Chunk as i32, "{file}");
        assert_eq!(data.records.len(), want.len(), "{file}");
        assert_eq!(data.header.records_count as usize, want.len(), "{file}");
        for (got, want) in data.records.iter().zip(&want) {
            assert_eq!(&json::record(got), want, "{file}");
        }
        assert_eq!(data.footer.first_revision, data.records[0].revision);
        assert_eq!(
            data.footer.last_revision,
            data.records.last().unwrap().revision
        );
    }
}

#[test]
fn go_bucket_snapshot_decodes() {
    let name = "bucket/snapshots/0000000000000000150.netsy";
    let data = decode(name, &go_file(name)).unwrap();
    assert_eq!(data.header.kind, FileKind::Snapshot as i32);
    assert_eq!(data.header.compression, FileCompression::Zstd as i32);
    assert_eq!(data.records.len(), 150);
    assert_eq!(
        (data.footer.first_revision, data.footer.last_revision),
        (1, 150)
    );
}

#[test]
fn every_single_byte_change_is_detected_and_named() {
    let original = go_file("chunk-plain.netsy");
    for pos in 0..original.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut bad = original.clone();
            bad[pos] ^= flip;
            let err = decode("chunk-plain.netsy", &bad)
                .expect_err(&format!("byte {pos} ^ {flip:#x} went unnoticed"));
            assert_eq!(err.file, "chunk-plain.netsy");
            assert!(err.to_string().starts_with("chunk-plain.netsy: "));
        }
    }
}

#[test]
fn every_truncation_is_detected() {
    for file in [
        "chunk-plain.netsy",
        "chunk-zstd.netsy",
        "chunk-binary-zstd.netsy",
    ] {
        let original = go_file(file);
        for len in 0..original.len() {
            assert!(
                decode(file, &original[..len]).is_err(),
                "{file} truncated to {len} bytes went unnoticed"
            );
        }
    }
}

#[test]
fn corrupt_zstd_body_is_detected() {
    let original = go_file("chunk-zstd.netsy");
    // Skip the header (its length prefix is the first byte) and damage the compressed body.
    let body_start = 1 + original[0] as usize;
    for pos in (body_start..original.len()).step_by(7) {
        let mut bad = original.clone();
        bad[pos] ^= 0x55;
        assert!(decode("chunk-zstd.netsy", &bad).is_err(), "byte {pos}");
    }
    let mut extra = original.clone();
    extra.extend_from_slice(b"junk");
    let err = decode("chunk-zstd.netsy", &extra).unwrap_err();
    assert!(matches!(err.check, Check::TrailingData(_)), "{err}");
}

fn sample_records(n: i64, value_len: usize) -> Vec<Record> {
    (0..n)
        .map(|i| Record {
            revision: 2 + i,
            key: format!("/registry/pods/default/p{i}").into_bytes().into(),
            created: true,
            create_revision: 2 + i,
            version: 1,
            value: vec![b'x'; value_len].into(),
            leader_id: "node-a".into(),
            created_at: Some(prost_types::Timestamp {
                seconds: 1_751_371_200,
                nanos: 0,
            }),
            ..Default::default()
        })
        .collect()
}

#[test]
fn round_trip_chunk_and_snapshot() {
    for (kind, n, value_len, compressed) in [
        (FileKind::Chunk, 3, 10, false),
        (FileKind::Chunk, 3, 2000, true),
        (FileKind::Snapshot, 3, 10, true),
        (FileKind::Chunk, 0, 0, false),
    ] {
        let mut records = sample_records(n, value_len);
        let meta = FileMeta {
            leader_id: "node-a".into(),
            compact_revision: 7,
            ..Default::default()
        };
        let bytes = encode(kind, &meta, &mut records).unwrap();
        let file = decode("mem", &bytes).unwrap();
        assert_eq!(file.records, records);
        assert_eq!(file.header.compact_revision, 7);
        assert_eq!(
            file.header.compression,
            if compressed {
                FileCompression::Zstd
            } else {
                FileCompression::None
            } as i32
        );
    }
}

/// Keys and values are kept for the life of a key: each must be a buffer of its own,
/// exactly its size, never a slice pinning the file or a neighbouring record (the state
/// keeps them as they are).
#[test]
fn decoded_keys_and_values_are_buffers_of_their_own() {
    for (kind, value_len) in [
        (FileKind::Chunk, 10),
        (FileKind::Chunk, 2000),
        (FileKind::Snapshot, 300),
    ] {
        let mut records = sample_records(40, value_len);
        let bytes = encode(kind, &FileMeta::default(), &mut records).unwrap();
        for record in decode("mem", &bytes).unwrap().records {
            for field in [record.key, record.value] {
                let len = field.len();
                let own = field.try_into_mut().expect("not shared with anything");
                assert_eq!(own.capacity(), len, "{kind:?} {value_len}");
            }
        }
    }
}

#[test]
fn added_fields_round_trip_and_keep_go_fields_canonical() {
    let mut records = vec![Record {
        revision: 9,
        kind: RecordKind::Compact as i32,
        compact_revision: 5,
        ..Default::default()
    }];
    let bytes = encode(FileKind::Chunk, &FileMeta::default(), &mut records).unwrap();
    let file = decode("mem", &bytes).unwrap();
    assert_eq!(file.records[0].kind, RecordKind::Compact as i32);
    // The Go reader keeps unknown fields after the known ones when it re-encodes; ours come
    // last in number order, so its CRC recomputation sees the same bytes.
    let mut r = file.records[0].clone();
    r.crc = 0;
    let enc = r.encode_to_vec();
    assert_eq!(enc, [0x10, 0x09, 0x80, 0x01, 0x01, 0x88, 0x01, 0x05]);
}

#[test]
fn golden_bytes_pin_the_crc_convention() {
    // CRC-64/XZ check value from the catalogue of parametrised CRCs.
    assert_eq!(crc64(b"123456789"), 0x995d_c9bb_df19_39fa);
    let mut records = vec![Record {
        revision: 2,
        key: b"foo".to_vec().into(),
        created: true,
        create_revision: 2,
        version: 1,
        value: b"bar".to_vec().into(),
        ..Default::default()
    }];
    let bytes = encode(FileKind::Chunk, &FileMeta::default(), &mut records).unwrap();
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, GOLDEN_CHUNK_HEX);
}

// Written once by this encoder after the Go reference files verified the CRC convention.
const GOLDEN_CHUNK_HEX: &str = "110899c5ae83f49aea9cd7011802200128011d08cedecda1cfbfc29d8b0110021a03666f6f2001300240015a036261721a10cedecda1cfbfc29d8b011802200240faacced3c1a0fccae101";

/// The Go Netsy's view of the messages: only fields 1-15 are known to it.
mod go_view {
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Header {
        #[prost(uint64, tag = "1")]
        pub crc: u64,
        #[prost(uint32, tag = "2")]
        pub schema_version: u32,
        #[prost(int32, tag = "3")]
        pub kind: i32,
        #[prost(int32, tag = "4")]
        pub compression: i32,
        #[prost(int64, tag = "5")]
        pub records_count: i64,
        #[prost(string, tag = "6")]
        pub leader_id: String,
        #[prost(message, optional, tag = "7")]
        pub created_at: Option<prost_types::Timestamp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Record {
        #[prost(uint64, tag = "1")]
        pub crc: u64,
        #[prost(int64, tag = "2")]
        pub revision: i64,
        #[prost(bytes = "vec", tag = "3")]
        pub key: Vec<u8>,
        #[prost(bool, tag = "4")]
        pub created: bool,
        #[prost(bool, tag = "5")]
        pub deleted: bool,
        #[prost(int64, tag = "6")]
        pub create_revision: i64,
        #[prost(int64, tag = "7")]
        pub prev_revision: i64,
        #[prost(int64, tag = "8")]
        pub version: i64,
        #[prost(int64, tag = "9")]
        pub lease: i64,
        #[prost(int64, tag = "10")]
        pub dek: i64,
        #[prost(bytes = "vec", tag = "11")]
        pub value: Vec<u8>,
        #[prost(message, optional, tag = "12")]
        pub created_at: Option<prost_types::Timestamp>,
        #[prost(message, optional, tag = "13")]
        pub compacted_at: Option<prost_types::Timestamp>,
        #[prost(string, tag = "14")]
        pub leader_id: String,
        #[prost(message, optional, tag = "15")]
        pub replicated_at: Option<prost_types::Timestamp>,
    }

    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Footer {
        #[prost(uint64, tag = "2")]
        pub records_crc: u64,
        #[prost(int64, tag = "3")]
        pub first_revision: i64,
        #[prost(int64, tag = "4")]
        pub last_revision: i64,
        #[prost(uint64, tag = "8")]
        pub crc: u64,
    }
}

/// The raw bytes of every field numbered above 15, in order: what Go keeps as unknown
/// fields and writes back after the known ones.
fn unknown_fields(mut msg: &[u8]) -> Vec<u8> {
    use prost::encoding::decode_varint;
    let mut out = Vec::new();
    while !msg.is_empty() {
        let start = msg;
        let key = decode_varint(&mut msg).unwrap();
        let len = match key & 7 {
            0 => {
                decode_varint(&mut msg).unwrap();
                0
            }
            1 => 8,
            2 => decode_varint(&mut msg).unwrap() as usize,
            5 => 4,
            w => panic!("wire type {w}"),
        };
        msg = &msg[len..];
        if key >> 3 > 15 {
            out.extend_from_slice(&start[..start.len() - msg.len()]);
        }
    }
    out
}

/// Splits a file into its raw header, record and footer messages.
fn raw_messages(file: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>, Vec<u8>) {
    fn next(buf: &mut &[u8]) -> Vec<u8> {
        let len = prost::encoding::decode_varint(buf).unwrap() as usize;
        let m = buf[..len].to_vec();
        *buf = &buf[len..];
        m
    }
    let mut buf = file;
    let header = next(&mut buf);
    let h = FileHeader::decode(&header[..]).unwrap();
    let body = if h.compression == FileCompression::Zstd as i32 {
        zstd::decode_all(buf).unwrap()
    } else {
        buf.to_vec()
    };
    let mut b = &body[..];
    let records = (0..h.records_count).map(|_| next(&mut b)).collect();
    (header, records, next(&mut b))
}

/// Checks a file the way the Go reader does: decode with Go's fields, zero `crc`,
/// re-encode (known fields, then unknown ones), checksum, compare.
pub(crate) fn go_reader_accepts(file: &[u8]) {
    let (header, records, footer) = raw_messages(file);
    let go_crc = |known: Vec<u8>, raw: &[u8]| {
        let mut bytes = known;
        bytes.extend(unknown_fields(raw));
        crc64(&bytes)
    };
    let mut h = go_view::Header::decode(&header[..]).unwrap();
    let stored = h.crc;
    h.crc = 0;
    assert_eq!(go_crc(h.encode_to_vec(), &header), stored, "header");
    let mut all = Vec::new();
    for (i, raw) in records.iter().enumerate() {
        let mut r = go_view::Record::decode(&raw[..]).unwrap();
        let stored = r.crc;
        r.crc = 0;
        let mut bytes = r.encode_to_vec();
        bytes.extend(unknown_fields(raw));
        assert_eq!(crc64(&bytes), stored, "record {i}");
        assert!(raw.len() <= MAX_MESSAGE_BYTES);
        all.extend(bytes);
    }
    let mut f = go_view::Footer::decode(&footer[..]).unwrap();
    let stored = f.crc;
    f.crc = 0;
    assert_eq!(go_crc(f.encode_to_vec(), &footer), stored, "footer");
    assert_eq!(crc64(&all), f.records_crc, "records crc");
}

#[test]
fn the_go_reader_accepts_the_go_files() {
    // The simulation itself agrees with files the Go writer made.
    for f in [
        "chunk-plain.netsy",
        "chunk-zstd.netsy",
        "chunk-binary-zstd.netsy",
    ] {
        go_reader_accepts(&go_file(f));
    }
}

#[test]
fn the_go_reader_accepts_chunks_and_snapshots_we_write() {
    use crate::mvcc::State;
    use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
    // A state with everything we write: binary keys, deletes, leases, compaction.
    let mut st = State::new();
    st.put_lease(crate::mvcc::Lease { id: 42, ttl: 3600 });
    let mut records = Vec::new();
    for i in 0..50u8 {
        let e = st
            .put(&PutRequest {
                key: vec![b'/', 0, 0xff, i % 7].into(),
                value: vec![i; 300].into(),
                lease: if i % 3 == 0 { 42 } else { 0 },
                ..Default::default()
            })
            .unwrap();
        records.extend(e.records);
    }
    records.extend(
        st.delete_range(&DeleteRangeRequest {
            key: vec![b'/', 0, 0xff, 1].into(),
            ..Default::default()
        })
        .unwrap()
        .records,
    );
    st.compact(20);
    for r in records.iter_mut() {
        r.leader_id = "node-a".into();
        r.created_at = Some(prost_types::Timestamp {
            seconds: 1_751_371_200,
            nanos: 5,
        });
    }
    let meta = FileMeta {
        leader_id: "node-a".into(),
        created_at: Some(prost_types::Timestamp {
            seconds: 1_751_371_200,
            nanos: 0,
        }),
        // The fields that chain pipelined chunks are unknown to the Go reader.
        previous_crc: 0xfeed_beef_0123_4567,
        pending: (48, 2),
        ..Default::default()
    };
    // A compressed chunk, a plain one, a control-only one, and a snapshot.
    go_reader_accepts(&encode(FileKind::Chunk, &meta, &mut records.clone()).unwrap());
    go_reader_accepts(&encode(FileKind::Chunk, &meta, &mut records[..2].to_vec()).unwrap());
    let mut control = vec![
        Record {
            revision: 52,
            kind: RecordKind::LeaseGrant as i32,
            lease: 7,
            ttl: 60,
            ..Default::default()
        },
        Record {
            revision: 52,
            kind: RecordKind::Compact as i32,
            compact_revision: 20,
            ..Default::default()
        },
        Record {
            revision: 52,
            kind: RecordKind::LeaseRevoke as i32,
            lease: 7,
            ..Default::default()
        },
    ];
    go_reader_accepts(&encode(FileKind::Chunk, &meta, &mut control).unwrap());
    let snap_meta = FileMeta {
        compact_revision: st.compact_revision,
        revision: st.revision,
        ..meta
    };
    go_reader_accepts(&encode(FileKind::Snapshot, &snap_meta, &mut st.to_records()).unwrap());
}
