//! Projects: a git repo with a Podfile, registered by the admin, built into an image,
//! and entered with `PODSPAWN_PROJECT`.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::ServerConfig;
use crate::container::{Service, VolumeMount};
use crate::docker::BuildSpec;
use crate::engine::Engine;
use crate::host::Host;
use crate::keys::UserName;
use crate::lock::NamedLock;
use crate::podfile::PodfileError;
use crate::progress::Progress;
use crate::session::{ImageBuild, Reason, SessionError, Sessions};
use crate::state::{ProjectRow, StateError};
use crate::system::{self, ToolError};

/// A project's name, as `PODSPAWN_PROJECT` carries it and `ssh NAME.pod` spells it: in
/// container names (`podspawn-<user>-<project>`, also the hostname, at most 63), image
/// names and paths.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProjectName(String);

/// The longest project name: `podspawn-` + the longest user name + `-` + this fits a
/// hostname's 63.
pub const MAX_PROJECT_NAME: usize = 21;

impl ProjectName {
    pub fn parse(name: &str) -> Result<ProjectName, String> {
        let ok = !name.is_empty()
            && name.len() <= MAX_PROJECT_NAME
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && !name.ends_with('-')
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(ProjectName(name.to_string()))
        } else {
            Err(format!(
                "{:?} is not a project name (a lower-case letter, then letters, digits and \
                 '-', at most {MAX_PROJECT_NAME})",
                name.escape_debug().to_string()
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ProjectName {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a project's clone is: `<state_dir>/projects/<name>`.
pub fn clone_dir(config: &ServerConfig, name: &ProjectName) -> PathBuf {
    projects_dir(config).join(name.as_str())
}

/// Where the output of a project's last build is kept.
pub fn build_log(config: &ServerConfig, name: &ProjectName) -> PathBuf {
    projects_dir(config).join(format!("{name}.build.log"))
}

/// `<state_dir>/projects`: the clones and build logs (root's, readable by the docker
/// group, as the state directory is).
pub fn projects_dir(config: &ServerConfig) -> PathBuf {
    config.state_dir().join("projects")
}

/// What one session of a project runs in: its image (and how to build it), where it
/// starts, its shell, env and `on_start` — from its registration, so that a change
/// that needs no build needs only `update-project`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Environment {
    pub image: String,
    pub build: ImageBuild,
    pub workspace: String,
    pub shell: Option<String>,
    pub env: Vec<(String, String)>,
    pub on_start: Option<String>,
    /// Its companion services, their `env` filled in for this user.
    pub services: Vec<Service>,
}

/// What a project's sessions take from its Podfile, kept in its registration (as
/// JSON) so that a connection never reads the checkout. `env` values (the services'
/// too) keep their `${PODSPAWN_USER}`/`${PODSPAWN_PROJECT}`, filled in per session.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct SessionSettings {
    pub shell: Option<String>,
    pub env: Vec<(String, String)>,
    pub on_start: Option<String>,
    pub services: Vec<Service>,
}

impl SessionSettings {
    pub fn of(podfile: &crate::podfile::Podfile) -> SessionSettings {
        SessionSettings {
            shell: podfile
                .shell
                .as_ref()
                .map(|shell| shell.as_path().display().to_string()),
            env: podfile
                .env
                .iter()
                .map(|(name, value)| (name.0.clone(), value.0.clone()))
                .collect(),
            on_start: podfile.on_start.as_ref().map(|script| script.0.clone()),
            services: podfile
                .services
                .iter()
                .map(|service| Service {
                    name: service.name.0.clone(),
                    image: service.image.clone(),
                    ports: service.ports.iter().map(|port| port.0).collect(),
                    env: service
                        .env
                        .iter()
                        .map(|(name, value)| (name.0.clone(), value.0.clone()))
                        .collect(),
                    volumes: service
                        .volumes
                        .iter()
                        .map(|volume| VolumeMount {
                            name: volume.name.clone(),
                            target: volume.target.clone(),
                            read_only: volume.read_only,
                        })
                        .collect(),
                    command: service.command.as_ref().map(|command| command.0.clone()),
                })
                .collect(),
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("plain data")
    }
}

/// The environment of `user`'s sessions of the registered `project`.
pub fn environment(
    config: &ServerConfig,
    project: &ProjectRow,
    user: &UserName,
) -> Result<Environment, String> {
    let settings: SessionSettings = serde_json::from_str(&project.session)
        .map_err(|err| format!("the registration of {} is damaged: {err}", project.name))?;
    let expand = |env: Vec<(String, String)>| {
        env.into_iter().map(|(name, value)| {
            let value = crate::podfile::EnvValue(value);
            (name, value.expand(user.as_str(), project.name.as_str()))
        })
    };
    let mut env = session_env(user, project.name.as_str());
    env.extend(expand(settings.env));
    let services = settings
        .services
        .into_iter()
        .map(|service| Service {
            env: expand(service.env).collect(),
            ..service
        })
        .collect();
    Ok(Environment {
        image: project.image.clone(),
        build: ImageBuild {
            project: project.name.to_string(),
            podfile: project.podfile.clone(),
            dockerfile: project.dockerfile.clone(),
            context: clone_dir(config, &project.name),
            log: build_log(config, &project.name),
            timeout: config.defaults.build_timeout.0,
        },
        workspace: project.workspace.clone(),
        shell: settings.shell,
        env,
        on_start: settings.on_start,
        services,
    })
}

/// What every project or scratch session's programs are told.
pub fn session_env(user: &UserName, project: &str) -> Vec<(String, String)> {
    vec![
        ("PODSPAWN_USER".to_string(), user.to_string()),
        ("PODSPAWN_PROJECT".to_string(), project.to_string()),
    ]
}

/// Why a project could not be added, updated or removed.
#[derive(Debug)]
pub enum ProjectError {
    /// The admin's words do not fit (a name, a repo, a project that is or is not).
    Refused(String),
    Git(ToolError),
    Podfile(PodfileError),
    Build {
        step: String,
        log: PathBuf,
        cause: String,
    },
    Session(SessionError),
    /// A service's image is not on this host and could not be pulled.
    ServiceImage {
        service: String,
        image: String,
        cause: String,
    },
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl fmt::Display for ProjectError {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            ProjectError::Refused(message) => f.write_str(message),
            ProjectError::Git(err) => write!(f, "git: {}", err.detail),
            ProjectError::Podfile(err) => write!(f, "the Podfile is refused: {err}"),
            ProjectError::Build { step, log, cause } => write!(
                f,
                "the build failed at \"{step}\" ({cause}); its output: {}",
                log.display()
            ),
            ProjectError::Session(err) => err.fmt(f),
            ProjectError::ServiceImage {
                service,
                image,
                cause,
            } => write!(
                f,
                "the image {image} of service {service} cannot be had: {cause}"
            ),
            ProjectError::Io { path, source } => write!(f, "{}: {source}", path.display()),
        }
    }
}

impl std::error::Error for ProjectError {}

impl From<SessionError> for ProjectError {
    fn from(err: SessionError) -> Self {
        ProjectError::Session(err)
    }
}

impl From<StateError> for ProjectError {
    fn from(err: StateError) -> Self {
        ProjectError::Session(SessionError::State(err))
    }
}

/// The repo as `add-project` takes it: `github.com/ORG/REPO`, an https, ssh or
/// `git@host:path` URL, or a local path (made absolute).
pub fn normalize_repo(given: &str) -> Result<String, String> {
    let refuse = || {
        format!(
            "{:?} is not a repo (github.com/ORG/REPO, an https or ssh git URL, or a local path)",
            given.escape_debug().to_string()
        )
    };
    if given.is_empty()
        || given.starts_with('-')
        || given.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(refuse());
    }
    if given.starts_with("http://") {
        return Err(format!(
            "{given}: plain http is not accepted (the image is built from what it sends); use https"
        ));
    }
    if let Some(rest) = given.strip_prefix("https://") {
        // A token in the URL would be kept in the checkout's .git/config, copied into
        // the image every user of the project reads, and shown by `list --projects`.
        let authority = rest.split('/').next().unwrap_or("");
        if authority.contains('@') {
            return Err(format!(
                "{}: credentials in the URL would end up in the image; use an ssh URL with root's key, or a credential helper",
                given.split('@').next_back().unwrap_or(given)
            ));
        }
        return Ok(given.to_string());
    }
    if given.starts_with("ssh://") {
        return Ok(given.to_string());
    }
    if let Some(rest) = given.strip_prefix("git@")
        && let Some((host, path)) = rest.split_once(':')
        && !host.is_empty()
        && !path.is_empty()
    {
        return Ok(given.to_string());
    }
    if given.contains("://") || given.contains("::") {
        return Err(refuse());
    }
    let path = Path::new(given);
    if path.is_dir() {
        return std::fs::canonicalize(path)
            .map(|path| path.display().to_string())
            .map_err(|err| format!("{given}: {err}"));
    }
    // `host.tld/org/repo`: a forge's web address, cloned over https.
    let parts: Vec<&str> = given.trim_end_matches('/').split('/').collect();
    if parts.len() >= 3 && parts[0].contains('.') && !given.starts_with('.') {
        let url = format!("https://{}", given.trim_end_matches('/'));
        return Ok(if url.ends_with(".git") {
            url
        } else {
            format!("{url}.git")
        });
    }
    Err(refuse())
}

/// A branch name git will not take for an option or a path trick.
pub fn is_branch(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 200
        && !text.starts_with(['-', '/', '.'])
        && !text.ends_with(['/', '.'])
        && !text.contains("..")
        && !text.ends_with(".lock")
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._/-".contains(c))
}

/// The longest a clone or a fetch may take.
const GIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// What a registration did, for the admin.
pub struct Registered {
    pub row: ProjectRow,
    /// The image was built now (not found already built).
    pub built: bool,
    /// What the Podfile (a devcontainer.json) said that podspawn does not do.
    pub warnings: Vec<String>,
}

/// `add-project`: clones `repo`, reads its Podfile, builds its image and registers
/// it — all or nothing: on any failure nothing is registered and nothing is left.
pub fn add<E: Engine, H: Host>(
    config: &ServerConfig,
    sessions: &mut Sessions<E, H>,
    name: &ProjectName,
    repo: &str,
    branch: Option<&str>,
    output: &mut dyn FnMut(&str),
) -> Result<Registered, ProjectError> {
    if sessions.project(name)?.is_some() {
        return Err(ProjectError::Refused(format!(
            "project {name} is registered already (podspawn update-project {name} updates it)"
        )));
    }
    let dir = projects_dir(config);
    make_projects_dir(&dir)?;
    let lock = sessions.lock_project(name, config.defaults.build_timeout.0)?;
    // Again under the lock: another add (or an update of a declared project) may
    // have registered it meanwhile, and its checkout is not ours to remove.
    if sessions.project(name)?.is_some() {
        return Err(ProjectError::Refused(format!(
            "project {name} is registered already (podspawn update-project {name} updates it)"
        )));
    }
    // A checkout or staging directory left by an earlier attempt that never
    // registered (a crash, a killed git) is no one's.
    let target = clone_dir(config, name);
    remove_dir(&target)?;
    let prefix = format!(".{name}.new-");
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                remove_dir(&entry.path())?;
            }
        }
    }
    let staging = dir.join(format!("{prefix}{}", std::process::id()));
    let result = (|| {
        system::git_clone(repo, branch, &staging, GIT_TIMEOUT).map_err(ProjectError::Git)?;
        let checkout = Checkout {
            dir: &staging,
            repo,
            branch,
        };
        let registered = prepare(config, sessions, name, &lock, &checkout, output)?;
        std::fs::rename(&staging, &target).map_err(|source| ProjectError::Io {
            path: target.clone(),
            source,
        })?;
        if let Err(err) = sessions.register_project(&registered.row) {
            let _ = std::fs::remove_dir_all(&target);
            if registered.built {
                let _ = sessions.remove_old_image(&registered.row.image);
            }
            return Err(err.into());
        }
        Ok(registered)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

/// `update-project`: brings the checkout to the newest commit of its branch (or, for
/// a project only declared in the config, makes it), builds when what reaches the
/// image changed, and registers the update. Running sessions keep their container.
/// Returns the registration and the image it replaced, if it did.
pub fn update<E: Engine, H: Host>(
    config: &ServerConfig,
    sessions: &mut Sessions<E, H>,
    name: &ProjectName,
    output: &mut dyn FnMut(&str),
) -> Result<(Registered, Option<String>), ProjectError> {
    let Some(old) = sessions.project(name)? else {
        let declared = config
            .projects
            .iter()
            .find(|(key, _)| &key.0 == name)
            .map(|(_, declared)| declared.clone())
            .ok_or_else(|| ProjectError::Refused(format!("there is no project {name}")))?;
        let repo = normalize_repo(&declared.repo).map_err(ProjectError::Refused)?;
        let added = add(
            config,
            sessions,
            name,
            &repo,
            declared.branch.as_deref(),
            output,
        )?;
        return Ok((added, None));
    };
    let lock = sessions.lock_project(name, config.defaults.build_timeout.0)?;
    let dir = clone_dir(config, name);
    let checkout = Checkout {
        dir: &dir,
        repo: &old.repo,
        branch: Some(&old.branch),
    };
    let result = system::git_update(&dir, &old.branch, GIT_TIMEOUT)
        .map_err(ProjectError::Git)
        .and_then(|()| prepare(config, sessions, name, &lock, &checkout, output))
        .and_then(|registered| {
            sessions.register_project(&registered.row)?;
            Ok(registered)
        });
    let registered = match result {
        Ok(registered) => registered,
        Err(err) => {
            // Sessions read the checkout's Podfile: it goes back to the registered
            // commit, so that a failed update changes nothing.
            if let Err(reset) = system::git_reset(&dir, &old.commit, GIT_TIMEOUT) {
                log::error!(
                    "cannot put {name}'s checkout back at {}: {}",
                    old.commit,
                    reset.detail
                );
            }
            return Err(err);
        }
    };
    let replaced = (registered.row.image != old.image).then_some(old.image);
    if let Some(image) = &replaced {
        sessions.remove_old_image(image)?;
    }
    Ok((registered, replaced))
}

/// A project's checkout: where it is, and where it came from.
#[derive(Clone, Copy)]
struct Checkout<'a> {
    dir: &'a Path,
    repo: &'a str,
    branch: Option<&'a str>,
}

/// Reads the Podfile of the checkout in `dir`, builds the image it makes unless it
/// exists, and says what to register.
fn prepare<E: Engine, H: Host>(
    config: &ServerConfig,
    sessions: &mut Sessions<E, H>,
    name: &ProjectName,
    held: &NamedLock,
    checkout: &Checkout,
    output: &mut dyn FnMut(&str),
) -> Result<Registered, ProjectError> {
    let Checkout { dir, repo, branch } = *checkout;
    let (commit, head_branch) = system::git_head(dir).map_err(ProjectError::Git)?;
    let found = crate::podfile::find(dir).map_err(ProjectError::Podfile)?;
    let files = system::git_files(dir).map_err(ProjectError::Git)?;
    let sources = sources_digest(&files, &found.file);
    let recipe = crate::image::recipe(
        name,
        &found.podfile,
        &config.defaults.image,
        &sources,
        &config.installation(),
    )
    .map_err(|err| {
        ProjectError::Podfile(PodfileError {
            file: found.file.clone(),
            line: None,
            message: err,
        })
    })?;
    let dockerfile = recipe.dockerfile();
    let log = build_log(config, name);
    let spec = BuildSpec {
        tag: &recipe.tag,
        dockerfile: &dockerfile,
        context: dir,
        timeout: config.defaults.build_timeout.0,
    };
    let mut progress = Progress::new(&dockerfile, &log);
    let built = sessions.build_project_image(held, &spec, Reason::ProjectChanged, &mut |line| {
        if let Some(shown) = progress.line(line) {
            output(&shown);
        }
    });
    if let Some(shown) = progress.finish(built.is_ok()) {
        output(&shown);
    }
    let built = built.map_err(|err| ProjectError::Build {
        step: progress.step().to_string(),
        log: log.clone(),
        cause: err.to_string(),
    })?;
    // Each service's image, here before a session needs it: a first connection never
    // waits for a pull, and an image that cannot be had is the admin's to know now.
    for service in &found.podfile.services {
        let image = &service.image;
        output(&format!("  Service {} ({image})...", service.name.0));
        match sessions.ensure_image(image, config.defaults.build_timeout.0) {
            Ok(pulled) => output(if pulled { " pulled\n" } else { " present\n" }),
            Err(err) => {
                output(" failed\n");
                if built {
                    let _ = sessions.remove_old_image(&recipe.tag);
                }
                return Err(ProjectError::ServiceImage {
                    service: service.name.0.clone(),
                    image: image.clone(),
                    cause: err.to_string(),
                });
            }
        }
    }
    Ok(Registered {
        row: ProjectRow {
            name: name.clone(),
            repo: repo.to_string(),
            branch: branch.map_or(head_branch, str::to_string),
            commit,
            session: SessionSettings::of(&found.podfile).to_json(),
            podfile: found.file,
            image: recipe.tag,
            dockerfile,
            workspace: recipe.workspace,
            updated_at: crate::host::now_millis(),
        },
        built,
        warnings: found.warnings,
    })
}

/// What of the repo reaches the image, as one digest: every file of the commit but
/// the Podfile (`git ls-tree -r -z` lines in `files`), whose fields that reach the
/// image are in the Dockerfile already. So a commit that only changes the Podfile's
/// `env`, `shell`, `on_start` or `services` keeps the image.
pub fn sources_digest(files: &str, podfile: &str) -> String {
    let mut kept = String::with_capacity(files.len());
    for entry in files.split('\0').filter(|entry| !entry.is_empty()) {
        let path = entry.split_once('\t').map_or("", |(_, path)| path);
        if path != podfile {
            kept.push_str(entry);
            kept.push('\0');
        }
    }
    crate::sha256::hex(kept.as_bytes())
}

/// `remove-project`: refuses while sessions of it run unless `force`, which ends
/// them; then forgets it and removes its checkout and images. Returns how many
/// sessions it ended.
pub fn remove<E: Engine, H: Host>(
    config: &ServerConfig,
    sessions: &mut Sessions<E, H>,
    name: &ProjectName,
    force: bool,
) -> Result<usize, ProjectError> {
    if sessions.project(name)?.is_none() {
        let declared = config.projects.keys().any(|key| &key.0 == name);
        return Err(ProjectError::Refused(if declared {
            format!("project {name} is only declared in the config; remove it there")
        } else {
            format!("there is no project {name}")
        }));
    }
    let running = sessions.project_sessions(name)?;
    if !running.is_empty() && !force {
        let users: Vec<String> = running.iter().map(|row| row.user.to_string()).collect();
        return Err(ProjectError::Refused(format!(
            "project {name} has {} session(s) ({}); use --force to end them and remove it",
            running.len(),
            users.join(", ")
        )));
    }
    let _lock = sessions.lock_project(name, config.defaults.build_timeout.0)?;
    let destroyed = sessions.remove_project(name)?;
    // Volumes kept across the project's sessions (every user's) go with it.
    if config.services.persist_volumes {
        let kept = sessions.remove_kept_volumes(
            |volume| volume.project == name.as_str(),
            Reason::ProjectRemoved,
        );
        log::info!("removed {kept} kept volume(s) of project {name}");
    }
    remove_dir(&clone_dir(config, name))?;
    let log = build_log(config, name);
    if log.exists() {
        let _ = std::fs::remove_file(&log);
    }
    Ok(destroyed)
}

/// `<state_dir>/projects`, made when missing (root's, group docker, like the state
/// directory: spawn writes build logs there).
fn make_projects_dir(dir: &Path) -> Result<(), ProjectError> {
    use std::os::unix::fs::PermissionsExt;
    if dir.is_dir() {
        return Ok(());
    }
    let io = |source| ProjectError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir(dir).map_err(io)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o2770)).map_err(io)
}

fn remove_dir(dir: &Path) -> Result<(), ProjectError> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(ProjectError::Io {
            path: dir.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repos_are_normalized_and_odd_ones_refused() {
        assert_eq!(
            normalize_repo("github.com/company/node-api").unwrap(),
            "https://github.com/company/node-api.git"
        );
        assert_eq!(
            normalize_repo("gitlab.example.org/a/b.git").unwrap(),
            "https://gitlab.example.org/a/b.git"
        );
        for kept in [
            "https://github.com/a/b.git",
            "ssh://git@host/a/b",
            "git@github.com:a/b.git",
        ] {
            assert_eq!(normalize_repo(kept).unwrap(), kept);
        }
        let here = std::env::temp_dir();
        assert_eq!(
            normalize_repo(here.to_str().unwrap()).unwrap(),
            std::fs::canonicalize(&here).unwrap().display().to_string()
        );
        for bad in [
            "",
            "--upload-pack=evil",
            "ext::sh -c touch% /tmp/x",
            "fd::3",
            "file:///etc",
            "a b",
            "nowhere/at/all",
            "git@:x",
            "http://example.org/a/b.git",
            "https://user:token@github.com/a/b.git",
        ] {
            assert!(normalize_repo(bad).is_err(), "{bad:?}");
        }
        // The refusal does not repeat the token.
        let err = normalize_repo("https://user:s3cret@github.com/a/b.git").unwrap_err();
        assert!(!err.contains("s3cret"), "{err}");
    }

    #[test]
    fn project_names_are_plain_and_short() {
        for ok in ["api", "node-api", "a1", "work"] {
            assert!(ProjectName::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "Api",
            "1api",
            "api-",
            "a_b",
            "a.b",
            "../x",
            "a b",
            &"x".repeat(22),
        ] {
            assert!(ProjectName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_sources_digest_skips_the_podfile_and_nothing_else() {
        let listing = |podfile: &str, main: &str| {
            format!(
                "100644 blob {podfile}\t.podspawn/podfile.yaml\0100644 blob {main}\tsrc/main.rs\0\
                 100644 blob aaaa\tpodfile.yaml.orig\0"
            )
        };
        let podfile = ".podspawn/podfile.yaml";
        let one = sources_digest(&listing("1111", "2222"), podfile);
        // Only the Podfile changed: the same sources.
        assert_eq!(sources_digest(&listing("9999", "2222"), podfile), one);
        // Any other file changed: other sources.
        assert_ne!(sources_digest(&listing("1111", "3333"), podfile), one);
        // Had the Podfile been elsewhere, its change would count.
        assert_ne!(
            sources_digest(&listing("9999", "2222"), "podfile.yaml"),
            sources_digest(&listing("1111", "2222"), "podfile.yaml")
        );
    }
}
