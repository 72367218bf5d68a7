//! Circuit breakers (issue 14) for what bd reaches over a network: the
//! relay, each peer daemon, the git remote of `bd sync`.
//!
//! **Closed** (normal): every attempt goes ahead. After [`Policy::trip_after`]
//! failures in a row, or a failure rate of at least half over the last
//! [`Policy::window_ms`] with [`Policy::min_samples`] outcomes in it, it
//! **opens**: no attempt until a probe time, one backoff away (doubling with
//! each open in a row, up to [`Policy::max_backoff_ms`], with ±20% jitter so
//! that many clients do not probe at one instant). Then one attempt, the
//! **half-open** probe: success closes it (and resets the backoff), failure
//! opens it again for longer.
//!
//! A breaker counts failures, never slowness: a slow answer is a success, so
//! a slow but working peer never trips one (the caller's timeout must follow
//! the peer's measured round trip). Times are wall-clock milliseconds, so a
//! breaker can be kept in a file between processes (`bd sync`'s is).

use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Where a breaker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Attempts go ahead.
    #[default]
    Closed,
    /// No attempt until the probe time.
    Open,
    /// One probe attempt is under way.
    HalfOpen,
}

/// When a breaker opens and how long it stays open.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// Failures in a row that open it.
    pub trip_after: u32,
    /// The window the failure rate is taken over, ms.
    pub window_ms: u64,
    /// Outcomes the window needs before its rate can open the breaker.
    pub min_samples: usize,
    /// The first backoff, ms.
    pub base_backoff_ms: u64,
    /// The longest backoff, ms.
    pub max_backoff_ms: u64,
}

impl Policy {
    /// For the relay connection: opens after 3 failures in a row, first
    /// probe after 1 s, at most 10 s apart (a relay back up is used again
    /// within seconds).
    pub const RELAY: Policy = Policy {
        trip_after: 3,
        window_ms: 60_000,
        min_samples: 10,
        base_backoff_ms: 1_000,
        max_backoff_ms: 10_000,
    };

    /// For a peer's answers: opens after 3 failures in a row, first probe
    /// after 2 s, at most a minute apart.
    pub const LINK: Policy = Policy {
        trip_after: 3,
        window_ms: 60_000,
        min_samples: 10,
        base_backoff_ms: 2_000,
        max_backoff_ms: 60_000,
    };

    /// For a git remote: opens after 3 failures in a row, first probe after
    /// 30 s, at most 10 minutes apart.
    pub const REMOTE: Policy = Policy {
        trip_after: 3,
        window_ms: 600_000,
        min_samples: 10,
        base_backoff_ms: 30_000,
        max_backoff_ms: 600_000,
    };
}

/// A circuit breaker; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Breaker {
    /// Where it stands.
    pub state: State,
    /// Failures since the last success.
    pub consecutive: u32,
    /// Failures in all.
    pub failures: u64,
    /// Successes in all.
    pub successes: u64,
    /// Times it opened.
    pub opened: u64,
    /// Times a probe closed it.
    pub closed: u64,
    /// Opens in a row without a successful probe (sets the backoff).
    #[serde(default)]
    pub streak: u32,
    /// When the next probe may go, ms since the epoch (while open).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_at_ms: Option<u64>,
    /// The last failure, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
    /// Recent outcomes (when, failed), within the policy's window.
    #[serde(default, skip)]
    recent: VecDeque<(u64, bool)>,
}

impl Breaker {
    /// Whether an attempt may go now. An open breaker past its probe time
    /// lets one probe through and turns half-open; a half-open one lets
    /// nothing else through until the probe's outcome is in.
    pub fn allow(&mut self, now_ms: u64) -> bool {
        match self.state {
            State::Closed => true,
            State::HalfOpen => false,
            State::Open if self.probe_at_ms.is_none_or(|t| now_ms >= t) => {
                self.state = State::HalfOpen;
                true
            }
            State::Open => false,
        }
    }

    /// An attempt worked.
    pub fn success(&mut self, now_ms: u64, policy: &Policy) {
        self.successes += 1;
        self.consecutive = 0;
        self.note(now_ms, false, policy);
        if self.state != State::Closed {
            self.state = State::Closed;
            self.closed += 1;
            self.streak = 0;
            self.probe_at_ms = None;
        }
    }

    /// An attempt failed (`why`, for people).
    pub fn failure(&mut self, now_ms: u64, why: &str, policy: &Policy) {
        self.failures += 1;
        self.consecutive += 1;
        self.last_failure = Some(why.to_string());
        self.note(now_ms, true, policy);
        let trip = match self.state {
            State::HalfOpen => true,
            State::Open => false,
            State::Closed => {
                let failed = self.recent.iter().filter(|(_, f)| *f).count();
                self.consecutive >= policy.trip_after
                    || (self.recent.len() >= policy.min_samples && failed * 2 >= self.recent.len())
            }
        };
        if trip {
            self.open(now_ms, policy);
        }
    }

    fn open(&mut self, now_ms: u64, policy: &Policy) {
        let backoff = policy
            .base_backoff_ms
            .saturating_mul(1 << self.streak.min(16))
            .min(policy.max_backoff_ms);
        // ±20% jitter, from the time and the counts (no global randomness:
        // reproducible in a test that fixes the clock).
        let seed = now_ms ^ (self.failures << 17) ^ (self.opened << 33);
        let mix = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 33;
        let jitter = (mix % 401) as i64 - 200; // -200..=200 per mille
        let delay = (backoff as i64 + backoff as i64 * jitter / 1000).max(1) as u64;
        self.state = State::Open;
        self.opened += 1;
        self.streak += 1;
        self.probe_at_ms = Some(now_ms + delay);
    }

    fn note(&mut self, now_ms: u64, failed: bool, policy: &Policy) {
        self.recent.push_back((now_ms, failed));
        while self
            .recent
            .front()
            .is_some_and(|(t, _)| now_ms.saturating_sub(*t) > policy.window_ms)
            || self.recent.len() > 1000
        {
            self.recent.pop_front();
        }
    }

    /// How long until the next probe may go, ms (0 unless open).
    pub fn probe_in_ms(&self, now_ms: u64) -> u64 {
        match (self.state, self.probe_at_ms) {
            (State::Open, Some(t)) => t.saturating_sub(now_ms),
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Policy = Policy::LINK;

    #[test]
    fn opens_after_failures_in_a_row_probes_once_and_closes_on_success() {
        let mut b = Breaker::default();
        let t = 1_000_000;
        for i in 0..2 {
            assert!(b.allow(t + i));
            b.failure(t + i, "refused", &P);
            assert_eq!(b.state, State::Closed);
        }
        b.failure(t + 2, "refused", &P);
        assert_eq!(b.state, State::Open);
        let probe = b.probe_at_ms.unwrap();
        assert!((t + 2 + 1600..=t + 2 + 2400).contains(&probe), "2 s ± 20%: {probe}");
        assert!(!b.allow(probe - 1), "no attempt before the probe time");
        assert!(b.allow(probe), "one probe");
        assert_eq!(b.state, State::HalfOpen);
        assert!(!b.allow(probe + 1), "only one probe at a time");
        b.success(probe + 5, &P);
        assert_eq!((b.state, b.opened, b.closed, b.consecutive), (State::Closed, 1, 1, 0));
    }

    #[test]
    fn a_failed_probe_opens_it_for_longer_up_to_the_limit() {
        let mut b = Breaker::default();
        let mut now = 5_000_000;
        for _ in 0..3 {
            b.failure(now, "down", &P);
        }
        let mut last = 0;
        for round in 0..10 {
            let at = b.probe_at_ms.unwrap();
            let wait = at - now;
            if round < 4 {
                assert!(wait as f64 > last as f64 * 1.5, "backoff grows: {wait} after {last}");
            }
            assert!(wait <= P.max_backoff_ms * 12 / 10);
            last = wait;
            now = at;
            assert!(b.allow(now));
            b.failure(now, "still down", &P);
            assert_eq!(b.state, State::Open);
        }
        assert_eq!(b.opened, 11);
    }

    #[test]
    fn a_high_failure_rate_opens_it_without_failures_in_a_row() {
        let mut b = Breaker::default();
        for i in 0..11u64 {
            if i % 2 == 0 {
                b.failure(i * 100, "flaky", &P);
            } else {
                b.success(i * 100, &P);
            }
        }
        assert_eq!(b.state, State::Open, "six of eleven failed: {b:?}");
    }

    #[test]
    fn slow_successes_never_open_it() {
        let mut b = Breaker::default();
        for i in 0..1000u64 {
            assert!(b.allow(i * 2000));
            b.success(i * 2000, &P);
        }
        assert_eq!((b.state, b.opened), (State::Closed, 0));
    }

    #[test]
    fn it_survives_a_round_trip_through_json() {
        let mut b = Breaker::default();
        for i in 0..3 {
            b.failure(i, "x", &Policy::REMOTE);
        }
        let back: Breaker = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        assert_eq!((back.state, back.probe_at_ms, back.opened), (b.state, b.probe_at_ms, b.opened));
    }
}
