//! callsync: exports call records from voice and contact-center platforms into a
//! Hive-partitioned Parquet lake, exactly once, with its state in SQLite.

pub mod alloc;
pub mod app;
pub mod config;
pub mod daemon;
pub mod failpoint;
pub mod http;
pub mod lake;
pub mod logs;
pub mod pipeline;
pub mod progress;
pub mod record;
pub mod schema;
pub mod secret;
pub mod settings;
pub mod shared;
pub mod simulator;
pub mod sources;
pub mod state;
pub mod telemetry;
pub mod tls;
