//! Storage, one folder per concern: [`objects`] keeps clips and snapshots (a local
//! directory or S3), [`insights`] keeps what the models found (SQLite or Qdrant).

pub mod insights;
pub mod objects;
