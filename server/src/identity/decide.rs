//! The matching rule; docs/identity.md states it for operators.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use super::normalize::uuid_byte_swapped;
use super::{Candidate, Decision, Evidence, IdKind, Identifier, Outcome};

/// Decide. `shared` holds values already known to be shared by several machines: they are ignored.
///
/// Per candidate and per kind the evidence agrees (values intersect; a UUID also equals its
/// byte-swapped form), disagrees (both sides have values, none in common) or says nothing. Fields
/// holding the same value (a serial copied into system and chassis serial) count once. Then:
/// no disagreement → match; exactly one agreeing UUID/serial value against two or more
/// disagreements → a different machine sharing that value (reported in `newly_shared`, ignored
/// from then on, and the candidates are compared again without it); anything else → conflict.
pub fn decide(
    evidence: &Evidence,
    candidates: &[Candidate],
    shared: &HashSet<Identifier>,
) -> Outcome {
    let mut ignored: HashSet<(IdKind, String)> = shared.iter().map(shared_key).collect();
    let evidence = Evidence::from_identifiers(evidence.identifiers.iter().cloned());

    // One record per machine, even if the store listed a machine twice.
    let mut records: BTreeMap<uuid::Uuid, Vec<Identifier>> = BTreeMap::new();
    for c in candidates {
        records
            .entry(c.machine_id)
            .or_default()
            .extend(c.evidence.identifiers.iter().cloned());
    }
    let records: Vec<(uuid::Uuid, Evidence)> = records
        .into_iter()
        .map(|(id, ids)| (id, Evidence::from_identifiers(ids)))
        .collect();

    let mut newly: BTreeSet<Identifier> = BTreeSet::new();
    // Every round that goes on adds a value of the (finite) evidence to `ignored`, so this ends;
    // the cap only guards against a mistake in that reasoning.
    let max_rounds = evidence.identifiers.len() + 2;
    let mut round = 0;
    let (presented, compared) = loop {
        round += 1;
        let presented = without(&evidence, &ignored);
        let compared: Vec<(uuid::Uuid, Comparison)> = records
            .iter()
            .map(|(id, rec)| (*id, compare(&presented, &without(rec, &ignored))))
            .collect();
        let mut grew = false;
        for (_, c) in &compared {
            if c.verdict == Verdict::Different {
                for id in c.agreeing_values() {
                    ignored.insert(match_key(&id));
                    grew |= newly.insert(id);
                }
            }
        }
        if !grew || round >= max_rounds {
            break (presented, compared);
        }
    };
    let newly_shared: Vec<Identifier> = newly.into_iter().collect();

    let involved: Vec<&(uuid::Uuid, Comparison)> = compared
        .iter()
        .filter(|(_, c)| matches!(c.verdict, Verdict::Match | Verdict::Conflict))
        .collect();
    let conflict = involved.iter().any(|(_, c)| c.verdict == Verdict::Conflict);

    let decision = match involved.as_slice() {
        [(id, c)] if c.verdict == Verdict::Match => Decision::Match(*id),
        [] if presented.is_empty() => Decision::Quarantine {
            candidates: Vec::new(),
            reason: "No usable identifier: every UUID, serial and MAC presented is a \
                     placeholder, unusable or shared by several machines, so this machine could \
                     not be recognised after a reboot. Held for an operator."
                .to_string(),
        },
        [] => Decision::New,
        _ => Decision::Quarantine {
            candidates: involved.iter().map(|(id, _)| *id).collect(),
            reason: reason(conflict, &involved),
        },
    };
    Outcome {
        decision,
        newly_shared,
    }
}

/// How one kind of identifier compares between the evidence and a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Agree,
    Disagree,
}

/// One kind on which both sides hold values.
#[derive(Debug)]
struct KindResult {
    kind: IdKind,
    state: State,
    /// Values presented now; for `Agree` only those the record shares.
    presented: Vec<Identifier>,
    /// Values recorded; for `Agree` only those the evidence shares.
    recorded: Vec<Identifier>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Nothing in common (every common value was shared).
    Unrelated,
    Match,
    /// A different machine holding one duplicated value.
    Different,
    Conflict,
}

#[derive(Debug)]
struct Comparison {
    kinds: Vec<KindResult>,
    verdict: Verdict,
}

impl Comparison {
    /// Every agreeing value, as presented and as recorded (a UUID may be stored swapped).
    fn agreeing_values(&self) -> Vec<Identifier> {
        self.kinds
            .iter()
            .filter(|k| k.state == State::Agree)
            .flat_map(|k| k.presented.iter().chain(&k.recorded).cloned())
            .collect()
    }

    /// Independent pieces of evidence in `state`: all MACs are one; UUID and serial fields
    /// holding the same presented value are one (firmware often copies one serial into several
    /// fields, which is one fact, not several).
    fn units(&self, state: State) -> usize {
        let mut units: BTreeSet<Option<Vec<String>>> = BTreeSet::new();
        for k in self.kinds.iter().filter(|k| k.state == state) {
            if k.kind == IdKind::Mac {
                units.insert(None);
            } else {
                let mut vals: Vec<String> =
                    k.presented.iter().map(|i| i.value.to_lowercase()).collect();
                vals.sort();
                units.insert(Some(vals));
            }
        }
        units.len()
    }
}

fn compare(presented: &Evidence, recorded: &Evidence) -> Comparison {
    let mut kinds = Vec::new();
    for kind in IdKind::ALL {
        let p: Vec<&Identifier> = presented.of_kind(kind).collect();
        let r: Vec<&Identifier> = recorded.of_kind(kind).collect();
        if p.is_empty() || r.is_empty() {
            continue;
        }
        let p_keys: HashSet<(IdKind, String)> = p.iter().map(|i| match_key(i)).collect();
        let r_keys: HashSet<(IdKind, String)> = r.iter().map(|i| match_key(i)).collect();
        let p_common: Vec<Identifier> = p
            .iter()
            .filter(|i| r_keys.contains(&match_key(i)))
            .map(|i| (*i).clone())
            .collect();
        let kr = if p_common.is_empty() {
            KindResult {
                kind,
                state: State::Disagree,
                presented: p.into_iter().cloned().collect(),
                recorded: r.into_iter().cloned().collect(),
            }
        } else {
            KindResult {
                kind,
                state: State::Agree,
                presented: p_common,
                recorded: r
                    .iter()
                    .filter(|i| p_keys.contains(&match_key(i)))
                    .map(|i| (*i).clone())
                    .collect(),
            }
        };
        kinds.push(kr);
    }

    let mut c = Comparison {
        kinds,
        verdict: Verdict::Unrelated,
    };
    let agree = c.units(State::Agree);
    let disagree = c.units(State::Disagree);
    // MACs are assigned unique by the IEEE; a MAC found in two boxes means hardware moved
    // (a NIC, a motherboard), which an operator must confirm, not a duplicated firmware value.
    let mac_agrees = c
        .kinds
        .iter()
        .any(|k| k.kind == IdKind::Mac && k.state == State::Agree);
    c.verdict = if agree == 0 {
        Verdict::Unrelated
    } else if disagree == 0 {
        Verdict::Match
    } else if agree == 1 && disagree >= 2 && !mac_agrees {
        Verdict::Different
    } else {
        Verdict::Conflict
    };
    c
}

/// The key two identifiers are equal under: a UUID and its byte-swapped form share one key.
fn match_key(id: &Identifier) -> (IdKind, String) {
    let value = match id.kind {
        IdKind::Uuid => match uuid_byte_swapped(&id.value) {
            Some(s) if s < id.value => s,
            _ => id.value.clone(),
        },
        _ => id.value.clone(),
    };
    (id.kind, value)
}

/// The key of a value from the shared list, normalised in case it was stored in another spelling.
fn shared_key(id: &Identifier) -> (IdKind, String) {
    match Identifier::normalize(id.kind, &id.value) {
        Some(n) => match_key(&n),
        None => (id.kind, id.value.clone()),
    }
}

fn without(ev: &Evidence, ignored: &HashSet<(IdKind, String)>) -> Evidence {
    Evidence {
        identifiers: ev
            .identifiers
            .iter()
            .filter(|i| !ignored.contains(&match_key(i)))
            .cloned()
            .collect(),
    }
}

fn reason(conflict: bool, involved: &[&(uuid::Uuid, Comparison)]) -> String {
    let head = if conflict {
        "Conflicting identity evidence".to_string()
    } else {
        format!("The evidence matches {} machines", involved.len())
    };
    let clauses: Vec<String> = involved.iter().map(|(id, c)| describe(*id, c)).collect();
    format!(
        "{head}: {}. Held for an operator; no record was changed.",
        clauses.join("; ")
    )
}

fn describe(id: uuid::Uuid, c: &Comparison) -> String {
    let values = |ids: &[Identifier]| {
        ids.iter()
            .map(|i| i.value.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let agrees: Vec<String> = c
        .kinds
        .iter()
        .filter(|k| k.state == State::Agree)
        .map(|k| format!("{} {}", k.kind.label(), values(&k.presented)))
        .collect();
    let disagrees: Vec<String> = c
        .kinds
        .iter()
        .filter(|k| k.state == State::Disagree)
        .map(|k| {
            format!(
                "{} (presented {}, recorded {})",
                k.kind.label(),
                values(&k.presented),
                values(&k.recorded)
            )
        })
        .collect();
    let mut s = format!("machine {id} agrees on {}", agrees.join(" and "));
    if !disagrees.is_empty() {
        s.push_str(" but disagrees on ");
        s.push_str(&disagrees.join(" and "));
    }
    s
}
