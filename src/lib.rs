pub mod format;
pub mod store;
pub mod proto;
