//! The mesh, as a program embedding bd joins and inspects it: see
//! `bd mesh --help` and README "The mesh".

pub use crate::mesh::{
    JoinOptions, MEMBERS_FILE, Member, MeshStatus, PingResult, RelayProbe, check_url, join, leave,
    members, ping, probe,
};
pub use crate::rpc::RelayState;

use super::DaemonClient;
use crate::Result;
use crate::storage::BeadsPaths;
use std::path::Path;
use std::time::Duration;

/// Where the mesh stands for this clone (see [`crate::mesh::status`]), with
/// the running daemon's link to the relay when a daemon runs.
pub fn status(paths: &BeadsPaths, config_dir: &Path, probe_relay: bool) -> Result<MeshStatus> {
    let mut st = crate::mesh::status(paths, config_dir, probe_relay)?;
    if let Ok(Some(mut c)) = DaemonClient::to_running(paths, "bd-mesh", Duration::from_secs(5)) {
        st.daemon = c.status().ok().and_then(|s| s.relay);
        if st.joined && st.daemon.is_none() {
            st.notes.push(
                "the running daemon started before this clone joined: `bd daemon restart` connects it"
                    .into(),
            );
        }
    }
    Ok(st)
}
