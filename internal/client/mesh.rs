//! The mesh, as a program embedding bd joins and inspects it: see
//! `bd mesh --help` and README "The mesh".

pub use crate::breaker::State as BreakerState;
pub use crate::mesh::{
    JoinOptions, MEMBERS_FILE, Member, MeshStatus, PingResult, RelayProbe, check_url, join, leave,
    members, ping, probe,
};
pub use crate::rpc::{BreakerView, RelayState};

use super::DaemonClient;
use crate::Result;
use crate::storage::BeadsPaths;
use std::path::Path;
use std::time::Duration;

/// Whether the repository's committed config names a relay: a config read,
/// no database (cheap enough to ask on every claim).
pub fn relay_configured(paths: &BeadsPaths) -> bool {
    crate::config::Config::load_cached(&paths.config())
        .is_ok_and(|c| !crate::mesh::relay_urls(&c).is_empty())
}

/// Where the mesh stands for this clone (see [`crate::mesh::status`]), with
/// the running daemon's link to the relay when a daemon runs.
pub fn status(paths: &BeadsPaths, config_dir: &Path, probe_relay: bool) -> Result<MeshStatus> {
    let mut st = crate::mesh::status(paths, config_dir, probe_relay)?;
    st.git_breaker = crate::gitsync::remote_breaker(paths);
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

pub use crate::mesh::query::{Answer, HeldLease, QueryReport, Unanswered};

/// Asks every active daemon of the mesh at once (see
/// [`crate::mesh::query`]): `what` among watermarks, leases, agents (empty:
/// all), done when `quorum` of them answered or at `deadline`. The peers'
/// impedance comes from this clone's daemon, when one runs.
pub fn query(
    paths: &BeadsPaths,
    config_dir: &Path,
    what: Vec<String>,
    quorum: f64,
    deadline: Duration,
) -> Result<QueryReport> {
    let impedance = DaemonClient::to_running(paths, "bd-mesh", Duration::from_secs(5))
        .ok()
        .flatten()
        .and_then(|mut c| c.status().ok())
        .and_then(|s| s.relay)
        .map(|r| {
            r.peers
                .iter()
                .filter_map(|p| Some((p.replica.clone(), p.impedance.as_ref()?.z_ms)))
                .collect()
        })
        .unwrap_or_default();
    crate::mesh::query::query(
        paths,
        config_dir,
        &crate::mesh::query::QueryOptions {
            what,
            quorum,
            deadline,
            impedance,
        },
    )
}

/// Where convergence stands: has every active peer this replica's latest op?
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Convergence {
    /// Whether every active peer holds this replica's latest op.
    pub converged: bool,
    /// This replica.
    pub replica: String,
    /// The seq of its latest op.
    pub latest_seq: u64,
    /// How long it waited, ms.
    pub waited_ms: f64,
    /// Each other active daemon and the seq of this replica's ops it holds.
    pub peers: Vec<PeerSeq>,
}

/// How far one peer has this replica's ops.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct PeerSeq {
    /// The peer's replica.
    pub replica: String,
    /// The highest seq of this replica's ops it holds (`None`: it did not
    /// answer).
    pub seq: Option<u64>,
}

/// Waits, `timeout` at most, until every other active daemon of the mesh
/// holds this replica's latest op (asked by watermark queries, all of them
/// needed, a second each).
pub fn wait_converged(
    paths: &BeadsPaths,
    config_dir: &Path,
    timeout: Duration,
) -> Result<Convergence> {
    let st = crate::mesh::status(paths, config_dir, false)?;
    let latest = {
        let store = crate::storage::Store::open(&paths.db)?;
        let seq: Option<i64> = store.conn().query_row(
            "SELECT MAX(seq) FROM ops WHERE replica = ?1",
            [&st.replica],
            |r| r.get(0),
        )?;
        seq.unwrap_or(0).max(0) as u64
    };
    let started = std::time::Instant::now();
    loop {
        let left = timeout.saturating_sub(started.elapsed());
        let report = query(
            paths,
            config_dir,
            vec!["watermarks".into()],
            1.0,
            left.clamp(Duration::from_millis(10), Duration::from_secs(1)),
        )?;
        let mut peers: Vec<PeerSeq> = report
            .answers
            .iter()
            .filter(|a| a.replica != st.replica)
            .map(|a| {
                let seen = a
                    .watermarks
                    .as_ref()
                    .and_then(|w| w.get(&st.replica))
                    .copied();
                PeerSeq {
                    replica: a.replica.clone(),
                    seq: Some(seen.unwrap_or(0)),
                }
            })
            .collect();
        peers.extend(
            report
                .unanswered
                .iter()
                .filter(|u| u.replica != st.replica)
                .map(|u| PeerSeq {
                    replica: u.replica.clone(),
                    seq: None,
                }),
        );
        peers.sort();
        let converged = peers.iter().all(|p| p.seq.is_some_and(|s| s >= latest));
        let out = Convergence {
            converged,
            replica: st.replica.clone(),
            latest_seq: latest,
            waited_ms: started.elapsed().as_secs_f64() * 1e3,
            peers,
        };
        if converged || started.elapsed() >= timeout {
            return Ok(out);
        }
        std::thread::sleep(
            Duration::from_millis(100).min(timeout.saturating_sub(started.elapsed())),
        );
    }
}
