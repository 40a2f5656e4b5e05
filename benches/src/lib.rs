//! halyard-benches
