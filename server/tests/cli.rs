//! The `anneal` operator CLI, run as a real process against a server on loopback.

use std::process::Command;

use anneal_server::config::{Config, ServeArgs};
use anneal_server::identity::Evidence;
use anneal_server::store::{EnrollInput, EnrollOutcome, SignedCert};
use anneal_shared::inventory::{Cpu, Inventory, Memory, System};
use anneal_shared::protocol::{IdentityHints, Nic};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

fn anneal(dir: &std::path::Path, server: &str, args: &[&str]) -> Out {
    let out = Command::new(env!("CARGO_BIN_EXE_anneal"))
        .args(args)
        .env("ANNEAL_SERVER", server)
        .env("ANNEAL_DATA_DIR", dir)
        .env_remove("ANNEAL_TOKEN")
        .env_remove("ANNEAL_CA")
        .output()
        .expect("run anneal");
    Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_cli_lists_shows_approves_and_reports_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (running, url) = start_server(dir.path(), true).await;
    let d = dir.path().to_path_buf();

    let empty = tokio::task::spawn_blocking({
        let (d, url) = (d.clone(), url.clone());
        move || anneal(&d, &url, &["machines", "ls"])
    })
    .await
    .unwrap();
    assert!(empty.ok, "{}", empty.stderr);
    assert!(empty.stdout.contains("no machines yet"));

    // A token through the CLI, then a machine enrolled with it (straight into the store).
    let created = tokio::task::spawn_blocking({
        let (d, url) = (d.clone(), url.clone());
        move || {
            anneal(
                &d,
                &url,
                &[
                    "tokens", "create", "--uses", "2", "--ttl", "10m", "-o", "json",
                ],
            )
        }
    })
    .await
    .unwrap();
    assert!(created.ok, "{}", created.stderr);
    let token: serde_json::Value = serde_json::from_str(&created.stdout).unwrap();
    let secret = token["token"].as_str().unwrap().to_string();
    assert_eq!(token["uses_left"], 2);

    let hints = IdentityHints {
        system_uuid: Some("8d2f1e2a-1b3c-4d5e-8f60-718293a4b5c6".into()),
        system_serial: Some("CLI-SRV-1".into()),
        product: Some("Rack Server A".into()),
        macs: vec![Nic {
            mac: "00:1b:21:ab:cd:ef".into(),
            bus: Some("pci".into()),
        }],
        ..Default::default()
    };
    let machine_id = enroll_in_store(&running, &secret, hints, true).await;
    let inv = Inventory {
        system: Some(System {
            manufacturer: Some("Anneal Test".into()),
            product: Some("Rack Server A".into()),
            serial: Some("CLI-SRV-1".into()),
            ..Default::default()
        }),
        cpu: Some(Cpu {
            logical_cpus: 4,
            ..Default::default()
        }),
        memory: Some(Memory {
            total_bytes: 2 << 30,
            ..Default::default()
        }),
        ..Default::default()
    };
    running
        .app
        .store
        .put_inventory(machine_id, &inv, time::OffsetDateTime::now_utc())
        .await
        .unwrap();

    let run = |args: Vec<String>| {
        let (d, url) = (d.clone(), url.clone());
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            anneal(&d, &url, &a)
        })
    };
    let ls = run(vec!["machines".into(), "ls".into()]).await.unwrap();
    assert!(ls.ok, "{}", ls.stderr);
    assert!(ls.stdout.starts_with("ID"), "{}", ls.stdout);
    assert!(
        ls.stdout.contains("CLI-SRV-1") && ls.stdout.contains("pending"),
        "{}",
        ls.stdout
    );
    assert!(ls.stdout.contains("2.0 GiB"), "{}", ls.stdout);

    let yaml = run(vec![
        "machines".into(),
        "ls".into(),
        "-o".into(),
        "yaml".into(),
    ])
    .await
    .unwrap();
    assert!(yaml.stdout.contains("serial: CLI-SRV-1"), "{}", yaml.stdout);

    let prefix = machine_id.to_string()[..8].to_string();
    let show = run(vec!["machines".into(), "show".into(), prefix.clone()])
        .await
        .unwrap();
    assert!(show.ok, "{}", show.stderr);
    assert!(
        show.stdout.contains("Rack Server A") && show.stdout.contains("4 x"),
        "{}",
        show.stdout
    );

    let approve = run(vec!["machines".into(), "approve".into(), prefix.clone()])
        .await
        .unwrap();
    assert!(
        approve.ok && approve.stdout.contains("approved"),
        "{}{}",
        approve.stdout,
        approve.stderr
    );
    let again = run(vec!["machines".into(), "approve".into(), prefix])
        .await
        .unwrap();
    assert!(!again.ok, "approving twice fails");
    assert!(
        again.stderr.contains("not pending") && again.stderr.contains("409"),
        "{}",
        again.stderr
    );

    let missing = run(vec!["machines".into(), "show".into(), "ffffffff".into()])
        .await
        .unwrap();
    assert!(
        !missing.ok && missing.stderr.contains("no machine id starts with"),
        "{}",
        missing.stderr
    );

    let wrong = run(vec![
        "machines".into(),
        "ls".into(),
        "--token".into(),
        "anl_api_wrong".into(),
    ])
    .await
    .unwrap();
    assert!(
        !wrong.ok && wrong.stderr.contains("unknown API token"),
        "{}",
        wrong.stderr
    );

    let unreachable = run(vec![
        "machines".into(),
        "ls".into(),
        "--server".into(),
        "https://127.0.0.1:1".into(),
    ])
    .await
    .unwrap();
    assert!(
        !unreachable.ok && unreachable.stderr.contains("cannot reach the server"),
        "{}",
        unreachable.stderr
    );

    // Workflow content as code, then a workflow on the machine.
    let good = dir.path().join("content");
    std::fs::create_dir_all(good.join("tasks")).unwrap();
    std::fs::write(
        good.join("tasks/hello.yaml"),
        "kind: param\nname: greeting\ntype: string\ndefault: hi\n---\n\
         kind: task\nname: hello\nscript: echo {{ params[\"greeting\"] }}\nparams: [greeting]\n",
    )
    .unwrap();
    std::fs::write(
        good.join("workflows.yml"),
        "kind: stage\nname: greet\nboot_env: discovery\ntasks: [hello]\n---\n\
         kind: workflow\nname: greet\nstages: [greet, local-boot]\n",
    )
    .unwrap();
    let arg = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let good_s = good.display().to_string();
    let dry = run(arg(&["apply", "-f", &good_s, "--dry-run"]))
        .await
        .unwrap();
    assert!(dry.ok, "{}", dry.stderr);
    assert!(
        dry.stdout.contains("workflow greet") && dry.stdout.contains("would be created"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout
            .contains("dry run: nothing changed (content version 0)"),
        "{}",
        dry.stdout
    );
    let applied = run(arg(&["apply", "-f", &good_s])).await.unwrap();
    assert!(applied.ok, "{}", applied.stderr);
    assert!(
        applied.stdout.contains("content version 1"),
        "{}",
        applied.stdout
    );
    let again = run(arg(&["apply", "-f", &good_s])).await.unwrap();
    assert!(
        again.stdout.contains("unchanged") && again.stdout.contains("content version 1"),
        "{}",
        again.stdout
    );

    let bad = dir.path().join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(
        bad.join("tasks.yaml"),
        "kind: task\nname: wipe\nscript: 'true'\ntimout_secs: 5\n---\nkind: stage\nname: s\nboot_env: nowhere\n",
    )
    .unwrap();
    let refused = run(arg(&["apply", "-f", &bad.display().to_string()]))
        .await
        .unwrap();
    assert!(!refused.ok, "invalid content is refused");
    assert!(
        refused.stderr.contains("bad/tasks.yaml") && refused.stderr.contains("timout_secs"),
        "{}",
        refused.stderr
    );

    let workflows = run(arg(&["workflows", "ls"])).await.unwrap();
    assert!(workflows.ok, "{}", workflows.stderr);
    assert!(
        workflows.stdout.contains("greet → local-boot"),
        "{}",
        workflows.stdout
    );
    assert!(
        workflows.stdout.contains("built-in"),
        "{}",
        workflows.stdout
    );

    let id = machine_id.to_string();
    let set = run(arg(&["machines", "set-workflow", &id, "greet"]))
        .await
        .unwrap();
    assert!(set.ok, "{}", set.stderr);
    assert!(
        set.stdout.contains("phase    booting") && set.stdout.contains("into `discovery`"),
        "{}",
        set.stdout
    );
    let unknown = run(arg(&["machines", "set-workflow", &id, "nope"]))
        .await
        .unwrap();
    assert!(
        !unknown.ok && unknown.stderr.contains("no such workflow"),
        "{}",
        unknown.stderr
    );
    let cancel = run(arg(&["machines", "workflow", &id, "cancel"]))
        .await
        .unwrap();
    assert!(
        cancel.stdout.contains("phase    cancelled"),
        "{}{}",
        cancel.stdout,
        cancel.stderr
    );
    let jobs = run(arg(&["jobs", "ls", "--machine", &id[..8]]))
        .await
        .unwrap();
    assert!(jobs.ok, "{}", jobs.stderr);

    // The machine's own param values: set, shown with where each comes from, refused when
    // they do not fit the param's definition.
    let set = run(arg(&["machines", "params", &id, "set", "greeting=howdy"]))
        .await
        .unwrap();
    assert!(set.ok, "{}", set.stderr);
    assert!(
        set.stdout.contains("greeting  howdy  machine"),
        "{}",
        set.stdout
    );
    let wrong = run(arg(&["machines", "params", &id, "set", "greeting=7"]))
        .await
        .unwrap();
    assert!(
        !wrong.ok && wrong.stderr.contains("\"greeting\": expected string, got"),
        "{}",
        wrong.stderr
    );
    let unset = run(arg(&[
        "machines", "params", &id, "unset", "greeting", "-o", "json",
    ]))
    .await
    .unwrap();
    assert!(unset.ok, "{}", unset.stderr);
    let view: serde_json::Value = serde_json::from_str(&unset.stdout).unwrap();
    assert_eq!(view["resolved"]["greeting"]["source"], "default", "{view}");

    running.stop().await;
}

/// A server on loopback for a CLI test, with its data directory and API URL.
async fn start_server(
    dir: &std::path::Path,
    require_approval: bool,
) -> (anneal_server::serve::Running, String) {
    let config = Config::resolve(&ServeArgs {
        data_dir: Some(dir.to_path_buf()),
        api_listen: Some("127.0.0.1:0".parse().unwrap()),
        agent_listen: Some("127.0.0.1:0".parse().unwrap()),
        http_listen: Some("127.0.0.1:0".parse().unwrap()),
        advertise: Some(vec!["127.0.0.1".into()]),
        require_approval: Some(require_approval),
        ..Default::default()
    })
    .unwrap();
    let running = anneal_server::serve::start(config).await.unwrap();
    let url = format!("https://127.0.0.1:{}", running.api_addr.port());
    (running, url)
}

/// Enroll a machine with a bootstrap token's secret, straight into the store.
async fn enroll_in_store(
    running: &anneal_server::serve::Running,
    secret: &str,
    hints: IdentityHints,
    require_approval: bool,
) -> uuid::Uuid {
    let input = EnrollInput {
        token_hash: anneal_server::tokens::hash_secret(secret),
        evidence: Evidence::from_hints(&hints),
        macs: hints.macs.iter().map(|n| n.mac.clone()).collect(),
        hints,
        boot_id: "b".into(),
        hostname: Some("node-1".into()),
        require_approval,
        now: time::OffsetDateTime::now_utc(),
    };
    let sign = |_id| {
        Ok(SignedCert {
            cert_pem: String::new(),
            serial: uuid::Uuid::new_v4().simple().to_string(),
            not_after: time::OffsetDateTime::now_utc(),
        })
    };
    let EnrollOutcome::Enrolled { machine_id, .. } =
        running.app.store.enroll(&input, &sign).await.unwrap()
    else {
        panic!("enroll")
    };
    machine_id
}

/// Enroll machine `n` with a bootstrap token's secret, straight into the store, and store an
/// inventory naming `product` with `disks` disks.
async fn enroll_with_inventory(
    running: &anneal_server::serve::Running,
    secret: &str,
    n: u8,
    product: &str,
    disks: usize,
) -> uuid::Uuid {
    let hints = IdentityHints {
        system_serial: Some(format!("FLEET-{n}")),
        macs: vec![Nic {
            mac: format!("00:1b:21:ab:cd:{n:02x}"),
            bus: Some("pci".into()),
        }],
        ..Default::default()
    };
    let machine_id = enroll_in_store(running, secret, hints, false).await;
    let inv = Inventory {
        system: Some(System {
            product: Some(product.into()),
            ..Default::default()
        }),
        disks: vec![Default::default(); disks],
        ..Default::default()
    };
    let now = time::OffsetDateTime::now_utc();
    running
        .app
        .store
        .put_inventory(machine_id, &inv, now)
        .await
        .unwrap();
    machine_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_commands_tag_locate_select_claim_and_assign_in_bulk() {
    let dir = tempfile::tempdir().unwrap();
    let (running, url) = start_server(dir.path(), false).await;
    let run = |args: &[&str]| {
        let (d, url) = (dir.path().to_path_buf(), url.clone());
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            anneal(&d, &url, &a)
        })
    };
    let secret = |out: Out| -> String {
        assert!(out.ok, "{}", out.stderr);
        let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
        v["token"].as_str().unwrap().to_string()
    };
    let plain = secret(run(&["tokens", "create", "-o", "json"]).await.unwrap());
    let new = run(&["tokens", "create", "--new", "-o", "json"])
        .await
        .unwrap();
    assert!(new.stdout.contains("\"new\": true"), "{}", new.stdout);
    let new = secret(new);
    let web = enroll_with_inventory(&running, &plain, 1, "PowerEdge R650", 2).await;
    let fresh = enroll_with_inventory(&running, &new, 2, "ProLiant", 1).await;
    let (web_s, fresh_s) = (web.to_string(), fresh.to_string());

    let content = dir.path().join("content.yaml");
    std::fs::write(
        &content,
        "kind: task\nname: wipe-disks\nscript: 'true'\ndestructive: true\n---\n\
         kind: stage\nname: wipe\nboot_env: discovery\ntasks: [wipe-disks]\n---\n\
         kind: workflow\nname: wipe\nstages: [wipe, local-boot]\n",
    )
    .unwrap();
    let applied = run(&["apply", "-f", &content.display().to_string()])
        .await
        .unwrap();
    assert!(applied.ok, "{}", applied.stderr);

    // Tags (a leading `-` removes, and is not taken for a flag) and location.
    let tag = run(&["machines", "tag", &web_s[..8], "+web", "+old", "db"])
        .await
        .unwrap();
    assert!(
        tag.ok && tag.stdout.contains("tags db, old, web"),
        "{}{}",
        tag.stdout,
        tag.stderr
    );
    let tag = run(&["machines", "tag", &web_s, "-old", "-db"])
        .await
        .unwrap();
    assert!(
        tag.ok && tag.stdout.contains("tags web"),
        "{}{}",
        tag.stdout,
        tag.stderr
    );
    let bad = run(&["machines", "tag", &web_s, "+Bad Tag"]).await.unwrap();
    assert!(
        !bad.ok && bad.stderr.contains("must be lowercase") && bad.stderr.contains("400"),
        "{}",
        bad.stderr
    );
    let loc = run(&["machines", "locate", &web_s, "--rack", "r12", "--slot", "7"])
        .await
        .unwrap();
    assert!(loc.ok, "{}", loc.stderr);
    let none = run(&["machines", "locate", &web_s]).await.unwrap();
    assert!(
        !none.ok && none.stderr.contains("at least one of"),
        "{}",
        none.stderr
    );

    // Listing by selector, and what ls and show say.
    let ls = run(&["machines", "ls", "-l", "tag=web,disks>=2"])
        .await
        .unwrap();
    assert!(ls.ok, "{}", ls.stderr);
    assert!(
        ls.stdout.contains(&web_s) && !ls.stdout.contains(&fresh_s),
        "{}",
        ls.stdout
    );
    assert!(
        ls.stdout.contains("RACK/SLOT") && ls.stdout.contains("r12/7"),
        "{}",
        ls.stdout
    );
    let ls = run(&["machines", "ls", "--selector", "claim=new"])
        .await
        .unwrap();
    assert!(
        ls.stdout.contains(&fresh_s) && !ls.stdout.contains(&web_s),
        "{}",
        ls.stdout
    );
    let bad = run(&["machines", "ls", "-l", "disks>=two"]).await.unwrap();
    assert!(
        !bad.ok && bad.stderr.contains("term 1 `disks>=two`"),
        "{}",
        bad.stderr
    );
    let show = run(&["machines", "show", &web_s]).await.unwrap();
    assert!(show.stdout.contains("Tags      web"), "{}", show.stdout);
    assert!(show.stdout.contains("rack r12  slot 7"), "{}", show.stdout);
    assert!(show.stdout.contains("Claim     none"), "{}", show.stdout);

    // The destructive workflow by selector: refused until claimed; a dry run changes nothing.
    let all = "product!=nothing";
    let dry = run(&["machines", "set-workflow", "-l", all, "wipe", "--dry-run"])
        .await
        .unwrap();
    assert!(dry.ok, "{}", dry.stderr);
    assert!(
        dry.stdout
            .contains("wipe is destructive (tasks: wipe-disks)"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("would assign") && dry.stdout.contains("refused"),
        "{}",
        dry.stdout
    );
    assert!(
        dry.stdout.contains("1 of 2 machine(s) would get wipe"),
        "{}",
        dry.stdout
    );
    let claim = run(&["machines", "claim", &web_s]).await.unwrap();
    assert!(
        claim.ok && claim.stdout.contains("claimed"),
        "{}",
        claim.stderr
    );
    let bulk = run(&["machines", "set-workflow", "--selector", all, "wipe"])
        .await
        .unwrap();
    assert!(bulk.ok, "{}", bulk.stderr);
    assert!(
        bulk.stdout.contains("2 of 2 machine(s) got wipe"),
        "{}",
        bulk.stdout
    );
    // Both claims are used up; the single-machine form is refused now, naming the fix.
    let single = run(&["machines", "set-workflow", &fresh_s, "wipe"])
        .await
        .unwrap();
    assert!(
        !single.ok && single.stderr.contains("anneal machines claim"),
        "{}",
        single.stderr
    );
    let both = run(&["machines", "set-workflow", "-l", all, &web_s, "wipe"])
        .await
        .unwrap();
    assert!(
        !both.ok && both.stderr.contains("give only the workflow"),
        "{}",
        both.stderr
    );
    let unclaim = run(&["machines", "unclaim", &web_s]).await.unwrap();
    assert!(unclaim.ok, "{}", unclaim.stderr);
    running.stop().await;
}

/// `anneal watch` off a terminal prints one line (or JSON object) per event and stops after
/// `--count`; `anneal audit` lists the changes made, as a table and as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_events_and_audit_lists_changes() {
    let dir = tempfile::tempdir().unwrap();
    let (running, url) = start_server(dir.path(), false).await;
    let run = |args: Vec<String>| {
        let (d, url) = (dir.path().to_path_buf(), url.clone());
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            anneal(&d, &url, &a)
        })
    };
    let arg = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for description in ["first", "second"] {
        let made = run(arg(&["tokens", "create", "--description", description]))
            .await
            .unwrap();
        assert!(made.ok, "{}", made.stderr);
    }
    let start = format!("{}-0", running.app.events.epoch());

    let json = run(arg(&[
        "watch", "--since", &start, "--count", "2", "-o", "json",
    ]))
    .await
    .unwrap();
    assert!(json.ok, "{}", json.stderr);
    let events: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON event per line"))
        .collect();
    assert_eq!(events.len(), 2, "{}", json.stdout);
    assert!(events.iter().all(|e| e["kind"] == "token_created"));
    assert_eq!(events[1]["id"], format!("{}-2", running.app.events.epoch()));

    // Resuming after the first: only the second, as a line.
    let first = events[0]["id"].as_str().unwrap();
    let lines = run(arg(&["watch", "--since", first, "--count", "1"]))
        .await
        .unwrap();
    assert!(lines.ok, "{}", lines.stderr);
    assert_eq!(lines.stdout.lines().count(), 1, "{}", lines.stdout);
    assert!(lines.stdout.contains("token_created"), "{}", lines.stdout);
    assert!(
        lines.stdout.contains(events[1]["reason"].as_str().unwrap()),
        "names the token: {}",
        lines.stdout
    );

    let bad = run(arg(&["watch", "--kind", "bogus"])).await.unwrap();
    assert!(!bad.ok, "{}", bad.stdout);
    assert!(bad.stderr.contains("unknown event kind"), "{}", bad.stderr);

    let table = run(arg(&["audit"])).await.unwrap();
    assert!(table.ok, "{}", table.stderr);
    assert!(table.stdout.starts_with("WHEN"), "{}", table.stdout);
    assert_eq!(table.stdout.lines().count(), 3, "{}", table.stdout);
    assert!(
        table.stdout.contains("token.create") && table.stdout.contains("initial admin"),
        "{}",
        table.stdout
    );
    let audit = run(arg(&["audit", "--limit", "1", "-o", "json"]))
        .await
        .unwrap();
    assert!(audit.ok, "{}", audit.stderr);
    let entries: Vec<serde_json::Value> = serde_json::from_str(&audit.stdout).unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["after"]["description"], "second");
    assert!(entries[0]["actor"]["address"]
        .as_str()
        .is_some_and(|a| a.starts_with("127.0.0.1:")));
    running.stop().await;
}
