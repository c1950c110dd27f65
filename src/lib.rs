//! mediagate: a pingora sidecar in front of Twilio's Media API, and a local Media API to run it
//! against. See DESIGN.md in the steering repository and the README.

pub mod access_log;
pub mod api;
pub mod cache;
pub mod config;
pub mod demo;
pub mod idempotency;
pub mod metrics;
pub mod origin;
pub mod policy;
pub mod process;
pub mod proxy;
pub mod quota;
pub mod redis_link;
pub mod spool;

#[cfg(test)]
mod test_util;
