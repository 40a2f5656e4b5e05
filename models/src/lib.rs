//! halyard-models
