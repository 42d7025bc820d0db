//! A key as the state holds it.
//!
//! Every key is held by the key map, by the revision index for each revision that changed
//! it, and by its lease's key set. As `Bytes` it cost a 32-byte handle in each of those
//! places plus a separate shared header, and the key map's B-tree leaves (16 entries, half
//! empty under keys written in order) paid the handle twice over. A `Key` is one allocation
//! (count, length, bytes) behind an 8-byte pointer. Responses and records get `Bytes`
//! copies of it ([`Key::to_bytes`]): a key is short, and those live only until sent.

use bytes::Bytes;
use std::borrow::Borrow;
use std::cmp::Ordering;
use triomphe::ThinArc;

#[derive(Clone)]
pub struct Key(ThinArc<(), u8>);

impl Key {
    pub fn new(bytes: &[u8]) -> Self {
        Self(ThinArc::from_header_and_slice((), bytes))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0.slice
    }

    /// A copy for a response or a record.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::copy_from_slice(self.as_bytes())
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Key {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_bytes().cmp(other.as_bytes())
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state)
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_and_compares_as_its_bytes() {
        let mut keys: Vec<Key> = ["b", "a/1", "", "a", "a/0\u{0}", "\u{ff}"]
            .iter()
            .map(|k| Key::new(k.as_bytes()))
            .collect();
        keys.sort();
        let mut raw: Vec<&[u8]> = keys.iter().map(|k| k.as_bytes()).collect();
        raw.sort();
        assert_eq!(keys.iter().map(|k| k.as_bytes()).collect::<Vec<_>>(), raw);
        assert_eq!(Key::new(b"a/1"), Key::new(b"a/1"));
        assert_ne!(Key::new(b"a/1"), Key::new(b"a/10"));
        assert_eq!(Key::new(b"a/1").to_bytes(), Bytes::from_static(b"a/1"));
        assert_eq!(std::mem::size_of::<Key>(), 8);
    }
}
