//! halyard-tests
