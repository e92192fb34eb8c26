//! What the Kafka sink and the Kafka source share: how a client reaches the brokers
//! (`connection`), what a failed call means (`errors`), and the record format the sink
//! writes and the source reads (`record`).

pub mod connection;
pub mod errors;
pub mod record;

pub use connection::Connection;
