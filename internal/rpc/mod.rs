//! The daemon protocol: message types and framing. Transport-agnostic: frames are
//! read from and written to any `std::io::Read`/`Write` (the daemon's async side
//! uses the same encoding through [`encode`] / [`decode`]).
//!
//! # Wire format
//!
//! A frame is a 4-byte big-endian length `n` (1 ≤ n ≤ [`MAX_FRAME`]) followed by `n`
//! bytes of UTF-8 JSON. A connection carries, in order:
//!
//! 1. client → daemon: [`Hello`] `{"protocol": u32, "version": "x.y.z"}`
//! 2. daemon → client: [`HelloReply`] `{"protocol", "version", "pid", "ok",
//!    "message"?}`; `ok: false` means the daemon will not serve this client
//!    (protocol mismatch) and closes the connection.
//! 3. any number of client → daemon [`Envelope`] `{"id", "actor", "deadline_ms",
//!    "call"}` each answered by one daemon → client [`Reply`] `{"id", "result"}`.
//!    `call` is `{"request": Request}`, `"status"` or `"stop"`; `result` is
//!    `{"ok": Response}`, `{"status": DaemonStatus}`, `"stopping"` or
//!    `{"err": Error}`. `id` is echoed. An envelope with `"progress": true`
//!    may first get replies whose `result` is `{"progress": {"task", "done",
//!    "total"?, "finished"?}}`: where long work has got to, never the answer.
//!
//! `Request` and `Response` are the JSON forms of [`crate::api::Request`] and
//! [`crate::api::Response`]; `Error` is [`crate::Error`] (`kind`, `message`,
//! `hints`), so a daemon's errors render exactly like direct mode's.
//!
//! A frame that cannot be read (bad length, truncated, not JSON, unknown request)
//! is answered with an error reply when an id is known and otherwise ends that
//! connection only.

use crate::api::{Request, Response};
use crate::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use std::io::{Read, Write};

/// Protocol number; bumped on any incompatible change to the messages.
pub const PROTOCOL: u32 = 2;

/// Largest frame accepted (an import of ~100k issues fits).
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

/// First message of a connection, from the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The client's protocol number.
    pub protocol: u32,
    /// The client's bd version.
    pub version: String,
}

impl Hello {
    /// The hello this build sends.
    pub fn current() -> Hello {
        Hello {
            protocol: PROTOCOL,
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }
}

/// The daemon's answer to [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The daemon's protocol number.
    pub protocol: u32,
    /// The daemon's bd version.
    pub version: String,
    /// The daemon's process id (informational; liveness is the lock, never the pid).
    pub pid: u32,
    /// Whether the daemon will serve this client.
    pub ok: bool,
    /// Why not, when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// What a client asks of the daemon.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// Run a service request.
    Request(Box<Request>),
    /// Report the daemon's state.
    Status,
    /// Drain the queue, flush, release the lock and exit.
    Stop,
}

/// The daemon's state, for `bd daemon status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    /// Process id.
    pub pid: u32,
    /// bd version of the daemon.
    pub version: String,
    /// Protocol number.
    pub protocol: u32,
    /// Milliseconds since it started.
    pub uptime_ms: u64,
    /// The socket it listens on.
    pub socket: String,
    /// Write requests waiting for the writer.
    pub queue_depth: u64,
    /// Write requests in the group the writer is committing now.
    #[serde(default)]
    pub in_flight: u64,
    /// Requests answered (reads and writes).
    pub requests: u64,
    /// Write requests committed or refused by the writer.
    pub writes: u64,
    /// Transactions the writer committed (each a group of writes).
    pub groups: u64,
    /// The most writes committed together.
    pub largest_group: u64,
    /// Open client connections.
    pub connections: u64,
    /// fdatasync calls that made committed groups durable (one can cover several
    /// groups).
    #[serde(default)]
    pub syncs: u64,
    /// The last error the daemon itself hit (not a request's refusal), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The relay, when this clone joined one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay: Option<RelayState>,
}

/// How the daemon's link to the relay stands.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RelayState {
    /// Connected to the relay now.
    pub connected: bool,
    /// The relay's URLs.
    pub urls: Vec<String>,
    /// The last own op the relay acknowledged (its seq).
    pub published_seq: i64,
    /// Batches published since the daemon started.
    pub batches_out: u64,
    /// Other replicas' batches applied since the daemon started.
    pub batches_in: u64,
    /// Batches refused (unknown key, bad signature, altered op).
    pub refused: u64,
    /// Own ops committed here that the relay has not acknowledged yet.
    #[serde(default)]
    pub outbox: u64,
    /// How long the oldest of them has waited, ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldest_unacked_ms: Option<u64>,
    /// The stream's last message (its sequence on the relay).
    #[serde(default)]
    pub stream_seq: u64,
    /// The last message delivered to this daemon (its stream sequence).
    #[serde(default)]
    pub delivered_seq: u64,
    /// Messages in the stream not yet delivered to this daemon.
    #[serde(default)]
    pub pending: u64,
    /// This daemon's cursor fell out of the stream's retention: older ops
    /// come through git (`bd sync`).
    #[serde(default)]
    pub behind_retention: bool,
    /// The relay's impedance: the round trip from a publish to its ack
    /// (RFC 6298), which sets the publish ack timeout (SRTT + 4 RTTVAR,
    /// within 1-5 s). Z is the round trip: the relay applies nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impedance: Option<Impedance>,
    /// Own ops larger than the relay's messages: they travel through git
    /// only.
    #[serde(default)]
    pub too_large: u64,
    /// The publish batching window the peers' impedance sets now, ms.
    #[serde(default)]
    pub window_ms: f64,
    /// The last problem with the relay, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The other daemons whose heartbeats the relay holds.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// Claims: leases granted, renewed, and provisional claims turned into
    /// leases or lost to another clone's lease.
    #[serde(default)]
    pub claims: ClaimCounts,
    /// What the daemon can reach, and so how strong its claims are:
    /// `normal` (the relay, and every peer's heartbeats), `degraded` (the
    /// relay, but some peer's heartbeats are failing: phi over
    /// [`SUSPECT_PHI`]), or
    /// `isolated` (not the relay: claims are provisional, writes wait in the
    /// outbox). Set when the status is read.
    #[serde(default)]
    pub mode: String,
    /// The breaker over the relay connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerView>,
    /// How many copies the relay keeps of the stream and buckets (3 on a
    /// cluster, 1 on a single server; 0 before the first connection).
    #[serde(default)]
    pub copies: usize,
}

/// A circuit breaker as a status shows it (see [`crate::breaker`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BreakerView {
    /// What it guards: `relay`, `peer`, `git remote`.
    pub name: String,
    /// closed, open or half_open.
    pub state: crate::breaker::State,
    /// Failures since the last success.
    pub consecutive: u32,
    /// Failures in all.
    pub failures: u64,
    /// Times it opened.
    pub opened: u64,
    /// Times a probe closed it.
    pub closed: u64,
    /// While open: ms until the next probe may go.
    pub probe_in_ms: u64,
    /// The last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

impl BreakerView {
    /// The view of `b` at `now_ms`.
    pub fn of(name: &str, b: &crate::breaker::Breaker, now_ms: u64) -> Self {
        BreakerView {
            name: name.to_string(),
            state: b.state,
            consecutive: b.consecutive,
            failures: b.failures,
            opened: b.opened,
            closed: b.closed,
            probe_in_ms: b.probe_in_ms(now_ms),
            last_failure: b.last_failure.clone(),
        }
    }
}

/// The phi (see [`Peer::phi`]) over which a peer is taken for failed: 3
/// means a one in a thousand chance it is alive and merely late, about 35 s
/// of silence at one heartbeat per 5 s (its presence entry lasts 60 s, so a
/// dead peer is suspected well before it is forgotten).
pub const SUSPECT_PHI: f64 = 3.0;

impl RelayState {
    /// The mode its link and peers put the daemon in (see [`RelayState::mode`]).
    pub fn current_mode(&self) -> &'static str {
        if !self.connected {
            "isolated"
        } else if self.peers.iter().any(|p| p.phi > SUSPECT_PHI) {
            "degraded"
        } else {
            "normal"
        }
    }
}

/// What became of this daemon's claims across the mesh.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClaimCounts {
    /// Leases granted to claims.
    pub granted: u64,
    /// Claims refused: another agent's live lease.
    pub refused: u64,
    /// Claims granted provisionally (the relay could not be asked).
    pub provisional: u64,
    /// Leases renewed by their holders' writes.
    pub renewed: u64,
    /// Provisional claims turned into leases when the relay came back.
    pub converted: u64,
    /// Provisional claims that found another clone's lease: claim conflicts.
    pub lost: u64,
    /// Leases that lapsed under a holder still writing (its later writes
    /// there are late, and become claim conflicts).
    pub lapsed: u64,
}

/// Another daemon of the mesh, as its heartbeats show it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Peer {
    /// Its replica.
    pub replica: String,
    /// Its machine.
    pub host: String,
    /// Its bd version.
    pub version: String,
    /// The last own op it published (its seq).
    pub published_seq: i64,
    /// Agents (actors) that used it in the last minute.
    pub agents: Vec<String>,
    /// Its smoothed time to apply a batch, ms, as its heartbeat says.
    #[serde(default)]
    pub apply_ms: f64,
    /// Writes waiting in its queue, as its heartbeat says.
    #[serde(default)]
    pub queue: u64,
    /// Milliseconds since its last heartbeat arrived here.
    pub last_heard_ms: u64,
    /// Suspicion that it failed (phi accrual over heartbeat arrivals; above
    /// [`SUSPECT_PHI`], take it for gone).
    pub phi: f64,
    /// Its impedance, when a ping was answered: the smoothed round trip and
    /// its variation (RFC 6298), and its own apply time and queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impedance: Option<Impedance>,
    /// Its acknowledgements of this replica's batches, when it sent any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acks: Option<AckSummary>,
    /// The breaker over its answers to pings (open: it stopped answering;
    /// pinged again at its probe times).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub breaker: Option<BreakerView>,
}

/// A peer's acknowledgements of this replica's batches: +1 READY (applied),
/// 0 TRANSIT (held for now), -1 CONFLICT (refused, quarantined there); and the
/// time from this replica's commit to the peer's +1, over the last hour.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AckSummary {
    /// +1 acknowledgements.
    pub ready: u64,
    /// 0 acknowledgements.
    pub transit: u64,
    /// -1 acknowledgements.
    pub conflict: u64,
    /// Commit to +1, median, ms.
    pub propagation_p50_ms: Option<u64>,
    /// Commit to +1, 95th percentile, ms.
    pub propagation_p95_ms: Option<u64>,
}

/// How costly a peer is to wait for: Z = rtt + apply + queue delay.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Impedance {
    /// Smoothed round-trip time to it through the relay, ms.
    pub rtt_ms: f64,
    /// The round trip's variation, ms.
    pub rttvar_ms: f64,
    /// Its smoothed time to apply a batch, ms (as it reports).
    pub apply_ms: f64,
    /// Writes waiting in its queue (as it reports).
    pub queue: u64,
    /// The sum: rtt + apply + queue x apply.
    pub z_ms: f64,
}

/// One call with its routing data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Chosen by the client; echoed in the reply.
    pub id: u64,
    /// Who is acting.
    pub actor: String,
    /// Wall-clock deadline in ms since the epoch; work not committed by then is
    /// abandoned and answered with a timeout error.
    pub deadline_ms: u64,
    /// The caller's id for a write (exactly-once: a write whose id was already
    /// committed is answered from the record, not applied again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The client shows progress: the daemon may send [`Outcome::Progress`]
    /// replies (same id) before the answer. A daemon that predates the field
    /// ignores it and sends none.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub progress: bool,
    /// What to do.
    pub call: Call,
}

/// The outcome of one call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The request worked.
    Ok(Response),
    /// A list or ready answer as the issues' stored JSON, passed through
    /// unparsed: written exactly as `Ok` with [`Response::Issues`], and read
    /// back as one (the daemon does not parse every row only to write it out).
    #[serde(rename = "ok", skip_deserializing)]
    Rows(IssueRows),
    /// The daemon's state.
    Status(Box<DaemonStatus>),
    /// The daemon is shutting down.
    Stopping,
    /// Not the answer yet: where the work has got to (only to a client that
    /// asked, [`Envelope::progress`]). The answer follows.
    Progress(crate::progress::Update),
    /// It failed; nothing it did was committed.
    Err(Error),
}

impl From<Result<Response>> for Outcome {
    fn from(r: Result<Response>) -> Self {
        match r {
            Ok(resp) => Outcome::Ok(resp),
            Err(e) => Outcome::Err(e),
        }
    }
}

/// Issues' stored JSON objects, in order (see [`Outcome::Rows`]); serialised as
/// `{"kind": "issues", "data": [...]}`, the encoding of [`Response::Issues`].
#[derive(Debug, Clone)]
pub struct IssueRows(pub Vec<Box<serde_json::value::RawValue>>);

impl Serialize for IssueRows {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut st = s.serialize_struct("Response", 2)?;
        st.serialize_field("kind", "issues")?;
        st.serialize_field("data", &self.0)?;
        st.end()
    }
}

impl PartialEq for IssueRows {
    fn eq(&self, other: &IssueRows) -> bool {
        self.0.len() == other.0.len()
            && self.0.iter().zip(&other.0).all(|(a, b)| a.get() == b.get())
    }
}

/// The answer to an [`Envelope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reply {
    /// The envelope's id.
    pub id: u64,
    /// What happened.
    pub result: Outcome,
}

fn protocol_error(message: impl Into<String>) -> Error {
    Error::new(ErrorKind::Invalid, message)
        .hint("client and daemon disagree on the protocol; restart the daemon")
}

/// Serialises `msg` as one frame (length prefix included).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    let body = serde_json::to_vec(msg)?;
    if body.is_empty() || body.len() > MAX_FRAME {
        return Err(protocol_error(format!(
            "frame of {} bytes is out of range",
            body.len()
        )));
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Checks a frame length read from the wire.
pub fn check_len(len: u32) -> Result<usize> {
    let len = len as usize;
    if len == 0 || len > MAX_FRAME {
        return Err(protocol_error(format!(
            "frame length {len} is out of range (1..={MAX_FRAME})"
        )));
    }
    Ok(len)
}

/// Parses a frame body.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| protocol_error(format!("unreadable frame: {e}")))
}

/// Writes one frame.
pub fn write_frame<T: Serialize>(w: &mut impl Write, msg: &T) -> Result<()> {
    w.write_all(&encode(msg)?)?;
    w.flush()?;
    Ok(())
}

/// Reads one frame; `Ok(None)` at a clean end of stream (before any byte of a frame).
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> Result<Option<T>> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        match r.read(&mut len[got..])? {
            0 if got == 0 => return Ok(None),
            0 => return Err(protocol_error("connection closed inside a frame header")),
            n => got += n,
        }
    }
    let len = check_len(u32::from_be_bytes(len))?;
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            protocol_error(format!("connection closed inside a frame of {len} bytes"))
        } else {
            e.into()
        }
    })?;
    decode(&body).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::query::ListFilter;
    use std::io::Cursor;

    fn envelope() -> Envelope {
        Envelope {
            progress: false,
            id: 7,
            actor: "a".into(),
            deadline_ms: 1,
            request_id: Some("r-1".into()),
            call: Call::Request(Box::new(Request::Ready(ListFilter::default()))),
        }
    }

    #[test]
    fn frames_round_trip_in_sequence() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &Hello::current()).unwrap();
        write_frame(&mut buf, &envelope()).unwrap();
        let reply = Reply {
            id: 7,
            result: Outcome::Err(Error::not_found("nope").hint("h")),
        };
        write_frame(&mut buf, &reply).unwrap();
        let mut r = Cursor::new(buf);
        assert_eq!(read_frame::<Hello>(&mut r).unwrap(), Some(Hello::current()));
        assert_eq!(read_frame::<Envelope>(&mut r).unwrap(), Some(envelope()));
        assert_eq!(read_frame::<Reply>(&mut r).unwrap(), Some(reply));
        assert_eq!(
            read_frame::<Reply>(&mut r).unwrap(),
            None,
            "clean end of stream"
        );
    }

    #[test]
    fn every_request_kind_survives_the_wire() {
        let req = Request::Import {
            records: crate::fixture::records("x", 3),
            dry_run: false,
            strict: true,
        };
        let env = Envelope {
            progress: false,
            call: Call::Request(Box::new(req)),
            ..envelope()
        };
        let bytes = encode(&env).unwrap();
        assert_eq!(decode::<Envelope>(&bytes[4..]).unwrap(), env);
    }

    #[test]
    fn responses_with_omitted_fields_survive_the_wire() {
        // Regression: TreeNode.repeated was skipped when false but not defaulted,
        // so `bd dep tree` failed only through the daemon.
        let node = crate::query::TreeNode {
            depth: 0,
            id: "a".into(),
            title: String::new(),
            status: "open".into(),
            priority: Some(2),
            dep_type: None,
            repeated: false,
        };
        let reply = Reply {
            id: 1,
            result: Outcome::Ok(Response::Tree(vec![node])),
        };
        let bytes = encode(&reply).unwrap();
        assert_eq!(decode::<Reply>(&bytes[4..]).unwrap(), reply);
    }

    #[test]
    fn bad_frames_are_errors_not_panics() {
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![0, 0, 0, 0], "out of range"),
            (vec![0xff, 0xff, 0xff, 0xff], "out of range"),
            (vec![0, 0], "frame header"),
            (vec![0, 0, 0, 10, b'{'], "inside a frame"),
            ([&[0, 0, 0, 3][..], b"abc"].concat(), "unreadable"),
            ([&[0, 0, 0, 2][..], b"{}"].concat(), "unreadable"),
        ];
        for (bytes, needle) in cases {
            let err = read_frame::<Envelope>(&mut Cursor::new(bytes.clone())).unwrap_err();
            assert!(err.message.contains(needle), "{bytes:?}: {}", err.message);
        }
        let unknown =
            br#"{"id":1,"actor":"a","deadline_ms":1,"call":{"request":{"op":"explode"}}}"#;
        let framed = [&(unknown.len() as u32).to_be_bytes()[..], unknown].concat();
        assert!(read_frame::<Envelope>(&mut Cursor::new(framed)).is_err());
    }
}
