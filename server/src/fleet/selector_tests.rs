use anneal_shared::api::{ClaimKind, Location, MachineState, MachineSummary};
use proptest::prelude::*;

use super::*;

fn machine() -> MachineSummary {
    MachineSummary {
        id: "4c4c4544-0042-4210-8000-000000000001".parse().unwrap(),
        state: MachineState::Discovered,
        hostname: Some("node-1".into()),
        manufacturer: Some("Dell Inc.".into()),
        product: Some("PowerEdge R650".into()),
        serial: Some("ABC123".into()),
        macs: vec!["00:1b:21:00:00:01".into(), "00:1b:21:00:00:02".into()],
        cpus: Some(32),
        memory_bytes: Some(64 << 30),
        disks: Some(2),
        last_seen: None,
        status: None,
        tags: vec!["db".into(), "web".into()],
        location: Location {
            rack: Some("r12".into()),
            slot: Some("7".into()),
            ..Location::default()
        },
        claim: None,
    }
}

fn hits(selector: &str, m: &MachineSummary) -> bool {
    Selector::parse(selector)
        .unwrap_or_else(|e| panic!("{selector}: {e}"))
        .matches(m)
}

#[test]
fn terms_over_tags_location_state_and_inventory() {
    let m = machine();
    for yes in [
        "tag=web",
        "tag=WEB",
        "tag~we",
        "tag!=gpu",
        "product~PowerEdge",
        "product=poweredge r650",
        "manufacturer~dell, disks>=2, cpus>16",
        "state=discovered",
        "rack=r12,slot=7",
        "site!=fra1",
        "site!~x",
        "memory>=64G",
        "memory=64GiB",
        "memory<65537M",
        "disks=2",
        "nics=2",
        "mac=00:1B:21:00:00:02",
        "claim=none",
        "id~4c4c4544",
        "serial=ABC123",
        "hostname!~web",
    ] {
        assert!(hits(yes, &m), "{yes} should match");
    }
    for no in [
        "tag=gpu",
        "tag!=web",
        "product!~PowerEdge",
        "disks>2",
        "disks<2",
        "cpus<=16",
        "state=pending",
        "rack=r13",
        "site=fra1",
        "memory>64G",
        "claim=new",
        "tag=web,rack=r1",
    ] {
        assert!(!hits(no, &m), "{no} should not match");
    }
}

#[test]
fn missing_fields_fail_positive_terms_and_pass_negated_ones() {
    let bare = MachineSummary {
        hostname: None,
        product: None,
        cpus: None,
        memory_bytes: None,
        disks: None,
        tags: vec![],
        location: Location::default(),
        ..machine()
    };
    for no in [
        "product~R650",
        "disks>=0",
        "disks=0",
        "rack=r12",
        "tag~w",
        "memory>0",
    ] {
        assert!(
            !hits(no, &bare),
            "{no} must not match a machine without the field"
        );
    }
    for yes in [
        "product!~R650",
        "disks!=2",
        "rack!=r12",
        "tag!=web",
        "memory!=0",
    ] {
        assert!(
            hits(yes, &bare),
            "{yes} must match a machine without the field"
        );
    }
}

#[test]
fn claims_are_selectable() {
    let mut m = machine();
    m.claim = Some(ClaimKind::New);
    assert!(hits("claim=new", &m));
    assert!(hits("claim!=none", &m));
    assert!(!hits("claim=operator", &m));
}

#[test]
fn errors_name_the_term_and_the_problem() {
    let cases = [
        ("", 0, "the selector is empty"),
        ("   ", 0, "the selector is empty"),
        ("tag=web,,rack=1", 2, "the term is empty"),
        ("tag=web,", 2, "the term is empty"),
        ("web", 1, "no operator"),
        (
            "tag=web,colour=red",
            2,
            "unknown key `colour` (keys: tag, mac",
        ),
        ("=web", 1, "no key before `=`"),
        ("tag=", 1, "no value after `=`"),
        ("tag>=2", 1, "`tag` takes = != ~ !~, not `>=`"),
        ("state~disc", 1, "`state` takes = !=, not `~`"),
        (
            "state=gone",
            1,
            "`state` is one of pending, discovered, not `gone`",
        ),
        ("claim=maybe", 1, "`claim` is one of operator, new, none"),
        ("disks>=two", 1, "`two` is not a whole number"),
        ("disks>=-1", 1, "`-1` is not a whole number"),
        ("memory>=64X", 1, "unknown unit"),
        ("memory>=G", 1, "is not a size"),
        ("memory>=99999999999P", 1, "is too large"),
        ("tag==web", 1, "write `=`, not `==`"),
        ("tag!web", 1, "`!` must be followed by `=` or `~`"),
        ("rack=1,disks>=1,cpus>x", 3, "`x` is not a whole number"),
    ];
    for (text, term, problem) in cases {
        let e = Selector::parse(text).expect_err(text);
        assert_eq!(e.term, term, "{text}: {e}");
        assert!(e.to_string().contains(problem), "{text}: {e}");
    }
    let e = Selector::parse("disks>=two").unwrap_err();
    assert_eq!(
        e.to_string(),
        "term 1 `disks>=two`: `two` is not a whole number"
    );
}

#[test]
fn size_limits() {
    let long = format!("tag={}", "a".repeat(MAX_LEN));
    assert!(Selector::parse(&long)
        .unwrap_err()
        .to_string()
        .contains("at most"));
    let many = vec!["tag=a"; MAX_TERMS + 1].join(",");
    assert!(Selector::parse(&many)
        .unwrap_err()
        .to_string()
        .contains("terms"));
    let most = vec!["tag=a"; MAX_TERMS].join(",");
    assert!(Selector::parse(&most).is_ok());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    /// Any text at all: an answer, never a panic.
    #[test]
    fn parsing_never_panics(text in "\\PC{0,80}") {
        let _ = Selector::parse(&text).map(|s| s.matches(&machine()));
    }

    /// Text made of the language's own pieces reaches the deeper checks; whatever parses
    /// prints to a text that parses to the same selector.
    #[test]
    fn canonical_text_round_trips(
        parts in proptest::collection::vec(
            (
                prop::sample::select(KEYS.iter().map(|(n, _)| *n).collect::<Vec<_>>()),
                prop::sample::select(vec!["=", "!=", "~", "!~", ">", ">=", "<", "<=", "!", "=="]),
                "[a-z0-9 ]{0,6}[kgmt]?",
            ),
            1..6,
        )
    ) {
        let text: Vec<String> = parts.iter().map(|(k, o, v)| format!("{k}{o}{v}")).collect();
        if let Ok(s) = Selector::parse(&text.join(",")) {
            let again = Selector::parse(&s.to_string()).expect("canonical text parses");
            prop_assert_eq!(&again, &s);
            prop_assert_eq!(again.matches(&machine()), s.matches(&machine()));
        }
    }
}
