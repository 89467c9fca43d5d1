//! Operator API for workflow content: apply YAML files as a new content version, list
//! workflows.

use std::sync::Arc;

use anneal_shared::api::{
    AppliedObject, ApplyContent, ApplyReport, Problem, Role, WorkflowSummary,
};
use anneal_shared::events::{Event, EventKind};
use axum::extract::State;
use axum::http::StatusCode;
use axum::{Extension, Json};

use super::auth::Caller;
use crate::app::App;
use crate::audit::{self, Change};
use crate::content::{builtin, load_files, ContentErrors, ContentSet};
use crate::problem::{ApiError, ApiJson};
use crate::store::workflow::ApplyAction;
use crate::workflow::plan;
use crate::workflow::service::current_content;

fn invalid(e: ContentErrors) -> ApiError {
    metrics::counter!("anneal_content_rejected_total").increment(1);
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid-content",
        format!("{} problem(s):\n{e}", e.0.len()),
    )
}

/// Create or update every object in the files, checked together with the content already
/// applied and the built-ins, as one new content version. Every problem is reported, naming
/// the file, the object and the field; nothing is written unless all is well.
#[utoipa::path(post, path = "/api/v1/content", tag = "workflows",
    request_body = ApplyContent,
    responses((status = 200, body = ApplyReport), (status = 422, body = Problem)),
    security(("bearer" = [])))]
pub async fn apply(
    State(app): State<Arc<App>>,
    Extension(caller): Extension<Caller>,
    ApiJson(req): ApiJson<ApplyContent>,
) -> Result<Json<ApplyReport>, ApiError> {
    caller.require(Role::Operator)?;
    let new = load_files(req.files.iter().map(|f| (f.path.as_str(), f.text.as_str())))
        .map_err(invalid)?;
    let (version, current) = current_content(&app).await?;
    let before = version;
    // The new objects over everything in force now, validated as a whole.
    ContentSet::merge(&current, &new).map_err(invalid)?;
    let objects = new.objects();
    let (version, actions) = if req.dry_run {
        let actions = objects
            .iter()
            .map(|o| {
                match current
                    .objects()
                    .iter()
                    .find(|c| c.kind() == o.kind() && c.name() == o.name())
                {
                    None => ApplyAction::Created,
                    Some(c) if c == o => ApplyAction::Unchanged,
                    Some(_) => ApplyAction::Updated,
                }
            })
            .collect();
        (version, actions)
    } else {
        let out = app.store.apply_content(&objects, &[]).await?;
        (
            out.version,
            out.objects
                .into_iter()
                .map(|(_, _, a)| a)
                .collect::<Vec<_>>(),
        )
    };
    let report = ApplyReport {
        version,
        dry_run: req.dry_run,
        objects: objects
            .iter()
            .zip(actions)
            .map(|(o, a)| AppliedObject {
                kind: o.kind(),
                name: o.name().to_string(),
                action: match a {
                    ApplyAction::Created => "created",
                    ApplyAction::Updated => "updated",
                    ApplyAction::Unchanged => "unchanged",
                    ApplyAction::Deleted => "deleted",
                }
                .into(),
            })
            .collect(),
    };
    if !req.dry_run {
        tracing::info!(version, objects = report.objects.len(), by = %caller.token_id, "content applied");
        let change = Change::new("content.apply", "content", format!("version {version}"))
            .before(&serde_json::json!({ "version": before }))
            .after(&report);
        audit::record(&app, &caller, change).await;
        app.events.emit(Event {
            reason: Some(format!("version {version}")),
            ..Event::of(EventKind::ContentApplied)
        });
    }
    Ok(Json(report))
}

/// Every workflow in force (built-in and applied), by name.
#[utoipa::path(get, path = "/api/v1/workflows", tag = "workflows",
    responses((status = 200, body = Vec<WorkflowSummary>)),
    security(("bearer" = [])))]
pub async fn list(State(app): State<Arc<App>>) -> Result<Json<Vec<WorkflowSummary>>, ApiError> {
    let (version, content) = current_content(&app).await?;
    let objects = content.objects();
    let list = content
        .workflows
        .values()
        .map(|w| WorkflowSummary {
            name: w.name.clone(),
            description: w.description.clone(),
            stages: w.stages.clone(),
            destructive: plan::resolve(&objects, &w.name, version).is_ok_and(|p| p.destructive()),
            builtin: builtin().workflows.get(&w.name) == Some(w),
        })
        .collect();
    Ok(Json(list))
}
