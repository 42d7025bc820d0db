//! bbolt's file format, the subset etcd's backend uses: a root bucket of named buckets, each
//! a B+tree of byte keys and values, in pages of 4 KiB.
//!
//! Written, not mutated: a snapshot is produced in one pass, leaves first in key order, then
//! each branch level above them, so every page is written once and never moved. Pages are
//! filled (bbolt fills to half before splitting, but reads any fill), a value larger than a
//! page takes overflow pages, and nothing is left unreachable or on the free list, which is
//! what `bbolt check` (run by `etcdutl snapshot status`) demands. Integers are little-endian,
//! as bbolt writes them on every platform etcd ships for.
//!
//! Read for restores: every length and offset is checked against the page it lives in, so a
//! truncated or corrupt file is refused with the page it failed on, never read past.

use std::io::{self, Seek, SeekFrom, Write};

pub const PAGE_SIZE: usize = 4096;
const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const HEADER: usize = 16;
/// Leaf and branch elements are both 16 bytes.
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
const BUCKET_FLAG: u32 = 0x01;
/// A page's element count is a u16; bbolt refuses 0xFFFF.
const MAX_ELEMENTS: usize = 0xFFFE;
/// A bucket's header in its parent: root page id and sequence.
const IN_BUCKET: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("not a bbolt database (no valid meta page: {0})")]
    NotBolt(String),
    #[error("bbolt page size {0} is not supported")]
    PageSize(u32),
    #[error("database is truncated: it holds {have} bytes, its meta page says {want}")]
    Truncated { have: u64, want: u64 },
    #[error("page {page}: {reason}")]
    Corrupt { page: u64, reason: String },
    #[error("bucket {0:?} not found")]
    NoBucket(String),
    #[error("bucket keys out of order or repeated at {0:?}")]
    Order(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// FNV-1a, 64 bits: bbolt's meta page checksum.
fn fnv1a64(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// One page being filled: its elements and their key/value bytes.
struct Node {
    flags: u16,
    /// (leaf flags or branch child page, key size, value size)
    elements: Vec<(u64, u32, u32)>,
    data: Vec<u8>,
    first_key: Vec<u8>,
}

impl Node {
    fn new(flags: u16) -> Self {
        Self {
            flags,
            elements: Vec::new(),
            data: Vec::new(),
            first_key: Vec::new(),
        }
    }

    fn size(&self) -> usize {
        HEADER + ELEMENT * self.elements.len() + self.data.len()
    }

    /// Whether an element of `len` key and value bytes still fits in one page.
    fn fits(&self, len: usize) -> bool {
        self.elements.len() < MAX_ELEMENTS && self.size() + ELEMENT + len <= PAGE_SIZE
    }

    fn push(&mut self, tag: u64, key: &[u8], value: &[u8]) {
        if self.elements.is_empty() {
            self.first_key = key.to_vec();
        }
        self.elements
            .push((tag, key.len() as u32, value.len() as u32));
        self.data.extend_from_slice(key);
        self.data.extend_from_slice(value);
    }

    /// The page bytes (with overflow pages) for page id `id`.
    fn encode(&self, id: u64) -> Vec<u8> {
        let pages = self.size().div_ceil(PAGE_SIZE).max(1);
        let mut page = vec![0u8; pages * PAGE_SIZE];
        write_header(&mut page, id, self.flags, self.elements.len(), pages - 1);
        let mut data_at = HEADER + ELEMENT * self.elements.len();
        for (i, (tag, ksize, vsize)) in self.elements.iter().enumerate() {
            let at = HEADER + ELEMENT * i;
            let pos = (data_at - at) as u32;
            let e = &mut page[at..at + ELEMENT];
            if self.flags == LEAF {
                e[0..4].copy_from_slice(&(*tag as u32).to_le_bytes());
                e[4..8].copy_from_slice(&pos.to_le_bytes());
                e[8..12].copy_from_slice(&ksize.to_le_bytes());
                e[12..16].copy_from_slice(&vsize.to_le_bytes());
            } else {
                e[0..4].copy_from_slice(&pos.to_le_bytes());
                e[4..8].copy_from_slice(&ksize.to_le_bytes());
                e[8..16].copy_from_slice(&tag.to_le_bytes());
            }
            data_at += (*ksize + *vsize) as usize;
        }
        let start = HEADER + ELEMENT * self.elements.len();
        page[start..start + self.data.len()].copy_from_slice(&self.data);
        page
    }
}

fn write_header(page: &mut [u8], id: u64, flags: u16, count: usize, overflow: usize) {
    page[0..8].copy_from_slice(&id.to_le_bytes());
    page[8..10].copy_from_slice(&flags.to_le_bytes());
    page[10..12].copy_from_slice(&(count as u16).to_le_bytes());
    page[12..16].copy_from_slice(&(overflow as u32).to_le_bytes());
}

/// Writes a database in one pass: [`Writer::bucket`] for each bucket, then
/// [`Writer::finish`]. The two meta pages are written last, at the start of the file.
pub struct Writer<W: Write + Seek> {
    out: W,
    next: u64,
    buckets: Vec<(Vec<u8>, u64)>,
}

impl<W: Write + Seek> Writer<W> {
    pub fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&[0u8; 2 * PAGE_SIZE])?;
        Ok(Self {
            out,
            next: 2,
            buckets: Vec::new(),
        })
    }

    fn write_node(&mut self, node: &Node) -> io::Result<u64> {
        let id = self.next;
        let page = node.encode(id);
        self.out.write_all(&page)?;
        self.next += (page.len() / PAGE_SIZE) as u64;
        Ok(id)
    }

    /// Writes a bucket holding `entries`, which must come in strictly increasing key order
    /// with non-empty keys.
    pub fn bucket<K, V>(
        &mut self,
        name: &[u8],
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Result<(), BoltError>
    where
        K: AsRef<[u8]>,
        V: AsRef<[u8]>,
    {
        let mut level: Vec<(Vec<u8>, u64)> = Vec::new();
        let mut node = Node::new(LEAF);
        let mut last: Option<Vec<u8>> = None;
        for (k, v) in entries {
            let (k, v) = (k.as_ref(), v.as_ref());
            if k.is_empty() || last.as_deref().is_some_and(|l| l >= k) {
                return Err(BoltError::Order(String::from_utf8_lossy(k).into_owned()));
            }
            last = Some(k.to_vec());
            if !node.elements.is_empty() && !node.fits(k.len() + v.len()) {
                let id = self.write_node(&node)?;
                level.push((std::mem::take(&mut node.first_key), id));
                node = Node::new(LEAF);
            }
            node.push(0, k, v);
        }
        if !node.elements.is_empty() || level.is_empty() {
            let id = self.write_node(&node)?;
            level.push((std::mem::take(&mut node.first_key), id));
        }
        // Branch levels up to a single root page.
        while level.len() > 1 {
            let mut up = Vec::new();
            let mut node = Node::new(BRANCH);
            for (key, id) in level {
                if !node.elements.is_empty() && !node.fits(key.len()) {
                    let at = self.write_node(&node)?;
                    up.push((std::mem::take(&mut node.first_key), at));
                    node = Node::new(BRANCH);
                }
                node.push(id, &key, &[]);
            }
            let at = self.write_node(&node)?;
            up.push((std::mem::take(&mut node.first_key), at));
            level = up;
        }
        self.buckets.push((name.to_vec(), level[0].1));
        Ok(())
    }

    /// Writes the root bucket, an empty free list and both meta pages; returns the output
    /// and the database's size in bytes.
    pub fn finish(mut self) -> Result<(W, u64), BoltError> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let mut root = Node::new(LEAF);
        for (name, id) in &buckets {
            let mut value = [0u8; IN_BUCKET];
            value[0..8].copy_from_slice(&id.to_le_bytes());
            if !root.fits(name.len() + IN_BUCKET) {
                return Err(BoltError::Order("too many buckets for one page".into()));
            }
            root.push(u64::from(BUCKET_FLAG), name, &value);
        }
        let root_id = self.write_node(&root)?;
        let freelist_id = self.next;
        let mut page = vec![0u8; PAGE_SIZE];
        write_header(&mut page, freelist_id, FREELIST, 0, 0);
        self.out.write_all(&page)?;
        self.next += 1;
        let high_water = self.next;
        self.out.seek(SeekFrom::Start(0))?;
        for txid in 0..2u64 {
            let mut page = vec![0u8; PAGE_SIZE];
            write_header(&mut page, txid, META, 0, 0);
            let m = &mut page[HEADER..HEADER + 64];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
            m[16..24].copy_from_slice(&root_id.to_le_bytes());
            m[32..40].copy_from_slice(&freelist_id.to_le_bytes());
            m[40..48].copy_from_slice(&high_water.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&m[..56]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            self.out.write_all(&page)?;
        }
        self.out.seek(SeekFrom::End(0))?;
        self.out.flush()?;
        Ok((self.out, high_water * PAGE_SIZE as u64))
    }
}

/// A database read from its bytes.
pub struct Db<'a> {
    data: &'a [u8],
    page_size: usize,
    root: u64,
    pages: u64,
}

/// Where a bucket's tree starts: a page of the file, or a page inline in its parent's value.
#[derive(Clone, Copy)]
enum Root<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap())
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

impl<'a> Db<'a> {
    /// Checks both meta pages and uses the valid one with the higher transaction id, as
    /// bbolt does.
    pub fn open(data: &'a [u8]) -> Result<Self, BoltError> {
        let mut best: Option<(u64, u32, u64, u64)> = None;
        let mut why = String::from("file shorter than a meta page");
        for (i, at) in [0usize, PAGE_SIZE].into_iter().enumerate() {
            // The second meta page sits one page in at the database's own page size; try
            // 4 KiB first and the first meta's size after.
            let at = if i == 1 {
                best.map_or(at, |(_, ps, _, _)| ps as usize)
            } else {
                at
            };
            let Some(m) = data.get(at + HEADER..at + HEADER + 64) else {
                continue;
            };
            if u32_at(m, 0) != MAGIC {
                why = format!("meta {i}: bad magic {:#x}", u32_at(m, 0));
                continue;
            }
            if u32_at(m, 4) != VERSION {
                why = format!("meta {i}: version {}", u32_at(m, 4));
                continue;
            }
            if fnv1a64(&m[..56]) != u64_at(m, 56) {
                why = format!("meta {i}: checksum mismatch");
                continue;
            }
            let txid = u64_at(m, 48);
            if best.is_none_or(|b| txid > b.0) {
                best = Some((txid, u32_at(m, 8), u64_at(m, 16), u64_at(m, 40)));
            }
        }
        let (_, page_size, root, pages) = best.ok_or(BoltError::NotBolt(why))?;
        if !(512..=65536).contains(&page_size) || !page_size.is_power_of_two() {
            return Err(BoltError::PageSize(page_size));
        }
        let want = pages.saturating_mul(u64::from(page_size));
        if (data.len() as u64) < want {
            return Err(BoltError::Truncated {
                have: data.len() as u64,
                want,
            });
        }
        Ok(Self {
            data,
            page_size: page_size as usize,
            root,
            pages,
        })
    }

    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The page `id` with its overflow pages.
    fn page(&self, id: u64) -> Result<&'a [u8], BoltError> {
        let corrupt = |reason: String| BoltError::Corrupt { page: id, reason };
        if id < 2 || id >= self.pages {
            return Err(corrupt(format!(
                "outside the database ({} pages)",
                self.pages
            )));
        }
        let start = id as usize * self.page_size;
        let head = &self.data[start..start + HEADER];
        if u64_at(head, 0) != id {
            return Err(corrupt(format!("header names page {}", u64_at(head, 0))));
        }
        let overflow = u64::from(u32_at(head, 12));
        if id + overflow >= self.pages {
            return Err(corrupt(format!(
                "{overflow} overflow pages run past the end"
            )));
        }
        Ok(&self.data[start..start + (1 + overflow as usize) * self.page_size])
    }

    /// The buckets of the root, in name order.
    pub fn bucket_names(&self) -> Result<Vec<Vec<u8>>, BoltError> {
        let mut names = Vec::new();
        self.walk(
            Root::Page(self.root),
            0,
            &mut |k, _, flags| -> Result<(), BoltError> {
                if flags & BUCKET_FLAG != 0 {
                    names.push(k.to_vec());
                }
                Ok(())
            },
        )?;
        Ok(names)
    }

    /// Calls `f` with every key and value of bucket `name`, in key order; stops at the
    /// first error, `f`'s or the file's.
    pub fn for_each<E: From<BoltError>>(
        &self,
        name: &[u8],
        mut f: impl FnMut(&'a [u8], &'a [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut found: Option<Root<'a>> = None;
        self.walk(
            Root::Page(self.root),
            0,
            &mut |k, v, flags| -> Result<(), BoltError> {
                if flags & BUCKET_FLAG != 0 && k == name {
                    if v.len() < IN_BUCKET {
                        return Err(BoltError::Corrupt {
                            page: self.root,
                            reason: "bucket header too short".into(),
                        });
                    }
                    let root = u64_at(v, 0);
                    found = Some(if root == 0 {
                        Root::Inline(&v[IN_BUCKET..])
                    } else {
                        Root::Page(root)
                    });
                }
                Ok(())
            },
        )?;
        let root =
            found.ok_or_else(|| BoltError::NoBucket(String::from_utf8_lossy(name).into_owned()))?;
        self.walk(root, 0, &mut |k, v, flags| {
            if flags & BUCKET_FLAG != 0 {
                return Ok(()); // nested buckets: etcd has none
            }
            f(k, v)
        })
    }

    fn walk<E: From<BoltError>>(
        &self,
        root: Root<'a>,
        depth: usize,
        f: &mut dyn FnMut(&'a [u8], &'a [u8], u32) -> Result<(), E>,
    ) -> Result<(), E> {
        let (id, page) = match root {
            Root::Page(id) => (id, self.page(id).map_err(E::from)?),
            Root::Inline(p) => (0, p),
        };
        let corrupt = |reason: String| BoltError::Corrupt { page: id, reason };
        if depth > 64 {
            return Err(corrupt("tree deeper than 64 levels (a cycle?)".into()).into());
        }
        if page.len() < HEADER {
            return Err(corrupt("shorter than a page header".into()).into());
        }
        let flags = u16_at(page, 8);
        let count = u16_at(page, 10) as usize;
        if HEADER + count * ELEMENT > page.len() {
            return Err(corrupt(format!("{count} elements do not fit")).into());
        }
        let slice = |at: usize, pos: u32, len: usize| -> Result<&'a [u8], E> {
            let from = at + pos as usize;
            page.get(from..from + len)
                .ok_or_else(|| corrupt(format!("element at {at} points past the page")).into())
        };
        match flags {
            LEAF => {
                for i in 0..count {
                    let at = HEADER + i * ELEMENT;
                    let e = &page[at..at + ELEMENT];
                    let (eflags, pos, ks, vs) =
                        (u32_at(e, 0), u32_at(e, 4), u32_at(e, 8), u32_at(e, 12));
                    let kv = slice(at, pos, ks as usize + vs as usize)?;
                    f(&kv[..ks as usize], &kv[ks as usize..], eflags)?;
                }
            }
            BRANCH => {
                for i in 0..count {
                    let at = HEADER + i * ELEMENT;
                    let e = &page[at..at + ELEMENT];
                    let child = u64_at(e, 8);
                    slice(at, u32_at(e, 0), u32_at(e, 4) as usize)?;
                    if child == id {
                        return Err(corrupt("branch points at itself".into()).into());
                    }
                    self.walk(Root::Page(child), depth + 1, f)?;
                }
            }
            other => return Err(corrupt(format!("not a tree page (flags {other:#x})")).into()),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    type Entries = Vec<(Vec<u8>, Vec<u8>)>;

    fn written(buckets: &[(&str, Entries)]) -> Vec<u8> {
        let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
        for (name, entries) in buckets {
            w.bucket(name.as_bytes(), entries.iter().map(|(k, v)| (k, v)))
                .unwrap();
        }
        let (out, size) = w.finish().unwrap();
        let bytes = out.into_inner();
        assert_eq!(bytes.len() as u64, size);
        bytes
    }

    fn read(db: &Db, name: &str) -> Entries {
        let mut got = Vec::new();
        db.for_each(name.as_bytes(), |k, v| -> Result<(), BoltError> {
            got.push((k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
        got
    }

    #[test]
    fn buckets_small_large_and_empty_read_back() {
        let many: Vec<_> = (0..20_000u32)
            .map(|i| {
                (
                    format!("key/{i:08}").into_bytes(),
                    vec![i as u8; (i % 300) as usize],
                )
            })
            .collect();
        let big = vec![
            (b"big".to_vec(), vec![7u8; 3 * PAGE_SIZE + 5]),
            (b"small".to_vec(), b"v".to_vec()),
        ];
        let bytes = written(&[
            ("many", many.clone()),
            ("empty", vec![]),
            ("big", big.clone()),
        ]);
        let db = Db::open(&bytes).unwrap();
        assert_eq!(
            db.bucket_names().unwrap(),
            vec![b"big".to_vec(), b"empty".to_vec(), b"many".to_vec()]
        );
        assert_eq!(read(&db, "many"), many);
        assert_eq!(read(&db, "big"), big);
        assert!(read(&db, "empty").is_empty());
        assert!(matches!(
            db.for_each(b"nope", |_, _| Ok(())),
            Err(BoltError::NoBucket(_))
        ));
    }

    #[test]
    fn unordered_keys_are_refused() {
        let mut w = Writer::new(Cursor::new(Vec::new())).unwrap();
        let e = w.bucket(b"b", [(b"b".to_vec(), vec![]), (b"a".to_vec(), vec![])]);
        assert!(matches!(e, Err(BoltError::Order(_))));
        let e = w.bucket(b"c", [(b"".to_vec(), vec![])]);
        assert!(matches!(e, Err(BoltError::Order(_))));
    }

    #[test]
    fn damage_is_named() {
        let entries: Vec<_> = (0..2000u32)
            .map(|i| (i.to_be_bytes().to_vec(), vec![1u8; 50]))
            .collect();
        let bytes = written(&[("key", entries)]);
        assert!(matches!(
            Db::open(&bytes[..bytes.len() - PAGE_SIZE]),
            Err(BoltError::Truncated { .. })
        ));
        assert!(matches!(Db::open(b"hello"), Err(BoltError::NotBolt(_))));
        // One meta damaged: the other still opens it, as bbolt does.
        let mut one = bytes.clone();
        one[HEADER + 20] ^= 1;
        assert!(Db::open(&one).is_ok());
        one[PAGE_SIZE + HEADER + 20] ^= 1;
        assert!(matches!(Db::open(&one), Err(BoltError::NotBolt(_))));
        // A leaf element pointing past its page.
        let mut bad = bytes.clone();
        let leaf = 2 * PAGE_SIZE;
        bad[leaf + HEADER + 4..leaf + HEADER + 8]
            .copy_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
        let db = Db::open(&bad).unwrap();
        let e = db
            .for_each(b"key", |_, _| -> Result<(), BoltError> { Ok(()) })
            .unwrap_err();
        assert!(e.to_string().contains("page 2"), "{e}");
    }
}
