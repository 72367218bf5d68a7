//! Integration tests: the real `bd` binary against real SQLite files in temp
//! repositories.

mod batch;
mod cli;
mod cluster;
mod common;
mod concurrency;
mod daemon;
mod durability;
mod errors;
mod exactly_once;
mod group_commit;
mod human_output;
mod id_collision;
mod import_export;
mod jepsen;
mod lease;
mod mcp;
mod merge_simulation;
mod mesh;
mod mesh_transit;
mod op_file;
mod pressure;
mod recovery;
mod sync;
mod terminal;
mod tty;
