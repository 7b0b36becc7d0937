//! The one place every change to the engine passes, with the reason for it.
//!
//! `Engine::apply` (and `Engine::probe`, which runs a container and removes it) take a
//! `Passed`, which only this module can make, and `apply` is the session layer's
//! alone: a change that does not come through here does not compile. Every change is
//! logged here with its reason, and written to the audit log here, so no path can
//! make one unrecorded.

use crate::audit::{self, Event};
use crate::docker::{BuildSpec, DockerError};
use crate::engine::{Effect, Engine, Probe};

use super::plan::Reason;

/// The session the changes being made are for, when the change itself does not say
/// (a removal names only its container): the audit log's user, project and session.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owner {
    pub user: String,
    pub project: String,
    pub session: String,
}

impl Owner {
    /// Whose something found in the engine is, as its labels say (what cleanup
    /// removes has no row to say it).
    pub fn labelled(user: &str, project: &str, session: &str) -> Owner {
        Owner {
            user: user.to_string(),
            project: project.to_string(),
            session: session.to_string(),
        }
    }
}

/// The audit event for `effect`, made for `reason`, that ended in `error` if any.
fn event(
    effect: &Effect,
    reason: Reason,
    owner: Option<&Owner>,
    error: Option<&DockerError>,
) -> Event {
    let (name, event) = match effect {
        Effect::CreateContainer(spec) => (
            "container.create",
            Event::new("")
                .with("container", spec.name.as_str())
                .with("image", spec.image.as_str())
                .with("user", spec.user.name.as_str())
                .with("project", spec.project.as_str())
                .with("session", spec.session_id.as_str()),
        ),
        Effect::CreateService(spec) => (
            "service.create",
            Event::new("")
                .with("container", spec.container.as_str())
                .with("service", spec.name.as_str())
                .with("image", spec.image.as_str())
                .with("user", spec.user.as_str())
                .with("project", spec.project.as_str())
                .with("session", spec.session_id.as_str()),
        ),
        // A service's container is its session's name, a `.` and its own.
        Effect::RemoveContainer(name) if name.starts_with("podspawn-") && name.contains('.') => {
            ("service.remove", Event::new("").with("container", *name))
        }
        Effect::RemoveContainer(name) => {
            ("container.remove", Event::new("").with("container", *name))
        }
        Effect::CreateNetwork { network, owner } => (
            "network.create",
            Event::new("")
                .with("network", network.name.as_str())
                .with("user", owner.user)
                .with("project", owner.project)
                .with("session", owner.session),
        ),
        Effect::RemoveNetwork(name) => ("network.remove", Event::new("").with("network", *name)),
        Effect::RemoveVolume(name) => ("volume.remove", Event::new("").with("volume", *name)),
        Effect::RemoveImage(image) => ("image.remove", Event::new("").with("image", *image)),
        Effect::PullImage { image, .. } => ("image.pull", Event::new("").with("image", *image)),
    };
    let mut event = event.renamed(name).with("reason", reason.name());
    if let Some(owner) = owner {
        event = event
            .or_with("user", owner.user.as_str())
            .or_with("project", owner.project.as_str())
            .or_with("session", owner.session.as_str());
    }
    event.with_some("error", error.map(|err| err.to_string()))
}

/// Proof that a change came through `Effects::apply`.
#[derive(Clone, Copy)]
pub struct Passed {
    _only_effects_makes_this: (),
}

/// The engine, owned: questions go straight to it, changes through `apply`.
pub struct Effects<E: Engine> {
    engine: E,
    /// Whose session the changes being made now are for (see `Owner`).
    owner: Option<Owner>,
}

impl<E: Engine> Effects<E> {
    pub fn new(engine: E) -> Effects<E> {
        Effects {
            engine,
            owner: None,
        }
    }

    /// The session the next changes are for; what it was before, to put back.
    pub(super) fn set_owner(&mut self, owner: Option<Owner>) -> Option<Owner> {
        std::mem::replace(&mut self.owner, owner)
    }

    /// Logs and audits one change's outcome.
    fn record(&self, effect: &Effect, reason: Reason, result: Result<(), &DockerError>) {
        match result {
            Ok(()) => log::info!("{effect} ({reason})"),
            Err(err) => log::warn!("could not {effect} ({reason}): {err}"),
        }
        audit::record(event(effect, reason, self.owner.as_ref(), result.err()));
    }

    /// Makes one change in the engine, for `reason`. Only the session layer decides
    /// changes, so only it may call this.
    pub(super) fn apply(&mut self, effect: Effect, reason: Reason) -> Result<(), DockerError> {
        let passed = Passed {
            _only_effects_makes_this: (),
        };
        let result = self.engine.apply(&effect, passed);
        self.record(&effect, reason, result.as_ref().map(|_| ()));
        result
    }

    /// Makes one change for `owner`'s session (whatever the session of the changes
    /// around it), for `reason`.
    pub(super) fn apply_as(
        &mut self,
        owner: Owner,
        effect: Effect,
        reason: Reason,
    ) -> Result<(), DockerError> {
        let before = self.set_owner(Some(owner));
        let result = self.apply(effect, reason);
        self.set_owner(before);
        result
    }

    /// Makes several changes at once, for `reason`; each result in order.
    pub(super) fn apply_all(
        &mut self,
        effects: &[Effect],
        reason: Reason,
    ) -> Vec<Result<(), DockerError>> {
        let passed = Passed {
            _only_effects_makes_this: (),
        };
        let results = self.engine.apply_all(effects, passed);
        for (effect, result) in effects.iter().zip(&results) {
            self.record(effect, reason, result.as_ref().map(|_| ()));
        }
        results
    }

    /// Builds a project's image, for `reason`; each line of the build to `output`.
    pub fn build(
        &mut self,
        spec: &BuildSpec,
        reason: Reason,
        output: &mut dyn FnMut(&str),
    ) -> Result<(), DockerError> {
        let passed = Passed {
            _only_effects_makes_this: (),
        };
        log::info!("build image {} ({reason})", spec.tag);
        // A project's image is `podspawn/<project>:<tag>`.
        let project = spec
            .tag
            .strip_prefix("podspawn/")
            .and_then(|rest| rest.split(':').next())
            .unwrap_or("");
        let built = |name: &str| {
            let event = Event::new(name)
                .with("image", spec.tag)
                .with("project", project)
                .with("reason", reason.name());
            match &self.owner {
                Some(owner) => event.with("user", owner.user.as_str()),
                None => event,
            }
        };
        audit::record(built("image.build.start"));
        let started = std::time::Instant::now();
        let result = self.engine.build(spec, output, passed);
        let took = started.elapsed().as_millis() as u64;
        match &result {
            Ok(()) => {
                log::info!("built image {} ({reason})", spec.tag);
                audit::record(built("image.build.finish").with("duration_ms", took));
            }
            Err(err) => {
                log::warn!("could not build image {} ({reason}): {err}", spec.tag);
                audit::record(
                    built("image.build.fail")
                        .with("duration_ms", took)
                        .with("error", err.to_string()),
                );
            }
        }
        result
    }

    /// Runs `script` once in `image` and removes the container (`verify-image`).
    pub fn probe(
        &mut self,
        image: &str,
        script: &str,
        args: &[&str],
    ) -> Result<Probe, DockerError> {
        let passed = Passed {
            _only_effects_makes_this: (),
        };
        let result = self.engine.probe(image, script, args, passed);
        audit::record(
            Event::new("probe.run")
                .with("image", image)
                .with("reason", Reason::Probed.name())
                .with_some("error", result.as_ref().err().map(|err| err.to_string())),
        );
        match &result {
            Ok(probe) => log::trace!("probed image {image} (exit {})", probe.status),
            Err(err) => log::warn!("could not probe image {image}: {err}"),
        }
        result
    }

    /// Starts a service's image on its own to try it (`verify-image --service`); it is
    /// removed with `remove_probe`.
    pub fn probe_service(
        &mut self,
        spec: &crate::container::ServiceSpec,
    ) -> Result<(), DockerError> {
        let passed = Passed {
            _only_effects_makes_this: (),
        };
        let result = self.engine.probe_service(spec, passed);
        audit::record(
            Event::new("probe.run")
                .with("image", spec.image.as_str())
                .with("container", spec.container.as_str())
                .with("reason", Reason::Probed.name())
                .with_some("error", result.as_ref().err().map(|err| err.to_string())),
        );
        match &result {
            Ok(()) => log::debug!("started {} to try image {}", spec.container, spec.image),
            Err(err) => log::warn!("could not try image {}: {err}", spec.image),
        }
        result
    }

    /// Removes what `probe_service` started.
    pub fn remove_probe(&mut self, container: &str) -> Result<(), DockerError> {
        self.apply(Effect::RemoveContainer(container), Reason::Probed)
    }

    /// Whether the engine answers at all (its version).
    pub fn engine_answers(&mut self) -> bool {
        self.engine.version().is_ok()
    }

    /// The engine, for questions (its changes need a `Passed`, which only this module
    /// can give).
    pub fn engine(&mut self) -> &mut E {
        &mut self.engine
    }
}
