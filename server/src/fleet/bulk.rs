//! Assigning one workflow to every machine a selector matches, each through the destructive
//! guard, with a report per machine.

use anneal_shared::api::{AssignResult, BulkAssign, BulkAssignReport, BulkAssignment};

use super::guard::{self, Checked, Source};
use super::selector::{Selector, SelectorError};
use crate::app::App;
use crate::store::StoreError;
use crate::workflow::service::WorkflowError;

/// Why a bulk assignment did not start (per-machine refusals are in its report instead).
#[derive(Debug, thiserror::Error)]
pub enum BulkError {
    /// The selector does not parse.
    #[error("selector: {0}")]
    Selector(#[from] SelectorError),
    /// The workflow does not resolve.
    #[error(transparent)]
    Workflow(#[from] WorkflowError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Assign `workflow` to every machine `req.selector` matches (with `dry_run`, only say what
/// would happen), oldest machine first. `by`: the operator's API token id.
pub async fn assign(
    app: &App,
    workflow: &str,
    req: &BulkAssign,
    by: &str,
) -> Result<BulkAssignReport, BulkError> {
    let selector = Selector::parse(&req.selector)?;
    let checked = Checked::resolve(app, workflow).await?;
    let machines = app.store.list_machines().await?;
    let mut report = Vec::new();
    for m in machines
        .iter()
        .filter(|m| selector.matches(&crate::api::machine_summary(m)))
    {
        let refused = |reason: String| (AssignResult::Refused, Some(reason), None);
        let (result, reason, run) = match guard::ready_for_work(m) {
            Err(why) => refused(why),
            Ok(()) if req.dry_run => match guard::permits(&checked, m) {
                Ok(()) => (AssignResult::WouldAssign, None, None),
                Err(e) => refused(e.to_string()),
            },
            Ok(()) => match guard::assign(app, m.id, &checked, Source::Operator(by)).await {
                Ok(run) => (AssignResult::Assigned, None, Some(run.id)),
                Err(e) => refused(e.to_string()),
            },
        };
        report.push(BulkAssignment {
            machine_id: m.id,
            hostname: m.hostname.clone(),
            result,
            reason,
            run,
        });
    }
    let assigned = report
        .iter()
        .filter(|a| a.result == AssignResult::Assigned)
        .count();
    metrics::counter!("anneal_bulk_assignments_total").increment(assigned as u64);
    tracing::info!(workflow, selector = %selector, dry_run = req.dry_run, matched = report.len(), assigned, by, "bulk assignment");
    Ok(BulkAssignReport {
        workflow: workflow.to_string(),
        selector: req.selector.clone(),
        dry_run: req.dry_run,
        destructive_tasks: checked.destructive_tasks,
        machines: report,
    })
}
