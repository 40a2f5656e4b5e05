//! halyard-client
