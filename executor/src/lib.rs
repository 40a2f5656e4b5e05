//! halyard-executor
