//! The lifecycle's decisions, as pure functions of what the state, the host and the
//! engine say. `Sessions` asks, then acts; every rule of when a container is made,
//! kept, healed or destroyed is here and tested here, without processes.

use std::fmt;
use std::net::Ipv4Addr;
use std::time::Duration;

use crate::config::SessionMode;
use crate::docker::{
    ContainerState, DockerError, Labels, ManagedContainer, ManagedNetwork, ManagedVolume,
};
use crate::engine::ExecEnd;
use crate::host::Millis;
use crate::keys::UserName;
use crate::network::Network;
use crate::state::SessionRow;

/// The longest a keeper sleeps between looks.
pub const KEEPER_TICK: Duration = Duration::from_secs(1);

/// How often a failed create may be repaired (a name in the way, a missing network)
/// before the failure is the user's answer.
pub const MAX_REPAIRS: usize = 2;

/// What to do for a new connection, given the session's row (if any).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectPlan {
    Reattach,
    Create,
    /// The row's container must not be joined: past its lifetime or grace period, or
    /// a destroy-on-disconnect session whose last connection is gone. Destroy it (for
    /// this reason), then create.
    Replace(Reason),
}

pub fn plan_connect(
    existing: Option<&SessionRow>,
    live_connections: usize,
    now: Millis,
) -> ConnectPlan {
    match existing {
        None => ConnectPlan::Create,
        Some(session) => match decide(session, live_connections, now) {
            Decision::Destroy(reason) => ConnectPlan::Replace(reason),
            Decision::Keep | Decision::StartGrace { .. } | Decision::CancelGrace => {
                ConnectPlan::Reattach
            }
        },
    }
}

/// Why podspawn changed something in the engine: said in the log with every change,
/// and (later) in the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A connection found no container it could join.
    NewSession,
    GraceExpired,
    LifetimeExpired,
    /// `destroy-on-disconnect`: the last connection ended.
    LastDisconnect,
    /// An admin removed the user (`remove-user --force`).
    UserRemoved,
    /// A container of podspawn's that no session row owns (found by `cleanup`, or in
    /// the way of a new one).
    Orphan,
    /// The session's container was gone or stopped (removed by hand, the engine
    /// restarted, the host rebooted): its remains go, and a connection gets a new one.
    Gone,
    /// A new user's network, made when they are added so a first login need not.
    UserAdded,
    /// A network a container needs was not there.
    NetworkMissing,
    /// A network of a user who is gone held the subnet another user needs.
    StaleNetwork,
    /// The network of a user who is no longer registered.
    UserUnregistered,
    /// A project's image was not there when a session needed it.
    ImageMissing,
    /// An admin added or updated a project.
    ProjectChanged,
    /// An admin removed a project.
    ProjectRemoved,
    /// A session could not be made: what was made for it goes again.
    Undone,
    /// A running session's service was gone or stopped.
    ServiceMissing,
    /// An image was tried (`verify-image`) and its container is done with.
    Probed,
    /// An admin ended the session (`podspawn stop`).
    Stopped,
}

impl Reason {
    /// The reason as the audit log names it: fixed words for scripts.
    pub fn name(self) -> &'static str {
        match self {
            Reason::NewSession => "first_connection",
            Reason::GraceExpired => "grace_expired",
            Reason::LifetimeExpired => "lifetime",
            Reason::LastDisconnect => "destroy_on_disconnect",
            Reason::UserRemoved => "removed_user",
            Reason::Orphan => "orphan",
            Reason::Gone => "replaced",
            Reason::UserAdded => "user_added",
            Reason::NetworkMissing => "network_missing",
            Reason::StaleNetwork => "stale_network",
            Reason::UserUnregistered => "user_unregistered",
            Reason::ImageMissing => "image_missing",
            Reason::ProjectChanged => "project_changed",
            Reason::ProjectRemoved => "removed_project",
            Reason::Undone => "undone",
            Reason::ServiceMissing => "service_missing",
            Reason::Probed => "probed",
            Reason::Stopped => "stopped",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(match self {
            Reason::NewSession => "a connection found none to join",
            Reason::GraceExpired => "grace period expired",
            Reason::LifetimeExpired => "max lifetime reached",
            Reason::LastDisconnect => "last connection ended",
            Reason::UserRemoved => "user removed",
            Reason::Orphan => "orphan: no session owns it",
            Reason::Gone => "container gone or stopped",
            Reason::UserAdded => "user added",
            Reason::NetworkMissing => "network missing",
            Reason::StaleNetwork => "stale network on a needed subnet",
            Reason::UserUnregistered => "user no longer registered",
            Reason::ImageMissing => "image missing",
            Reason::ProjectChanged => "project added or updated",
            Reason::ProjectRemoved => "project removed",
            Reason::Undone => "its session could not be made",
            Reason::ServiceMissing => "a service of a running session was gone or stopped",
            Reason::Probed => "an image was tried",
            Reason::Stopped => "stopped by an admin",
        })
    }
}

/// What a session needs now, given how many live connections it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Nothing to change.
    Keep,
    StartGrace {
        until: Millis,
    },
    CancelGrace,
    Destroy(Reason),
}

pub fn decide(session: &SessionRow, live_connections: usize, now: Millis) -> Decision {
    if session.expires_at.is_some_and(|end| now >= end) {
        return Decision::Destroy(Reason::LifetimeExpired);
    }
    if live_connections > 0 {
        return match session.grace_until {
            Some(_) => Decision::CancelGrace,
            None => Decision::Keep,
        };
    }
    match session.mode {
        SessionMode::Persistent => Decision::Keep,
        SessionMode::DestroyOnDisconnect => Decision::Destroy(Reason::LastDisconnect),
        SessionMode::GracePeriod => match session.grace_until {
            None if session.grace_secs <= 0 => Decision::Destroy(Reason::GraceExpired),
            None => Decision::StartGrace {
                until: now + session.grace_secs * 1000,
            },
            Some(end) if now >= end => Decision::Destroy(Reason::GraceExpired),
            Some(_) => Decision::Keep,
        },
    }
}

/// The address slot of a new session: the default session (`default`) always has 0;
/// any other the lowest of 1 to `max_per_user - 1` that no other session of the user
/// has (`used`). `None`: the user has as many sessions as they may.
pub fn free_slot(default: bool, used: &[u32], max_per_user: u32) -> Option<u32> {
    if used.len() >= max_per_user as usize {
        return None;
    }
    if default {
        return Some(0);
    }
    (1..max_per_user.min(crate::network::MAX_SLOTS)).find(|slot| !used.contains(slot))
}

/// What a connection does when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AtRelease {
    Do(Decision),
    /// Destroying takes as long as `docker rm`, and the user's exit code must not
    /// wait for it: the session's keeper is woken to do it now.
    WakeKeeper,
}

/// What a connection does about `decision` as it ends; with no live keeper to hand a
/// destruction to, it does it itself.
pub fn at_release(decision: Decision, keeper_alive: bool) -> AtRelease {
    match decision {
        Decision::Destroy(_) if keeper_alive => AtRelease::WakeKeeper,
        other => AtRelease::Do(other),
    }
}

/// How long a keeper sleeps after a look that kept the session: until the next
/// deadline, at most `KEEPER_TICK`.
pub fn keeper_sleep(session: &SessionRow, decision: Decision, now: Millis) -> Duration {
    let grace = match decision {
        Decision::StartGrace { until } => Some(until),
        Decision::CancelGrace => None,
        _ => session.grace_until,
    };
    let next = grace.into_iter().chain(session.expires_at).min();
    match next {
        Some(deadline) => {
            let left = Duration::from_millis(deadline.saturating_sub(now).max(0) as u64);
            left.min(KEEPER_TICK)
        }
        None => KEEPER_TICK,
    }
}

/// What the end of a connection's exec means.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterExec {
    /// The command ran: pass `code` on.
    Finished { code: i32 },
    /// Exit 1 with docker's "no such container" held back: the command's own exit 1,
    /// or a container that was gone before it ran. Only the engine can tell.
    AskEngine,
    /// An admin ended the session, and it is gone: nothing is made again. (A stop
    /// that did not destroy the session is an `Exited`: the session layer asks first.)
    Stopped,
}

pub fn after_exec(end: &ExecEnd) -> AfterExec {
    match end {
        ExecEnd::Exited {
            code: 1,
            held_stderr,
        } if !held_stderr.is_empty() => AfterExec::AskEngine,
        ExecEnd::Exited { code, .. } => AfterExec::Finished { code: *code },
        ExecEnd::Disconnected { signal } => AfterExec::Finished { code: 128 + signal },
        ExecEnd::Stopped { .. } => AfterExec::Stopped,
    }
}

/// The engine's answer about a container whose exec said "gone".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Healing {
    /// It runs: the exit 1 was the command's own (show what was held back).
    CommandsOwn,
    /// It is gone and the command never ran: forget it and make a new one.
    Recreate,
    /// It is gone although it was made for this very connection: another would not
    /// do better.
    GiveUp,
}

pub fn heal(state: ContainerState, created_for_this_connection: bool) -> Healing {
    match (state, created_for_this_connection) {
        (ContainerState::Running, _) => Healing::CommandsOwn,
        (_, false) => Healing::Recreate,
        (_, true) => Healing::GiveUp,
    }
}

/// What may repair a failed create.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repair {
    /// A container has the name: remove it if it is podspawn's and no row owns it.
    ClearName,
    /// The user's network is missing: make it.
    MakeNetwork,
}

/// The repair for a failed create, or `None` when the failure stands.
pub fn repair(err: &DockerError, repairs_done: usize) -> Option<Repair> {
    if repairs_done >= MAX_REPAIRS {
        return None;
    }
    match err {
        DockerError::NameInUse { .. } => Some(Repair::ClearName),
        DockerError::NetworkMissing { .. } => Some(Repair::MakeNetwork),
        _ => None,
    }
}

/// Whose is the container that holds a session's name?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameHolder {
    /// podspawn made it for this user's session (and no row owns it any more).
    Ours,
    /// Someone else's: not podspawn's to remove.
    Foreign,
    /// Gone meanwhile.
    Gone,
}

pub fn name_holder(labels: Option<&Labels>, user: &UserName, project: &str) -> NameHolder {
    match labels {
        None => NameHolder::Gone,
        Some(labels)
            if labels.managed && labels.user == user.as_str() && labels.project == project =>
        {
            NameHolder::Ours
        }
        Some(_) => NameHolder::Foreign,
    }
}

/// podspawn's networks on `mine`'s subnet other than `mine`: the ones to remove (their
/// owner is gone, or now has another slot), or `Err(owner)` when an owner still has
/// this very slot — two live users in one slot is a real collision.
pub fn stale_networks<'a>(
    on_subnet: &'a [ManagedNetwork],
    mine: &Network,
    owner_subnet: impl Fn(&str) -> Option<Ipv4Addr>,
) -> Result<Vec<&'a ManagedNetwork>, &'a ManagedNetwork> {
    let mut stale = Vec::new();
    for network in on_subnet.iter().filter(|network| network.name != mine.name) {
        if owner_subnet(&network.user) == Some(mine.subnet) {
            return Err(network);
        }
        stale.push(network);
    }
    Ok(stale)
}

/// The `podspawn.session` label of an image being tried (`verify-image --service`)
/// until `until`: no session's, and not an orphan before then.
pub fn probe_label(until: Millis) -> String {
    format!("{PROBE}{until}")
}

const PROBE: &str = "probe-until-";

/// podspawn's containers that no session owns (an image being tried is nobody's,
/// but not an orphan until its time is up, `now`). One with no session label is not
/// a session's at all: a build's step of a project image (the image carries
/// podspawn's labels, and so the containers the builder makes from it), or a
/// container someone ran from such an image by hand — not podspawn's to remove.
pub fn orphans<'a>(
    managed: &'a [ManagedContainer],
    owned: &std::collections::BTreeSet<String>,
    now: Millis,
) -> Vec<&'a ManagedContainer> {
    let being_tried = |container: &ManagedContainer| {
        container
            .session
            .strip_prefix(PROBE)
            .and_then(|until| until.parse::<Millis>().ok())
            .is_some_and(|until| now < until)
    };
    managed
        .iter()
        .filter(|container| {
            !container.session.is_empty()
                && !owned.contains(&container.name)
                && !being_tried(container)
        })
        .collect()
}

/// podspawn's users' networks whose user is neither registered nor has a session (a
/// registered user's is kept, so that their login needs no extra docker call). The
/// build network is nobody's (no user) and is kept.
pub fn unused_networks<'a>(
    networks: &'a [ManagedNetwork],
    is_registered: impl Fn(&str) -> bool,
    with_sessions: &[UserName],
) -> Vec<&'a ManagedNetwork> {
    networks
        .iter()
        .filter(|network| {
            network.session.is_empty()
                && !network.user.is_empty()
                && !is_registered(&network.user)
                && !with_sessions
                    .iter()
                    .any(|user| user.as_str() == network.user)
        })
        .collect()
}

/// Sessions' private networks that no session row names.
pub fn unused_session_networks<'a>(
    networks: &'a [ManagedNetwork],
    rows: &[SessionRow],
) -> Vec<&'a ManagedNetwork> {
    networks
        .iter()
        .filter(|network| {
            !network.session.is_empty() && !rows.iter().any(|row| row.network == network.name)
        })
        .collect()
}

/// Services' volumes that nothing keeps: a session's own whose session is gone (no
/// row of its user and project has its session id); one kept across sessions whose
/// user is not registered, whose project is not among `projects`, or when volumes
/// are no longer kept (`keep`).
pub fn unused_volumes<'a>(
    volumes: &'a [ManagedVolume],
    rows: &[SessionRow],
    is_registered: impl Fn(&str) -> bool,
    projects: &[String],
    keep: bool,
) -> Vec<&'a ManagedVolume> {
    let in_use = |volume: &ManagedVolume| {
        rows.iter().any(|row| {
            row.user.as_str() == volume.user
                && row.project == volume.project
                && (volume.session.is_empty() || row.session_id == volume.session)
        })
    };
    volumes
        .iter()
        .filter(|volume| {
            if !volume.session.is_empty() {
                return !in_use(volume);
            }
            let kept = keep && is_registered(&volume.user) && projects.contains(&volume.project);
            !kept && !in_use(volume)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::tests::session;

    const NOW: Millis = 5_000_000;

    #[test]
    fn plans_for_a_new_connection() {
        assert_eq!(plan_connect(None, 0, NOW), ConnectPlan::Create);
        let live = SessionRow {
            created_at: NOW - 1000,
            expires_at: Some(NOW + 3_600_000),
            ..session("alice")
        };
        assert_eq!(plan_connect(Some(&live), 1, NOW), ConnectPlan::Reattach);
        assert_eq!(
            plan_connect(Some(&live), 0, NOW),
            ConnectPlan::Reattach,
            "no connection yet: its grace would start"
        );
        let in_grace = SessionRow {
            grace_until: Some(NOW + 10),
            ..live.clone()
        };
        assert_eq!(plan_connect(Some(&in_grace), 0, NOW), ConnectPlan::Reattach);
        let grace_over = SessionRow {
            grace_until: Some(NOW),
            ..live.clone()
        };
        assert_eq!(
            plan_connect(Some(&grace_over), 0, NOW),
            ConnectPlan::Replace(Reason::GraceExpired)
        );
        let too_old = SessionRow {
            expires_at: Some(NOW - 1),
            ..live.clone()
        };
        assert_eq!(
            plan_connect(Some(&too_old), 3, NOW),
            ConnectPlan::Replace(Reason::LifetimeExpired)
        );
        let persistent = SessionRow {
            expires_at: None,
            mode: SessionMode::Persistent,
            ..live.clone()
        };
        assert_eq!(
            plan_connect(Some(&persistent), 0, NOW + 1_000_000_000),
            ConnectPlan::Reattach
        );
        // destroy-on-disconnect whose last connection ended (its keeper has not
        // removed it yet): never joined again.
        let ended = SessionRow {
            mode: SessionMode::DestroyOnDisconnect,
            ..live.clone()
        };
        assert_eq!(
            plan_connect(Some(&ended), 0, NOW),
            ConnectPlan::Replace(Reason::LastDisconnect)
        );
        assert_eq!(plan_connect(Some(&ended), 1, NOW), ConnectPlan::Reattach);
    }

    #[test]
    fn decisions_for_each_mode() {
        let grace = session("alice");
        let now = grace.created_at + 1000;
        assert_eq!(decide(&grace, 2, now), Decision::Keep);
        assert_eq!(
            decide(&grace, 0, now),
            Decision::StartGrace {
                until: now + 60_000
            }
        );
        let waiting = SessionRow {
            grace_until: Some(now + 30_000),
            ..grace.clone()
        };
        assert_eq!(decide(&waiting, 0, now), Decision::Keep);
        assert_eq!(decide(&waiting, 1, now), Decision::CancelGrace);
        // Deadlines are honest to the millisecond: never early.
        assert_eq!(decide(&waiting, 0, now + 29_999), Decision::Keep);
        assert_eq!(
            decide(&waiting, 0, now + 30_000),
            Decision::Destroy(Reason::GraceExpired)
        );
        let no_grace = SessionRow {
            grace_secs: 0,
            ..grace.clone()
        };
        assert_eq!(
            decide(&no_grace, 0, now),
            Decision::Destroy(Reason::GraceExpired)
        );
        let at_once = SessionRow {
            mode: SessionMode::DestroyOnDisconnect,
            ..grace.clone()
        };
        assert_eq!(decide(&at_once, 1, now), Decision::Keep);
        assert_eq!(
            decide(&at_once, 0, now),
            Decision::Destroy(Reason::LastDisconnect)
        );
        let kept = SessionRow {
            mode: SessionMode::Persistent,
            expires_at: None,
            ..grace.clone()
        };
        assert_eq!(decide(&kept, 0, now + 1_000_000_000), Decision::Keep);
        let expired = SessionRow {
            expires_at: Some(now),
            ..grace
        };
        assert_eq!(
            decide(&expired, 3, now),
            Decision::Destroy(Reason::LifetimeExpired)
        );
    }

    #[test]
    fn every_session_of_a_user_has_its_own_slot_up_to_the_limit() {
        assert_eq!(free_slot(true, &[], 5), Some(0));
        assert_eq!(free_slot(false, &[], 5), Some(1));
        assert_eq!(free_slot(false, &[0, 1, 3], 5), Some(2));
        assert_eq!(free_slot(true, &[1, 2], 5), Some(0));
        assert_eq!(
            free_slot(false, &[0, 1, 2, 3, 4], 5),
            None,
            "five is the most"
        );
        assert_eq!(
            free_slot(false, &[1, 2, 3, 4], 5),
            None,
            "slot 0 is the default's"
        );
        assert_eq!(free_slot(true, &[1, 2, 3, 4], 5), Some(0));
    }

    #[test]
    fn a_connection_leaves_destroying_to_a_live_keeper() {
        let destroy = Decision::Destroy(Reason::LastDisconnect);
        assert_eq!(at_release(destroy, true), AtRelease::WakeKeeper);
        assert_eq!(at_release(destroy, false), AtRelease::Do(destroy));
        let grace = Decision::StartGrace { until: 7 };
        assert_eq!(at_release(grace, true), AtRelease::Do(grace));
    }

    #[test]
    fn the_keeper_sleeps_until_the_next_deadline_at_most_a_tick() {
        let row = SessionRow {
            grace_until: Some(NOW + 300),
            expires_at: Some(NOW + 10_000),
            ..session("alice")
        };
        assert_eq!(
            keeper_sleep(&row, Decision::Keep, NOW),
            Duration::from_millis(300)
        );
        assert_eq!(keeper_sleep(&row, Decision::CancelGrace, NOW), KEEPER_TICK);
        assert_eq!(
            keeper_sleep(&row, Decision::StartGrace { until: NOW + 20 }, NOW),
            Duration::from_millis(20)
        );
        assert_eq!(
            keeper_sleep(&row, Decision::Keep, NOW + 400),
            Duration::ZERO
        );
    }

    #[test]
    fn an_exit_1_with_docker_words_held_is_a_question_for_the_engine() {
        let gone = b"Error response from daemon: No such container: x\n".to_vec();
        assert_eq!(
            after_exec(&ExecEnd::Exited {
                code: 1,
                held_stderr: gone
            }),
            AfterExec::AskEngine
        );
        assert_eq!(
            after_exec(&ExecEnd::Exited {
                code: 1,
                held_stderr: Vec::new()
            }),
            AfterExec::Finished { code: 1 }
        );
        assert_eq!(
            after_exec(&ExecEnd::Disconnected {
                signal: libc::SIGHUP
            }),
            AfterExec::Finished { code: 129 }
        );
        assert_eq!(heal(ContainerState::Running, true), Healing::CommandsOwn);
        assert_eq!(heal(ContainerState::Missing, false), Healing::Recreate);
        assert_eq!(heal(ContainerState::NotRunning, false), Healing::Recreate);
        assert_eq!(heal(ContainerState::Missing, true), Healing::GiveUp);
    }

    #[test]
    fn a_failed_create_is_repaired_a_bounded_number_of_times() {
        let in_use = DockerError::NameInUse {
            name: "podspawn-alice".into(),
        };
        let no_network = DockerError::NetworkMissing {
            network: "podspawn-alice".into(),
        };
        assert_eq!(repair(&in_use, 0), Some(Repair::ClearName));
        assert_eq!(repair(&no_network, 1), Some(Repair::MakeNetwork));
        assert_eq!(repair(&no_network, MAX_REPAIRS), None);
        let other = DockerError::ImageUnavailable {
            image: "x".into(),
            stderr: String::new(),
        };
        assert_eq!(repair(&other, 0), None);
    }

    #[test]
    fn only_podspawns_own_container_of_the_name_is_cleared() {
        let alice = UserName::parse("alice").unwrap();
        let labels = |managed, user: &str, project: &str| Labels {
            managed,
            user: user.into(),
            project: project.into(),
        };
        assert_eq!(
            name_holder(Some(&labels(true, "alice", "")), &alice, ""),
            NameHolder::Ours
        );
        for foreign in [
            labels(false, "", ""),
            labels(true, "bob", ""),
            labels(true, "alice", "api"),
        ] {
            assert_eq!(name_holder(Some(&foreign), &alice, ""), NameHolder::Foreign);
        }
        assert_eq!(name_holder(None, &alice, ""), NameHolder::Gone);
    }

    #[test]
    fn a_stale_network_on_the_subnet_goes_and_a_live_owners_stays() {
        let mine = crate::network::Pool::default().for_user("alice", 1001);
        let network = |name: &str, user: &str| ManagedNetwork {
            name: name.into(),
            user: user.into(),
            project: String::new(),
            session: String::new(),
        };
        let found = [
            network("podspawn-alice", "alice"),
            network("podspawn-ghost", "ghost"),
            network("podspawn-moved", "moved"),
        ];
        let elsewhere = Ipv4Addr::new(10, 214, 1, 0);
        let stale = stale_networks(&found, &mine, |owner| match owner {
            "moved" => Some(elsewhere),
            _ => None,
        })
        .unwrap();
        let names: Vec<&str> = stale.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["podspawn-ghost", "podspawn-moved"]);
        let collision = stale_networks(&found, &mine, |owner| {
            (owner == "ghost").then_some(mine.subnet)
        })
        .unwrap_err();
        assert_eq!(collision.user, "ghost");
    }

    #[test]
    fn reconciling_finds_orphans_and_unused_networks() {
        let container = |name: &str| ManagedContainer {
            name: name.into(),
            running: true,
            user: String::new(),
            project: String::new(),
            session: "0123abcd".into(),
            service: String::new(),
        };
        // A build's step: from a project image, with no session.
        let building = ManagedContainer {
            session: String::new(),
            project: "api".into(),
            ..container("3f2a9c1b7d")
        };
        let probe = |name: &str, until: Millis| ManagedContainer {
            session: probe_label(until),
            ..container(name)
        };
        let managed = [
            container("podspawn-alice"),
            container("podspawn-bob"),
            probe("podspawn-probe-1", NOW + 1),
            probe("podspawn-probe-2", NOW),
            building,
        ];
        let owned = ["podspawn-alice".to_string()].into();
        let names: Vec<&str> = orphans(&managed, &owned, NOW)
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(names, ["podspawn-bob", "podspawn-probe-2"]);

        let network = |user: &str| ManagedNetwork {
            name: format!("podspawn-{user}"),
            user: user.into(),
            project: String::new(),
            session: String::new(),
        };
        // A session's network is never taken for its user's.
        let of_a_session = ManagedNetwork {
            name: "podspawn-dave-api.net".into(),
            session: "s1".into(),
            ..network("dave")
        };
        let networks = [
            network("alice"),
            network("bob"),
            network("carol"),
            of_a_session,
        ];
        let carol = UserName::parse("carol").unwrap();
        let unused: Vec<&str> = unused_networks(&networks, |user| user == "alice", &[carol])
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(unused, ["podspawn-bob"]);
    }

    #[test]
    fn a_sessions_network_is_unused_once_no_row_names_it() {
        let network = |name: &str, session: &str| ManagedNetwork {
            name: name.into(),
            user: "alice".into(),
            project: "api".into(),
            session: session.into(),
        };
        let networks = [
            network("podspawn-alice", ""),
            network("podspawn-alice-api.net", "s2"),
            network("podspawn-alice-web.net", "s1"),
        ];
        let row = SessionRow {
            project: "api".into(),
            container: "podspawn-alice-api".into(),
            network: "podspawn-alice-api.net".into(),
            ..session("alice")
        };
        let unused: Vec<&str> = unused_session_networks(&networks, &[row])
            .iter()
            .map(|n| n.name.as_str())
            .collect();
        assert_eq!(unused, ["podspawn-alice-web.net"]);
    }

    #[test]
    fn a_volume_goes_with_its_session_and_a_kept_one_with_its_user_or_project() {
        let volume = |name: &str, project: &str, session: &str| ManagedVolume {
            name: name.into(),
            user: "alice".into(),
            project: project.into(),
            session: session.into(),
        };
        let row = SessionRow {
            project: "api".into(),
            session_id: "s2".into(),
            ..session("alice")
        };
        let volumes = [
            // The running session's own, and an earlier session's.
            volume("podspawn-alice-api.s2.data", "api", "s2"),
            volume("podspawn-alice-api.s1.data", "api", "s1"),
            // Kept: of a registered project, of a removed one.
            volume("podspawn-alice-api.data", "api", ""),
            volume("podspawn-alice-old.data", "old", ""),
        ];
        let projects = ["api".to_string()];
        let names = |registered: bool, keep: bool| -> Vec<String> {
            unused_volumes(
                &volumes,
                std::slice::from_ref(&row),
                |_| registered,
                &projects,
                keep,
            )
            .iter()
            .map(|v| v.name.clone())
            .collect()
        };
        assert_eq!(
            names(true, true),
            ["podspawn-alice-api.s1.data", "podspawn-alice-old.data"]
        );
        // A user who is gone keeps nothing but what a session still uses.
        let mut without_user = names(false, true);
        without_user.sort();
        assert_eq!(
            without_user,
            ["podspawn-alice-api.s1.data", "podspawn-alice-old.data"]
        );
        let no_row: Vec<String> = unused_volumes(&volumes, &[], |_| false, &projects, true)
            .iter()
            .map(|v| v.name.clone())
            .collect();
        assert_eq!(no_row.len(), 4);
        // No longer kept: a kept volume no session uses goes.
        assert_eq!(
            unused_volumes(&volumes, &[], |_| true, &projects, false).len(),
            4
        );
    }
}
