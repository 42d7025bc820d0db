pub mod format;
pub mod log;
pub mod mvcc;
pub mod proto;
pub mod store;
