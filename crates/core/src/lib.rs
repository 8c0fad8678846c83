//! What every crawler service shares: the job model, the websocket wire
//! protocol, URL rules, the network policy, the error codes, telemetry,
//! shutdown handling and the traits the engine adapters implement.

pub mod admin;
pub mod auth;
pub mod config;
pub mod error_code;
pub mod events;
pub mod lease;
pub mod model;
pub mod net_policy;
pub mod ports;
pub mod protocol;
pub mod retry;
pub mod shutdown;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod traps;
pub mod urls;

pub use error_code::ErrorCode;

/// Milliseconds since the Unix epoch, the time unit of every stored timestamp.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
