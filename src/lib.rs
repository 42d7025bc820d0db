pub mod format;
pub mod mvcc;
pub mod store;
pub mod proto;
