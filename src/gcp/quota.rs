//! Resource quotas (ROUTES, FIREWALLS, addresses per region): once GCP answers an insert with
//! `QUOTA_EXCEEDED`, more inserts of that kind would only fail the same way and spend write
//! budget other objects need. The gate of that collection (and location) closes: inserts fail at
//! once with the error GCP gave, without a call, except one probe per interval. A probe that
//! goes through, or a delete that frees room, opens the gate again, and the objects that waited
//! are told to retry (docs/compute-api.md §4: quota errors "need a quota change", nobody
//! announces one).

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use super::error::GcpError;
use crate::plan::resource::{Collection, Mutation, Target};

/// What to do with an insert.
#[derive(Debug, Clone)]
pub enum Admission {
    /// Send it.
    Open,
    /// Send it: the gate is closed, and this one checks whether the quota grew.
    Probe,
    /// Answer it with GCP's last quota error, without a call.
    Closed(GcpError),
}

#[derive(Debug)]
struct Gate {
    error: GcpError,
    next_probe: Instant,
    probing: bool,
}

/// The gates of one project, by (collection, location).
#[derive(Debug)]
pub struct QuotaGates {
    probe_every: Duration,
    gates: HashMap<(Collection, String), Gate>,
}

fn key(target: &Target) -> (Collection, String) {
    (target.collection, target.location.clone())
}

impl QuotaGates {
    /// Gates that let one probe through every `probe_every`.
    pub fn new(probe_every: Duration) -> Self {
        Self {
            probe_every,
            gates: HashMap::new(),
        }
    }

    /// Whether an insert of `target` may be sent now.
    pub fn admit(&mut self, target: &Target, now: Instant) -> Admission {
        let Some(gate) = self.gates.get_mut(&key(target)) else {
            return Admission::Open;
        };
        if !gate.probing && now >= gate.next_probe {
            gate.probing = true;
            gate.next_probe = now + self.probe_every;
            return Admission::Probe;
        }
        Admission::Closed(gate.error.clone())
    }

    /// Learns from a finished mutation. Returns the collection and location whose gate opened
    /// (an insert went through, or a delete made room), if one did.
    pub fn record(
        &mut self,
        mutation: &Mutation,
        outcome: &Result<(), GcpError>,
        now: Instant,
    ) -> Option<(Collection, String)> {
        let key = key(&mutation.target);
        let probe_every = self.probe_every;
        let gates = &mut self.gates;
        match outcome {
            Err(err) if mutation.is_insert() && err.is_quota_exceeded() => {
                let gate = gates.entry(key).or_insert_with(|| Gate {
                    error: err.clone(),
                    next_probe: now + probe_every,
                    probing: false,
                });
                gate.error = err.clone();
                if gate.probing {
                    gate.probing = false;
                    gate.next_probe = now + probe_every;
                }
                None
            }
            Ok(()) => gates.remove(&key).map(|_| key),
            Err(_) => {
                // A probe that failed otherwise (transport, a refusal) decides nothing.
                if let Some(gate) = gates.get_mut(&key) {
                    gate.probing = false;
                }
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn quota_error() -> GcpError {
        GcpError::Operation {
            code: "QUOTA_EXCEEDED".into(),
            message: "Quota 'ROUTES' exceeded.  Limit: 40.0 globally.".into(),
            http_status: Some(403),
        }
    }

    fn insert(name: &str) -> Mutation {
        Mutation::insert(Target::route(name), json!({"name": name}))
    }

    #[test]
    fn a_quota_error_closes_the_gate_and_probes_reopen_it() {
        let mut gates = QuotaGates::new(Duration::from_secs(30));
        let t0 = Instant::now();
        assert!(matches!(
            gates.admit(&Target::route("a"), t0),
            Admission::Open
        ));
        assert_eq!(gates.record(&insert("a"), &Err(quota_error()), t0), None);
        // Closed: answered with GCP's error, no call; firewalls are another quota.
        match gates.admit(&Target::route("b"), t0 + Duration::from_secs(1)) {
            Admission::Closed(err) => assert!(err.to_string().contains("Quota 'ROUTES'")),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            gates.admit(&Target::firewall("f"), t0),
            Admission::Open
        ));
        // One probe per interval.
        let t1 = t0 + Duration::from_secs(30);
        assert!(matches!(
            gates.admit(&Target::route("c"), t1),
            Admission::Probe
        ));
        assert!(matches!(
            gates.admit(&Target::route("d"), t1),
            Admission::Closed(_)
        ));
        // The probe failed the same way: still closed, next probe an interval later.
        gates.record(&insert("c"), &Err(quota_error()), t1);
        assert!(matches!(
            gates.admit(&Target::route("d"), t1 + Duration::from_secs(29)),
            Admission::Closed(_)
        ));
        let t2 = t1 + Duration::from_secs(30);
        assert!(matches!(
            gates.admit(&Target::route("c"), t2),
            Admission::Probe
        ));
        // The quota grew: the probe went through and the gate opens.
        assert_eq!(
            gates.record(&insert("c"), &Ok(()), t2),
            Some((Collection::Routes, String::new()))
        );
        assert!(matches!(
            gates.admit(&Target::route("d"), t2),
            Admission::Open
        ));
    }

    #[test]
    fn a_delete_that_makes_room_opens_the_gate() {
        let mut gates = QuotaGates::new(Duration::from_secs(30));
        let t0 = Instant::now();
        gates.record(&insert("a"), &Err(quota_error()), t0);
        assert!(matches!(
            gates.admit(&Target::route("b"), t0),
            Admission::Closed(_)
        ));
        let delete = Mutation::delete(Target::route("old"), None);
        assert!(gates.record(&delete, &Ok(()), t0).is_some());
        assert!(matches!(
            gates.admit(&Target::route("b"), t0),
            Admission::Open
        ));
        // Other failures of an insert say nothing about the quota.
        let transport = GcpError::Transport("cut".into());
        assert_eq!(gates.record(&insert("b"), &Err(transport), t0), None);
        assert!(matches!(
            gates.admit(&Target::route("c"), t0),
            Admission::Open
        ));
    }
}
