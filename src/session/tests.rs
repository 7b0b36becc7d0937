//! The lifecycle against a fake engine and a fake host with a settable clock: the
//! decisions of `plan`, carried out.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::docker::{Labels, ManagedContainer, ManagedNetwork, ManagedVolume};
use crate::engine::{ExecEnd, Probe};
use crate::state::tests::{TempDb, session};
use plan::KEEPER_TICK;

/// The fake host's clock starts here (milliseconds).
const NOW: Millis = 10_000_000;

fn alice() -> UserName {
    UserName::parse("alice").unwrap()
}

/// An engine that keeps containers in a map and answers execs from a script.
#[derive(Default)]
struct FakeEngine {
    running: BTreeMap<String, String>,
    creates: usize,
    removes: Vec<String>,
    execs: Vec<ExecSpec>,
    /// What the next execs return; `Exited { code: 0 }` when empty.
    script: Vec<ExecEnd>,
    /// Containers that vanish the moment an exec is tried (removed by hand).
    vanish_on_exec: bool,
    /// The container vanishes as the next exec ends (its answer still the script's).
    vanish_after_exec: bool,
    networks: BTreeSet<String>,
    /// name -> (cidr, user)
    subnets: BTreeMap<String, (String, String)>,
    /// Running containers that are not podspawn's (no labels).
    foreign: BTreeSet<String>,
    /// Every change, as `Effect` says it.
    applied: Vec<String>,
    /// Images built (by tag).
    images: BTreeSet<String>,
    builds: usize,
    /// Services made, by container name (running unless also in `stopped`).
    services: BTreeMap<String, ServiceSpec>,
    stopped: BTreeSet<String>,
    /// Session networks' labels: name -> (user, project, session).
    owners: BTreeMap<String, (String, String, String)>,
    volumes: BTreeMap<String, ManagedVolume>,
    /// Service images that cannot be had.
    missing_images: BTreeSet<String>,
    /// Services (by name) that stop as soon as they start.
    stop_at_once: BTreeSet<String>,
    /// Runs during the next exec (what another process does meanwhile).
    during_exec: Option<Box<dyn FnMut()>>,
}

impl Engine for FakeEngine {
    fn apply(&mut self, effect: &Effect, _: Passed) -> Result<(), DockerError> {
        self.applied.push(effect.to_string());
        match *effect {
            Effect::CreateContainer(spec) => {
                // Project images exist once built; any other image always does.
                if crate::image::is_project_image(&spec.image) && !self.images.contains(&spec.image)
                {
                    return Err(DockerError::ImageUnavailable {
                        image: spec.image.clone(),
                        stderr: "Unable to find image".into(),
                    });
                }
                if !self.networks.contains(&spec.network.name) {
                    return Err(DockerError::NetworkMissing {
                        network: spec.network.name.clone(),
                    });
                }
                if self.running.contains_key(&spec.name) || self.foreign.contains(&spec.name) {
                    return Err(DockerError::NameInUse {
                        name: spec.name.clone(),
                    });
                }
                self.creates += 1;
                self.running
                    .insert(spec.name.clone(), spec.session_id.clone());
            }
            Effect::CreateService(spec) => {
                if self.missing_images.contains(&spec.image) {
                    return Err(DockerError::ImageUnavailable {
                        image: spec.image.clone(),
                        stderr: "pull access denied".into(),
                    });
                }
                if !self.networks.contains(&spec.network) {
                    return Err(DockerError::NetworkMissing {
                        network: spec.network.clone(),
                    });
                }
                if self.services.contains_key(&spec.container) {
                    return Err(DockerError::NameInUse {
                        name: spec.container.clone(),
                    });
                }
                for volume in &spec.volumes {
                    self.volumes.insert(
                        volume.name.clone(),
                        ManagedVolume {
                            name: volume.name.clone(),
                            user: spec.user.clone(),
                            project: spec.project.clone(),
                            session: if volume.persistent {
                                String::new()
                            } else {
                                spec.session_id.clone()
                            },
                        },
                    );
                }
                if self.stop_at_once.contains(&spec.name) {
                    self.stopped.insert(spec.container.clone());
                }
                self.services.insert(spec.container.clone(), spec.clone());
            }
            Effect::RemoveContainer(name) => {
                self.removes.push(name.to_string());
                self.running.remove(name);
                self.services.remove(name);
                self.stopped.remove(name);
            }
            Effect::CreateNetwork { network, owner } => {
                if let Some((name, _)) = self
                    .subnets
                    .iter()
                    .find(|(_, (cidr, _))| *cidr == network.cidr())
                    && *name != network.name
                {
                    return Err(DockerError::NetworkOverlap {
                        network: network.name.clone(),
                        stderr: String::new(),
                    });
                }
                if !owner.session.is_empty() {
                    if self.networks.contains(&network.name) {
                        return Err(DockerError::NetworkExists {
                            network: network.name.clone(),
                        });
                    }
                    self.owners.insert(
                        network.name.clone(),
                        (
                            owner.user.to_string(),
                            owner.project.to_string(),
                            owner.session.to_string(),
                        ),
                    );
                }
                self.subnets.insert(
                    network.name.clone(),
                    (network.cidr(), owner.user.to_string()),
                );
                self.networks.insert(network.name.clone());
            }
            Effect::RemoveNetwork(name) => {
                // As docker: a network a container is still on stays.
                if self
                    .services
                    .values()
                    .any(|service| service.network == name)
                {
                    return Err(DockerError::Failed {
                        argv: vec!["network".into(), "rm".into(), name.into()],
                        status: "exit status: 1".into(),
                        stderr: "network has active endpoints".into(),
                    });
                }
                self.subnets.remove(name);
                self.networks.remove(name);
                self.owners.remove(name);
            }
            Effect::RemoveVolume(name) => {
                if self
                    .services
                    .values()
                    .any(|service| service.volumes.iter().any(|volume| volume.name == name))
                {
                    return Err(DockerError::VolumeInUse {
                        volume: name.to_string(),
                    });
                }
                self.volumes.remove(name);
            }
            Effect::PullImage { image, .. } => {
                if self.missing_images.contains(image) {
                    return Err(DockerError::ImageUnavailable {
                        image: image.to_string(),
                        stderr: "pull access denied".into(),
                    });
                }
                self.images.insert(image.to_string());
            }
            Effect::RemoveImage(image) => {
                self.images.remove(image);
            }
        }
        Ok(())
    }

    fn state(&mut self, container: &str) -> Result<ContainerState, DockerError> {
        Ok(if self.stopped.contains(container) {
            ContainerState::NotRunning
        } else if self.running.contains_key(container) || self.services.contains_key(container) {
            ContainerState::Running
        } else {
            ContainerState::Missing
        })
    }

    fn labels(&mut self, container: &str) -> Result<Option<Labels>, DockerError> {
        Ok(if self.foreign.contains(container) {
            Some(Labels {
                managed: false,
                user: String::new(),
                project: String::new(),
            })
        } else if let Some(service) = self.services.get(container) {
            Some(Labels {
                managed: true,
                user: service.user.clone(),
                project: service.project.clone(),
            })
        } else {
            self.running.contains_key(container).then(|| Labels {
                managed: true,
                user: container.trim_start_matches("podspawn-").to_string(),
                project: String::new(),
            })
        })
    }

    fn containers(&mut self) -> Result<Vec<ManagedContainer>, DockerError> {
        let sessions = self.running.iter().map(|(name, session)| {
            // alice's default container, or one of her project's: what the
            // tests name.
            let rest = name.trim_start_matches("podspawn-");
            let (user, project) = rest.split_once('-').unwrap_or((rest, ""));
            ManagedContainer {
                name: name.clone(),
                running: true,
                user: user.to_string(),
                project: project.to_string(),
                session: session.clone(),
                service: String::new(),
            }
        });
        let services = self.services.values().map(|service| ManagedContainer {
            name: service.container.clone(),
            running: !self.stopped.contains(&service.container),
            user: service.user.clone(),
            project: service.project.clone(),
            session: service.session_id.clone(),
            service: service.name.clone(),
        });
        Ok(sessions.chain(services).collect())
    }

    fn networks(&mut self) -> Result<Vec<ManagedNetwork>, DockerError> {
        Ok(self.subnets.keys().map(|name| self.network(name)).collect())
    }

    fn networks_on(&mut self, cidr: &str) -> Result<Vec<ManagedNetwork>, DockerError> {
        Ok(self
            .subnets
            .iter()
            .filter(|(_, (subnet, _))| subnet == cidr)
            .map(|(name, _)| self.network(name))
            .collect())
    }

    fn volumes(&mut self) -> Result<Vec<ManagedVolume>, DockerError> {
        Ok(self.volumes.values().cloned().collect())
    }

    fn version(&mut self) -> Result<String, DockerError> {
        Ok("fake".into())
    }

    fn runtimes(&mut self) -> Result<(Vec<String>, String), DockerError> {
        Ok((vec!["runc".into()], "overlay2".into()))
    }

    fn has_image(&mut self, image: &str) -> Result<bool, DockerError> {
        Ok(
            if crate::image::is_project_image(image) || self.missing_images.contains(image) {
                self.images.contains(image)
            } else {
                true
            },
        )
    }

    fn probe(&mut self, _: &str, _: &str, _: &[&str], _: Passed) -> Result<Probe, DockerError> {
        unreachable!("the lifecycle runs no probes")
    }

    fn probe_service(&mut self, _: &ServiceSpec, _: Passed) -> Result<(), DockerError> {
        unreachable!("the lifecycle runs no probes")
    }

    fn whereabouts(&mut self, _: &str) -> Result<Option<crate::docker::Whereabouts>, DockerError> {
        unreachable!("the lifecycle runs no probes")
    }

    fn logs(&mut self, _: &str, _: usize) -> Result<String, DockerError> {
        unreachable!("the lifecycle runs no probes")
    }

    fn image_config(&mut self, _: &str) -> Result<crate::docker::ImageConfig, DockerError> {
        unreachable!("the lifecycle runs no probes")
    }

    fn build(
        &mut self,
        spec: &crate::docker::BuildSpec,
        output: &mut dyn FnMut(&str),
        _: Passed,
    ) -> Result<(), DockerError> {
        output("Step 1/1 : FROM img");
        self.builds += 1;
        self.images.insert(spec.tag.to_string());
        Ok(())
    }

    fn project_images(&mut self, project: Option<&str>) -> Result<Vec<String>, DockerError> {
        let prefix = project.map_or("podspawn/".to_string(), |p| format!("podspawn/{p}:"));
        Ok(self
            .images
            .iter()
            .filter(|image| image.starts_with(&prefix))
            .cloned()
            .collect())
    }

    fn exec(&mut self, spec: &ExecSpec) -> Result<ExecEnd, DockerError> {
        self.execs.push(spec.clone());
        if let Some(mut during) = self.during_exec.take() {
            during();
        }
        if self.vanish_on_exec {
            self.vanish_on_exec = false;
            self.running.remove(&spec.container);
        }
        if !self.running.contains_key(&spec.container) {
            return Ok(ExecEnd::Exited {
                code: 1,
                held_stderr: b"Error response from daemon: No such container: x\n".to_vec(),
            });
        }
        let end = if self.script.is_empty() {
            ExecEnd::Exited {
                code: 0,
                held_stderr: Vec::new(),
            }
        } else {
            self.script.remove(0)
        };
        if self.vanish_after_exec {
            self.vanish_after_exec = false;
            self.running.remove(&spec.container);
        }
        Ok(end)
    }
}

impl FakeEngine {
    fn network(&self, name: &str) -> ManagedNetwork {
        let (user, project, session) = self
            .owners
            .get(name)
            .cloned()
            .unwrap_or_else(|| (self.subnets[name].1.clone(), String::new(), String::new()));
        ManagedNetwork {
            name: name.to_string(),
            user,
            project,
            session,
        }
    }
}

/// A host with a settable clock and processes that live until told otherwise.
struct FakeHost {
    now: i64,
    me: i32,
    dead: BTreeSet<i32>,
    keepers: Vec<i32>,
    next_pid: i32,
    sessions: usize,
    /// Host accounts besides alice (uid 1001).
    accounts: BTreeMap<String, u32>,
    /// Users whose keys were removed.
    removed: BTreeSet<String>,
    /// Keepers woken, by pid.
    woken: std::cell::RefCell<Vec<i32>>,
    /// Connections told their session was stopped, by pid.
    told_stopped: std::cell::RefCell<Vec<i32>>,
    /// This process was told its session was stopped.
    stopped: bool,
    /// Ports that never answer; every port asked about, in order.
    silent_ports: BTreeSet<u16>,
    asked_ports: std::cell::RefCell<Vec<std::net::SocketAddrV4>>,
}

impl Default for FakeHost {
    fn default() -> Self {
        FakeHost {
            now: NOW,
            me: 100,
            dead: BTreeSet::new(),
            keepers: Vec::new(),
            next_pid: 5000,
            sessions: 0,
            accounts: [("alice".to_string(), 1001)].into(),
            removed: BTreeSet::new(),
            woken: std::cell::RefCell::new(Vec::new()),
            told_stopped: std::cell::RefCell::new(Vec::new()),
            stopped: false,
            silent_ports: BTreeSet::new(),
            asked_ports: std::cell::RefCell::new(Vec::new()),
        }
    }
}

fn pid(pid: i32) -> ProcessId {
    ProcessId {
        pid,
        start_ticks: 1,
        boot_id: "boot".into(),
    }
}

impl Host for FakeHost {
    fn now(&self) -> i64 {
        self.now
    }
    fn this_process(&self) -> ProcessId {
        pid(self.me)
    }
    fn is_alive(&self, process: &ProcessId) -> bool {
        !self.dead.contains(&process.pid)
    }
    fn start_keeper(&mut self, _: &UserName, _: &str) -> Result<ProcessId, String> {
        self.next_pid += 1;
        self.keepers.push(self.next_pid);
        Ok(pid(self.next_pid))
    }
    fn new_session_id(&mut self) -> String {
        self.sessions += 1;
        format!("session{}", self.sessions)
    }
    fn uid_of(&self, user: &str) -> Option<u32> {
        self.accounts.get(user).copied()
    }
    fn is_registered(&self, user: &UserName) -> bool {
        !self.removed.contains(user.as_str())
    }
    fn wake(&self, keeper: &ProcessId) {
        self.woken.borrow_mut().push(keeper.pid);
    }
    fn tell_stopped(&self, connection: &ProcessId) {
        self.told_stopped.borrow_mut().push(connection.pid);
    }
    fn was_stopped(&self) -> bool {
        self.stopped
    }
    fn other_users(&self, user: &UserName) -> Vec<(String, u32)> {
        self.accounts
            .iter()
            .filter(|(name, _)| name.as_str() != user.as_str() && !self.removed.contains(*name))
            .map(|(name, uid)| (name.clone(), *uid))
            .collect()
    }
    fn wait_for_port(&self, address: std::net::SocketAddrV4, _: Millis) -> bool {
        self.asked_ports.borrow_mut().push(address);
        !self.silent_ports.contains(&address.port())
    }
}

struct Fixture {
    _db: TempDb,
    sessions: Sessions<FakeEngine, FakeHost>,
}

fn fixture(mode: SessionMode) -> (Fixture, Settings) {
    let db = TempDb::new("session");
    let sessions = Sessions::open(
        FakeEngine::default(),
        FakeHost::default(),
        &db.path(),
        Locks::new(&db.dir.join("locks"), Duration::from_secs(10)),
    )
    .unwrap();
    let settings = Settings {
        cpus: 2.0,
        memory_bytes: 1 << 30,
        pids_limit: 100,
        grace: Duration::from_secs(60),
        lifetime: Duration::from_secs(3600),
        mode,
        pool: Pool::default(),
        max_per_user: 3,
        services: ServiceSettings {
            pool: crate::network::ServicesPool::default(),
            limits: crate::container::ServiceLimits {
                share: 0.5,
                capabilities: vec!["CHOWN".into(), "SETUID".into()],
                persist_volumes: false,
            },
            ready_timeout: Some(Duration::from_secs(30)),
        },
        hardening: crate::container::Hardening::default(),
    };
    (Fixture { _db: db, sessions }, settings)
}

fn request(program: Program) -> ConnectRequest {
    ConnectRequest {
        user: Identity::new(
            UserName::parse("alice").unwrap(),
            1001,
            1001,
            "alice",
            "/bin/bash",
        ),
        project: String::new(),
        routed: Routed {
            program,
            tty: false,
        },
        window: None,
        client: String::new(),
        env: vec![("LANG".into(), "C.UTF-8".into())],
        agent_dir: None,
        image: "img".into(),
        build: None,
        workdir: None,
        on_start: None,
        services: Vec::new(),
    }
}

impl Fixture {
    fn connect(&mut self, settings: &Settings) -> i32 {
        self.sessions
            .connect(&request(Program::Command("true".into())), settings)
            .unwrap()
    }

    fn row(&self) -> Option<SessionRow> {
        self.sessions.state.session(&alice(), "").unwrap()
    }

    /// Records a live connection by `process` (as spawn does before its exec), so
    /// the session holds no grace deadline.
    fn open_connection(&mut self, process: i32) {
        let row = self.row().unwrap();
        let state = &self.sessions.state;
        state.set_grace_until(&alice(), "", None).unwrap();
        state
            .add_connection(&row, &pid(process), NOW, "shell", "")
            .unwrap();
    }

    /// Connection rows alice's session has (live or not).
    fn connection_rows(&self) -> usize {
        self.sessions.state.connections(&alice(), "").unwrap().len()
    }

    fn tick(&mut self) -> Tick {
        let keeper = self.row().and_then(|row| row.keeper).unwrap_or(pid(1));
        let alice = UserName::parse("alice").unwrap();
        self.sessions.keeper_tick(&alice, "", &keeper).unwrap()
    }
}

#[test]
fn the_first_connection_creates_and_a_second_reattaches() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    assert_eq!(f.connect(&settings), 0);
    assert!(
        f.sessions.engine().networks.contains("podspawn-alice"),
        "a missing network is made"
    );
    let first = f.row().unwrap();
    assert_eq!(first.container, "podspawn-alice");
    assert_eq!(first.expires_at, Some(NOW + 3_600_000));
    assert!(
        first.grace_until.is_some(),
        "the only connection ended: grace starts"
    );
    f.sessions.host.now += 10_000;
    assert_eq!(f.connect(&settings), 0);
    assert_eq!(f.sessions.engine().creates, 1);
    assert_eq!(f.row().unwrap().session_id, first.session_id);
    // The first exec waits for the container's setup; the reattach does not.
    let execs = f.sessions.engine().execs.clone();
    assert_eq!(execs[0].argv[3], "podspawn-wait");
    assert_eq!(execs[1].argv[..2], ["/bin/sh", "-c"]);
    assert_eq!(execs[1].argv[2], "true");
    let marker = execs[1].env.last().unwrap();
    assert_eq!(marker.0, "PODSPAWN_CONNECTION");
    assert!(marker.1.starts_with("session1-"));
    assert_eq!(f.sessions.host.keepers.len(), 1, "one keeper, still alive");
}

#[test]
fn stop_tells_the_live_connections_then_destroys_the_session() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    assert_eq!(f.connect(&settings), 0);
    f.open_connection(501);
    f.open_connection(502);
    f.sessions.host.dead.insert(502);
    let (stopped, connections) = f.sessions.stop(&alice(), "").unwrap();
    assert_eq!(stopped.container, "podspawn-alice");
    assert_eq!(connections, 1, "only the live one counts");
    assert_eq!(*f.sessions.host.told_stopped.borrow(), [501]);
    assert!(
        f.sessions
            .engine()
            .applied
            .iter()
            .any(|applied| applied.starts_with("remove container podspawn-alice")),
        "{:?}",
        f.sessions.engine().applied
    );
    assert!(f.row().is_none());
    let again = f.sessions.stop(&alice(), "").unwrap_err();
    assert_eq!(again.to_string(), "alice has no default session");
}

#[test]
fn a_stopped_connection_makes_nothing_again_and_says_why() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    // `stop` meanwhile: the exec ends told, and the session is gone.
    f.sessions.engine().script = vec![ExecEnd::Stopped {
        code: 137,
        held_stderr: Vec::new(),
    }];
    let db = f._db.path();
    f.sessions.engine().during_exec = Some(Box::new(move || {
        let other = crate::state::State::open(&db).unwrap();
        other.delete_session(&alice(), "").unwrap();
    }));
    let err = f
        .sessions
        .connect(&request(Program::Shell), &settings)
        .unwrap_err();
    assert_eq!(err.user_message(), "an admin ended this session");
    assert_eq!(f.sessions.engine().creates, 1, "no second container");
}

#[test]
fn a_stop_that_did_not_destroy_the_session_leaves_the_commands_exit_code() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.sessions.engine().script = vec![ExecEnd::Stopped {
        code: 3,
        held_stderr: Vec::new(),
    }];
    assert_eq!(
        f.sessions
            .connect(&request(Program::Command("exit 3".into())), &settings)
            .unwrap(),
        3
    );
    assert_eq!(f.connection_rows(), 0, "the connection was released");
}

/// A stop that did not destroy the session, and then a container found gone: the
/// connection ends there, saying why, and makes nothing again.
#[test]
fn after_a_stop_a_vanished_container_is_not_made_again() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    f.sessions.engine().script = vec![ExecEnd::Stopped {
        code: 1,
        held_stderr: b"Error response from daemon: No such container: podspawn-alice\n".to_vec(),
    }];
    f.sessions.engine().vanish_after_exec = true;
    f.sessions.host.stopped = true;
    let err = f
        .sessions
        .connect(&request(Program::Shell), &settings)
        .unwrap_err();
    assert_eq!(err.user_message(), "an admin ended this session");
    assert_eq!(f.sessions.engine().creates, 1, "no second container");
    assert_eq!(f.connection_rows(), 0);
}

#[test]
fn a_terminal_gets_the_clients_size_before_its_program_and_pipes_get_nothing() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    let window = Some(crate::container::WindowSize {
        rows: 50,
        cols: 132,
    });
    let on_a_terminal = ConnectRequest {
        routed: Routed {
            program: Program::Shell,
            tty: true,
        },
        window,
        ..request(Program::Shell)
    };
    f.sessions.connect(&on_a_terminal, &settings).unwrap();
    let on_pipes = ConnectRequest {
        routed: Routed {
            program: Program::Command("true".into()),
            tty: false,
        },
        window,
        ..request(Program::Shell)
    };
    f.sessions.connect(&on_pipes, &settings).unwrap();
    let execs = f.sessions.engine().execs.clone();
    // The size is set first, before even the wait for a new container's setup.
    assert_eq!(execs[0].argv[3..6], ["podspawn-size", "50", "132"]);
    assert_eq!(execs[0].argv[9], "podspawn-wait");
    assert!(!execs[1].argv.iter().any(|arg| arg == "podspawn-size"));
}

#[test]
fn the_exit_code_is_passed_on_and_a_disconnect_is_128_plus_signal() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.sessions.engine().script = vec![
        ExecEnd::Exited {
            code: 42,
            held_stderr: Vec::new(),
        },
        ExecEnd::Disconnected {
            signal: libc::SIGHUP,
        },
    ];
    assert_eq!(f.connect(&settings), 42);
    assert_eq!(f.connect(&settings), 129);
    assert_eq!(f.connection_rows(), 0);
}

#[test]
fn exit_1_with_a_running_container_is_the_commands_own() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    f.sessions.engine().script = vec![ExecEnd::Exited {
        code: 1,
        held_stderr: b"Error response from daemon: No such container: x\n".to_vec(),
    }];
    assert_eq!(f.connect(&settings), 1);
    assert_eq!(f.sessions.engine().creates, 1);
}

#[test]
fn a_container_removed_by_hand_is_healed_on_the_next_connection() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    f.sessions.engine().vanish_on_exec = true;
    assert_eq!(f.connect(&settings), 0);
    assert_eq!(f.sessions.engine().creates, 2);
    assert_eq!(f.row().unwrap().session_id, "session2");
    assert_eq!(f.sessions.engine().execs.len(), 3);
}

#[test]
fn a_container_without_a_row_is_replaced() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.sessions
        .engine()
        .running
        .insert("podspawn-alice".into(), "lost".into());
    assert_eq!(f.connect(&settings), 0);
    assert_eq!(f.sessions.engine().removes, ["podspawn-alice"]);
    assert_eq!(f.sessions.engine().running["podspawn-alice"], "session1");
}

#[test]
fn a_container_of_the_name_that_is_not_podspawns_is_left_alone() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.sessions.engine().foreign.insert("podspawn-alice".into());
    let err = f
        .sessions
        .connect(&request(Program::Command("true".into())), &settings)
        .unwrap_err();
    assert!(
        matches!(err, SessionError::Foreign { ref container } if container == "podspawn-alice")
    );
    assert!(
        err.user_message().contains("podspawn-alice"),
        "{}",
        err.user_message()
    );
    assert!(f.sessions.engine().removes.is_empty());
    assert!(f.row().is_none());
}

#[test]
fn a_user_removed_while_connecting_gets_no_container() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.sessions.host.removed.insert("alice".into());
    let err = f
        .sessions
        .connect(&request(Program::Command("true".into())), &settings)
        .unwrap_err();
    assert!(matches!(err, SessionError::NotRegistered(_)), "{err}");
    assert_eq!(f.sessions.engine().creates, 0);
    assert!(f.row().is_none());
}

#[test]
fn grace_reconnect_gets_the_same_container_and_expiry_destroys_it() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    let until = f.row().unwrap().grace_until.unwrap();
    assert_eq!(until, NOW + 60_000);
    f.sessions.host.now = until - 1;
    assert_eq!(f.tick(), Tick::Sleep(Duration::from_millis(1)));
    f.connect(&settings);
    assert_eq!(f.sessions.engine().creates, 1, "reconnected in time");
    let until = f.row().unwrap().grace_until.unwrap();
    f.sessions.host.now = until - 1;
    assert_eq!(
        f.tick(),
        Tick::Sleep(Duration::from_millis(1)),
        "never early"
    );
    f.sessions.host.now = until;
    assert_eq!(f.tick(), Tick::Stop);
    assert_eq!(f.sessions.engine().removes, ["podspawn-alice"]);
    assert!(f.row().is_none());
}

#[test]
fn a_killed_connection_stops_counting() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    // A connection whose spawn was SIGKILLed: its row stays, its process is gone.
    f.open_connection(777);
    assert_eq!(f.tick(), Tick::Sleep(KEEPER_TICK));
    assert_eq!(f.row().unwrap().grace_until, None, "pid 777 is alive");
    f.sessions.host.dead.insert(777);
    f.tick();
    assert_eq!(f.row().unwrap().grace_until, Some(NOW + 60_000));
    assert_eq!(f.connection_rows(), 0);
}

#[test]
fn destroy_on_disconnect_leaves_the_removal_to_the_keeper_and_persistent_keeps() {
    let (mut f, settings) = fixture(SessionMode::DestroyOnDisconnect);
    f.connect(&settings);
    assert!(
        f.sessions.engine().removes.is_empty(),
        "the user's exit code does not wait for docker rm"
    );
    let keeper = f.row().unwrap().keeper.unwrap();
    assert_eq!(
        *f.sessions.host.woken.borrow(),
        [keeper.pid],
        "the keeper is told at once"
    );
    // Not joined again meanwhile: a new connection gets a new container.
    f.connect(&settings);
    assert_eq!(f.sessions.engine().creates, 2);
    assert_eq!(f.sessions.engine().removes, ["podspawn-alice"]);
    // The keeper's next look removes it.
    assert_eq!(f.tick(), Tick::Stop);
    assert_eq!(
        f.sessions.engine().removes,
        ["podspawn-alice", "podspawn-alice"]
    );
    assert!(f.row().is_none());

    let (mut f, settings) = fixture(SessionMode::Persistent);
    f.connect(&settings);
    let row = f.row().unwrap();
    assert_eq!(
        (row.expires_at, row.grace_until, row.keeper),
        (None, None, None)
    );
    assert!(
        f.sessions.host.keepers.is_empty(),
        "persistent sessions need no keeper"
    );
    assert!(f.sessions.engine().removes.is_empty());
}

#[test]
fn with_no_keeper_alive_the_connection_destroys_itself() {
    let (mut f, settings) = fixture(SessionMode::DestroyOnDisconnect);
    f.sessions.host.dead.insert(5001);
    f.connect(&settings);
    assert_eq!(f.sessions.host.keepers, [5001]);
    assert_eq!(f.sessions.engine().removes, ["podspawn-alice"]);
    assert!(f.row().is_none());
    assert!(f.sessions.host.woken.borrow().is_empty());
}

#[test]
fn lifetime_ends_a_session_even_with_connections() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    f.open_connection(778);
    let row = f.row().unwrap();
    f.sessions.host.now = row.expires_at.unwrap();
    assert_eq!(f.tick(), Tick::Stop);
    assert_eq!(f.sessions.engine().removes, ["podspawn-alice"]);
    // And a connection arriving after the lifetime gets a fresh container.
    f.connect(&settings);
    assert_eq!(f.sessions.engine().creates, 2);
}

#[test]
fn a_dead_keeper_is_replaced_and_a_stale_keeper_stops() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    let old_keeper = f.row().unwrap().keeper.unwrap();
    f.sessions.host.dead.insert(old_keeper.pid);
    f.connect(&settings);
    let new_keeper = f.row().unwrap().keeper.unwrap();
    assert_ne!(new_keeper, old_keeper);
    let alice = UserName::parse("alice").unwrap();
    assert_eq!(
        f.sessions.keeper_tick(&alice, "", &old_keeper).unwrap(),
        Tick::Stop
    );
}

#[test]
fn cleanup_expires_what_no_keeper_expired_and_reconciles() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    // The keeper is dead and the grace period over: cleanup does the keeper's job.
    let keeper = f.row().unwrap().keeper.unwrap();
    f.sessions.host.dead.insert(keeper.pid);
    f.sessions.host.now += 61_000;
    // A container nobody has a row for, and a row whose container is gone.
    f.sessions
        .engine()
        .running
        .insert("podspawn-bob".into(), "lost".into());
    let mut carol = session("carol");
    carol.created_at = f.sessions.host.now;
    carol.expires_at = Some(carol.created_at + 100_000);
    f.sessions.state.insert_session(&carol, &[]).unwrap();

    let sweep = f.sessions.cleanup().unwrap();
    assert_eq!(
        sweep,
        Sweep {
            grace_expired: 1,
            orphans_removed: 1,
            rows_dropped: 1,
            ..Sweep::default()
        }
    );
    assert!(f.sessions.engine().running.is_empty());
    assert!(f.sessions.state.sessions().unwrap().is_empty());
    assert_eq!(
        f.sessions.cleanup().unwrap(),
        Sweep::default(),
        "a second pass finds nothing"
    );
}

#[test]
fn cleanup_leaves_live_sessions_alone() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    f.open_connection(900);
    assert_eq!(f.sessions.cleanup().unwrap(), Sweep::default());
    assert_eq!(f.sessions.engine().running.len(), 1);
    assert!(f.row().is_some());
}

#[test]
fn a_stale_network_on_the_users_subnet_is_reclaimed_and_a_live_one_is_not() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    let cidr = settings.pool.for_user("alice", 1001).cidr();
    // Left by "ghost", whose account is gone (alice got its uid).
    f.sessions
        .engine()
        .subnets
        .insert("podspawn-ghost".into(), (cidr.clone(), "ghost".into()));
    assert_eq!(f.connect(&settings), 0);
    assert!(!f.sessions.engine().subnets.contains_key("podspawn-ghost"));
    assert_eq!(f.sessions.engine().subnets["podspawn-alice"].0, cidr);

    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    // "bob" still exists, with a uid in alice's slot: a real collision.
    f.sessions.host.accounts.insert("bob".into(), 1001 + 4096);
    f.sessions
        .engine()
        .subnets
        .insert("podspawn-bob".into(), (cidr, "bob".into()));
    let request = request(Program::Command("true".into()));
    let err = f.sessions.connect(&request, &settings).unwrap_err();
    assert!(err.to_string().contains("same subnet"), "{err}");
    assert!(f.sessions.engine().subnets.contains_key("podspawn-bob"));
}

#[test]
fn removing_a_user_destroys_their_sessions_and_network() {
    let (mut f, settings) = fixture(SessionMode::Persistent);
    f.connect(&settings);
    let held = f.sessions.locks.acquire(&alice()).unwrap();
    let (destroyed, network) = f.sessions.remove_user(&held).unwrap();
    assert_eq!(destroyed, 1);
    assert!(network.is_ok());
    assert!(f.sessions.engine().running.is_empty());
    assert!(!f.sessions.engine().networks.contains("podspawn-alice"));
    assert_eq!(f.sessions.remove_user(&held).unwrap().0, 0);
}

#[test]
fn every_change_is_one_effect() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    f.sessions.host.now += 61_000;
    assert_eq!(f.tick(), Tick::Stop);
    assert_eq!(
        f.sessions.engine().applied,
        [
            "create container podspawn-alice (image img)",
            "create network podspawn-alice for alice",
            "create container podspawn-alice (image img)",
            "remove container podspawn-alice",
        ]
    );
}

#[test]
fn networks_of_users_neither_registered_nor_in_session_go() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    for user in ["bob", "carol"] {
        f.sessions.engine().subnets.insert(
            format!("podspawn-{user}"),
            (format!("10.0.0.{}/28", user.len()), user.into()),
        );
        f.sessions
            .engine()
            .networks
            .insert(format!("podspawn-{user}"));
    }
    // carol is registered (has keys); bob is not (nor is he in the fake's accounts).
    f.sessions.host.removed.insert("bob".into());
    let removed = f.sessions.remove_unused_networks().unwrap();
    assert_eq!(removed, 1);
    let networks = &f.sessions.engine().networks;
    assert!(networks.contains("podspawn-alice"), "alice has a session");
    assert!(networks.contains("podspawn-carol"), "carol is registered");
    assert!(!networks.contains("podspawn-bob"));
}

#[test]
fn the_overview_counts_live_connections_and_asks_the_engine_once() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    f.open_connection(901);
    f.open_connection(902);
    f.sessions.host.dead.insert(902);
    let listed = f.sessions.overview().unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].live_connections, 1);
    assert_eq!(listed[0].running, Some(ContainerState::Running));
}

/// A connection of alice's to `project` (a scratch name when `build` is `None`).
fn project_request(project: &str, image: &str, build: Option<ImageBuild>) -> ConnectRequest {
    ConnectRequest {
        project: project.into(),
        image: image.into(),
        build,
        workdir: Some(format!("/workspace/{project}")),
        ..request(Program::Command("true".into()))
    }
}

/// A build of `project` whose context and log are in `dir` (the fixture's, removed
/// with it).
fn image_build(project: &str, dir: &std::path::Path) -> ImageBuild {
    ImageBuild {
        project: project.into(),
        podfile: "podfile.yaml".into(),
        dockerfile: "# step: Pulling base image img\nFROM img\n".into(),
        context: dir.to_path_buf(),
        log: dir.join(format!("{project}.build.log")),
        timeout: Duration::from_secs(60),
    }
}

#[test]
fn each_project_and_scratch_name_is_a_session_of_its_own_with_its_own_slot() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    let api = project_request(
        "api",
        "podspawn/api:0123456789ab",
        Some(image_build("api", &f._db.dir)),
    );
    f.sessions
        .engine()
        .images
        .insert("podspawn/api:0123456789ab".into());
    assert_eq!(f.sessions.connect(&api, &settings).unwrap(), 0);
    let work = project_request("work", "img", None);
    assert_eq!(f.sessions.connect(&work, &settings).unwrap(), 0);
    let rows = f.sessions.state.sessions().unwrap();
    let described: Vec<(String, String, u32)> = rows
        .iter()
        .map(|row| (row.project.clone(), row.container.clone(), row.slot))
        .collect();
    assert_eq!(
        described,
        [
            ("".to_string(), "podspawn-alice".to_string(), 0),
            ("api".to_string(), "podspawn-alice-api".to_string(), 1),
            ("work".to_string(), "podspawn-alice-work".to_string(), 2),
        ]
    );
    // Each ran in its own container, the project's in its workspace.
    let execs = &f.sessions.engine().execs;
    assert_eq!(execs[1].container, "podspawn-alice-api");
    assert_eq!(execs[1].workdir.as_deref(), Some("/workspace/api"));
    // A second connection to the project reattaches.
    f.sessions.connect(&api, &settings).unwrap();
    assert_eq!(f.sessions.engine().creates, 3);
}

#[test]
fn one_session_more_than_max_per_user_is_refused_naming_the_running_ones() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    f.sessions
        .connect(&project_request("one", "img", None), &settings)
        .unwrap();
    f.sessions
        .connect(&project_request("two", "img", None), &settings)
        .unwrap();
    let err = f
        .sessions
        .connect(&project_request("three", "img", None), &settings)
        .unwrap_err();
    assert!(matches!(err, SessionError::TooManySessions { .. }), "{err}");
    assert_eq!(
        err.user_message(),
        "you have 3 sessions already (default, one, two); end one first"
    );
    assert_eq!(f.sessions.engine().creates, 3);
    // The ones there are still reattach.
    f.sessions
        .connect(&project_request("two", "img", None), &settings)
        .unwrap();
}

fn register(f: &Fixture, project: &str, image: &str) {
    f.sessions
        .state
        .put_project(&crate::state::ProjectRow {
            name: crate::project::ProjectName::parse(project).unwrap(),
            repo: "/srv/repo".into(),
            branch: "main".into(),
            commit: "0123".into(),
            podfile: "podfile.yaml".into(),
            image: image.into(),
            dockerfile: "FROM img\n".into(),
            workspace: format!("/workspace/{project}"),
            session: "{}".into(),
            updated_at: 0,
        })
        .unwrap();
}

#[test]
fn a_connection_that_knows_an_older_image_of_its_project_builds_nothing() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    register(&f, "api", "podspawn/api:newer0000000");
    let api = project_request(
        "api",
        "podspawn/api:0123456789ab",
        Some(image_build("api", &f._db.dir)),
    );
    let err = f.sessions.connect(&api, &settings).unwrap_err();
    assert!(matches!(err, SessionError::ProjectChanged { .. }), "{err}");
    assert_eq!(f.sessions.engine().builds, 0);
}

#[test]
fn a_missing_project_image_is_built_once_and_then_the_container_made() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    register(&f, "api", "podspawn/api:0123456789ab");
    let api = project_request(
        "api",
        "podspawn/api:0123456789ab",
        Some(image_build("api", &f._db.dir)),
    );
    assert_eq!(f.sessions.connect(&api, &settings).unwrap(), 0);
    assert_eq!(f.sessions.engine().builds, 1);
    assert_eq!(f.sessions.engine().creates, 1);
    // Found built: no second build, even for a new container.
    f.sessions.engine().running.remove("podspawn-alice-api");
    f.sessions.connect(&api, &settings).unwrap();
    assert_eq!(f.sessions.engine().creates, 2);
    assert_eq!(f.sessions.engine().builds, 1);
    // A scratch name has nothing to build: a missing image is an error.
    let lost = project_request("lost", "podspawn/gone:000000000000", None);
    let err = f.sessions.connect(&lost, &settings).unwrap_err();
    assert!(
        matches!(
            err,
            SessionError::Docker(DockerError::ImageUnavailable { .. })
        ),
        "{err}"
    );
    assert_eq!(f.sessions.engine().builds, 1);
}

#[test]
fn a_container_name_two_sessions_would_share_is_refused_to_the_second() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.sessions.host.accounts.insert("bob".into(), 1002);
    f.sessions.host.accounts.insert("bob-dev".into(), 1003);
    let as_user = |name: &str, uid: u32, project: &str| ConnectRequest {
        user: Identity::new(UserName::parse(name).unwrap(), uid, uid, name, "/bin/sh"),
        ..project_request(project, "img", None)
    };
    f.sessions
        .connect(&as_user("bob", 1002, "dev"), &settings)
        .unwrap();
    // bob-dev's default session would be podspawn-bob-dev too.
    let err = f
        .sessions
        .connect(&as_user("bob-dev", 1003, ""), &settings)
        .unwrap_err();
    assert!(matches!(err, SessionError::NameTaken { .. }), "{err}");
    // Even with the container gone (an engine restart), the row keeps the name bob's.
    f.sessions.engine().running.remove("podspawn-bob-dev");
    let err = f
        .sessions
        .connect(&as_user("bob-dev", 1003, ""), &settings)
        .unwrap_err();
    assert!(matches!(err, SessionError::NameTaken { .. }), "{err}");
    assert_eq!(f.sessions.engine().creates, 1);
}

#[test]
fn with_one_session_per_user_only_the_default_one_opens() {
    let (mut f, mut settings) = fixture(SessionMode::GracePeriod);
    settings.max_per_user = 1;
    let err = f
        .sessions
        .connect(&project_request("work", "img", None), &settings)
        .unwrap_err();
    assert_eq!(
        err.user_message(),
        "this server allows only your default session (session.max_per_user is 1)"
    );
    f.connect(&settings);
}

#[test]
fn cleanup_removes_images_no_project_has_and_leaves_a_building_projects_alone() {
    let (mut f, _) = fixture(SessionMode::GracePeriod);
    register(&f, "api", "podspawn/api:000000000002");
    register(&f, "web", "podspawn/web:000000000001");
    for image in [
        "podspawn/api:000000000001",
        "podspawn/api:000000000002",
        "podspawn/gone:000000000001",
        "podspawn/web:000000000001",
        "podspawn/web:000000000000",
    ] {
        f.sessions.engine().images.insert(image.into());
    }
    // web is being built (its lock is held): its images wait for the next pass.
    let web = crate::project::ProjectName::parse("web").unwrap();
    let held = f.sessions.lock_project(&web, Duration::ZERO).unwrap();
    assert_eq!(f.sessions.remove_replaced_images().unwrap(), 2);
    let removed: Vec<&String> = f
        .sessions
        .engine()
        .applied
        .iter()
        .filter(|effect| effect.contains("image"))
        .collect();
    assert_eq!(removed.len(), 2, "{removed:?}");
    assert!(
        removed
            .iter()
            .any(|effect| effect.contains("podspawn/api:000000000001"))
    );
    assert!(
        removed
            .iter()
            .any(|effect| effect.contains("podspawn/gone:000000000001"))
    );
    drop(held);
    assert_eq!(f.sessions.remove_replaced_images().unwrap(), 1);
}

/// A companion service as a project's registration gives it.
fn service(name: &str, image: &str, ports: &[u16]) -> Service {
    Service {
        name: name.into(),
        image: image.into(),
        ports: ports.to_vec(),
        env: vec![("POSTGRES_PASSWORD".into(), "devpass".into())],
        volumes: vec![crate::container::VolumeMount {
            name: format!("{name}-data"),
            target: "/var/lib/data".into(),
            read_only: false,
        }],
        command: None,
    }
}

/// alice's connection to project `project`, whose image exists, with `services`.
fn with_services(f: &mut Fixture, project: &str, services: Vec<Service>) -> ConnectRequest {
    let image = format!("podspawn/{project}:0123456789ab");
    f.sessions.engine().images.insert(image.clone());
    ConnectRequest {
        services,
        ..project_request(project, &image, None)
    }
}

fn api_services() -> Vec<Service> {
    vec![
        service("postgres", "postgres:16", &[5432]),
        service("cache", "redis:7", &[6379]),
    ]
}

#[test]
fn a_session_with_services_has_a_network_of_its_own_and_its_services_on_it() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    let api = with_services(&mut f, "api", api_services());
    assert_eq!(f.sessions.connect(&api, &settings).unwrap(), 0);
    let row = f.sessions.state.session(&alice(), "api").unwrap().unwrap();
    assert_eq!(row.network, "podspawn-alice-api.net");
    let engine = f.sessions.engine();
    assert_eq!(
        engine.owners["podspawn-alice-api.net"],
        ("alice".into(), "api".into(), row.session_id.clone()),
        "the network carries its session's labels"
    );
    // Slot 1 (0 is the default session's) of alice's (uid 1001) block of the
    // services pool.
    assert_eq!(
        engine.subnets["podspawn-alice-api.net"].0,
        "10.215.244.136/29"
    );
    let postgres = &engine.services["podspawn-alice-api.postgres"];
    let cache = &engine.services["podspawn-alice-api.cache"];
    assert_eq!(postgres.network, "podspawn-alice-api.net");
    assert_eq!(postgres.address.to_string(), "10.215.244.139");
    assert_eq!(cache.address.to_string(), "10.215.244.140");
    // Half of the session's limits for the two together, a quarter each (its 100
    // pids make 25, less than a service is ever given), and only the configured
    // capabilities.
    assert_eq!(
        (postgres.cpus, postgres.memory_bytes, postgres.pids_limit),
        (0.5, 1 << 28, 64)
    );
    assert_eq!(cache.memory_bytes, 1 << 28);
    assert_eq!(postgres.capabilities, ["CHOWN", "SETUID"]);
    // Its volume is the session's own.
    assert_eq!(
        postgres.volumes[0].name,
        format!("podspawn-alice.api.{}.postgres-data", row.session_id)
    );
    // The container and both services were asked for together, after the network.
    let applied = &engine.applied;
    let at = |prefix: &str| applied.iter().position(|a| a.starts_with(prefix)).unwrap();
    assert!(at("create network podspawn-alice-api.net") < at("create container"));
    assert_eq!(
        at("create service podspawn-alice-api.postgres"),
        at("create container") + 1
    );
    // Each declared port was waited for, on its service's address, before the exec.
    let asked: Vec<String> = f
        .sessions
        .host
        .asked_ports
        .borrow()
        .iter()
        .map(|address| address.to_string())
        .collect();
    assert_eq!(asked, ["10.215.244.139:5432", "10.215.244.140:6379"]);
    // A second connection reattaches: nothing made, nothing waited for.
    f.sessions.connect(&api, &settings).unwrap();
    assert_eq!(f.sessions.engine().services.len(), 2);
    assert_eq!(f.sessions.host.asked_ports.borrow().len(), 2);
    assert_eq!(f.sessions.state.services(&alice(), "api").unwrap().len(), 2);
}

#[test]
fn a_session_without_services_is_made_as_it_always_was() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.connect(&settings);
    let applied = f.sessions.engine().applied.clone();
    assert!(
        applied
            .iter()
            .all(|a| !a.contains(".net") && !a.contains("service")),
        "{applied:?}"
    );
    assert_eq!(f.row().unwrap().network, "");
}

#[test]
fn two_projects_of_one_user_have_services_of_the_same_name_apart() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    let api = with_services(&mut f, "api", api_services());
    let web = with_services(&mut f, "web", api_services());
    f.sessions.connect(&api, &settings).unwrap();
    f.sessions.connect(&web, &settings).unwrap();
    let engine = f.sessions.engine();
    let api_pg = &engine.services["podspawn-alice-api.postgres"];
    let web_pg = &engine.services["podspawn-alice-web.postgres"];
    assert_ne!(api_pg.network, web_pg.network);
    assert_ne!(api_pg.address, web_pg.address);
    assert_ne!(
        engine.subnets[&api_pg.network].0,
        engine.subnets[&web_pg.network].0
    );
}

#[test]
fn the_end_of_a_session_takes_its_services_network_and_volumes() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    let api = with_services(&mut f, "api", api_services());
    f.sessions.connect(&api, &settings).unwrap();
    assert_eq!(f.sessions.engine().volumes.len(), 2);
    let row = f.sessions.state.session(&alice(), "api").unwrap().unwrap();
    f.sessions.host.now += 61_000;
    let keeper = row.keeper.clone().unwrap();
    let tick = f.sessions.keeper_tick(&alice(), "api", &keeper).unwrap();
    assert_eq!(tick, Tick::Stop);
    let engine = f.sessions.engine();
    assert!(engine.running.is_empty());
    assert!(engine.services.is_empty());
    assert!(!engine.networks.contains("podspawn-alice-api.net"));
    assert!(engine.volumes.is_empty());
    assert!(
        f.sessions
            .state
            .services(&alice(), "api")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn kept_volumes_outlive_their_session_and_are_the_next_ones() {
    let (mut f, mut settings) = fixture(SessionMode::GracePeriod);
    settings.services.limits.persist_volumes = true;
    let api = with_services(&mut f, "api", api_services());
    f.sessions.connect(&api, &settings).unwrap();
    let row = f.sessions.state.session(&alice(), "api").unwrap().unwrap();
    f.sessions.host.now += 61_000;
    f.sessions
        .keeper_tick(&alice(), "api", &row.keeper.unwrap())
        .unwrap();
    assert_eq!(
        f.sessions.engine().volumes.keys().collect::<Vec<_>>(),
        [
            "podspawn-alice.api.cache-data",
            "podspawn-alice.api.postgres-data"
        ]
    );
    f.sessions.connect(&api, &settings).unwrap();
    let postgres = &f.sessions.engine().services["podspawn-alice-api.postgres"];
    assert_eq!(postgres.volumes[0].name, "podspawn-alice.api.postgres-data");
    // While a session uses them they stay; with the user they go.
    let of_alice = |volume: &ManagedVolume| volume.user == "alice";
    assert_eq!(
        f.sessions
            .remove_kept_volumes(of_alice, Reason::UserRemoved),
        0
    );
    let row = f.sessions.state.session(&alice(), "api").unwrap().unwrap();
    f.sessions.host.now += 61_000;
    f.sessions
        .keeper_tick(&alice(), "api", &row.keeper.unwrap())
        .unwrap();
    assert_eq!(
        f.sessions
            .remove_kept_volumes(of_alice, Reason::UserRemoved),
        2
    );
    assert!(f.sessions.engine().volumes.is_empty());
}

#[test]
fn a_service_that_cannot_start_or_answer_does_not_stop_the_session() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.sessions.engine().missing_images.insert("redis:7".into());
    f.sessions.host.silent_ports.insert(5432);
    let api = with_services(&mut f, "api", api_services());
    assert_eq!(f.sessions.connect(&api, &settings).unwrap(), 0);
    assert_eq!(f.sessions.engine().execs.len(), 1, "the command ran");
    assert_eq!(f.sessions.engine().services.len(), 1);
    // The failed one stays recorded: cleanup makes it once its image is there.
    assert_eq!(f.sessions.state.services(&alice(), "api").unwrap().len(), 2);
    f.sessions.engine().missing_images.clear();
    let sweep = f.sessions.cleanup().unwrap();
    assert_eq!(sweep.services_restarted, 1);
    assert_eq!(f.sessions.engine().services.len(), 2);
}

#[test]
fn cleanup_makes_a_gone_or_stopped_service_again() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    let api = with_services(&mut f, "api", api_services());
    f.sessions.connect(&api, &settings).unwrap();
    // An open connection keeps the session from its grace period's end.
    let row = f.sessions.state.session(&alice(), "api").unwrap().unwrap();
    f.sessions
        .state
        .add_connection(&row, &pid(77), NOW, "shell", "")
        .unwrap();
    let engine = f.sessions.engine();
    engine.services.remove("podspawn-alice-api.cache");
    engine.stopped.insert("podspawn-alice-api.postgres".into());
    let sweep = f.sessions.cleanup().unwrap();
    assert_eq!(sweep.services_restarted, 2);
    assert_eq!(sweep.orphans_removed, 0);
    let engine = f.sessions.engine();
    assert_eq!(engine.services.len(), 2);
    assert!(engine.stopped.is_empty());
    // A second pass finds nothing to do.
    assert_eq!(f.sessions.cleanup().unwrap().services_restarted, 0);
}

#[test]
fn what_a_crash_left_of_a_session_is_cleared_by_cleanup_or_the_next_session() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    let api = with_services(&mut f, "api", api_services());
    f.sessions.connect(&api, &settings).unwrap();
    // The state forgets the session, as if spawn died between making it and
    // recording it: everything in the engine is left over.
    f.sessions.state.delete_session(&alice(), "api").unwrap();
    let sweep = f.sessions.cleanup().unwrap();
    assert_eq!(sweep.orphans_removed, 3, "the container and both services");
    assert_eq!(f.sessions.remove_unused_networks().unwrap(), 1);
    assert_eq!(f.sessions.remove_unused_volumes(false).unwrap(), 2);
    let engine = f.sessions.engine();
    assert!(engine.services.is_empty() && engine.running.is_empty());
    assert!(!engine.networks.contains("podspawn-alice-api.net"));
    assert!(engine.volumes.is_empty());

    // Again, and this time the next connection finds the leftovers first.
    f.sessions.connect(&api, &settings).unwrap();
    let old = f.sessions.state.session(&alice(), "api").unwrap().unwrap();
    f.sessions.state.delete_session(&alice(), "api").unwrap();
    f.sessions.connect(&api, &settings).unwrap();
    let new = f.sessions.state.session(&alice(), "api").unwrap().unwrap();
    assert_ne!(new.session_id, old.session_id);
    let engine = f.sessions.engine();
    assert_eq!(engine.services.len(), 2);
    assert!(
        engine
            .services
            .values()
            .all(|service| service.session_id == new.session_id)
    );
    assert_eq!(engine.owners["podspawn-alice-api.net"].2, new.session_id);
}

#[test]
fn a_session_that_cannot_be_made_leaves_none_of_its_services() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    register(&f, "api", "podspawn/api:0123456789ab");
    // The image is missing and builds: what was made before the build goes, and
    // the session is made once, after it.
    let api = ConnectRequest {
        services: api_services(),
        ..project_request(
            "api",
            "podspawn/api:0123456789ab",
            Some(image_build("api", &f._db.dir)),
        )
    };
    assert_eq!(f.sessions.connect(&api, &settings).unwrap(), 0);
    let engine = f.sessions.engine();
    assert_eq!(engine.builds, 1);
    assert_eq!(engine.services.len(), 2);
    let undone = engine
        .applied
        .iter()
        .filter(|a| a.starts_with("remove container podspawn-alice-api."))
        .count();
    assert_eq!(undone, 2, "{:?}", engine.applied);
    // A scratch session whose image cannot be had leaves nothing behind.
    let lost = ConnectRequest {
        services: api_services(),
        ..project_request("lost", "podspawn/gone:000000000000", None)
    };
    assert!(f.sessions.connect(&lost, &settings).is_err());
    let engine = f.sessions.engine();
    assert!(!engine.networks.contains("podspawn-alice-lost.net"));
    assert!(
        !engine
            .services
            .keys()
            .any(|name| name.starts_with("podspawn-alice-lost"))
    );
    assert!(!engine.volumes.keys().any(|name| name.contains("lost")));
}

#[test]
fn removing_a_user_takes_their_sessions_services_too() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    let api = with_services(&mut f, "api", api_services());
    f.sessions.connect(&api, &settings).unwrap();
    let lock = f.sessions.lock(&alice()).unwrap();
    let (destroyed, network) = f.sessions.remove_user(&lock).unwrap();
    assert_eq!(destroyed, 1);
    assert!(network.is_ok());
    let engine = f.sessions.engine();
    assert!(engine.services.is_empty());
    assert!(engine.networks.is_empty());
    assert!(engine.volumes.is_empty());
}

#[test]
fn the_overview_shows_each_sessions_services() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    let api = with_services(&mut f, "api", api_services());
    f.sessions.connect(&api, &settings).unwrap();
    f.sessions
        .engine()
        .services
        .remove("podspawn-alice-api.cache");
    let listed = f.sessions.overview().unwrap();
    let states: Vec<(String, Option<ContainerState>)> = listed[0]
        .services
        .iter()
        .map(|(service, state)| (service.name.clone(), *state))
        .collect();
    assert_eq!(
        states,
        [
            ("postgres".to_string(), Some(ContainerState::Running)),
            ("cache".to_string(), Some(ContainerState::Missing)),
        ]
    );
}

#[test]
fn a_session_whose_services_would_share_another_users_addresses_is_refused() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    // bob's uid is alice's plus the services pool's 512 blocks.
    f.sessions.host.accounts.insert("bob".into(), 1001 + 512);
    let api = with_services(&mut f, "api", api_services());
    let err = f.sessions.connect(&api, &settings).unwrap_err();
    assert!(
        matches!(&err, SessionError::AddressesShared { other } if other == "bob"),
        "{err}"
    );
    assert!(err.user_message().contains("network.services_pool"));
    let engine = f.sessions.engine();
    assert!(engine.running.is_empty() && engine.services.is_empty());
    assert!(engine.networks.is_empty());
    // A session without services is on alice's own network, which is hers alone.
    f.connect(&settings);
}

#[test]
fn a_service_that_stops_is_not_waited_for() {
    let (mut f, settings) = fixture(SessionMode::GracePeriod);
    f.sessions.engine().stop_at_once.insert("postgres".into());
    f.sessions.host.silent_ports.insert(5432);
    let api = with_services(&mut f, "api", api_services());
    assert_eq!(f.sessions.connect(&api, &settings).unwrap(), 0);
    let asked: Vec<u16> = f
        .sessions
        .host
        .asked_ports
        .borrow()
        .iter()
        .map(|address| address.port())
        .collect();
    // One try at the stopped one's port, then on to the next service.
    assert_eq!(asked, [5432, 6379]);
}

#[test]
fn a_silent_port_is_waited_for_no_longer_than_the_timeout_has_seconds() {
    let (mut f, mut settings) = fixture(SessionMode::GracePeriod);
    settings.services.ready_timeout = Some(Duration::from_secs(3));
    f.sessions.host.silent_ports.insert(5432);
    let api = with_services(&mut f, "api", api_services());
    assert_eq!(f.sessions.connect(&api, &settings).unwrap(), 0);
    let tries = f
        .sessions
        .host
        .asked_ports
        .borrow()
        .iter()
        .filter(|address| address.port() == 5432)
        .count();
    assert_eq!(tries, 4, "a try a second, and one more");
    // With the engine elsewhere, nothing is tried at all.
    let (mut f, mut settings) = fixture(SessionMode::GracePeriod);
    settings.services.ready_timeout = None;
    let api = with_services(&mut f, "api", api_services());
    assert_eq!(f.sessions.connect(&api, &settings).unwrap(), 0);
    assert!(f.sessions.host.asked_ports.borrow().is_empty());
}
