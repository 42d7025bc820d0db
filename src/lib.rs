pub mod format;
pub mod proto;
