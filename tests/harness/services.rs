//! Companion services against the strict fake docker: what `add-project` asks of a
//! service's image, the argv that makes a session's network and services (labels,
//! limits, capabilities, no published port), what `list` shows, and what goes when
//! the project does.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{Call, Rule, SpawnUser, TestEnv};

const IMAGE: &str = "podspawn-test:latest";
const SERVICE_IMAGE: &str = "pg-test:16";

/// A git repo in the tree holding `files`, committed.
fn git_repo(env: &TestEnv, files: &[(&str, &str)]) -> std::path::PathBuf {
    let repo = env.path("repo");
    std::fs::create_dir_all(&repo).unwrap();
    for (path, text) in files {
        std::fs::write(repo.join(path), text).unwrap();
    }
    for args in [
        &["init", "--quiet", "--initial-branch", "main"][..],
        &["add", "--all"],
        &["commit", "--quiet", "--message", "first"],
    ] {
        git(&repo, args);
    }
    repo
}

fn git(repo: &Path, args: &[&str]) {
    let status = Command::new("git")
        .arg("-C")
        .arg(repo)
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.org"])
        .args(args)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

const PODFILE: &str = "base: podspawn-test:latest\n\
     services:\n  - name: db\n    image: pg-test:16\n    ports: [5432]\n\
     \x20   env:\n      POSTGRES_PASSWORD: pw-${PODSPAWN_USER}\n\
     \x20   volumes: [data:/var/lib/db]\n\
     \x20   command: \"postgres -c 'fsync=off'\"\n";

/// A tree with project `api` added (its image built by the fake, the service's image
/// found), whose services answer within a second or not at all.
fn with_project() -> (TestEnv, SpawnUser) {
    let env = TestEnv::new();
    env.write_config(&format!(
        "defaults:\n  image: {IMAGE}\n  cpus: 2\n  memory: 1g\n  pids_limit: 200\n\
         services:\n  ready_timeout: 1s\n"
    ));
    let user = env.spawn_user();
    let repo = git_repo(&env, &[("podfile.yaml", PODFILE), ("README", "x\n")]);
    env.scenario(&[
        Rule::docker(&["image", "inspect", "--format", "{{.Id}}", "podspawn/api:*"])
            .stderr("Error: No such image: podspawn/api\n")
            .exit(1)
            .times(1),
        Rule::docker(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--opt",
            "com.docker.network.bridge.name=psb-*",
            "**",
        ]),
        Rule::docker(&["build", "**"]).stdout("Step 1/1 : FROM podspawn-test:latest\n"),
        Rule::docker(&["image", "inspect", "--format", "{{.Id}}", SERVICE_IMAGE]),
    ]);
    let added = env
        .podspawn(&["add-project", "api", "--repo", repo.to_str().unwrap()])
        .assert_success()
        .stdout();
    assert!(
        added.contains(&format!("  Service db ({SERVICE_IMAGE})... present\n")),
        "{added}"
    );
    // What root's add-project wrote in the tree is the spawn account's again (in
    // production the state is the docker group's).
    if crate::support::is_root() {
        let owner = format!("{}:{}", user.uid, user.gid);
        let status = Command::new("chown")
            .args(["-R", &owner])
            .args(["state", "fake-docker", "log"].map(|dir| env.path(dir)))
            .status()
            .unwrap();
        assert!(status.success());
    }
    (env, user)
}

/// `spawn --user NAME --project api`, as the user.
fn project_spawn<'a>(env: &'a TestEnv, user: &SpawnUser) -> crate::support::Invocation<'a> {
    env.invoke_as(user, &["spawn", "--user", &user.name, "--project", "api"])
}

fn runs(calls: &[Call]) -> Vec<&Call> {
    calls
        .iter()
        .filter(|call| call.subcommand() == "run")
        .collect()
}

#[test]
fn a_sessions_service_runs_beside_it_on_its_own_network_hardened_and_labelled() {
    let (env, user) = with_project();
    env.scenario(&[
        Rule::docker(&["network", "create", "**"]),
        Rule::docker(&["run", "**"]),
        Rule::docker(&["exec", "**"]).stdout("ran\n"),
    ]);
    project_spawn(&env, &user)
        .var("SSH_ORIGINAL_COMMAND", "echo ran")
        .run()
        .assert_success()
        .assert_stdout("ran\n")
        // Not answering on its port is the log's business, not the command's.
        .assert_stderr("");
    let calls = env.docker_calls();
    let container = format!("podspawn-{}-api", user.name);
    let network = format!("{container}.net");
    // (The build network, made for the project's image, comes first.)
    let create = calls
        .iter()
        .find(|call| call.argv[..2] == ["network", "create"] && call.flag("--subnet").is_some())
        .expect("the session's network");
    assert_eq!(create.argv.last().unwrap(), &network);
    // nobody (uid 65534): block 510 of 10.215.0.0/16, slot 1 (a project's first).
    assert_eq!(create.flag("--subnet"), Some("10.215.255.8/29"));
    let labels = create.flags("--label");
    assert_eq!(
        labels[..4],
        [
            "podspawn.managed=true",
            &format!("podspawn.installation={}", env.installation()),
            &format!("podspawn.user={}", user.name)[..],
            "podspawn.project=api"
        ]
    );
    assert!(labels[4].starts_with("podspawn.session=") && labels[4].len() > 20);

    let runs = runs(&calls);
    assert_eq!(runs.len(), 2, "the container and its service");
    let own = runs
        .iter()
        .find(|run| run.flag("--name") == Some(&container))
        .unwrap();
    assert_eq!(own.flag("--network"), Some(network.as_str()));
    assert_eq!(own.flag("--ip"), Some("10.215.255.10"));
    let db = runs
        .iter()
        .find(|run| run.flag("--name") == Some(&format!("{container}.db")))
        .unwrap();
    let argv = db.argv.join(" ");
    for expected in [
        "--hostname db",
        "--label podspawn.service=db",
        // Half the session's cpus, memory and pids.
        "--cpus 1 --memory 536870912 --memory-swap 536870912 --pids-limit 100",
        &format!(
            "--network {network} --sysctl net.ipv6.conf.all.disable_ipv6=1 --ip 10.215.255.11 --network-alias db"
        ),
        "--cap-drop ALL --cap-add CHOWN --cap-add DAC_OVERRIDE --cap-add FOWNER \
         --cap-add SETGID --cap-add SETUID --security-opt no-new-privileges",
        &format!("--env POSTGRES_PASSWORD=pw-{}", user.name),
        // The image's entrypoint stays; the command replaces its CMD, word by word.
        &format!("{SERVICE_IMAGE} postgres -c fsync=off"),
    ] {
        assert!(argv.contains(expected), "missing {expected:?} in {argv}");
    }
    let mount = db.flag("--mount").unwrap();
    assert!(
        mount.starts_with(&format!("type=volume,source=podspawn-{}.api.", user.name))
            && mount.contains(&format!(
                ".data,target=/var/lib/db,volume-label=podspawn.managed=true,\
                 volume-label=podspawn.installation={},",
                env.installation()
            ))
            && mount.contains(",volume-label=podspawn.project=api,volume-label=podspawn.session="),
        "{mount}"
    );
    assert_eq!(
        db.flags("--label")[..2],
        [
            "podspawn.managed=true",
            &format!("podspawn.installation={}", env.installation())
        ]
    );
    for refused in ["-p", "--publish", "--publish-all", "--privileged", "-P"] {
        assert!(!db.argv.iter().any(|arg| arg == refused), "{argv}");
    }
    assert!(
        argv.starts_with("run --detach --init --pull never "),
        "its image is there already, never pulled under the user's lock: {argv}"
    );
}

#[test]
fn list_shows_a_sessions_services_and_remove_project_takes_them() {
    let (env, user) = with_project();
    let container = format!("podspawn-{}-api", user.name);
    env.scenario(&[
        Rule::docker(&["network", "create", "**"]),
        Rule::docker(&["run", "**"]),
        Rule::docker(&["exec", "**"]),
        Rule::docker(&["ps", "**"]).stdout(&format!(
            "{container}\trunning\t{u}\tapi\tx\t\n{container}.db\texited\t{u}\tapi\tx\tdb\n",
            u = user.name
        )),
        Rule::docker(&["rm", "--force", "--volumes", "**"]),
        Rule::docker(&["network", "rm", "**"]),
        Rule::docker(&["volume", "rm", "**"]),
        Rule::docker(&["image", "ls", "**"]),
    ]);
    project_spawn(&env, &user)
        .var("SSH_ORIGINAL_COMMAND", "true")
        .run()
        .assert_success();
    let table = env.podspawn(&["list"]).assert_success().stdout();
    let header = table.lines().next().unwrap();
    assert!(header.ends_with("LIFETIME LEFT  SERVICES"), "{table}");
    assert!(
        table.lines().nth(1).unwrap().ends_with("db(stopped)"),
        "{table}"
    );
    let json = env.podspawn(&["list", "--json"]).assert_success().stdout();
    assert!(json.contains("\"address\":\"10.215.255.10\""), "{json}");
    assert!(
        json.contains(&format!(
            "\"services\":[{{\"name\":\"db\",\"container\":\"{container}.db\",\"image\":\"{SERVICE_IMAGE}\",\
             \"address\":\"10.215.255.11\",\"ports\":[5432],\"status\":\"stopped\"}}]"
        )),
        "{json}"
    );

    env.podspawn(&["remove-project", "api", "--force"])
        .assert_success();
    let calls = env.docker_calls();
    let removed: Vec<String> = calls
        .iter()
        .filter(|call| call.subcommand() == "rm")
        .map(|call| call.argv.last().unwrap().clone())
        .collect();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(removed.contains(&container) && removed.contains(&format!("{container}.db")));
    let after = |what: &[&str]| {
        calls.iter().position(|call| {
            call.argv
                .starts_with(&what.iter().map(|w| w.to_string()).collect::<Vec<_>>())
        })
    };
    let network_rm = after(&["network", "rm"]).expect("the session's network goes");
    assert_eq!(
        calls[network_rm].argv.last().unwrap(),
        &format!("{container}.net")
    );
    let volume_rm = after(&["volume", "rm"]).expect("the session's volume goes");
    assert!(calls[volume_rm].argv.last().unwrap().ends_with(".data"));
    let last_rm = calls
        .iter()
        .rposition(|call| call.subcommand() == "rm")
        .unwrap();
    assert!(last_rm < network_rm && network_rm < volume_rm);
    env.podspawn(&["list", "--json"])
        .assert_success()
        .assert_stdout("[]\n");
}

#[test]
fn a_service_image_that_cannot_be_had_fails_add_project_and_leaves_nothing() {
    let env = TestEnv::new();
    env.write_config(&format!("defaults:\n  image: {IMAGE}\n"));
    let repo = git_repo(&env, &[("podfile.yaml", PODFILE)]);
    env.scenario(&[
        Rule::docker(&["image", "inspect", "--format", "{{.Id}}", "podspawn/api:*"])
            .stderr("Error: No such image: podspawn/api\n")
            .exit(1)
            .times(1),
        Rule::docker(&[
            "network",
            "create",
            "--driver",
            "bridge",
            "--opt",
            "com.docker.network.bridge.name=psb-*",
            "**",
        ]),
        Rule::docker(&["build", "**"]).stdout("Step 1/1 : FROM podspawn-test:latest\n"),
        Rule::docker(&["image", "inspect", "--format", "{{.Id}}", SERVICE_IMAGE])
            .stderr("Error: No such image: pg-test:16\n")
            .exit(1),
        Rule::docker(&["pull", "--quiet", SERVICE_IMAGE])
            .stderr("Error response from daemon: pull access denied for pg-test\n")
            .exit(1),
        Rule::docker(&["image", "rm", "podspawn/api:*"]),
    ]);
    let run = env.podspawn(&["add-project", "api", "--repo", repo.to_str().unwrap()]);
    let stderr = run.stderr();
    assert_eq!(run.code(), Some(1), "{stderr}");
    let said: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("podspawn:"))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].contains("the image pg-test:16 of service db cannot be had")
            && said[0].contains("pull access denied"),
        "{stderr}"
    );
    assert!(
        run.stdout()
            .contains("  Service db (pg-test:16)... failed\n")
    );
    env.podspawn(&["list", "--projects", "--json"])
        .assert_success()
        .assert_stdout("[]\n");
    assert!(!env.path("state/projects/api").exists());
}
