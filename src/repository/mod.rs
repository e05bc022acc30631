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
//! [`connect`] opens a repository connection and finds PoWA there. Every
//! object is qualified with the schema that [`crate::powa`] found on the
//! connection. These functions hold no state; they run on the main thread
//! (server list, permissions) and on the workers (the rest).

pub mod datasources;
pub mod metas;
pub mod permissions;
pub mod servers;
pub mod versions;

use postgres::Client;

use crate::conninfo::{ConnInfo, Tripwire};
use crate::error::Error;
use crate::powa::{self, Powa};

/// Opens a repository connection named `application_name` and finds PoWA
/// there (missing or unsupported: [`Error::Powa`]).
pub fn connect(
    repository: &ConnInfo,
    application_name: &str,
) -> Result<(Client, Tripwire, Powa), Error> {
    let (mut client, tripwire) = repository
        .connect_with_tripwire(application_name)
        .map_err(|e| e.into_error(format!("cannot connect to the repository ({repository})")))?;
    let powa = powa::prepare(&mut client, "the repository")?;
    Ok((client, tripwire, powa))
}
