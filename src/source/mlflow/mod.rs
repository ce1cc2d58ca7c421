//! MLflow's REST API: the wire types ([`model`]) and a client with paging, retries, auth and TLS ([`client`]).

pub mod client;
pub mod model;

pub use client::MlflowClient;
