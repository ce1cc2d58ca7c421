//! MLflow's REST API: how to reach it ([`connection`]: URL, credentials, TLS), the wire types
//! ([`model`]) and a client with paging and retries ([`client`]).

pub mod client;
pub mod connection;
pub mod model;

pub use client::MlflowClient;
pub use connection::Connection;
