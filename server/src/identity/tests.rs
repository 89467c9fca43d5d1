//! Decision scenarios: each one a situation an operator meets on a real rack.

use std::collections::HashSet;

use anneal_shared::protocol::{IdentityHints, Nic};

use super::*;

const UUID_A: &str = "4c4c4544-0033-4410-8058-b4c04f4e3532";
const UUID_B: &str = "4c4c4544-0042-3510-8031-c7c04f384a32";
const UUID_C: &str = "8a95d198-7f46-11e5-bf8b-08002704d48e";
const MAC_A1: &str = "b8:ca:3a:00:00:a1";
const MAC_A2: &str = "b8:ca:3a:00:00:a2";
const MAC_B1: &str = "b8:ca:3a:00:00:b1";
const MAC_C1: &str = "b8:ca:3a:00:00:c1";
const MAC_NEW: &str = "3c:fd:fe:00:00:01";

fn nic(mac: &str) -> Nic {
    Nic {
        mac: mac.to_string(),
        bus: Some("pci".to_string()),
    }
}

fn hints(uuid: Option<&str>, serial: Option<&str>, macs: &[&str]) -> IdentityHints {
    IdentityHints {
        system_uuid: uuid.map(str::to_string),
        system_serial: serial.map(str::to_string),
        macs: macs.iter().map(|m| nic(m)).collect(),
        ..IdentityHints::default()
    }
}

fn ev(uuid: Option<&str>, serial: Option<&str>, macs: &[&str]) -> Evidence {
    Evidence::from_hints(&hints(uuid, serial, macs))
}

fn id(n: u128) -> uuid::Uuid {
    uuid::Uuid::from_u128(n)
}

fn cand(n: u128, evidence: Evidence) -> Candidate {
    Candidate {
        machine_id: id(n),
        evidence,
    }
}

fn ident(kind: IdKind, value: &str) -> Identifier {
    Identifier {
        kind,
        value: value.to_string(),
    }
}

fn run(evidence: &Evidence, candidates: &[Candidate]) -> Outcome {
    decide(evidence, candidates, &HashSet::new())
}

fn quarantined(o: &Outcome) -> (Vec<uuid::Uuid>, String) {
    match &o.decision {
        Decision::Quarantine { candidates, reason } => (candidates.clone(), reason.clone()),
        other => panic!("expected quarantine, got {other:?}"),
    }
}

#[test]
fn same_machine_re_enrolling_matches() {
    let rec = ev(Some(UUID_A), Some("7XK1H3"), &[MAC_A1, MAC_A2]);
    // Same facts, spelled the way another tool spells them.
    let now = ev(
        Some(&UUID_A.to_uppercase()),
        Some(" 7xk1h3 "),
        &["B8-CA-3A-00-00-A2", MAC_A1],
    );
    assert_eq!(now, rec);
    let o = run(&now, &[cand(1, rec)]);
    assert_eq!(o.decision, Decision::Match(id(1)));
    assert!(o.newly_shared.is_empty());
}

#[test]
fn new_machine_is_new() {
    let o = run(&ev(Some(UUID_A), Some("7XK1H3"), &[MAC_A1]), &[]);
    assert_eq!(o.decision, Decision::New);
    assert!(o.newly_shared.is_empty());
}

#[test]
fn placeholder_uuid_and_serials_do_not_join_two_machines() {
    // Two whitebox boards, same unprogrammed DMI, different NICs.
    let dmi = |h: &mut IdentityHints| {
        h.system_uuid = Some("03000200-0400-0500-0006-000700080009".into());
        h.system_serial = Some("To Be Filled By O.E.M.".into());
        h.chassis_serial = Some("Default string".into());
        h.baseboard_serial = Some("Base Board Serial Number".into());
    };
    let mut a = hints(None, None, &[MAC_A1]);
    dmi(&mut a);
    let mut b = hints(None, None, &[MAC_B1]);
    dmi(&mut b);
    let ev_b = Evidence::from_hints(&b);
    assert_eq!(ev_b.identifiers(), &[ident(IdKind::Mac, MAC_B1)]);
    // Even if a record still held the placeholders (stored before they were known), they are
    // dropped before comparing.
    let stale = Evidence {
        identifiers: vec![
            ident(IdKind::Uuid, "03000200-0400-0500-0006-000700080009"),
            ident(IdKind::SystemSerial, "TO BE FILLED BY O.E.M."),
            ident(IdKind::Mac, MAC_A1),
        ],
    };
    let o = run(&ev_b, &[cand(1, Evidence::from_hints(&a)), cand(2, stale)]);
    assert_eq!(o.decision, Decision::New);
    assert!(o.newly_shared.is_empty());
}

#[test]
fn every_placeholder_serial_is_dropped_from_hints() {
    for p in PLACEHOLDER_SERIALS {
        for v in [
            p.to_string(),
            p.to_lowercase(),
            format!(" {} ", p.to_uppercase()),
        ] {
            let h = IdentityHints {
                system_serial: Some(v.clone()),
                chassis_serial: Some(v.clone()),
                baseboard_serial: Some(v.clone()),
                macs: vec![nic(MAC_A1)],
                ..IdentityHints::default()
            };
            assert_eq!(
                Evidence::from_hints(&h).identifiers(),
                &[ident(IdKind::Mac, MAC_A1)],
                "{v:?}"
            );
        }
    }
    for v in ["", "   ", "AB", "xxxxxxxx", "0", "1234567890"] {
        let h = hints(None, Some(v), &[]);
        assert!(Evidence::from_hints(&h).is_empty(), "{v:?}");
    }
}

#[test]
fn every_placeholder_uuid_is_dropped_from_hints() {
    let mut all: Vec<String> = PLACEHOLDER_UUIDS.iter().map(|s| s.to_string()).collect();
    all.extend(
        PLACEHOLDER_UUIDS
            .iter()
            .filter_map(|s| uuid_byte_swapped(s)),
    );
    all.push("00000000-0000-0000-0000-000000000000".into());
    all.push("FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF".into());
    all.push("Not Settable".into());
    for u in all {
        assert!(ev(Some(&u), None, &[]).is_empty(), "{u}");
    }
}

#[test]
fn evidence_with_nothing_usable_is_quarantined_not_new() {
    // Creating a record would make a new machine on every boot and lose its workflow.
    let e = ev(
        Some("00000000-0000-0000-0000-000000000000"),
        Some("Default string"),
        &["52:54:00:12:34:56"],
    );
    assert!(e.is_empty());
    let (cands, reason) = quarantined(&run(&e, &[]));
    assert!(cands.is_empty());
    assert!(reason.contains("No usable identifier"), "{reason}");
}

#[test]
fn duplicated_serial_across_batch() {
    let first = ev(Some(UUID_A), Some("BATCH0001"), &[MAC_A1]);
    let second = ev(Some(UUID_B), Some("batch0001"), &[MAC_B1]);
    let o = run(&second, &[cand(1, first.clone())]);
    assert_eq!(o.decision, Decision::New);
    assert_eq!(
        o.newly_shared,
        vec![ident(IdKind::SystemSerial, "BATCH0001")]
    );

    // The store marked it shared and recorded the second machine with it.
    let shared: HashSet<Identifier> = o.newly_shared.into_iter().collect();
    let third = ev(Some(UUID_C), Some("BATCH0001"), &[MAC_C1]);
    let o = decide(&third, &[cand(1, first), cand(2, second)], &shared);
    assert_eq!(o.decision, Decision::New);
    assert!(o.newly_shared.is_empty());
}

#[test]
fn duplicated_serial_copied_into_chassis_serial_counts_once() {
    let batch = |uuid: &str, mac: &str| {
        Evidence::from_hints(&IdentityHints {
            system_uuid: Some(uuid.into()),
            system_serial: Some("BATCH0001".into()),
            chassis_serial: Some("BATCH0001".into()),
            macs: vec![nic(mac)],
            ..IdentityHints::default()
        })
    };
    let o = run(&batch(UUID_B, MAC_B1), &[cand(1, batch(UUID_A, MAC_A1))]);
    assert_eq!(o.decision, Decision::New);
    assert_eq!(
        o.newly_shared,
        vec![
            ident(IdKind::SystemSerial, "BATCH0001"),
            ident(IdKind::ChassisSerial, "BATCH0001"),
        ]
    );
}

#[test]
fn duplicated_uuid_across_batch() {
    let first = ev(Some(UUID_A), Some("SN-0001"), &[MAC_A1]);
    let second = ev(Some(UUID_A), Some("SN-0002"), &[MAC_B1]);
    let o = run(&second, &[cand(1, first.clone())]);
    assert_eq!(o.decision, Decision::New);
    assert_eq!(o.newly_shared, vec![ident(IdKind::Uuid, UUID_A)]);

    let shared: HashSet<Identifier> = o.newly_shared.into_iter().collect();
    let third = ev(Some(UUID_A), Some("SN-0003"), &[MAC_C1]);
    let o = decide(&third, &[cand(1, first.clone()), cand(2, second)], &shared);
    assert_eq!(o.decision, Decision::New);
    assert!(o.newly_shared.is_empty());

    // The shared UUID presented byte-swapped is still the shared UUID.
    let swapped = uuid_byte_swapped(UUID_A).unwrap_or_default();
    let fourth = ev(Some(&swapped), Some("SN-0004"), &[MAC_NEW]);
    let o = decide(&fourth, &[cand(1, first)], &shared);
    assert_eq!(o.decision, Decision::New);

    // And the first machine is still recognised by its serial and MAC.
    let again = ev(Some(UUID_A), Some("SN-0001"), &[MAC_A1]);
    let o = decide(
        &again,
        &[cand(1, ev(Some(UUID_A), Some("SN-0001"), &[MAC_A1]))],
        &shared,
    );
    assert_eq!(o.decision, Decision::Match(id(1)));
}

#[test]
fn fleet_shared_bmc_usb_mac_is_ignored() {
    // The same BMC host-interface MAC on every machine (universally administered, so only the
    // bus tells it apart).
    let bmc = Nic {
        mac: "00:0a:f7:00:00:01".into(),
        bus: Some("usb".into()),
    };
    let mut a = hints(None, None, &[MAC_A1]);
    a.macs.push(bmc.clone());
    let mut b = hints(None, None, &[MAC_B1]);
    b.macs.push(Nic {
        bus: Some(" USB ".into()),
        ..bmc
    });
    let ev_b = Evidence::from_hints(&b);
    assert_eq!(ev_b.identifiers(), &[ident(IdKind::Mac, MAC_B1)]);
    let o = run(&ev_b, &[cand(1, Evidence::from_hints(&a))]);
    assert_eq!(o.decision, Decision::New);
    assert!(o.newly_shared.is_empty());
}

#[test]
fn locally_administered_mac_is_ignored() {
    let h = hints(
        Some(UUID_A),
        None,
        &[
            "02:00:00:00:00:01",
            "52:54:00:12:34:56",
            "01:00:5e:00:00:01",
            MAC_A1,
        ],
    );
    assert_eq!(
        Evidence::from_hints(&h).identifiers(),
        &[ident(IdKind::Uuid, UUID_A), ident(IdKind::Mac, MAC_A1)]
    );
    // A machine sharing only a locally administered MAC is not that machine.
    let other = ev(Some(UUID_B), None, &["02:00:00:00:00:01"]);
    let o = run(&other, &[cand(1, Evidence::from_hints(&h))]);
    assert_eq!(o.decision, Decision::New);
}

#[test]
fn added_nic_still_matches() {
    let rec = ev(Some(UUID_A), Some("7XK1H3"), &[MAC_A1]);
    let now = ev(Some(UUID_A), Some("7XK1H3"), &[MAC_A1, MAC_NEW]);
    assert_eq!(run(&now, &[cand(1, rec)]).decision, Decision::Match(id(1)));
    // Also for a box known by its MACs alone.
    let rec = ev(None, None, &[MAC_A1, MAC_A2]);
    let now = ev(None, None, &[MAC_A2, MAC_NEW]);
    assert_eq!(run(&now, &[cand(1, rec)]).decision, Decision::Match(id(1)));
}

#[test]
fn byte_swapped_uuid_matches() {
    let swapped = uuid_byte_swapped(UUID_A).unwrap_or_default();
    assert_eq!(swapped, "44454c4c-3300-1044-8058-b4c04f4e3532");
    let rec = ev(Some(&swapped), None, &[MAC_A1]);
    let now = ev(Some(UUID_A), None, &[MAC_A1]);
    assert_eq!(run(&now, &[cand(1, rec)]).decision, Decision::Match(id(1)));
    // UUID alone, too.
    let rec = ev(Some(&swapped), None, &[]);
    let now = ev(Some(UUID_A), None, &[]);
    assert_eq!(run(&now, &[cand(1, rec)]).decision, Decision::Match(id(1)));
}

#[test]
fn uuid_says_x_macs_say_y_quarantines_both() {
    let x = ev(Some(UUID_A), None, &[MAC_A1]);
    let y = ev(Some(UUID_B), None, &[MAC_B1]);
    let now = ev(Some(UUID_A), None, &[MAC_B1]);
    let o = run(&now, &[cand(2, y), cand(1, x)]);
    let (cands, reason) = quarantined(&o);
    assert_eq!(cands, vec![id(1), id(2)]);
    for needle in [
        id(1).to_string(),
        id(2).to_string(),
        format!("agrees on UUID {UUID_A}"),
        format!("MAC (presented {MAC_B1}, recorded {MAC_A1})"),
        format!("agrees on MAC {MAC_B1}"),
        format!("UUID (presented {UUID_A}, recorded {UUID_B})"),
    ] {
        assert!(reason.contains(&needle), "{needle:?} not in {reason:?}");
    }
    assert!(o.newly_shared.is_empty());
}

#[test]
fn motherboard_swap_quarantines() {
    // The add-in NIC (MAC_A1) moved to a new board: new UUID, new serial, new onboard NIC.
    let rec = ev(Some(UUID_A), Some("7XK1H3"), &[MAC_A1, MAC_A2]);
    let now = ev(Some(UUID_B), Some("9QZ4M1"), &[MAC_A1, MAC_NEW]);
    let o = run(&now, &[cand(1, rec)]);
    let (cands, reason) = quarantined(&o);
    assert_eq!(cands, vec![id(1)]);
    assert!(
        reason.contains(&format!("agrees on MAC {MAC_A1}")),
        "{reason}"
    );
    assert!(
        reason.contains("system serial (presented 9QZ4M1, recorded 7XK1H3)"),
        "{reason}"
    );
    // A MAC is not a duplicated firmware value: it is never marked shared this way.
    assert!(o.newly_shared.is_empty());
}

#[test]
fn every_nic_replaced_quarantines() {
    // Indistinguishable from a batch with cloned UUID and serial: an operator decides.
    let rec = ev(Some(UUID_A), Some("7XK1H3"), &[MAC_A1]);
    let now = ev(Some(UUID_A), Some("7XK1H3"), &[MAC_NEW]);
    let (cands, _) = quarantined(&run(&now, &[cand(1, rec)]));
    assert_eq!(cands, vec![id(1)]);
}

#[test]
fn one_agreement_one_disagreement_quarantines() {
    let rec = ev(Some(UUID_A), Some("7XK1H3"), &[]);
    let now = ev(Some(UUID_A), Some("9QZ4M1"), &[]);
    let (cands, reason) = quarantined(&run(&now, &[cand(1, rec)]));
    assert_eq!(cands, vec![id(1)]);
    assert!(
        reason.starts_with("Conflicting identity evidence"),
        "{reason}"
    );
}

#[test]
fn two_matching_machines_quarantine() {
    let x = ev(None, None, &[MAC_A1]);
    let y = ev(Some(UUID_B), None, &[]);
    let now = ev(Some(UUID_B), None, &[MAC_A1]);
    let (cands, reason) = quarantined(&run(&now, &[cand(1, x), cand(2, y)]));
    assert_eq!(cands, vec![id(1), id(2)]);
    assert!(
        reason.starts_with("The evidence matches 2 machines"),
        "{reason}"
    );
}

#[test]
fn match_beside_a_batch_twin_reports_the_shared_serial() {
    let me = ev(Some(UUID_A), Some("BATCH0001"), &[MAC_A1]);
    let twin = ev(Some(UUID_B), Some("BATCH0001"), &[MAC_B1]);
    let o = run(&me, &[cand(1, me.clone()), cand(2, twin)]);
    assert_eq!(o.decision, Decision::Match(id(1)));
    assert_eq!(
        o.newly_shared,
        vec![ident(IdKind::SystemSerial, "BATCH0001")]
    );
}

#[test]
fn value_proven_shared_stops_identifying_in_the_same_decision() {
    // Machine 1 was only ever known by a serial that machine 2 proves to be a batch value.
    let only_serial = ev(None, Some("BATCH0001"), &[]);
    let twin = ev(Some(UUID_B), Some("BATCH0001"), &[MAC_B1]);
    let now = ev(Some(UUID_A), Some("BATCH0001"), &[MAC_A1]);
    let o = run(&now, &[cand(1, only_serial), cand(2, twin)]);
    assert_eq!(o.decision, Decision::New);
    assert_eq!(
        o.newly_shared,
        vec![ident(IdKind::SystemSerial, "BATCH0001")]
    );
}

#[test]
fn shared_values_are_normalised_before_use() {
    let rec = ev(Some(UUID_A), Some("BATCH0001"), &[MAC_A1]);
    let now = ev(Some(UUID_B), Some("BATCH0001"), &[MAC_B1]);
    // Stored in another spelling; still ignored, so machine 1 is unrelated and nothing is new.
    let shared: HashSet<Identifier> = [ident(IdKind::SystemSerial, " batch0001")].into();
    let o = decide(&now, &[cand(1, rec)], &shared);
    assert_eq!(o.decision, Decision::New);
    assert!(o.newly_shared.is_empty());
}

#[test]
fn candidate_listed_twice_is_one_machine() {
    let now = ev(Some(UUID_A), None, &[MAC_A1]);
    let o = run(
        &now,
        &[
            cand(1, ev(Some(UUID_A), None, &[])),
            cand(1, ev(None, None, &[MAC_A1])),
        ],
    );
    assert_eq!(o.decision, Decision::Match(id(1)));
}

#[test]
fn evidence_is_sorted_and_deduplicated() {
    let h = IdentityHints {
        system_uuid: Some(UUID_A.to_uppercase()),
        system_serial: Some("7xk1h3".into()),
        chassis_serial: Some("7XK1H3".into()),
        baseboard_serial: Some("/7XK1H3/CN1296182A0123/".into()),
        manufacturer: Some("Dell Inc.".into()),
        product: Some("PowerEdge R640".into()),
        os_machine_id: None,
        macs: vec![nic(MAC_A2), nic(MAC_A1), nic(&MAC_A1.to_uppercase())],
    };
    assert_eq!(
        Evidence::from_hints(&h).identifiers(),
        &[
            ident(IdKind::Uuid, UUID_A),
            ident(IdKind::SystemSerial, "7XK1H3"),
            ident(IdKind::ChassisSerial, "7XK1H3"),
            ident(IdKind::BaseboardSerial, "/7XK1H3/CN1296182A0123/"),
            ident(IdKind::Mac, MAC_A1),
            ident(IdKind::Mac, MAC_A2),
        ]
    );
}

#[test]
fn id_kind_names_round_trip() {
    for k in IdKind::ALL {
        assert_eq!(IdKind::parse(k.as_str()), Some(k));
        let json = serde_json::to_string(&k).unwrap_or_default();
        assert_eq!(json, format!("\"{}\"", k.as_str()));
    }
    assert_eq!(IdKind::parse("serial"), None);
    assert_eq!(IdKind::parse("UUID"), None);
}

#[test]
fn os_machine_id_identifies_and_placeholders_do_not() {
    use super::normalize_machine_id;
    assert_eq!(
        normalize_machine_id(" 3D1219C7C4C5404AAA1F6D2A48ADFDA4\n").as_deref(),
        Some("3d1219c7c4c5404aaa1f6d2a48adfda4")
    );
    assert_eq!(normalize_machine_id("uninitialized"), None);
    assert_eq!(normalize_machine_id(&"0".repeat(32)), None);
    assert_eq!(normalize_machine_id("abc"), None);
    let hints = anneal_shared::protocol::IdentityHints {
        os_machine_id: Some("3d1219c7c4c5404aaa1f6d2a48adfda4".into()),
        ..Default::default()
    };
    let e = Evidence::from_hints(&hints);
    assert_eq!(e.identifiers().len(), 1);
    assert_eq!(e.identifiers()[0].kind, IdKind::OsMachineId);
    let again = decide(
        &e,
        &[Candidate {
            machine_id: uuid::Uuid::from_u128(1),
            evidence: e.clone(),
        }],
        &Default::default(),
    );
    assert_eq!(again.decision, Decision::Match(uuid::Uuid::from_u128(1)));
}
