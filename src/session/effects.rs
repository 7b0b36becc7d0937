//! The one place every change to the engine passes, with the reason for it.
//!
//! `Engine::apply` (and `Engine::probe`, which runs a container and removes it) take a
//! `Passed`, which only this module can make, and `apply` is the session layer's
//! alone: a change that does not come through here does not compile. Every change is
//! logged here with its reason; the audit log will be written here too.

use crate::docker::{BuildSpec, DockerError};
use crate::engine::{Effect, Engine, Probe};

use super::plan::Reason;

/// Proof that a change came through `Effects::apply`.
#[derive(Clone, Copy)]
pub struct Passed {
    _only_effects_makes_this: (),
}

/// The engine, owned: questions go straight to it, changes through `apply`.
pub struct Effects<E: Engine> {
    engine: E,
}

impl<E: Engine> Effects<E> {
    pub fn new(engine: E) -> Effects<E> {
        Effects { engine }
    }

    /// Makes one change in the engine, for `reason`. Only the session layer decides
    /// changes, so only it may call this.
    pub(super) fn apply(&mut self, effect: Effect, reason: Reason) -> Result<(), DockerError> {
        let passed = Passed {
            _only_effects_makes_this: (),
        };
        let result = self.engine.apply(&effect, passed);
        match &result {
            Ok(()) => log::info!("{effect} ({reason})"),
            Err(err) => log::warn!("could not {effect} ({reason}): {err}"),
        }
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
            match result {
                Ok(()) => log::info!("{effect} ({reason})"),
                Err(err) => log::warn!("could not {effect} ({reason}): {err}"),
            }
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
        let result = self.engine.build(spec, output, passed);
        match &result {
            Ok(()) => log::info!("built image {} ({reason})", spec.tag),
            Err(err) => log::warn!("could not build image {} ({reason}): {err}", spec.tag),
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

    /// The engine, for questions (its changes need a `Passed`, which only this module
    /// can give).
    pub fn engine(&mut self) -> &mut E {
        &mut self.engine
    }
}
