//! PostgreSQL source (issue 4, in progress): logical replication with pgoutput.
//!
//! So far: the pgoutput message decoder. The replication connection
//! (pgwire-replication), slot and publication management, standby feedback and value
//! decoding will sit beside it.

pub mod pgoutput;
pub mod values;
