//! The SQLite store: op table plus materialised state, one write transaction at a
//! time (`BEGIN IMMEDIATE`), WAL readers alongside.
//!
//! Invariants:
//! - [`WriteTx::record`] stamps an op (HLC, per-replica seq), seals it, stores it and
//!   folds it into the issue's [`IssueDoc`]; [`WriteTx::flush`] rewrites the touched
//!   issues' rows from their docs. Both happen inside one SQLite transaction, so the
//!   rows are always the fold of the stored ops.
//! - `issues.blocked` is 1 iff the issue has a `blocks` dependency on an existing,
//!   non-closed issue, or a `parent-child` dependency on a parent that is blocked or
//!   whose status is neither open nor in_progress. It is maintained incrementally:
//!   flushing an issue re-evaluates it and, transitively, its dependents.
//!
//! The parts: `schema` opens a database (creating or migrating its schema,
//! configuring the connection, explaining a failure); `store` is the open
//! [`Store`] and its transactions; `write_tx` is [`WriteTx`], and `receive` its
//! taking in of ops recorded elsewhere; `row` materialises docs into rows and
//! keeps the `blocked` flags; `wal` makes the write-ahead log durable; `meta`
//! holds small statement helpers.
//!
//! [`IssueDoc`]: crate::merge::IssueDoc

mod meta;
mod receive;
mod row;
mod schema;
mod store;
mod wal;
mod write_tx;

pub(crate) use meta::cached_row;
pub use meta::{meta_get, meta_set};
pub use receive::{CLOCK_SKEW_FIELD, Received};
pub use row::{load_doc, parse_stored_op, state_hash};
pub(in crate::storage) use row::{refresh_blocked, write_rows};
pub use schema::{BUSY_TIMEOUT, SCHEMA_VERSION, disk_full, explain_io};
pub(crate) use store::OpFileMark;
pub use store::{Store, remember_replica, remembered_replica, replica_file};
pub use wal::WalSync;
pub use write_tx::{REQUEST_ID_WINDOW_MS, WriteTx};
