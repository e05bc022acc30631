//! The remote servers to collect: `powa_servers`.

use postgres::GenericClient;

use crate::powa::Powa;
use crate::servers::{ServerRow, ServerSettings};

/// The servers of `powa_servers` that can be collected, in id order, and
/// the rows that cannot, by id, with why.
pub struct ServerList {
    pub servers: Vec<ServerSettings>,
    pub refused: Vec<(i32, String)>,
}

/// The remote servers to collect, in id order.
///
/// Rows that cannot be used (a port out of range, a NULL user, for
/// instance) are returned apart, by id, each with a message naming it, so
/// that one bad row does not hide the others.
pub fn list(client: &mut impl GenericClient, powa: &Powa) -> Result<ServerList, postgres::Error> {
    let rows = client.query(
        &format!(
            "SELECT id, hostname, port, username, password, dbname, frequency, \
             coalesce(alias, '') \
             FROM {} WHERE id > 0 AND frequency > 0 ORDER BY id",
            powa.qualify("powa_servers")
        ),
        &[],
    )?;
    let mut servers = Vec::new();
    let mut refused = Vec::new();
    for row in rows {
        let row = ServerRow {
            srvid: row.get(0),
            hostname: row.get(1),
            port: row.get(2),
            username: row.get(3),
            password: row.get(4),
            dbname: row.get(5),
            frequency: row.get(6),
            alias: row.get(7),
        };
        let srvid = row.srvid;
        match ServerSettings::try_from(row) {
            Ok(server) => servers.push(server),
            Err(why) => refused.push((srvid, why)),
        }
    }
    Ok(ServerList { servers, refused })
}
