//! Helpers for workflow tests over loopback: content, and the operator API's workflow calls.

use anneal_shared::api::{JobAttempt, WorkflowRun};
use anneal_shared::content::{ContentObject, Stage, StageEnd, Task};

use crate::TestServer;

/// A task running `echo NAME`.
pub fn script_task(name: &str) -> ContentObject {
    ContentObject::Task(Task {
        name: name.into(),
        script: Some(format!("echo {name}")),
        timeout_secs: 60,
        ..Task::default()
    })
}

/// A stage with generous timeouts.
pub fn stage(name: &str, env: &str, tasks: &[&str], then: StageEnd) -> ContentObject {
    ContentObject::Stage(Stage {
        name: name.into(),
        boot_env: env.into(),
        tasks: tasks.iter().map(|t| t.to_string()).collect(),
        then,
        boot_timeout_secs: 600,
        deadline_secs: 3600,
        ..Stage::default()
    })
}

/// Assign a workflow through the API.
pub async fn assign(server: &TestServer, machine: uuid::Uuid, workflow: &str) -> WorkflowRun {
    let res = server
        .http()
        .put(format!(
            "{}/api/v1/machines/{machine}/workflow",
            server.api_url
        ))
        .bearer_auth(&server.admin_token)
        .json(&serde_json::json!({ "workflow": workflow }))
        .send()
        .await
        .expect("assign");
    assert_eq!(res.status(), 200);
    res.json().await.expect("run")
}

/// The machine's current run.
pub async fn run_of(server: &TestServer, machine: uuid::Uuid) -> WorkflowRun {
    server
        .http()
        .get(format!(
            "{}/api/v1/machines/{machine}/workflow",
            server.api_url
        ))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("run")
        .json()
        .await
        .expect("run json")
}

/// The machine's job attempts, newest first.
pub async fn jobs_of(server: &TestServer, machine: uuid::Uuid) -> Vec<JobAttempt> {
    server
        .http()
        .get(format!("{}/api/v1/jobs?machine={machine}", server.api_url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("jobs")
        .json()
        .await
        .expect("jobs json")
}

/// An attempt's whole log.
pub async fn log_of(server: &TestServer, attempt: uuid::Uuid) -> Vec<u8> {
    let res = server
        .http()
        .get(format!("{}/api/v1/jobs/{attempt}/log", server.api_url))
        .bearer_auth(&server.admin_token)
        .send()
        .await
        .expect("log");
    assert_eq!(res.status(), 200);
    res.bytes().await.expect("bytes").to_vec()
}

/// The one machine's id, once it has enrolled.
pub async fn wait_for_machine(server: &TestServer) -> uuid::Uuid {
    for _ in 0..200 {
        let list = server.api_get("/api/v1/machines").await;
        if let Some(id) = list[0]["id"].as_str() {
            return id.parse().expect("uuid");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("the agent never enrolled");
}

/// The real agent runner (`anneal-agent run`) for the QEMU machine captured in the agent's
/// fixture, after a PXE boot into discovery: it enrolls with the token of the script the
/// server served, then heartbeats and takes jobs. Its reboot command touches a file. Dropping
/// it stops the agent.
pub struct FixtureAgent {
    /// Exists once the agent ran its reboot command.
    pub rebooted: std::path::PathBuf,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl FixtureAgent {
    /// The fixture machine's boot MAC.
    pub const MAC: &'static str = "52:54:00:b0:00:01";

    /// Boot it into discovery and start its agent, with scripts under `work`.
    pub async fn boot(server: &TestServer, work: &std::path::Path) -> FixtureAgent {
        Self::boot_keeping(server, work, None).await
    }

    /// [`FixtureAgent::boot`], the agent keeping its key and certificate in `state` (the
    /// discovery image's `--state-dir`).
    pub async fn boot_keeping(
        server: &TestServer,
        work: &std::path::Path,
        state: Option<&std::path::Path>,
    ) -> FixtureAgent {
        let script = crate::pxe::machine_script(server, Self::MAC, "", "efi").await;
        let opts = anneal_agent::runner::RunOptions {
            state_dir: state.map(std::path::Path::to_path_buf),
            ..Default::default()
        };
        Self::spawn(server, work, &crate::pxe::token_of(&script), "boot-1", opts)
    }

    /// The same machine's installed OS: `anneal-agent run --installed` in boot `boot_id`,
    /// keeping its key and certificate in `state`, with `token` (may be empty) to enroll with
    /// when nothing kept is usable.
    pub fn installed(
        server: &TestServer,
        work: &std::path::Path,
        state: &std::path::Path,
        boot_id: &str,
        token: &str,
    ) -> FixtureAgent {
        let opts = anneal_agent::runner::RunOptions {
            state_dir: Some(state.to_path_buf()),
            installed: Some(anneal_shared::content::BOOTENV_INSTALLED.into()),
            ..Default::default()
        };
        Self::spawn(server, work, token, boot_id, opts)
    }

    fn spawn(
        server: &TestServer,
        work: &std::path::Path,
        token: &str,
        boot_id: &str,
        opts: anneal_agent::runner::RunOptions,
    ) -> FixtureAgent {
        use anneal_agent::runner::{run_with, JobOptions, RunConfig, RunOptions};
        let rebooted = work.join("rebooted");
        let cfg = RunConfig {
            url: server.api_url.clone(),
            ca_fingerprint: server.fingerprint(),
            token: token.into(),
            sysroot: std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../agent/tests/fixtures/uefi-virtio/root"),
            run_tools: false,
            lldp_listen: std::time::Duration::ZERO,
            boot_id: Some(boot_id.into()),
            once: false,
        };
        let opts = RunOptions {
            jobs: Some(JobOptions {
                work_dir: work.join("jobs"),
                reboot: vec!["touch".into(), rebooted.display().to_string()],
                power_off: vec!["false".into()],
            }),
            ..opts
        };
        let task = tokio::spawn(run_with(cfg, opts, anneal_agent::clock::Clock::system()));
        FixtureAgent {
            rebooted,
            task: Some(task),
        }
    }

    /// Wait up to `secs` for the reboot command to have run.
    pub async fn wait_for_reboot(&self, secs: u64) {
        for _ in 0..secs * 10 {
            if self.rebooted.exists() || self.is_finished() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Stop the agent (a crash, or the machine going down) and wait until it has stopped.
    pub async fn stop(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Wait up to `secs` for the agent to exit by itself; its result.
    pub async fn exited(mut self, secs: u64) -> anyhow::Result<()> {
        let task = self.task.take().expect("running");
        tokio::time::timeout(std::time::Duration::from_secs(secs), task)
            .await
            .expect("the agent exits")
            .expect("the agent task did not panic")
    }

    fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(|t| t.is_finished())
    }
}

impl Drop for FixtureAgent {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Apply `tasks` as the workflow `name`: one discovery stage `work` running them in order,
/// then the built-in local boot. Straight into the store (the API path is tested elsewhere).
pub async fn apply_work_then_local(server: &TestServer, name: &str, tasks: Vec<Task>) {
    let names: Vec<&str> = tasks.iter().map(|t| t.name.as_str()).collect();
    let mut objects = vec![stage("work", "discovery", &names, StageEnd::Continue)];
    objects.push(ContentObject::Workflow(anneal_shared::content::Workflow {
        name: name.into(),
        stages: vec!["work".into(), "local-boot".into()],
        ..Default::default()
    }));
    objects.extend(tasks.into_iter().map(ContentObject::Task));
    apply(server, &objects).await;
}

/// Apply `objects` as a new content version, straight into the store (the API path is tested
/// elsewhere); the version.
pub async fn apply(server: &TestServer, objects: &[ContentObject]) -> i64 {
    let out = server
        .running
        .app
        .store
        .apply_content(objects, &[])
        .await
        .expect("content applied");
    out.version
}
