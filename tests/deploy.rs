//! The ways to run perch for real, checked: the systemd unit (`deploy/perch.service`)
//! passes `systemd-analyze verify` and keeps its sandbox; the container's config
//! (`deploy/perch.toml`) passes `perch check` with its secrets, is refused without them,
//! and serves `/healthz` off loopback with `/api` behind the token; the `Dockerfile`
//! passes hadolint and stubs every target Cargo.toml declares; both compose files pass
//! `docker-compose config` and demand their secrets, and the replicas' config runs two
//! replicas on one PostgreSQL, behind Caddy with the compose file's Caddyfile.
//!
//! `systemd-analyze`, `hadolint`, `docker-compose` and `caddy` are outside tools: where
//! one is missing a test says so and passes, except under `CI`, where it fails (`.ci/run`
//! installs them all).

use perch::testing::{ChildPerch, free_port, wait_healthy};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

const ADMIN_TOKEN: &str = "deploy-test-admin-token";
const EVENTS_SECRET: &str = "deploy-test-events-secret";
/// `perch user add admin --role admin` of "correct-horse-battery".
const ADMIN_PASSWORD_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$o1CVOkcLwq2/RUz/WFRIgA$3uzpqnsPjIsixAKAKS0CZdbUV8fSSupshOT2+gBmIJ8";

fn repo_file(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn read_repo_file(path: &str) -> String {
    std::fs::read_to_string(repo_file(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The outside tool `name` (or the path in `$env_var`), or `None` after saying why the
/// test is skipped. Under `CI` a missing tool fails the test.
fn outside_tool(name: &str, env_var: &str) -> Option<PathBuf> {
    let found = std::env::var_os(env_var).map(PathBuf::from).or_else(|| {
        std::env::var_os("PATH").and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|dir| dir.join(name))
                .find(|candidate| candidate.is_file())
        })
    });
    match found {
        Some(path) => Some(path),
        None if std::env::var_os("CI").is_none() => {
            eprintln!("SKIPPED (not under CI): `{name}` is not installed (or set {env_var})");
            None
        }
        None => panic!("CI must have `{name}` (.ci/run installs it); set {env_var} or PATH"),
    }
}

// ---------------------------------------------------------------------------------
// The systemd unit

/// What `systemd-analyze verify` says about `unit_text` saved as `perch.service`: every
/// line it prints is a finding (it exits 0 on unknown keys and bad values, which it only
/// warns about and ignores). `Err` when the tool itself failed.
fn verify_unit(analyze: &Path, unit_text: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().unwrap();
    let unit = dir.path().join("perch.service");
    std::fs::write(&unit, unit_text).unwrap();
    let out = Command::new(analyze)
        .args(["verify", "--man=no"])
        .arg(&unit)
        .output()
        .expect("systemd-analyze runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(said)
    } else {
        Err(format!("exit {}: {said}", out.status))
    }
}

/// The shipped unit with its binary path pointed at the perch this test built (verify
/// checks that ExecStart and ExecStartPre name an executable file).
fn unit_with_built_binary() -> String {
    let unit = read_repo_file("deploy/perch.service");
    assert!(
        unit.contains("/usr/local/bin/perch"),
        "the unit runs /usr/local/bin/perch"
    );
    unit.replace("/usr/local/bin/perch", env!("CARGO_BIN_EXE_perch"))
}

#[test]
fn the_unit_passes_systemd_analyze_verify_without_a_finding() {
    let Some(analyze) = outside_tool("systemd-analyze", "SYSTEMD_ANALYZE") else {
        return;
    };
    let findings = verify_unit(&analyze, &unit_with_built_binary()).unwrap();
    assert_eq!(findings.trim(), "", "systemd-analyze verify found problems");
}

/// The check above can fail: a misspelled key, an unknown syscall group and a missing
/// binary are each reported.
#[test]
fn systemd_analyze_verify_reports_a_broken_unit() {
    let Some(analyze) = outside_tool("systemd-analyze", "SYSTEMD_ANALYZE") else {
        return;
    };
    let unit = unit_with_built_binary();
    let misspelled = unit.replace("ProtectSystem=strict", "ProtectSystm=strict");
    let findings = verify_unit(&analyze, &misspelled).unwrap();
    assert!(findings.contains("ProtectSystm"), "{findings}");

    let bad_group = unit.replace(
        "SystemCallFilter=@system-service",
        "SystemCallFilter=@system-servic",
    );
    let findings = verify_unit(&analyze, &bad_group).unwrap();
    assert!(findings.contains("@system-servic"), "{findings}");

    let no_binary = unit.replace(env!("CARGO_BIN_EXE_perch"), "/nonexistent/perch");
    let said = match verify_unit(&analyze, &no_binary) {
        Ok(findings) | Err(findings) => findings,
    };
    assert!(said.contains("/nonexistent/perch"), "{said}");
}

/// The sandbox is the point of the unit: each setting must stay, with its value.
#[test]
fn the_unit_keeps_its_sandbox_and_checks_the_config_first() {
    let unit = read_repo_file("deploy/perch.service");
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    for setting in [
        "ExecStartPre=/usr/local/bin/perch check --config /etc/perch/perch.toml",
        "ExecStart=/usr/local/bin/perch serve --config /etc/perch/perch.toml",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=perch",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=",
        "RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter=@system-service",
        "MemoryDenyWriteExecute=yes",
    ] {
        assert!(
            lines.contains(&setting),
            "deploy/perch.service lacks `{setting}`"
        );
    }
}

// ---------------------------------------------------------------------------------
// The container's config

/// `deploy/perch.toml` as it is in the image, with the image's paths moved to this
/// checkout's cards and a temporary data dir, and `listen` on `port` (all interfaces,
/// as in the container).
fn container_config(dir: &Path, port: u16) -> PathBuf {
    image_config("deploy/perch.toml", dir, port)
}

/// The config file `file` as a container sees it, moved here as `container_config` does.
fn image_config(file: &str, dir: &Path, port: u16) -> PathBuf {
    let text = read_repo_file(file);
    for image_path in [
        "listen = \"0.0.0.0:8080\"",
        "data_dir = \"/data\"",
        "cards_dir = \"/usr/share/perch/cards\"",
    ] {
        assert!(text.contains(image_path), "{file} has {image_path}");
    }
    let text = text
        .replace("0.0.0.0:8080", &format!("0.0.0.0:{port}"))
        .replace(
            "\"/data\"",
            &format!("\"{}\"", dir.join("data").to_str().unwrap()),
        )
        .replace(
            "\"/usr/share/perch/cards\"",
            &format!("\"{}\"", repo_file("cards").to_str().unwrap()),
        );
    let path = dir.join("perch.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `perch <args>` with the container's secrets set as `env` says (name, value).
fn perch_with_env(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_perch"));
    cmd.args(args)
        .env_remove("PERCH_ADMIN_TOKEN")
        .env_remove("PERCH_EVENTS_SECRET")
        .env_remove("PERCH_ADMIN_PASSWORD_HASH")
        .env_remove("DATABASE_URL")
        .env_remove("PERCH_CONFIG");
    for (name, value) in env {
        cmd.env(name, value);
    }
    cmd
}

#[test]
fn the_container_config_passes_check_with_its_secrets_and_names_each_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = container_config(dir.path(), 8080);
    let config = config.to_str().unwrap();
    let secrets = [
        ("PERCH_ADMIN_TOKEN", ADMIN_TOKEN),
        ("PERCH_EVENTS_SECRET", EVENTS_SECRET),
        ("PERCH_ADMIN_PASSWORD_HASH", ADMIN_PASSWORD_HASH),
    ];

    let out = perch_with_env(&["check", "--config", config], &secrets)
        .output()
        .unwrap();
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "perch check failed: {said}");
    assert!(said.contains("is valid"), "{said}");
    assert!(!said.contains(ADMIN_TOKEN) && !said.contains(EVENTS_SECRET));

    for (missing, _) in secrets {
        let others: Vec<_> = secrets
            .iter()
            .copied()
            .filter(|(n, _)| *n != missing)
            .collect();
        let out = perch_with_env(&["check", "--config", config], &others)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "check passed without {missing}");
        assert!(
            stderr.contains(missing),
            "the error names {missing}: {stderr}"
        );
        assert!(!dir.path().join("data").exists(), "check wrote nothing");
    }
}

/// What the image's HEALTHCHECK and a reverse proxy rely on: off loopback, perch serves
/// `/healthz` to anyone and `/api` only with the admin token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_container_config_serves_healthz_and_guards_the_api() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = container_config(dir.path(), port);
    let _perch = ChildPerch(
        perch_with_env(
            &["serve", "--config", config.to_str().unwrap()],
            &[
                ("PERCH_ADMIN_TOKEN", ADMIN_TOKEN),
                ("PERCH_EVENTS_SECRET", EVENTS_SECRET),
                ("PERCH_ADMIN_PASSWORD_HASH", ADMIN_PASSWORD_HASH),
                ("RUST_LOG", "warn"),
            ],
        )
        .stdout(Stdio::null())
        .spawn()
        .expect("perch starts"),
    );
    let base = format!("http://127.0.0.1:{port}");
    wait_healthy(&base).await;

    let health = reqwest::get(format!("{base}/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.text().await.unwrap(), r#"{"status":"ok"}"#);

    let client = reqwest::Client::new();
    let anonymous = client
        .get(format!("{base}/api/status"))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
    let admin = client
        .get(format!("{base}/api/status"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), 200);
    assert!(dir.path().join("data").is_dir(), "the store is in data_dir");
}

// ---------------------------------------------------------------------------------
// The compose files

/// `docker-compose config` on `file` with `env` set: (success, what it said).
fn compose_config(compose: &Path, file: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(compose);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["-f", file, "config"])
        .env_remove("PERCH_ADMIN_TOKEN")
        .env_remove("PERCH_EVENTS_SECRET")
        .env_remove("PERCH_ADMIN_PASSWORD_HASH")
        .env_remove("POSTGRES_PASSWORD");
    for (name, value) in env {
        cmd.env(name, value);
    }
    let out = cmd.output().expect("docker-compose runs");
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), said)
}

/// Both compose files are valid compose (no Docker daemon or image is needed to check
/// that), have the services the README names, and refuse to start without each secret.
#[test]
fn the_compose_files_are_valid_and_demand_each_secret() {
    let Some(compose) = outside_tool("docker-compose", "DOCKER_COMPOSE") else {
        return;
    };
    let secrets = [
        ("PERCH_ADMIN_TOKEN", ADMIN_TOKEN),
        ("PERCH_EVENTS_SECRET", EVENTS_SECRET),
        ("PERCH_ADMIN_PASSWORD_HASH", ADMIN_PASSWORD_HASH),
        ("POSTGRES_PASSWORD", "deploy-test-db-password"),
    ];
    for (file, services, needs) in [
        ("compose.yaml", &["perch"][..], &secrets[..3]),
        (
            "deploy/compose.replicas.yaml",
            &["db", "perch-a", "perch-b", "proxy"][..],
            &secrets[..],
        ),
    ] {
        let (ok, said) = compose_config(&compose, file, needs);
        assert!(ok, "{file}: {said}");
        for service in services {
            assert!(
                said.contains(&format!("  {service}:")),
                "{file} has {service}: {said}"
            );
        }
        for (missing, _) in needs {
            let others: Vec<_> = needs
                .iter()
                .copied()
                .filter(|(n, _)| n != missing)
                .collect();
            let (ok, said) = compose_config(&compose, file, &others);
            assert!(!ok, "{file} is valid without {missing}");
            assert!(
                said.contains(missing),
                "{file}: the error names {missing}: {said}"
            );
        }
    }
}

/// The secrets and database the replicas compose file gives each replica.
fn replica_env(url: &str) -> [(&str, &str); 5] {
    [
        ("PERCH_ADMIN_TOKEN", ADMIN_TOKEN),
        ("PERCH_EVENTS_SECRET", EVENTS_SECRET),
        ("PERCH_ADMIN_PASSWORD_HASH", ADMIN_PASSWORD_HASH),
        ("DATABASE_URL", url),
        ("RUST_LOG", "warn"),
    ]
}

/// Two perch processes from `deploy/perch.replicas.toml`, each with its own data dir
/// (kept in `dirs`), on the database at `url`, as the compose file's `perch-a` and
/// `perch-b`: the processes and their base URLs, healthy.
async fn start_replicas(
    url: &str,
    dirs: &[tempfile::TempDir; 2],
) -> (Vec<ChildPerch>, Vec<String>) {
    let mut replicas = Vec::new();
    let mut bases = Vec::new();
    for dir in dirs {
        let port = free_port();
        let config = image_config("deploy/perch.replicas.toml", dir.path(), port);
        replicas.push(ChildPerch(
            perch_with_env(
                &["serve", "--config", config.to_str().unwrap()],
                &replica_env(url),
            )
            .stdout(Stdio::null())
            .spawn()
            .expect("perch starts"),
        ));
        bases.push(format!("http://127.0.0.1:{port}"));
    }
    for base in &bases {
        wait_healthy(base).await;
    }
    (replicas, bases)
}

/// An internal system's signed event, delivery `id`, posted to `base`: perch's answer.
async fn post_event(base: &str, id: &str) -> serde_json::Value {
    match post_event_once(base, id).await {
        Some(answer) => answer,
        None => panic!("{base} did not acknowledge {id}"),
    }
}

/// `post_event`, once: `None` for anything but a 2xx (a platform would send it again).
async fn post_event_once(base: &str, id: &str) -> Option<serde_json::Value> {
    let body = format!(r#"{{"build":"shop#{id}","state":"failed"}}"#);
    let resp = reqwest::Client::new()
        .post(format!("{base}/hooks/events"))
        .header("Content-Type", "application/json")
        .header("X-Perch-Topic", "ci.build.failed")
        .header("X-Perch-Delivery", id)
        .header(
            "X-Perch-Signature",
            format!(
                "sha256={}",
                perch::testing::sign(EVENTS_SECRET, body.as_bytes())
            ),
        )
        .body(body)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}

/// The ids of the events `base` lists, newest first.
async fn listed_events(base: &str) -> Vec<serde_json::Value> {
    let listed: serde_json::Value = reqwest::Client::new()
        .get(format!("{base}/api/events?limit=10"))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    listed["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"]["id"].clone())
        .collect()
}

/// `deploy/perch.replicas.toml` as the replicas compose file runs it, minus Docker: two
/// perch processes from the same file, each with its own data dir, on one PostgreSQL
/// (`DATABASE_URL`). An event acknowledged by one is the other's too, and the platform's
/// retry that lands on the other is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_config_runs_two_replicas_on_one_database() {
    let Some(url) = perch::testing::test_database_url().await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (_replicas, bases) = start_replicas(&url, &dirs).await;

    let first = post_event(&bases[0], "delivery-1").await;
    assert_eq!(first["duplicate"], false, "{first}");
    let again = post_event(&bases[1], "delivery-1").await;
    assert_eq!(
        again["duplicate"], true,
        "the retry on the other replica: {again}"
    );
    assert_eq!(again["event_id"], first["event_id"]);
    for base in &bases {
        assert_eq!(
            listed_events(base).await,
            [first["event_id"].clone()],
            "{base}"
        );
    }
}

/// The whole replicas topology of `deploy/compose.replicas.yaml` but the images: the two
/// replicas behind Caddy running `deploy/Caddyfile.replicas` (the upstreams' names and
/// the listen port moved to this machine, Caddy's admin endpoint off so tests can run
/// side by side). Requests through the proxy are acknowledged once, and with one replica
/// killed the proxy carries on with the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_replicas_run_behind_their_caddyfile() {
    let Some(caddy) = outside_tool("caddy", "CADDY") else {
        return;
    };
    let Some(url) = perch::testing::test_database_url().await else {
        return;
    };
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let (mut replicas, bases) = start_replicas(&url, &dirs).await;

    let caddyfile = read_repo_file("deploy/Caddyfile.replicas");
    for name in [":80 {", "perch-a:8080", "perch-b:8080"] {
        assert!(
            caddyfile.contains(name),
            "deploy/Caddyfile.replicas has {name}"
        );
    }
    let proxy_port = free_port();
    let caddyfile = format!(
        "{{\n\tadmin off\n}}\n{}",
        caddyfile
            // `:80` is plain HTTP to Caddy; another port needs the scheme said.
            .replace(":80 {", &format!("http://127.0.0.1:{proxy_port} {{"))
            .replace("perch-a:8080", bases[0].trim_start_matches("http://"))
            .replace("perch-b:8080", bases[1].trim_start_matches("http://"))
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("Caddyfile");
    std::fs::write(&path, caddyfile).unwrap();
    let _caddy = ChildPerch(
        Command::new(caddy)
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&path)
            .env("HOME", dir.path())
            .env("XDG_DATA_HOME", dir.path())
            .env("XDG_CONFIG_HOME", dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("caddy starts"),
    );
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    // Up, and reaching a replica (a 502 until Caddy's first health checks pass).
    perch::testing::eventually(20, "perch answers through Caddy", || async {
        let resp = reqwest::get(format!("{proxy}/healthz")).await.ok()?;
        resp.status().is_success().then_some(())
    })
    .await;

    let first = post_event(&proxy, "through-1").await;
    assert_eq!(first["duplicate"], false, "{first}");
    assert_eq!(post_event(&proxy, "through-1").await["duplicate"], true);

    // perch-a is gone (kill -9). A request Caddy had on a pooled connection to it may
    // get a 502 (Caddy 2.6 retries a failed connect on the other upstream, not a POST
    // whose body it already sent); the platform sends it again, as platforms do, and
    // it lands on perch-b. Each event is acknowledged as new exactly once.
    let _ = replicas[0].0.kill();
    let _ = replicas[0].0.wait();
    for n in 2..=4 {
        let id = format!("through-{n}");
        let answer = perch::testing::eventually(10, &format!("{id} acknowledged"), || async {
            post_event_once(&proxy, &id).await
        })
        .await;
        assert_eq!(answer["duplicate"], false, "{id}: {answer}");
    }
    assert_eq!(listed_events(&bases[1]).await.len(), 4);
}

// ---------------------------------------------------------------------------------
// The Dockerfile

#[test]
fn the_dockerfile_passes_hadolint() {
    let Some(hadolint) = outside_tool("hadolint", "HADOLINT") else {
        return;
    };
    let out = Command::new(hadolint)
        .arg(repo_file("Dockerfile"))
        .output()
        .expect("hadolint runs");
    assert!(
        out.status.success(),
        "hadolint: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The dependency layer builds with stub sources before the real ones are copied: cargo
/// refuses a manifest whose `[[bench]]` file is missing, so each needs its stub.
#[test]
fn the_dockerfile_stubs_every_bench_target_and_copies_what_it_needs() {
    let dockerfile = read_repo_file("Dockerfile");
    let manifest: toml::Table = read_repo_file("Cargo.toml").parse().unwrap();
    let benches = manifest
        .get("bench")
        .and_then(|b| b.as_array())
        .cloned()
        .unwrap_or_default();
    for bench in benches {
        let name = bench["name"].as_str().unwrap();
        let stub = format!("> benches/{name}.rs");
        assert!(dockerfile.contains(&stub), "the Dockerfile lacks `{stub}`");
    }
    let ignored = read_repo_file(".dockerignore");
    for needed in [
        "Cargo.toml",
        "Cargo.lock",
        "src",
        "bots",
        "connectors",
        "cards",
        "benches",
        "deploy",
    ] {
        assert!(repo_file(needed).exists(), "{needed} exists");
        assert!(
            !ignored
                .lines()
                .any(|l| l.trim().trim_end_matches('/') == needed),
            ".dockerignore leaves out {needed}, which the build needs"
        );
    }
    assert!(
        ignored.lines().any(|l| l.trim() == ".env"),
        ".env (secrets) stays out of the build context"
    );
}
