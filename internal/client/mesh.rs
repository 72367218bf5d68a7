//! The mesh, as a program embedding bd joins and inspects it: see
//! `bd mesh --help` and README "The mesh".

pub use crate::mesh::{
    JoinOptions, MEMBERS_FILE, Member, MeshStatus, RelayProbe, check_url, join, leave, members,
    probe, status,
};
