//! Projects through a real sshd, set up as an admin does (`server-setup`, `add-user`,
//! `add-project` of a local git repo): the Podfile's packages, env, workspace,
//! `on_create` and `on_start` in `podspawn-USER-PROJECT`, entered with
//! `SetEnv=PODSPAWN_PROJECT=…`; reattach, file transfer, scratch environments, an
//! env-only change without a build, a hostile Podfile, a devcontainer.json.

use std::fs;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use super::{Account, Server};
use crate::real_engine::{Terminal, image};

fn check(server: &Server, output: Output) -> Output {
    assert!(output.status.success(), "{}", server.explain(&output));
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn podfile(greeting: &str) -> String {
    format!(
        "# The team's environment.\n\
         base: {base}\n\
         packages: [hello]\n\
         env:\n  GREETING: \"{greeting} ${{PODSPAWN_USER}} in ${{PODSPAWN_PROJECT}}\"\n\
         on_create: echo made-at-build > built-by-on-create\n\
         on_start: echo \"welcome to $PODSPAWN_PROJECT\"\n",
        base = image()
    )
}

/// The images podspawn has of `project`.
fn images_of(project: &str) -> Vec<String> {
    let output = Command::new("docker")
        .args(["images", "--format", "{{.Repository}}:{{.Tag}}", "--filter"])
        .arg(format!("label=podspawn.project={project}"))
        .output()
        .unwrap();
    stdout(&output).lines().map(str::to_string).collect()
}

fn container_id(container: &str) -> String {
    let output = Command::new("docker")
        .args(["inspect", "--format", "{{.Id}}", container])
        .output()
        .unwrap();
    stdout(&output).trim().to_string()
}

fn project_container(account: &Account, project: &str) -> String {
    format!("podspawn-{}-{project}", account.name)
}

/// `add-project NAME --repo REPO`, which must succeed; returns its stdout.
fn add_project(server: &Server, name: &str, repo: &std::path::Path) -> String {
    let output = check(
        server,
        server.podspawn(&["add-project", name, "--repo", repo.to_str().unwrap()]),
    );
    stdout(&output)
}

#[test]
fn a_project_session_has_its_podfiles_packages_env_workspace_and_on_start() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let project = server.project_name("api");
    let repo = server.git_repo(
        "api-repo",
        &[
            (".podspawn/podfile.yaml", &podfile("hello")),
            ("README.md", "the api\n"),
        ],
    );
    let added = add_project(&server, &project, &repo);
    assert!(
        added.contains(&format!(
            "project {project} registered, image: podspawn/{project}:"
        )),
        "{added}"
    );
    assert!(added.contains("Installing packages: hello"), "{added}");
    assert_eq!(images_of(&project).len(), 1);

    // Packages, env, the workspace (with what on_create made, and writable), the
    // container's name; on_start is for terminals only.
    let output = check(
        &server,
        server.run_in(
            user,
            &project,
            "hello; echo \"$GREETING\"; pwd; cat built-by-on-create README.md; hostname; \
             touch mine && echo writable",
        ),
    );
    let container = project_container(user, &project);
    assert_eq!(
        stdout(&output),
        format!(
            "Hello, world!\nhello {name} in {project}\n/workspace/{project}\nmade-at-build\n\
             the api\n{container}\nwritable\n",
            name = user.name
        )
    );
    assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    let id = container_id(&container);
    assert!(!id.is_empty());
    assert!(
        !server.container_exists(user),
        "a project session is not the default one"
    );

    // A terminal gets on_start's banner, then the shell, in the same container.
    let mut terminal = Terminal::start(server.ssh_project(user, &project, &["-tt"], None), 24, 80);
    let wait = Duration::from_secs(30);
    assert!(
        terminal.expect(&format!("welcome to {project}"), wait),
        "no banner:\n{}\n{}",
        terminal.seen,
        server.podspawn_log()
    );
    terminal.type_text("ls mine && echo reattached-$((6*7)); exit\n");
    assert!(terminal.expect("reattached-42", wait), "{}", terminal.seen);
    assert!(terminal.child.wait().unwrap().success());
    assert_eq!(
        container_id(&container),
        id,
        "the second connection reattaches"
    );

    // `list` names the session's project, and the project.
    let list = stdout(&check(&server, server.podspawn(&["list"])));
    assert!(list.contains(&project), "{list}");
    let projects = stdout(&check(&server, server.podspawn(&["list", "--projects"])));
    assert!(
        projects.contains(&project) && projects.contains("podspawn/"),
        "{projects}"
    );

    // An env-only change is picked up by the next connection with no build.
    server.commit(&repo, &[(".podspawn/podfile.yaml", &podfile("bonjour"))]);
    let update = stdout(&check(
        &server,
        server.podspawn(&["update-project", &project]),
    ));
    assert!(update.contains("(unchanged, no build)"), "{update}");
    assert_eq!(images_of(&project).len(), 1);
    let output = check(&server, server.run_in(user, &project, "echo \"$GREETING\""));
    assert_eq!(
        stdout(&output),
        format!("bonjour {} in {project}\n", user.name)
    );

    // A name that is no project is a scratch environment on the default image.
    let output = check(
        &server,
        server.run_in(
            user,
            "work",
            "hostname; echo \"$PODSPAWN_PROJECT\"; command -v hello || echo no-hello",
        ),
    );
    assert_eq!(
        stdout(&output),
        format!("podspawn-{}-work\nwork\nno-hello\n", user.name)
    );
    // The default session is still its own.
    let output = check(&server, server.run(user, "hostname"));
    assert_eq!(stdout(&output), format!("podspawn-{}\n", user.name));

    // remove-project refuses while the session runs; --force ends it.
    let refused = server.podspawn(&["remove-project", &project]);
    assert!(!refused.status.success(), "{}", server.explain(&refused));
    check(
        &server,
        server.podspawn(&["remove-project", &project, "--force"]),
    );
    assert!(!super::container_exists(&container));
    assert!(images_of(&project).is_empty());
    let gone = server.run_in(user, &project, "hostname");
    assert_eq!(
        stdout(&gone),
        format!("podspawn-{}-{project}\n", user.name),
        "a removed project's name is a scratch environment again"
    );
}

#[test]
fn files_move_in_and_out_of_a_project_workspace_with_scp_sftp_and_rsync() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let project = server.project_name("files");
    // No packages: the build is a copy. on_create puts dotfiles where a `dotfiles:`
    // clone would (the build cannot reach a forge here): the first connection, an
    // scp, installs them into the home without a byte on its protocol's stdout.
    let dotfiles = "/usr/local/share/podspawn/dotfiles";
    let repo = server.git_repo(
        "files-repo",
        &[(
            "podfile.yaml",
            &format!(
                "base: {}\non_start: echo never on stdout\n\
                 on_create: |\n  mkdir -p {dotfiles}\n  echo 'alias ll=ls' > {dotfiles}/aliases\n  \
                 echo 'echo installing; cp aliases \"$HOME/.aliases\"' > {dotfiles}.install\n",
                image()
            ),
        )],
    );
    add_project(&server, &project, &repo);
    let local = server.scratch("files");
    fs::write(local.join("one.txt"), "one\n").unwrap();
    fs::write(local.join("two words.txt"), "two\n").unwrap();
    let set_env = format!("SetEnv=PODSPAWN_PROJECT={project}");
    let target = format!("{}@127.0.0.1", user.name);
    let tool = |program: &str| {
        let mut command = Command::new(program);
        command
            .args(server.client_options(user))
            .args(["-o", &set_env])
            .env("HOME", server.root.join("client"))
            .stdin(Stdio::null());
        command
    };
    check(
        &server,
        tool("scp")
            .args(["-P", &server.port.to_string()])
            .arg(local.join("one.txt"))
            .arg(format!("{target}:one.txt"))
            .output()
            .unwrap(),
    );
    let batch = local.join("batch");
    fs::write(
        &batch,
        format!(
            "put \"{}\" \"two words.txt\"\nget one.txt {}\n",
            local.join("two words.txt").display(),
            local.join("back.txt").display()
        ),
    )
    .unwrap();
    check(
        &server,
        tool("sftp")
            .args(["-P", &server.port.to_string(), "-b"])
            .arg(&batch)
            .arg(&target)
            .output()
            .unwrap(),
    );
    assert_eq!(fs::read_to_string(local.join("back.txt")).unwrap(), "one\n");
    let ssh = format!(
        "{} {}",
        server.ssh_command_line(user),
        ["-o", &set_env].join(" ")
    );
    check(
        &server,
        Command::new("rsync")
            .args(["-a", "-e", &ssh])
            .arg(format!("{}/", local.display()))
            .arg(format!("{target}:synced/"))
            .env("HOME", server.root.join("client"))
            .output()
            .unwrap(),
    );
    let output = check(
        &server,
        server.run_in(
            user,
            &project,
            "pwd; cat one.txt 'two words.txt' synced/one.txt ~/.aliases ~/.dotfiles-install.log",
        ),
    );
    assert_eq!(
        stdout(&output),
        format!("/workspace/{project}\none\ntwo\none\nalias ll=ls\ninstalling\n")
    );

    // A change to the repo builds a new image; the running session keeps its
    // container (and so the old image) until it ends; then `cleanup` removes it (and
    // nothing of the other tests' servers: each is an installation of its own).
    let old_images = images_of(&project);
    server.commit(&repo, &[("NEWS", "something changed\n")]);
    let update = stdout(&check(
        &server,
        server.podspawn(&["update-project", &project]),
    ));
    assert!(update.contains("(built)"), "{update}");
    let now = images_of(&project);
    assert_eq!(now.len(), 2);
    assert!(old_images.iter().all(|image| now.contains(image)));
    let output = check(
        &server,
        server.run_in(user, &project, "cat NEWS || echo old"),
    );
    assert_eq!(
        stdout(&output),
        "old\n",
        "the running session keeps its container"
    );
    check(
        &server,
        server.podspawn(&["remove-user", &user.name, "--force"]),
    );
    let cleanup = stdout(&check(&server, server.podspawn(&["cleanup"])));
    assert!(cleanup.contains("images_removed=1"), "{cleanup}");
    let left = images_of(&project);
    assert_eq!(left.len(), 1, "{left:?}");
    assert!(
        !old_images.contains(&left[0]),
        "the old image stayed: {left:?}"
    );
}

#[test]
fn a_hostile_podfile_is_refused_before_any_build_and_nothing_is_left() {
    let server = crate::server_or_skip!("60s", 0);
    let project = server.project_name("evil");
    let repo = server.git_repo(
        "evil-repo",
        &[(
            ".podspawn/podfile.yaml",
            "base: debian\npackages:\n  - git\n  - \"git; touch /tmp/podspawn-pwned\"\n",
        )],
    );
    let output = server.podspawn(&["add-project", &project, "--repo", repo.to_str().unwrap()]);
    assert!(!output.status.success(), "{}", server.explain(&output));
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    for part in [".podspawn/podfile.yaml", "line 4", "packages"] {
        assert!(stderr.contains(part), "{part} missing from {stderr}");
    }
    assert!(images_of(&project).is_empty());
    assert!(!server.root.join("state/projects").join(&project).exists());
    let projects = stdout(&check(&server, server.podspawn(&["list", "--projects"])));
    assert!(!projects.contains(&project), "{projects}");
    assert!(!std::path::Path::new("/tmp/podspawn-pwned").exists());
}

#[test]
fn a_devcontainer_json_project_works_and_says_what_it_ignores() {
    let server = crate::server_or_skip!("60s", 1);
    let user = &server.users[0];
    let project = server.project_name("dc");
    let devcontainer = format!(
        "// made by an editor\n{{\n  \"image\": \"{}\",\n  \
         \"containerEnv\": {{ \"MODE\": \"dev\", }},\n  \
         \"postCreateCommand\": \"echo from-post-create > post-create.txt\",\n  \
         \"features\": {{ \"ghcr.io/devcontainers/features/node:1\": {{}} }},\n}}\n",
        image()
    );
    let repo = server.git_repo(
        "dc-repo",
        &[(".devcontainer/devcontainer.json", &devcontainer)],
    );
    let output = check(
        &server,
        server.podspawn(&["add-project", &project, "--repo", repo.to_str().unwrap()]),
    );
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|line| line.contains("features"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    let output = check(
        &server,
        server.run_in(user, &project, "echo $MODE; cat post-create.txt"),
    );
    assert_eq!(stdout(&output), "dev\nfrom-post-create\n");
}

#[test]
fn connections_that_find_the_image_missing_build_it_once_and_only_a_terminal_sees_it() {
    let server = crate::server_or_skip!("60s", 2);
    let project = server.project_name("shared");
    let repo = server.git_repo(
        "shared-repo",
        &[(
            "podfile.yaml",
            &format!("base: {}\non_create: echo built > built.txt\n", image()),
        )],
    );
    add_project(&server, &project, &repo);
    let images = images_of(&project);
    assert_eq!(images.len(), 1);
    let builds = || {
        server
            .podspawn_log()
            .lines()
            .filter(|line| line.contains(&format!("build image {}", images[0])))
            .count()
    };
    let remove_image = || {
        let status = Command::new("docker")
            .args(["rmi", "--force", &images[0]])
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    };

    // Two users at once find it missing: one build, both get their output only.
    remove_image();
    let doctor = stdout(&server.podspawn(&["doctor"]));
    assert!(
        doctor.contains(&format!(
            "project {project}: image {} is not here",
            images[0]
        )),
        "{doctor}"
    );
    let before = builds();
    let children: Vec<_> = server
        .users
        .iter()
        .map(|user| {
            server
                .ssh_project(user, &project, &[], Some("cat built.txt"))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let output = child.wait_with_output().unwrap();
        let output = check(&server, output);
        assert_eq!(stdout(&output), "built\n");
        assert_eq!(String::from_utf8_lossy(&output.stderr), "");
    }
    assert_eq!(builds() - before, 1, "{}", server.podspawn_log());
    assert_eq!(images_of(&project), images);

    // A terminal is shown the build's progress: its container gone, the image
    // missing again, the next session has to build.
    let user = &server.users[1];
    let container = project_container(user, &project);
    let status = Command::new("docker")
        .args(["rm", "--force", &container])
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    remove_image();
    let mut terminal = Terminal::start(server.ssh_project(user, &project, &["-tt"], None), 24, 80);
    let wait = Duration::from_secs(120);
    for line in [
        "Building environment from podfile.yaml (first time".to_string(),
        "Copying the repo".to_string(),
        "Running on_create".to_string(),
    ] {
        assert!(
            terminal.expect(&line, wait),
            "{line} not shown:\n{}\n{}",
            terminal.seen,
            server.podspawn_log()
        );
    }
    terminal.type_text("cat built.txt; exit\n");
    assert!(terminal.expect("built", wait), "{}", terminal.seen);
    assert!(terminal.child.wait().unwrap().success());
}

/// The builder's containers for a project image's steps carry podspawn's labels (the
/// image has them from its `LABEL` step on) but no session: a `cleanup` that runs
/// meanwhile (from cron, every minute) leaves them, and the build, alone.
#[test]
fn a_cleanup_during_a_build_leaves_the_build_alone() {
    let server = crate::server_or_skip!("60s", 0);
    let project = server.project_name("slow");
    let repo = server.git_repo(
        "slow-repo",
        &[(
            "podfile.yaml",
            &format!(
                "base: {}\non_create: sleep 4; echo built > built.txt\n",
                image()
            ),
        )],
    );
    let adding = server
        .podspawn_command(&["add-project", &project, "--repo", repo.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let building = || {
        let output = Command::new("docker")
            .args(["ps", "--quiet", "--filter"])
            .arg(format!("label=podspawn.project={project}"))
            .output()
            .unwrap();
        !stdout(&output).trim().is_empty()
    };
    assert!(
        server
            .wait_until(Duration::from_secs(120), building)
            .is_some(),
        "no build step ran"
    );
    let cleanup = stdout(&check(&server, server.podspawn(&["cleanup"])));
    assert!(cleanup.contains("orphans_removed=0"), "{cleanup}");
    assert!(cleanup.contains("images_removed=0"), "{cleanup}");
    let added = adding.wait_with_output().unwrap();
    check(&server, added);
    assert_eq!(images_of(&project).len(), 1);
}
