//! Rules give newly discovered machines a workflow. When a machine is first ready for work
//! (its inventory stored and, where approval is required, approved) the rules are asked once:
//! the first rule by `order` (then name) whose selector matches has its workflow assigned,
//! through the destructive guard. What happened is recorded on the machine, once, so rules never
//! fire again for it, not after a rediscovery nor for machines that predate them.

use anneal_shared::api::{MachineState, MachineSummary, RuleOutcome, RuleResult};
use anneal_shared::content::Rule;
use anneal_shared::events::{Event, EventKind};
use anneal_shared::MachineId;
use time::OffsetDateTime;

use super::guard::{self, Checked, Source};
use super::selector::Selector;
use crate::app::App;
use crate::audit::{self, Change};
use crate::content::ContentSet;
use crate::workflow::service::{current_content, WorkflowError};

/// The first rule, by order then name, whose selector matches `m`.
pub fn first_match<'a>(content: &'a ContentSet, m: &MachineSummary) -> Option<&'a Rule> {
    let mut rules: Vec<&Rule> = content.rules.values().collect();
    rules.sort_by(|a, b| (a.order, &a.name).cmp(&(b.order, &b.name)));
    rules.into_iter().find(|r| match Selector::parse(&r.selector) {
        Ok(s) => s.matches(m),
        // Applied content was validated; a rule that no longer parses is skipped, loudly.
        Err(e) => {
            tracing::error!(rule = %r.name, error = %e, "rule selector does not parse; skipped");
            false
        }
    })
}

/// The machine may just have become ready for work (inventory stored, or approved): ask the
/// rules if they never were. Failures are logged; the caller's request goes on.
pub async fn machine_ready(app: &App, machine: MachineId) {
    match fire(app, machine).await {
        Ok(Some(o)) => {
            metrics::counter!("anneal_rule_outcomes_total", "result" => o.result.as_str())
                .increment(1);
            tracing::info!(machine_id = %machine, rule = ?o.rule, workflow = ?o.workflow, result = ?o.result, reason = ?o.reason, "rules asked for a new machine");
            app.events.emit(Event {
                state: Some(o.result.as_str().into()),
                workflow: o.workflow.clone(),
                reason: o.reason.clone().or(o.rule.clone()),
                ..Event::of(EventKind::RuleFired).machine(machine)
            });
        }
        Ok(None) => {}
        Err(e) => tracing::error!(machine_id = %machine, error = %e, "asking the rules failed"),
    }
}

async fn fire(app: &App, machine: MachineId) -> Result<Option<RuleOutcome>, WorkflowError> {
    let Some(m) = app.store.get_machine(machine).await? else {
        return Ok(None);
    };
    let ready = m.state == MachineState::Discovered && m.inventory.is_some();
    if m.fleet.rule.is_some() || !ready {
        return Ok(None);
    }
    let (_, content) = current_content(app).await?;
    let matched = first_match(&content, &crate::api::machine_summary(&m));
    let has_run = app.store.current_run(machine).await?.is_some();
    let mut outcome = RuleOutcome {
        at: OffsetDateTime::now_utc(),
        rule: matched.map(|r| r.name.clone()),
        workflow: matched.map(|r| r.workflow.clone()),
        result: RuleResult::Assigned,
        reason: None,
    };
    if has_run {
        outcome.result = RuleResult::Skipped;
        outcome.reason = Some("it already had a workflow run".into());
    } else if matched.is_none() {
        outcome.result = RuleResult::NoMatch;
    }
    // Recorded before assigning: of concurrent reports only one goes on from here.
    if !app.store.record_rule_once(machine, &outcome).await? {
        return Ok(None);
    }
    let Some(rule) = matched.filter(|_| outcome.result == RuleResult::Assigned) else {
        return Ok(Some(outcome));
    };
    let assigned = match Checked::resolve(app, &rule.workflow).await {
        Ok(checked) => guard::assign(app, machine, &checked, Source::Rule(&rule.name)).await,
        Err(e) => Err(e.into()),
    };
    match assigned {
        Ok(run) => {
            let after = serde_json::json!({"workflow": rule.workflow, "run": run.id});
            let change = Change::machine("workflow.assign", machine).after(&after);
            audit::record_by_rule(app, &rule.name, change).await;
        }
        Err(e) => {
            outcome.result = RuleResult::Refused;
            outcome.reason = Some(e.to_string());
            app.store.update_rule(machine, &outcome).await?;
        }
    }
    Ok(Some(outcome))
}

#[cfg(test)]
mod tests {
    use anneal_shared::api::{Location, MachineState};
    use anneal_shared::content::{ContentObject, Rule};

    use super::*;

    fn rule(name: &str, selector: &str, order: u32) -> ContentObject {
        ContentObject::Rule(Rule {
            name: name.into(),
            selector: selector.into(),
            workflow: format!("wf-{name}"),
            order,
            ..Rule::default()
        })
    }

    #[test]
    fn the_first_matching_rule_by_order_then_name_wins() {
        let mut set = ContentSet::new();
        for r in [
            rule("b-any", "state=discovered", 100),
            rule("a-any", "state=discovered", 100),
            rule("big", "disks>=4", 10),
            rule("web", "tag=web", 50),
        ] {
            set.insert(r, None).unwrap();
        }
        let mut m = MachineSummary {
            id: uuid::Uuid::nil(),
            state: MachineState::Discovered,
            hostname: None,
            manufacturer: None,
            product: None,
            serial: None,
            macs: vec![],
            cpus: None,
            memory_bytes: None,
            disks: Some(2),
            last_seen: None,
            status: None,
            tags: vec![],
            location: Location::default(),
            claim: None,
        };
        assert_eq!(first_match(&set, &m).unwrap().name, "a-any");
        m.tags = vec!["web".into()];
        assert_eq!(first_match(&set, &m).unwrap().name, "web");
        m.disks = Some(8);
        assert_eq!(first_match(&set, &m).unwrap().name, "big");
        m.state = MachineState::Pending;
        m.tags.clear();
        m.disks = Some(1);
        assert!(first_match(&set, &m).is_none());
    }
}
