//! halyard-scheduler
