//! Black-box tests: the real binary against the in-project simulator on loopback, with the
//! lake read back and compared with the simulator's ground truth. One module per promise.

mod helpers;

mod alerts;
mod analysis;
mod backfill;
mod clouds;

mod commit_protocol;
mod compaction;
mod config_errors;
mod container;
mod credentials;
mod daemon;
mod delta;
mod disk_full;
mod exotel;
mod exotel_calls;
mod export;
mod faults;
mod kill9;
mod lake_state;
mod layers;
mod lookback;
mod object_store;
mod operations;
mod rejects;
mod table_layer;
mod voice_calls;
mod vonage;
