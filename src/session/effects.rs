//! The one place every change to the engine passes, with the reason for it.
//!
//! `Engine::apply` takes a `Passed`, which only this module can make: a change that
//! did not come through `Effects::apply` does not compile. Every change is logged here
//! with its reason; the audit log will be written here too.

use crate::docker::DockerError;
use crate::engine::{Effect, Engine};

use super::plan::Reason;

/// Proof that a change came through `Effects::apply`.
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

    /// Makes one change in the engine, for `reason`.
    pub fn apply(&mut self, effect: Effect, reason: Reason) -> Result<(), DockerError> {
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

    /// The engine, for questions (`Engine::apply` needs a `Passed`, which only `apply`
    /// above can give).
    pub fn engine(&mut self) -> &mut E {
        &mut self.engine
    }
}
