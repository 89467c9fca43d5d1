//! What an operator writes on a machine: tags and location. Their syntax, and an edit
//! (`PATCH /api/v1/machines/{id}`) applied to what the machine has.

use anneal_shared::api::{Location, UpdateMachine};

/// Longest tag.
pub const MAX_TAG_LEN: usize = 63;
/// Most tags on one machine.
pub const MAX_TAGS: usize = 64;
/// Longest location field.
pub const MAX_LOCATION_LEN: usize = 64;

/// Why an edit was refused: every problem, each naming the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("; "))]
pub struct LabelErrors(pub Vec<String>);

/// Tags are selector values and CLI arguments (`+web`, `-old`): lowercase letters, digits and
/// `.`, `_`, `-`, `:`, `/`, starting with a letter or digit.
pub fn check_tag(tag: &str) -> Result<(), String> {
    let first_ok = tag
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = tag
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-:/".contains(c));
    if tag.is_empty() {
        Err("a tag must not be empty".into())
    } else if tag.len() > MAX_TAG_LEN {
        Err(format!(
            "tag {tag:?} is longer than {MAX_TAG_LEN} characters"
        ))
    } else if !first_ok || !rest_ok {
        Err(format!(
            "tag {tag:?} must be lowercase letters, digits and . _ - : /, starting with a letter or digit"
        ))
    } else {
        Ok(())
    }
}

/// Location values are free text, but printable, short and without the selector's comma.
fn check_location_field(field: &str, value: &str) -> Result<(), String> {
    if value.len() > MAX_LOCATION_LEN {
        Err(format!(
            "location.{field}: longer than {MAX_LOCATION_LEN} characters"
        ))
    } else if value.trim() != value {
        Err(format!("location.{field}: {value:?} has spaces at an end"))
    } else if value.chars().any(|c| c.is_control() || c == ',') {
        Err(format!(
            "location.{field}: {value:?} contains a comma or a control character"
        ))
    } else {
        Ok(())
    }
}

/// The tags and location after `edit`: tags removed, then added, sorted and unique; each
/// location field given replaces the old one, an empty one clears it.
pub fn apply(
    tags: &[String],
    location: &Location,
    edit: &UpdateMachine,
) -> Result<(Vec<String>, Location), LabelErrors> {
    let mut problems = Vec::new();
    for t in edit.add_tags.iter().chain(&edit.remove_tags) {
        if let Err(e) = check_tag(t) {
            problems.push(e);
        }
    }
    let mut new_tags: Vec<String> = tags
        .iter()
        .filter(|t| !edit.remove_tags.contains(t))
        .chain(&edit.add_tags)
        .cloned()
        .collect();
    new_tags.sort();
    new_tags.dedup();
    if new_tags.len() > MAX_TAGS {
        problems.push(format!(
            "a machine may have at most {MAX_TAGS} tags ({} after this edit)",
            new_tags.len()
        ));
    }
    let mut loc = location.clone();
    let fields = [
        ("site", &edit.location.site, &mut loc.site),
        ("row", &edit.location.row, &mut loc.row),
        ("rack", &edit.location.rack, &mut loc.rack),
        ("slot", &edit.location.slot, &mut loc.slot),
    ];
    for (name, given, field) in fields {
        let Some(value) = given else { continue };
        if let Err(e) = check_location_field(name, value) {
            problems.push(e);
        }
        *field = (!value.is_empty()).then(|| value.clone());
    }
    if problems.is_empty() {
        Ok((new_tags, loc))
    } else {
        Err(LabelErrors(problems))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit(add: &[&str], remove: &[&str], location: Location) -> UpdateMachine {
        UpdateMachine {
            version: None,
            add_tags: add.iter().map(|s| s.to_string()).collect(),
            remove_tags: remove.iter().map(|s| s.to_string()).collect(),
            location,
        }
    }

    #[test]
    fn tags_are_added_removed_sorted_and_unique() {
        let old = vec!["old".to_string(), "web".to_string()];
        let (tags, _) = apply(
            &old,
            &Location::default(),
            &edit(
                &["db", "web", "db"],
                &["old", "absent"],
                Location::default(),
            ),
        )
        .unwrap();
        assert_eq!(tags, ["db", "web"]);
    }

    #[test]
    fn location_fields_replace_clear_or_stay() {
        let old = Location {
            site: Some("fra1".into()),
            rack: Some("r1".into()),
            slot: Some("3".into()),
            ..Location::default()
        };
        let change = Location {
            rack: Some("r12".into()),
            slot: Some(String::new()),
            ..Location::default()
        };
        let (_, loc) = apply(&[], &old, &edit(&[], &[], change)).unwrap();
        assert_eq!(
            loc,
            Location {
                site: Some("fra1".into()),
                rack: Some("r12".into()),
                ..Location::default()
            }
        );
    }

    #[test]
    fn bad_values_are_all_reported() {
        for bad in ["", "Web", "-old", "+web", "a b", "a,b", &"x".repeat(64)] {
            assert!(check_tag(bad).is_err(), "{bad:?}");
        }
        for good in ["web", "env:prod", "team/db", "r650_2", "0"] {
            assert!(check_tag(good).is_ok(), "{good:?}");
        }
        let loc = Location {
            rack: Some("r1,r2".into()),
            row: Some(" a".into()),
            ..Location::default()
        };
        let e = apply(&[], &Location::default(), &edit(&["Web"], &[], loc)).unwrap_err();
        assert_eq!(e.0.len(), 3, "{e}");
        assert!(
            e.to_string().contains("tag \"Web\" must be lowercase"),
            "{e}"
        );
        assert!(e.to_string().contains("location.rack"), "{e}");
        let many: Vec<String> = (0..=MAX_TAGS).map(|i| format!("t{i}")).collect();
        let refs: Vec<&str> = many.iter().map(String::as_str).collect();
        let e = apply(
            &[],
            &Location::default(),
            &edit(&refs, &[], Location::default()),
        );
        assert!(e.unwrap_err().to_string().contains("at most 64 tags"));
    }
}
