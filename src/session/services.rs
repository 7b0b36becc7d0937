//! A session's companion services: containers of the session, made side by side with
//! its container on the session's private network (where their names are theirs
//! alone), waited for before its first program (within `ready_timeout`), made again
//! by `cleanup` when one is gone, and destroyed with the session — network and
//! volumes included. Nothing of a service outlives its session, unless the admin
//! keeps volumes (`services.persist_volumes`).
//!
//! A service that cannot be made or does not answer never stops the session: it is
//! said on an interactive terminal and in the log.

use std::collections::BTreeSet;
use std::net::SocketAddrV4;
use std::time::Duration;

use super::effects::Owner;
use super::plan::{self, NameHolder, Reason};
use super::{Effects, SessionError, Sessions};
use crate::container::{ContainerSpec, ServiceLimits, ServiceSpec};
use crate::docker::{
    ContainerState, DockerError, ImageConfig, ManagedContainer, ManagedNetwork, NetworkOwner,
    Whereabouts,
};
use crate::engine::{Effect, Engine};
use crate::exec::write_stderr;
use crate::host::{Host, Millis};
use crate::keys::UserName;
use crate::network::ServicesPool;
use crate::state::SessionRow;

/// How a session's services run, from the server config.
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceSettings {
    pub pool: ServicesPool,
    pub limits: ServiceLimits,
    /// How long a new session's first connection waits for its services' ports;
    /// `None` when the engine is elsewhere and they cannot be tried from here.
    pub ready_timeout: Option<Duration>,
}

/// How a service's wait ended.
enum Readiness {
    Ready,
    Stopped,
    /// This port did not answer in time.
    Silent(u16),
}

/// A service a new session could not make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceFailure {
    pub name: String,
    pub image: String,
    /// The one line its user may see.
    pub message: String,
}

/// A session's network belongs to the session: its labels say whose.
pub fn owner_of(spec: &ContainerSpec) -> NetworkOwner<'_> {
    NetworkOwner {
        user: spec.user.name.as_str(),
        project: &spec.project,
        session: &spec.session_id,
    }
}

/// The banner's line that says where each service is, for `ssh -L`.
pub fn banner(services: &[ServiceSpec]) -> Option<String> {
    if services.is_empty() {
        return None;
    }
    let each: Vec<String> = services
        .iter()
        .map(|service| match service.ports.as_slice() {
            [] => format!("{} at {}", service.name, service.address),
            ports => {
                let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
                format!(
                    "{} at {}:{}",
                    service.name,
                    service.address,
                    ports.join(",")
                )
            }
        })
        .collect();
    Some(format!(
        "podspawn: services {} (ssh -L PORT:ADDRESS:PORT reaches them)\n",
        each.join(", ")
    ))
}

impl<E: Engine, H: Host> Sessions<E, H> {
    /// See `remove_kept_volumes`.
    pub fn remove_kept_volumes(
        &mut self,
        owned: impl Fn(&crate::docker::ManagedVolume) -> bool,
        reason: Reason,
    ) -> usize {
        remove_kept_volumes(&mut self.effects, owned, reason)
    }

    /// Under the user's lock, with no row for the session yet: its private network.
    /// One of that name is an earlier session's, left by a crash, and so is whatever
    /// of podspawn's still carries this user's and project's labels: they go first. A
    /// network of this user's on the same subnet that no session has is stale too.
    pub(super) fn make_session_network(
        &mut self,
        spec: &ContainerSpec,
    ) -> Result<(), SessionError> {
        let create = Effect::CreateNetwork {
            network: &spec.network,
            owner: owner_of(spec),
        };
        match self.effects.apply(create, Reason::NewSession) {
            Ok(()) => return Ok(()),
            Err(DockerError::NetworkExists { network }) => {
                self.clear_leftovers(&spec.user.name, &spec.project)?;
                self.effects
                    .apply(Effect::RemoveNetwork(&network), Reason::Orphan)?;
            }
            Err(DockerError::NetworkOverlap { network, stderr }) => {
                let rows = self.state.sessions()?;
                let on_subnet = self.effects.engine().networks_on(&spec.network.cidr())?;
                let user = spec.user.name.as_str();
                for old in &on_subnet {
                    let stale = old.user == user
                        && !old.session.is_empty()
                        && !rows.iter().any(|row| row.network == old.name);
                    if !stale {
                        return Err(DockerError::NetworkOverlap {
                            network,
                            stderr: format!("{stderr} ({} has that subnet)", old.name),
                        }
                        .into());
                    }
                    let project = old.project.clone();
                    self.clear_leftovers(&spec.user.name, &project)?;
                    self.effects
                        .apply(Effect::RemoveNetwork(&old.name), Reason::StaleNetwork)?;
                }
            }
            Err(err) => return Err(err.into()),
        }
        Ok(self.effects.apply(create, Reason::NewSession)?)
    }

    /// Under the user's lock, for a (user, project) that has no row: every container
    /// podspawn made for it is an earlier session's, and goes.
    fn clear_leftovers(&mut self, user: &UserName, project: &str) -> Result<(), SessionError> {
        if self.state.session(user, project)?.is_some() {
            return Ok(());
        }
        let leftovers: Vec<String> = self
            .effects
            .engine()
            .containers()?
            .into_iter()
            .filter(|container| container.user == user.as_str() && container.project == project)
            .map(|container| container.name)
            .collect();
        for name in leftovers {
            self.effects
                .apply(Effect::RemoveContainer(&name), Reason::Orphan)?;
        }
        Ok(())
    }

    /// After the first attempt at a new session's services: one whose name is held by
    /// a container of podspawn's that no row owns gets it back; what still fails is
    /// said, and the session goes on without it.
    pub(super) fn settle_services(
        &mut self,
        services: &[ServiceSpec],
        results: Vec<Result<(), DockerError>>,
    ) -> Vec<ServiceFailure> {
        let mut failures = Vec::new();
        for (service, result) in services.iter().zip(results) {
            let result = match result {
                Err(DockerError::NameInUse { .. }) => self.clear_service_name(service),
                other => other.map_err(SessionError::from),
            };
            if let Err(err) = result {
                log::warn!(
                    "service {} of {} could not start: {err}",
                    service.name,
                    service.container
                );
                failures.push(ServiceFailure {
                    name: service.name.clone(),
                    image: service.image.clone(),
                    message: err.user_message(),
                });
            }
        }
        failures
    }

    fn clear_service_name(&mut self, service: &ServiceSpec) -> Result<(), SessionError> {
        let user = UserName::parse(&service.user).map_err(|_| SessionError::Foreign {
            container: service.container.clone(),
        })?;
        let labels = self.effects.engine().labels(&service.container)?;
        match plan::name_holder(labels.as_ref(), &user, &service.project) {
            NameHolder::Ours => self
                .effects
                .apply(Effect::RemoveContainer(&service.container), Reason::Orphan)?,
            NameHolder::Foreign => {
                return Err(SessionError::Foreign {
                    container: service.container.clone(),
                });
            }
            NameHolder::Gone => {}
        }
        Ok(self
            .effects
            .apply(Effect::CreateService(service), Reason::NewSession)?)
    }

    /// A session that could not be made: its services, network and volumes go
    /// again. What will not go is logged; `cleanup` finds it (no row owns it).
    pub(super) fn undo(&mut self, spec: &ContainerSpec, services: &[ServiceSpec]) {
        if services.is_empty() {
            return;
        }
        if let Err(err) = self.remove_parts("", &spec.network.name, services, Reason::Undone) {
            log::warn!("undoing {}: {err}", spec.name);
        }
    }

    /// Removes a session's container (if named) and services side by side, then its
    /// network (if named), then its own volumes. A session without services is one
    /// `docker rm`, as it always was.
    pub(super) fn remove_parts(
        &mut self,
        container: &str,
        network: &str,
        services: &[ServiceSpec],
        reason: Reason,
    ) -> Result<(), SessionError> {
        if services.is_empty() && network.is_empty() {
            return Ok(self
                .effects
                .apply(Effect::RemoveContainer(container), reason)?);
        }
        let effects: Vec<Effect> = std::iter::once(container)
            .filter(|name| !name.is_empty())
            .chain(services.iter().map(|service| service.container.as_str()))
            .map(Effect::RemoveContainer)
            .collect();
        for result in self.effects.apply_all(&effects, reason) {
            result?;
        }
        if !network.is_empty() {
            self.effects.apply(Effect::RemoveNetwork(network), reason)?;
        }
        let volumes: BTreeSet<&str> = services
            .iter()
            .flat_map(|service| &service.volumes)
            .filter(|volume| !volume.persistent)
            .map(|volume| volume.name.as_str())
            .collect();
        for volume in volumes {
            self.effects.apply(Effect::RemoveVolume(volume), reason)?;
        }
        Ok(())
    }

    /// A new session's first connection, before its program: each service's ports
    /// are waited for, at most `timeout` in all (they started together, so waiting
    /// for one after another costs no more than the slowest), and a service that
    /// stops meanwhile is not waited for. `None`: the engine is not on this host, so
    /// its containers' ports cannot be tried from here. An interactive terminal sees
    /// a line per service, as it comes; the log hears of what fails.
    pub(super) fn wait_for_services(
        &mut self,
        services: &[ServiceSpec],
        failures: &[ServiceFailure],
        interactive: bool,
        timeout: Option<Duration>,
    ) {
        let show = |text: &str| {
            if interactive {
                write_stderr(text.as_bytes());
            }
        };
        let started = self.host.now();
        for service in services {
            show(&format!(
                "Starting companion service: {} ({})... ",
                service.name, service.image
            ));
            if let Some(failure) = failures.iter().find(|failed| failed.name == service.name) {
                show(&format!("failed: {}\n", failure.message));
                continue;
            }
            let Some(timeout) = timeout else {
                show("started\n");
                continue;
            };
            match self.await_ports(service, started + timeout.as_millis() as i64, timeout) {
                Readiness::Ready => show("done\n"),
                Readiness::Stopped => {
                    log::warn!(
                        "service {} of {} stopped before it answered",
                        service.name,
                        service.container
                    );
                    show("it stopped; the session opens anyway\n");
                }
                Readiness::Silent(port) => {
                    log::warn!(
                        "service {} of {} did not answer on port {port} within {}s",
                        service.name,
                        service.container,
                        timeout.as_secs()
                    );
                    show(&format!(
                        "not answering on port {port} after {}s; the session opens anyway\n",
                        (self.host.now() - started).max(0) / 1000
                    ));
                }
            }
        }
    }

    /// Waits until each of `service`'s ports accepts a connection, at most until
    /// `until`, asking the engine after each second without one whether the service
    /// still runs.
    fn await_ports(
        &mut self,
        service: &ServiceSpec,
        until: Millis,
        timeout: Duration,
    ) -> Readiness {
        // A second at a time, and never more seconds than the timeout has (a clock
        // that does not move, as in tests, ends the wait all the same).
        let mut seconds_left = timeout.as_secs();
        for port in &service.ports {
            let address = SocketAddrV4::new(service.address, *port);
            loop {
                let slice = (self.host.now() + 1000).min(until);
                if self.host.wait_for_port(address, slice) {
                    break;
                }
                if slice >= until || seconds_left == 0 {
                    return Readiness::Silent(*port);
                }
                seconds_left -= 1;
                let state = self.effects.engine().state(&service.container);
                if matches!(
                    state,
                    Ok(ContainerState::NotRunning | ContainerState::Missing)
                ) {
                    return Readiness::Stopped;
                }
            }
        }
        Readiness::Ready
    }

    /// Under the user's lock, for `cleanup`: the services of a running session whose
    /// containers are gone or stopped (by `managed`, asked again for one it does not
    /// list), made again as they were. Returns how many were.
    pub(super) fn reconcile_services(
        &mut self,
        session: &SessionRow,
        managed: &[ManagedContainer],
    ) -> Result<usize, SessionError> {
        if session.network.is_empty() {
            return Ok(0);
        }
        let mut restarted = 0;
        for service in self.state.services(&session.user, &session.project)? {
            let running = match managed.iter().find(|c| c.name == service.container) {
                Some(container) => container.running,
                None => self.effects.engine().state(&service.container)? == ContainerState::Running,
            };
            if running {
                continue;
            }
            // One that cannot be made now (its image gone, a setting docker refuses)
            // is logged (by `Effects`) and tried again next pass; it never stops the
            // pass for the sessions after it.
            let remade = self
                .effects
                .apply(
                    Effect::RemoveContainer(&service.container),
                    Reason::ServiceMissing,
                )
                .and_then(|()| {
                    self.effects
                        .apply(Effect::CreateService(&service), Reason::ServiceMissing)
                });
            if remade.is_ok() {
                restarted += 1;
            }
        }
        Ok(restarted)
    }

    /// After `cleanup`: private networks of sessions that are gone (a crash between
    /// making one and recording its session), each judged under its user's lock on a
    /// fresh look at their rows. One that will not go now is tried again next pass.
    pub(super) fn remove_unused_session_networks(
        &mut self,
        networks: &[ManagedNetwork],
    ) -> Result<usize, SessionError> {
        let rows = self.state.sessions()?;
        let mut removed = 0;
        for network in plan::unused_session_networks(networks, &rows) {
            let Ok(user) = UserName::parse(&network.user) else {
                continue;
            };
            let Some(_lock) = self.lock_or_skip(&user)? else {
                continue;
            };
            let owned = self
                .state
                .session(&user, &network.project)?
                .is_some_and(|row| row.network == network.name);
            if owned {
                continue;
            }
            let labelled = Owner::labelled(&network.user, &network.project, &network.session);
            let removal = Effect::RemoveNetwork(&network.name);
            if self
                .effects
                .apply_as(labelled, removal, Reason::Orphan)
                .is_ok()
            {
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// After `cleanup`: services' volumes that nothing keeps — a session's own once
    /// the session is gone; a kept one once its user or project is, or when volumes
    /// are no longer kept. Each judged under its user's lock.
    pub fn remove_unused_volumes(&mut self, keep_volumes: bool) -> Result<usize, SessionError> {
        let volumes = self.effects.engine().volumes()?;
        let rows = self.state.sessions()?;
        let projects: Vec<String> = self
            .state
            .projects()?
            .into_iter()
            .map(|project| project.name.to_string())
            .collect();
        let host = &self.host;
        let is_registered = |user: &str| {
            UserName::parse(user)
                .ok()
                .is_some_and(|user| host.is_registered(&user))
        };
        let unused: Vec<_> =
            plan::unused_volumes(&volumes, &rows, is_registered, &projects, keep_volumes)
                .into_iter()
                .cloned()
                .collect();
        let mut removed = 0;
        for volume in unused {
            let user = UserName::parse(&volume.user).ok();
            let _lock = match &user {
                Some(user) => match self.lock_or_skip(user)? {
                    Some(lock) => Some(lock),
                    None => continue,
                },
                None => None,
            };
            // A session made since the first look may own it now.
            let owner = match &user {
                Some(user) => self.state.session(user, &volume.project)?,
                None => None,
            };
            if !volume.session.is_empty()
                && owner.is_some_and(|row| row.session_id == volume.session)
            {
                continue;
            }
            let labelled = Owner::labelled(&volume.user, &volume.project, &volume.session);
            match self.effects.apply_as(
                labelled,
                Effect::RemoveVolume(&volume.name),
                Reason::Orphan,
            ) {
                Ok(()) => removed += 1,
                Err(DockerError::VolumeInUse { .. }) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(removed)
    }
}

/// The volumes kept across sessions (`services.persist_volumes`) that `owned` picks
/// (a removed user's, a removed project's), removed; one that will not go now is
/// logged, and `cleanup` removes it later. Returns how many went.
pub fn remove_kept_volumes<E: Engine>(
    effects: &mut Effects<E>,
    owned: impl Fn(&crate::docker::ManagedVolume) -> bool,
    reason: Reason,
) -> usize {
    let volumes = match effects.engine().volumes() {
        Ok(volumes) => volumes,
        Err(err) => {
            log::warn!("kept volumes stay until the next cleanup: {err}");
            return 0;
        }
    };
    volumes
        .iter()
        .filter(|volume| volume.session.is_empty() && owned(volume))
        .filter(|volume| {
            effects
                .apply(Effect::RemoveVolume(&volume.name), reason)
                .is_ok()
        })
        .count()
}

/// What trying a service's image on its own found (`verify-image --service`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceCheck {
    pub config: ImageConfig,
    /// Each port tried, and how long it took to accept a connection (`None`: it
    /// did not within the time given).
    pub ports: Vec<(u16, Option<Duration>)>,
    /// How it was at the end.
    pub end: Option<Whereabouts>,
    /// Its last lines, when it stopped or a port did not answer.
    pub logs: String,
}

/// How many of its last lines a tried service shows.
const PROBE_LOG_LINES: usize = 5;

/// Starts `spec`'s image (pulled within `pull_timeout` if the engine lacks it)
/// hardened as a session's service would be, alone on docker's default network,
/// waits up to `timeout` for its ports (`spec.ports`, else the ports the image
/// exposes), and removes it again.
pub fn check_service<E: Engine>(
    effects: &mut Effects<E>,
    mut spec: ServiceSpec,
    timeout: Duration,
    pull_timeout: Duration,
) -> Result<ServiceCheck, DockerError> {
    let config = match effects.engine().image_config(&spec.image) {
        Err(DockerError::ImageUnavailable { .. }) => {
            let pull = Effect::PullImage {
                image: &spec.image,
                timeout: pull_timeout,
            };
            effects.apply(pull, Reason::Probed)?;
            effects.engine().image_config(&spec.image)?
        }
        other => other?,
    };
    if spec.ports.is_empty() {
        spec.ports.clone_from(&config.exposed);
    }
    effects.probe_service(&spec)?;
    let watched = watch(effects.engine(), &spec, timeout);
    if let Err(err) = effects.remove_probe(&spec.container) {
        log::warn!("could not remove {}: {err}", spec.container);
    }
    let (ports, end, logs) = watched?;
    Ok(ServiceCheck {
        config,
        ports,
        end,
        logs,
    })
}

type Watched = (Vec<(u16, Option<Duration>)>, Option<Whereabouts>, String);

fn watch<E: Engine>(
    engine: &mut E,
    spec: &ServiceSpec,
    timeout: Duration,
) -> Result<Watched, DockerError> {
    let started = std::time::Instant::now();
    let until = crate::host::now_millis() + timeout.as_millis() as i64;
    // Its address once it has one, or the news that it stopped.
    let mut seen = engine.whereabouts(&spec.container)?;
    while seen
        .as_ref()
        .is_some_and(|seen| seen.running && seen.address.is_none())
        && started.elapsed() < timeout
    {
        std::thread::sleep(Duration::from_millis(50));
        seen = engine.whereabouts(&spec.container)?;
    }
    let address = seen.as_ref().and_then(|seen| seen.address);
    let mut ports = Vec::new();
    let mut stopped = address.is_none();
    for port in &spec.ports {
        let mut answered = None;
        // A second at a time, so that a server that stopped is not waited for.
        while let Some(address) = address.filter(|_| !stopped) {
            let slice = (crate::host::now_millis() + 1000).min(until);
            if crate::host::wait_for_port(SocketAddrV4::new(address, *port), slice) {
                answered = Some(started.elapsed());
                break;
            }
            stopped = !engine
                .whereabouts(&spec.container)?
                .is_some_and(|seen| seen.running);
            if slice >= until {
                break;
            }
        }
        ports.push((*port, answered));
    }
    // A moment more for a server that dies right after it starts listening.
    std::thread::sleep(Duration::from_millis(200));
    let end = engine.whereabouts(&spec.container)?;
    let healthy = end.as_ref().is_some_and(|end| end.running)
        && ports.iter().all(|(_, answered)| answered.is_some());
    let logs = if healthy {
        String::new()
    } else {
        engine.logs(&spec.container, PROBE_LOG_LINES)?
    };
    Ok((ports, end, logs))
}
