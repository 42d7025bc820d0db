//! The `.netsy` data file, byte-compatible with the Go Netsy.
//!
//! A file is a stream of varint-length-delimited protobuf messages: one [`FileHeader`], then
//! `records_count` [`Record`]s, then one [`FileFooter`]. When the header says
//! `FILE_COMPRESSION_ZSTD`, everything after the header is a single zstd frame.
//!
//! Every message carries a CRC-64/XZ (Go's `crc64.ECMA` table) of itself encoded with
//! `crc = 0`, and the footer carries the CRC of all records concatenated (each with
//! `crc = 0`). The Go reader checks a CRC by decoding, zeroing `crc` and re-encoding, so the
//! writer must produce canonical protobuf: prost's encoding (fields in number order, proto3
//! defaults omitted) is exactly that, and the fields we added are numbered above 15.
//!
//! The reader trusts nothing: it verifies the four kinds of CRC, the record count and the
//! footer's first/last revision, bounds every message at 4 MiB (the Go reader's limit), and
//! names the file and the failing check in its error, because an operator facing a corrupt
//! bucket needs to know which object to look at.

mod crc;
pub mod json;

pub use crc::crc64;

use crate::proto::netsy::{FileCompression, FileFooter, FileHeader, FileKind, Record};
use prost::Message;
use std::io::Read;

/// The schema version we write: the Go Netsy leaves the field unset (0), and so do we, so a
/// Go reader that checks it accepts our files.
pub const SCHEMA_VERSION: u32 = 0;
/// The highest schema version this reader understands.
pub const MAX_SCHEMA_VERSION: u32 = 1;
/// Largest message the Go reader accepts; we refuse to write or read anything larger.
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// Chunks whose key+value bytes exceed this are zstd-compressed (the Go Netsy's threshold).
pub const CHUNK_COMPRESSION_THRESHOLD: usize = 4 * 1024;

const CHUNK_ZSTD_LEVEL: i32 = 1;
const SNAPSHOT_ZSTD_LEVEL: i32 = 3;

/// A corrupt or unreadable data file: which file, and which check failed.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {check}")]
pub struct FormatError {
    /// The object key or path of the file.
    pub file: String,
    /// What was wrong with it.
    pub check: Check,
}

/// The check a data file failed.
#[derive(Debug, thiserror::Error)]
pub enum Check {
    #[error("truncated while reading {0}")]
    Truncated(String),
    #[error("{what} is {len} bytes, above the {MAX_MESSAGE_BYTES}-byte message limit")]
    MessageTooLarge { what: String, len: u64 },
    #[error("{what} does not decode: {source}")]
    Decode {
        what: String,
        source: prost::DecodeError,
    },
    #[error("header crc mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    HeaderCrc { stored: u64, computed: u64 },
    #[error("record {index} (revision {revision}) crc mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    RecordCrc {
        index: usize,
        revision: i64,
        stored: u64,
        computed: u64,
    },
    #[error("footer crc mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    FooterCrc { stored: u64, computed: u64 },
    #[error("records crc mismatch: stored {stored:#018x}, computed {computed:#018x}")]
    RecordsCrc { stored: u64, computed: u64 },
    #[error("unsupported schema version {0}")]
    SchemaVersion(u32),
    #[error("unknown file kind {0}")]
    Kind(i32),
    #[error("unknown compression {0}")]
    Compression(i32),
    #[error("negative record count {0} in header")]
    NegativeCount(i64),
    #[error("footer first_revision {footer} but first record has revision {actual}")]
    FirstRevision { footer: i64, actual: i64 },
    #[error("footer last_revision {footer} but last record has revision {actual}")]
    LastRevision { footer: i64, actual: i64 },
    #[error("record {index} has revision {revision} below the previous record's {previous}")]
    RevisionOrder {
        index: usize,
        revision: i64,
        previous: i64,
    },
    #[error("length prefix of {0} overflows")]
    LengthOverflow(String),
    #[error("{0} bytes after the footer")]
    TrailingData(u64),
    #[error("zstd body: {0}")]
    Zstd(std::io::Error),
    #[error("record {index} is {len} bytes, above the {MAX_MESSAGE_BYTES}-byte message limit")]
    RecordTooLarge { index: usize, len: usize },
}

impl FormatError {
    fn new(file: &str, check: Check) -> Self {
        Self {
            file: file.to_string(),
            check,
        }
    }
}

/// A fully decoded and verified data file.
#[derive(Debug, Clone, PartialEq)]
pub struct DataFile {
    pub header: FileHeader,
    pub records: Vec<Record>,
    pub footer: FileFooter,
}

/// What a writer puts in a file's header besides the records.
#[derive(Debug, Clone, Default)]
pub struct FileMeta {
    pub leader_id: String,
    pub created_at: Option<prost_types::Timestamp>,
    /// Snapshots only: the store's compacted revision.
    pub compact_revision: i64,
    /// Snapshots only: the store's head revision.
    pub revision: i64,
    /// The writing cluster's id (0: none).
    pub cluster_id: u64,
    /// CRC-64 of the previous chunk's whole object (snapshots: of the chunk that wrote
    /// their revision); 0: not known.
    pub previous_crc: u64,
    /// Chunks only: the first earlier log position not yet durable when the chunk was sent,
    /// as (revision, seq); (0, 0): none.
    pub pending: (i64, u32),
}

/// Encodes a file. Sets every record's `crc` and the footer's CRCs and revision range.
/// Chunks are compressed above [`CHUNK_COMPRESSION_THRESHOLD`] bytes of key+value data,
/// snapshots always.
pub fn encode(kind: FileKind, meta: &FileMeta, records: &mut [Record]) -> Result<Vec<u8>, Check> {
    let kv_bytes: usize = records.iter().map(|r| r.key.len() + r.value.len()).sum();
    let compress = kind == FileKind::Snapshot || kv_bytes > CHUNK_COMPRESSION_THRESHOLD;
    let mut encoder = Encoder::new(kind, meta, compress)?;
    encoder.reserve(kv_bytes + records.len() * 64);
    for record in records.iter_mut() {
        encoder.push(record)?;
    }
    encoder.finish()
}

/// Writes a file one record at a time, so that a snapshot of a large state never holds all
/// of its records, nor its uncompressed body, at once: records go through a streaming zstd
/// frame as they come. A chunk is small and compressed in one call at the end instead, which
/// records its size in the frame (the reader then inflates it in one piece).
pub struct Encoder {
    kind: FileKind,
    meta: FileMeta,
    body: Body,
    records_crc: crc::Digest,
    scratch: Vec<u8>,
    count: usize,
    first: Option<i64>,
    /// The last record's revision (0: no record yet).
    last: i64,
}

enum Body {
    /// Uncompressed, then compressed whole at the end when the flag says so.
    Buffer(Vec<u8>, bool),
    Stream(zstd::stream::write::Encoder<'static, Vec<u8>>),
}

impl Encoder {
    /// Snapshots are always compressed (streaming); chunks when `compress`.
    pub fn new(kind: FileKind, meta: &FileMeta, compress: bool) -> Result<Self, Check> {
        let body = if kind == FileKind::Snapshot {
            Body::Stream(
                zstd::stream::write::Encoder::new(Vec::new(), SNAPSHOT_ZSTD_LEVEL)
                    .map_err(Check::Zstd)?,
            )
        } else {
            Body::Buffer(Vec::new(), compress)
        };
        Ok(Self {
            kind,
            meta: meta.clone(),
            body,
            records_crc: crc::Digest::new(),
            scratch: Vec::new(),
            count: 0,
            first: None,
            last: 0,
        })
    }

    /// Room for about `bytes` of records in a body that is buffered.
    pub fn reserve(&mut self, bytes: usize) {
        if let Body::Buffer(buf, _) = &mut self.body {
            buf.reserve(bytes);
        }
    }

    /// Appends a record, setting its `crc`.
    pub fn push(&mut self, record: &mut Record) -> Result<(), Check> {
        record.crc = 0;
        self.scratch.clear();
        record.encode(&mut self.scratch).expect("vec grows");
        if self.scratch.len() > MAX_MESSAGE_BYTES {
            return Err(Check::RecordTooLarge {
                index: self.count,
                len: self.scratch.len(),
            });
        }
        self.records_crc.update(&self.scratch);
        record.crc = crc64(&self.scratch);
        // The record with its crc is the crc field (number 1, so first) and then the bytes
        // just checksummed: written as such rather than encoded a second time.
        let mut prefix = [0u8; 1 + 10 + 10];
        let mut field = &mut prefix[10..];
        if record.crc != 0 {
            prost::encoding::encode_key(1, prost::encoding::WireType::Varint, &mut field);
            prost::encoding::encode_varint(record.crc, &mut field);
        }
        let field_len = 11 - field.len();
        let mut len = &mut prefix[..10];
        prost::encoding::encode_varint((field_len + self.scratch.len()) as u64, &mut len);
        let len_len = 10 - len.len();
        let write = |body: &mut Body, bytes: &[u8]| match body {
            Body::Buffer(buf, _) => {
                buf.extend_from_slice(bytes);
                Ok(())
            }
            Body::Stream(z) => std::io::Write::write_all(z, bytes).map_err(Check::Zstd),
        };
        write(&mut self.body, &prefix[..len_len])?;
        write(&mut self.body, &prefix[10..10 + field_len])?;
        write(&mut self.body, &self.scratch)?;
        self.first.get_or_insert(record.revision);
        self.last = record.revision;
        self.count += 1;
        Ok(())
    }

    /// Records pushed so far.
    pub fn count(&self) -> usize {
        self.count
    }

    /// The file: header, records, footer.
    pub fn finish(self) -> Result<Vec<u8>, Check> {
        let mut footer = FileFooter {
            records_crc: self.records_crc.finish(),
            first_revision: self.first.unwrap_or(0),
            last_revision: self.last,
            crc: 0,
        };
        footer.crc = crc64(&footer.encode_to_vec());
        let footer = footer.encode_length_delimited_to_vec();
        let compressed = !matches!(self.body, Body::Buffer(_, false));
        let mut header = FileHeader {
            crc: 0,
            schema_version: SCHEMA_VERSION,
            kind: self.kind as i32,
            compression: if compressed {
                FileCompression::Zstd
            } else {
                FileCompression::None
            } as i32,
            records_count: self.count as i64,
            leader_id: self.meta.leader_id,
            created_at: self.meta.created_at,
            compact_revision: self.meta.compact_revision,
            revision: self.meta.revision,
            cluster_id: self.meta.cluster_id,
            previous_crc: self.meta.previous_crc,
            pending_revision: self.meta.pending.0,
            pending_seq: self.meta.pending.1,
        };
        header.crc = crc64(&header.encode_to_vec());
        let header = header.encode_length_delimited_to_vec();
        match self.body {
            Body::Buffer(mut body, compress) => {
                body.extend_from_slice(&footer);
                let mut out = Vec::with_capacity(
                    header.len() + body.len() / if compress { 3 } else { 1 } + 128,
                );
                out.extend_from_slice(&header);
                if compress {
                    compress_into(&body, &mut out, CHUNK_ZSTD_LEVEL).map_err(Check::Zstd)?;
                } else {
                    out.extend_from_slice(&body);
                }
                Ok(out)
            }
            Body::Stream(mut z) => {
                std::io::Write::write_all(&mut z, &footer).map_err(Check::Zstd)?;
                let body = z.finish().map_err(Check::Zstd)?;
                let mut out = Vec::with_capacity(header.len() + body.len());
                out.extend_from_slice(&header);
                out.extend_from_slice(&body);
                Ok(out)
            }
        }
    }
}

thread_local! {
    /// One zstd context per thread and level: creating one costs more than compressing a
    /// typical chunk.
    static COMPRESSORS: std::cell::RefCell<Vec<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(Vec::new()) };
}

/// Appends one zstd frame (with its content size) holding `body` to `out`.
fn compress_into(body: &[u8], out: &mut Vec<u8>, level: i32) -> std::io::Result<()> {
    COMPRESSORS.with(|cell| {
        let mut all = cell.borrow_mut();
        let i = match all.iter().position(|(l, _)| *l == level) {
            Some(i) => i,
            None => {
                all.push((level, zstd::bulk::Compressor::new(level)?));
                all.len() - 1
            }
        };
        let frame = all[i].1.compress(body)?;
        out.extend_from_slice(&frame);
        Ok(())
    })
}

/// Decodes and verifies a whole file.
pub fn decode(file: &str, data: &[u8]) -> Result<DataFile, FormatError> {
    let mut records = Vec::new();
    // The count is checked against the records actually read, so it only bounds the
    // reservation, which is held to what a small file could claim.
    let expected = std::cell::Cell::new(0);
    let started = |h: &FileHeader| expected.set(h.records_count.clamp(0, 16 * 1024) as usize);
    let (header, footer) = decode_file(file, data, started, |r| {
        if records.capacity() == 0 {
            records.reserve(expected.get());
        }
        records.push(r);
        Ok(())
    })?;
    Ok(DataFile {
        header,
        records,
        footer,
    })
}

/// Decodes and verifies a file, handing each record to `visit` as soon as its own CRC checks.
/// The file-level checks (count, records CRC, footer) come after the last record, so a caller
/// that acts on records must be ready to discard them when this returns an error.
pub fn decode_with(
    file: &str,
    data: &[u8],
    visit: impl FnMut(Record) -> Result<(), Check>,
) -> Result<(FileHeader, FileFooter), FormatError> {
    decode_file(file, data, |_| {}, visit)
}

/// [`decode_with`], calling `started` with the header once it checks.
fn decode_file(
    file: &str,
    data: &[u8],
    started: impl FnOnce(&FileHeader),
    mut visit: impl FnMut(Record) -> Result<(), Check>,
) -> Result<(FileHeader, FileFooter), FormatError> {
    let fail = |check| FormatError::new(file, check);
    let mut input = SliceMessages(data);
    let header_bytes = input.next(Part::Header).map_err(fail)?;
    let mut header = FileHeader::decode(header_bytes).map_err(|source| {
        fail(Check::Decode {
            what: Part::Header.to_string(),
            source,
        })
    })?;
    let stored = header.crc;
    header.crc = 0;
    let computed = crc64(&header.encode_to_vec());
    if stored != computed {
        return Err(fail(Check::HeaderCrc { stored, computed }));
    }
    header.crc = stored;
    if header.schema_version > MAX_SCHEMA_VERSION {
        return Err(fail(Check::SchemaVersion(header.schema_version)));
    }
    if FileKind::try_from(header.kind).is_err() || header.kind == FileKind::Unknown as i32 {
        return Err(fail(Check::Kind(header.kind)));
    }
    if header.records_count < 0 {
        return Err(fail(Check::NegativeCount(header.records_count)));
    }
    started(&header);
    let body = input.0;
    let plain = match FileCompression::try_from(header.compression) {
        Ok(FileCompression::None) => body,
        Ok(FileCompression::Zstd) => {
            let frame = zstd_frame(body).map_err(fail)?;
            let mut inflated = INFLATED.with(|cell| cell.take());
            if !inflate_whole(frame, &header, &mut inflated).map_err(fail)? {
                let footer = inflate_streaming(frame, &header, &mut visit).map_err(fail)?;
                return Ok((header, footer));
            }
            let footer = read_plain_body(file, &header, &inflated, &mut visit);
            if inflated.capacity() <= KEEP_INFLATED_BYTES {
                inflated.clear();
                INFLATED.with(|cell| cell.replace(inflated));
            }
            return Ok((header, footer?));
        }
        _ => return Err(fail(Check::Compression(header.compression))),
    };
    let footer = read_plain_body(file, &header, plain, &mut visit)?;
    Ok((header, footer))
}

/// Reads an uncompressed body, which must end with the footer.
fn read_plain_body(
    file: &str,
    header: &FileHeader,
    body: &[u8],
    visit: &mut impl FnMut(Record) -> Result<(), Check>,
) -> Result<FileFooter, FormatError> {
    let fail = |check| FormatError::new(file, check);
    let mut input = SliceMessages(body);
    let footer = read_body(header, &mut input, visit).map_err(fail)?;
    if !input.0.is_empty() {
        return Err(fail(Check::TrailingData(input.0.len() as u64)));
    }
    Ok(footer)
}

/// A body inflated in one piece when its frame states a size up to this: a chunk is small,
/// and one call with no intermediate buffer is the fastest way through it. A larger body (a
/// snapshot) is streamed, so that loading it never holds the whole of it at once.
const INFLATE_WHOLE_BYTES: u64 = 64 * 1024 * 1024;

/// The single zstd frame `body` must be: anything after it is corruption.
fn zstd_frame(body: &[u8]) -> Result<&[u8], Check> {
    let len = zstd::zstd_safe::find_frame_compressed_size(body).map_err(zstd_error)?;
    if len < body.len() {
        return Err(Check::TrailingData((body.len() - len) as u64));
    }
    Ok(body)
}

fn zstd_error(code: usize) -> Check {
    Check::Zstd(std::io::Error::other(zstd::zstd_safe::get_error_name(code)))
}

/// The most bytes a valid body of `header.records_count` records can inflate to.
fn body_limit(header: &FileHeader) -> u64 {
    (header.records_count as u64 + 1).saturating_mul(MAX_MESSAGE_BYTES as u64 + 10)
}

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
    /// The buffer chunks are inflated into, kept between files: records are decoded out of
    /// it into buffers of their own, so it is free again once a file is read, and a fresh
    /// one for every chunk costs a page fault per 4 KiB.
    static INFLATED: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// The largest inflate buffer kept for the next file (a chunk's body is far smaller).
const KEEP_INFLATED_BYTES: usize = 4 * 1024 * 1024;

/// Inflates the frame into `out` in one call if it states a content size small enough for
/// that; false (nothing done) otherwise.
fn inflate_whole(frame: &[u8], header: &FileHeader, out: &mut Vec<u8>) -> Result<bool, Check> {
    let size = match zstd::zstd_safe::get_frame_content_size(frame) {
        Ok(Some(size)) if size <= INFLATE_WHOLE_BYTES => size,
        _ => return Ok(false),
    };
    if size > body_limit(header) {
        return Err(Check::MessageTooLarge {
            what: "zstd body".into(),
            len: size,
        });
    }
    out.clear();
    out.reserve(size as usize);
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let decompressor = match cell.as_mut() {
            Some(d) => d,
            None => cell.insert(zstd::bulk::Decompressor::new().map_err(Check::Zstd)?),
        };
        decompressor
            .decompress_to_buffer(frame, out)
            .map_err(Check::Zstd)
    })?;
    if out.len() as u64 != size {
        return Err(Check::Zstd(std::io::Error::other(format!(
            "frame states {size} bytes but holds {}",
            out.len()
        ))));
    }
    Ok(true)
}

/// Reads the body from a streaming decoder, one message at a time.
fn inflate_streaming(
    frame: &[u8],
    header: &FileHeader,
    visit: &mut impl FnMut(Record) -> Result<(), Check>,
) -> Result<FileFooter, Check> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(frame)
        .map_err(Check::Zstd)?
        .single_frame();
    // Buffered: length prefixes are read a byte at a time.
    let mut input = ReadMessages {
        input: std::io::BufReader::with_capacity(128 * 1024, &mut decoder),
        buf: Vec::new(),
    };
    let footer = read_body(header, &mut input, visit)?;
    // What the buffer read ahead must be nothing but the end of the frame.
    let ahead = input.input.buffer().len();
    if ahead > 0 {
        return Err(Check::TrailingData(ahead as u64));
    }
    drop(input);
    let mut rest = Vec::new();
    let trailing = decoder.read_to_end(&mut rest).map_err(Check::Zstd)?;
    if trailing > 0 {
        return Err(Check::TrailingData(trailing as u64));
    }
    Ok(footer)
}

/// Which message of a file, named in errors (built only when one is reported).
#[derive(Debug, Clone, Copy)]
enum Part {
    Header,
    Record(usize),
    Footer,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Part::Header => f.write_str("header"),
            Part::Record(index) => write!(f, "record {index}"),
            Part::Footer => f.write_str("footer"),
        }
    }
}

/// A source of varint-length-delimited messages, each lent as a slice until the next one.
/// Messages are decoded from slices, so every `Bytes` field of a decoded record is an
/// allocation of its own, exactly its size: a value kept for the life of a key pins
/// nothing else (neither the file nor its neighbours), and is not copied again to be kept.
trait Messages {
    fn next(&mut self, part: Part) -> Result<&[u8], Check>;
}

/// Messages read from bytes in memory.
struct SliceMessages<'a>(&'a [u8]);

impl Messages for SliceMessages<'_> {
    fn next(&mut self, part: Part) -> Result<&[u8], Check> {
        let mut at = 0;
        let len = message_length(part, || {
            let byte = self.0.get(at).copied();
            at += 1;
            Ok(byte)
        })?;
        let rest = &self.0[at..];
        if (rest.len() as u64) < len {
            return Err(Check::Truncated(part.to_string()));
        }
        let (message, rest) = rest.split_at(len as usize);
        self.0 = rest;
        Ok(message)
    }
}

/// Messages read from a stream, each into the same buffer.
struct ReadMessages<R: Read> {
    input: R,
    buf: Vec<u8>,
}

impl<R: Read> Messages for ReadMessages<R> {
    fn next(&mut self, part: Part) -> Result<&[u8], Check> {
        let input = &mut self.input;
        let len = message_length(part, || loop {
            let mut byte = [0u8; 1];
            match input.read(&mut byte) {
                Ok(0) => return Ok(None),
                Ok(_) => return Ok(Some(byte[0])),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Check::Zstd(e)),
            }
        })?;
        self.buf.resize(len as usize, 0);
        self.input
            .read_exact(&mut self.buf)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Check::Truncated(part.to_string()),
                _ => Check::Zstd(e),
            })?;
        Ok(&self.buf)
    }
}

/// A message's varint length prefix, read a byte at a time from `byte` (`None`: the input
/// ended), bounded by the message limit.
fn message_length(
    part: Part,
    mut byte: impl FnMut() -> Result<Option<u8>, Check>,
) -> Result<u64, Check> {
    let mut len: u64 = 0;
    let mut shift = 0;
    loop {
        let Some(b) = byte()? else {
            return Err(Check::Truncated(part.to_string()));
        };
        if shift >= 64 {
            return Err(Check::LengthOverflow(part.to_string()));
        }
        len |= u64::from(b & 0x7f) << shift;
        shift += 7;
        if b & 0x80 == 0 {
            break;
        }
    }
    if len > MAX_MESSAGE_BYTES as u64 {
        return Err(Check::MessageTooLarge {
            what: part.to_string(),
            len,
        });
    }
    Ok(len)
}

fn read_body(
    header: &FileHeader,
    input: &mut impl Messages,
    visit: &mut impl FnMut(Record) -> Result<(), Check>,
) -> Result<FileFooter, Check> {
    let mut records_crc = crc::Digest::new();
    let mut first = None;
    let mut last = None;
    for index in 0..header.records_count as usize {
        let part = Part::Record(index);
        let buf = input.next(part)?;
        let mut record = Record::decode(buf).map_err(|source| Check::Decode {
            what: part.to_string(),
            source,
        })?;
        let stored = record.crc;
        // The CRC covers the record encoded with crc = 0, i.e. without field 1. Writers
        // encode fields in number order, so that is the wire bytes after a leading crc
        // field: checked without re-encoding. Anything else takes the Go reader's way
        // (re-encode, then checksum).
        let fast = strip_crc_field(buf).filter(|rest| crc64(rest) == stored);
        if let Some(rest) = fast {
            records_crc.update(rest);
        } else {
            record.crc = 0;
            let encoded = record.encode_to_vec();
            let computed = crc64(&encoded);
            if stored != computed {
                return Err(Check::RecordCrc {
                    index,
                    revision: record.revision,
                    stored,
                    computed,
                });
            }
            records_crc.update(&encoded);
            record.crc = stored;
        }
        if let Some(previous) = last {
            if record.revision < previous {
                return Err(Check::RevisionOrder {
                    index,
                    revision: record.revision,
                    previous,
                });
            }
        }
        first.get_or_insert(record.revision);
        last = Some(record.revision);
        visit(record)?;
    }
    let buf = input.next(Part::Footer)?;
    let mut footer = FileFooter::decode(buf).map_err(|source| Check::Decode {
        what: Part::Footer.to_string(),
        source,
    })?;
    let stored = footer.crc;
    footer.crc = 0;
    let computed = crc64(&footer.encode_to_vec());
    if stored != computed {
        return Err(Check::FooterCrc { stored, computed });
    }
    footer.crc = stored;
    let computed = records_crc.finish();
    if footer.records_crc != computed {
        return Err(Check::RecordsCrc {
            stored: footer.records_crc,
            computed,
        });
    }
    if let Some(actual) = first {
        if footer.first_revision != actual {
            return Err(Check::FirstRevision {
                footer: footer.first_revision,
                actual,
            });
        }
    }
    if let Some(actual) = last {
        if footer.last_revision != actual {
            return Err(Check::LastRevision {
                footer: footer.last_revision,
                actual,
            });
        }
    }
    Ok(footer)
}

/// The bytes of an encoded record after its leading field 1 (crc, a varint), if it starts
/// with one.
fn strip_crc_field(buf: &[u8]) -> Option<&[u8]> {
    let rest = buf.strip_prefix(&[0x08])?;
    let len = rest.iter().position(|b| b & 0x80 == 0)? + 1;
    (len <= 10).then(|| &rest[len..])
}

#[cfg(test)]
pub(crate) mod tests;
