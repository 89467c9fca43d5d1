//! Running the external tools some collectors drive (smartctl, ipmitool), always with a bound.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::CollectError;

/// What a finished tool run produced.
#[derive(Debug, Clone)]
pub struct ToolOutput {
    /// Exit code; `None` when killed by a signal.
    pub code: Option<i32>,
    /// Everything written to standard output.
    pub stdout: Vec<u8>,
    /// Everything written to standard error.
    pub stderr: Vec<u8>,
}

/// Finds `name` in `PATH` (plus the sbin directories, which a minimal `PATH` may lack).
pub fn find(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

/// A regular file with an execute bit.
fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Runs `program args…`, killing it when it outlives `limit`.
pub async fn run(
    tool: &'static str,
    program: &Path,
    args: &[&str],
    limit: Duration,
) -> Result<ToolOutput, CollectError> {
    let child = tokio::process::Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| CollectError::Tool {
            tool,
            message: format!("cannot start {}: {e}", program.display()),
        })?;
    match tokio::time::timeout(limit, child.wait_with_output()).await {
        Ok(Ok(out)) => Ok(ToolOutput {
            code: out.status.code(),
            stdout: out.stdout,
            stderr: out.stderr,
        }),
        Ok(Err(e)) => Err(CollectError::Tool {
            tool,
            message: format!("waiting for {}: {e}", program.display()),
        }),
        Err(_) => Err(CollectError::Tool {
            tool,
            message: format!(
                "{} {} did not finish within {limit:?}",
                program.display(),
                args.join(" ")
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_and_times_out() {
        let sh = find("sh").expect("sh in PATH");
        let out = run(
            "sh",
            &sh,
            &["-c", "echo hi; exit 3"],
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, b"hi\n");
        let err = run("sh", &sh, &["-c", "sleep 5"], Duration::from_millis(100))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("did not finish"));
        assert!(find("no-such-tool-anneal").is_none());
    }
}
