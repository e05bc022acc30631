//! What the collector reads from and writes to the repository, besides the
//! snapshot data itself, by what it is about:
//! - [`servers`]: the remote servers to collect (`powa_servers`);
//! - [`datasources`]: what a snapshot copies for a server (`powa_functions`,
//!   and on PoWA 5 the per-database modules and catalogs);
//! - [`metas`]: the last snapshot time and the errors shown to the UI
//!   (`powa_snapshot_metas`);
//! - [`versions`]: the remote's PostgreSQL and extension versions, as the UI
//!   shows them;
//! - [`permissions`]: who may use the command protocol.
//!
//! Every object is qualified with the schema that [`crate::powa`] found on
//! the connection. These functions hold no state; they run on the main
//! thread (server list, permissions) and on the workers (the rest).

pub mod datasources;
pub mod metas;
pub mod permissions;
pub mod servers;
pub mod versions;
