//! The TFTP tree over HTTP, under `/ipxe/<name>`: UEFI HTTP-boot firmware (vendor class
//! `HTTPClient`) is given such a URL by DHCP and fetches its iPXE binary here instead of by
//! TFTP. What may be served is decided exactly as for TFTP (`tftp::files`): the built-in iPXE
//! binaries and regular files inside the TFTP root, with no way out of it. Files are streamed
//! (Range, HEAD, Content-Length) by tower-http's `ServeFile`, never loaded into memory.

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::app::App;
use crate::tftp::files::{FileError, Files};

/// Serve `name` from the TFTP tree, or a plain 404/403 (firmware, not iPXE, reads this).
pub async fn serve(app: &App, name: String, req: Request) -> Response {
    let (root, ipxe_dir) = (app.config.tftp_root.clone(), app.config.ipxe_dir.clone());
    let lookup = name.clone();
    let resolved = tokio::task::spawn_blocking(move || {
        // The root exists once TFTP has run; without TFTP it may not, and only built-ins count.
        let _ = std::fs::create_dir_all(&root);
        let files = Files::new(&root, &ipxe_dir).map_err(FileError::Io)?;
        let (path, _) = files.resolve(&lookup)?;
        // Open once the way TFTP would (no symlinks inside the root), then let ServeFile stream.
        files.open(&lookup)?;
        Ok::<_, FileError>(path)
    })
    .await;
    let path = match resolved {
        Ok(Ok(path)) => path,
        Ok(Err(e)) => {
            let (status, outcome) = match e {
                FileError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
                FileError::AccessViolation(_) => (StatusCode::FORBIDDEN, "refused"),
                FileError::Io(_) => (StatusCode::INTERNAL_SERVER_ERROR, "error"),
            };
            metrics::counter!("anneal_boot_files_total", "outcome" => outcome).increment(1);
            tracing::info!(file = %name, error = %e, "boot HTTP: firmware file not served");
            return (status, format!("{name}: {e}\n")).into_response();
        }
        Err(e) => {
            tracing::error!(error = %e, "boot HTTP: file lookup task failed");
            return StatusCode::INTERNAL_SERVER_ERROR.into_response();
        }
    };
    metrics::counter!("anneal_boot_files_total", "outcome" => "served").increment(1);
    tracing::info!(file = %name, path = %path.display(), "boot HTTP: firmware file served");
    match ServeFile::new(&path).oneshot(req).await {
        Ok(r) => r.map(Body::new),
        Err(e) => match e {},
    }
}
