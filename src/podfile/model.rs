//! The Podfile's fields and the rules each value must follow. Every rule is a type
//! with its own `Deserialize`, so a value that breaks one is an error at its key and
//! line, before anything is built.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::config::AbsolutePath;

/// A project's environment.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Podfile {
    /// The image it starts from; the server's `defaults.image` when absent.
    #[serde(deserialize_with = "image")]
    pub base: Option<String>,
    pub packages: Vec<Package>,
    pub shell: Option<AbsolutePath>,
    pub env: BTreeMap<EnvName, EnvValue>,
    #[serde(deserialize_with = "services")]
    pub services: Vec<Service>,
    /// Runs once, when the image is built, in the workspace.
    pub on_create: Option<Script>,
    /// Runs at the start of each interactive session.
    pub on_start: Option<Script>,
    pub dotfiles: Option<Dotfiles>,
    /// Where the repo is in the container; `/workspace/<project>` when absent.
    #[serde(deserialize_with = "workspace")]
    pub workspace: Option<AbsolutePath>,
}

/// A workspace path: absolute, plain (it is written into the Dockerfile as it is).
pub fn check_workspace(text: &str) -> Result<AbsolutePath, String> {
    let plain = text.starts_with('/')
        && text.len() <= 200
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_./-".contains(c))
        && !text.split('/').any(|part| part == ".." || part == ".")
        && !text.contains("//")
        && text != "/";
    if !plain {
        return Err(format!(
            "{:?} is not a workspace (an absolute path of letters, digits, '_', '.', '-' and '/')",
            text.escape_debug().to_string()
        ));
    }
    Ok(AbsolutePath::from(text))
}

fn workspace<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<AbsolutePath>, D::Error> {
    let text = String::deserialize(deserializer)?;
    check_session_workspace(&text)
        .map(Some)
        .map_err(de::Error::custom)
}

/// A project's workspace: a workspace path (`check_workspace`) outside the places a
/// session mounts something of its own on, or the system's own (the repo there
/// would be hidden, or in the way).
pub fn check_session_workspace(text: &str) -> Result<AbsolutePath, String> {
    let path = check_workspace(text)?;
    let taken = [
        "/etc", "/tmp", "/var/tmp", "/run", "/proc", "/sys", "/dev", "/home",
    ];
    if let Some(place) = taken
        .iter()
        .find(|place| text == **place || text.starts_with(&format!("{place}/")))
    {
        return Err(format!(
            "{text:?} is not a workspace: {place} is the container's own (use e.g. /workspace/NAME)"
        ));
    }
    Ok(path)
}

fn image<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<String>, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::container::check_image(&text).map_err(de::Error::custom)?;
    Ok(Some(text))
}

/// A Debian/Ubuntu package, optionally `name@version`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: Option<String>,
}

impl Package {
    pub fn parse(text: &str) -> Result<Package, String> {
        let (name, version) = match text.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (text, None),
        };
        // Debian policy: lower-case letters, digits, '+', '-' and '.', at least two,
        // starting with a letter or digit.
        let name_ok = name.len() >= 2
            && name.len() <= 100
            && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        // Debian version characters (epoch, upstream, revision), no leading '-'.
        let version_ok = version.is_none_or(|version| {
            !version.is_empty()
                && version.len() <= 100
                && version.starts_with(|c: char| c.is_ascii_alphanumeric())
                && version
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".+~:-".contains(c))
        });
        if name_ok && version_ok {
            Ok(Package {
                name: name.to_string(),
                version: version.map(str::to_string),
            })
        } else {
            Err(format!(
                "{:?} is not a package name (lower-case letters, digits, '+', '-' and '.', \
                 optionally @version)",
                text.escape_debug().to_string()
            ))
        }
    }
}

impl fmt::Display for Package {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match &self.version {
            Some(version) => write!(f, "{}@{version}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

impl<'de> Deserialize<'de> for Package {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Package::parse(&text).map_err(de::Error::custom)
    }
}

/// An environment variable's name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct EnvName(pub String);

impl EnvName {
    pub fn parse(text: &str) -> Result<EnvName, String> {
        let ok = !text.is_empty()
            && text.len() <= 128
            && text.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
            && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok && text.starts_with("PODSPAWN_") {
            Err(format!("{text} is podspawn's to set, not the Podfile's"))
        } else if ok {
            Ok(EnvName(text.to_string()))
        } else {
            Err(format!(
                "{:?} is not a variable name (letters, digits and '_')",
                text.escape_debug().to_string()
            ))
        }
    }
}

impl<'de> Deserialize<'de> for EnvName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        EnvName::parse(&text).map_err(de::Error::custom)
    }
}

/// The variables an env value may name, as `${NAME}`, filled in for each session.
pub const ENV_VARIABLES: &[&str] = &["PODSPAWN_USER", "PODSPAWN_PROJECT"];

/// An environment value: text, or a number or boolean written as such. `${NAME}` may
/// name only `ENV_VARIABLES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvValue(pub String);

impl EnvValue {
    pub fn parse(text: String) -> Result<EnvValue, String> {
        if text.contains('\0') {
            return Err("a value may not hold a NUL byte".to_string());
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find("${") {
            let after = &rest[at + 2..];
            let Some(end) = after.find('}') else {
                return Err(format!("{text:?} opens ${{ without closing it"));
            };
            let name = &after[..end];
            if !ENV_VARIABLES.contains(&name) {
                return Err(format!(
                    "${{{name}}} is not a variable podspawn fills in (only ${{PODSPAWN_USER}} \
                     and ${{PODSPAWN_PROJECT}})"
                ));
            }
            rest = &after[end + 1..];
        }
        Ok(EnvValue(text))
    }

    /// The value for one session.
    pub fn expand(&self, user: &str, project: &str) -> String {
        self.0
            .replace("${PODSPAWN_USER}", user)
            .replace("${PODSPAWN_PROJECT}", project)
    }
}

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Scalar;
        impl Visitor<'_> for Scalar {
            type Value = String;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<String, E> {
                Ok(value.to_string())
            }
            fn visit_bool<E: de::Error>(self, value: bool) -> Result<String, E> {
                Ok(value.to_string())
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<String, E> {
                Ok(value.to_string())
            }
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<String, E> {
                Ok(value.to_string())
            }
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<String, E> {
                Ok(value.to_string())
            }
        }
        let text = deserializer.deserialize_any(Scalar)?;
        EnvValue::parse(text).map_err(de::Error::custom)
    }
}

/// A script for `sh -c` inside a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Script(pub String);

impl<'de> Deserialize<'de> for Script {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        if text.contains('\0') {
            return Err(de::Error::custom("a script may not hold a NUL byte"));
        }
        Ok(Script(text))
    }
}

/// A companion service: its own container beside the session's.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: ServiceName,
    #[serde(deserialize_with = "required_image")]
    pub image: String,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub env: BTreeMap<EnvName, EnvValue>,
    #[serde(default)]
    pub volumes: Vec<Volume>,
    #[serde(default)]
    pub command: Option<Command>,
}

/// A session's services: at most `MAX_SERVICES` (the addresses of its network),
/// each name once (it is their DNS name there).
fn services<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Vec<Service>, D::Error> {
    let services = Vec::<Service>::deserialize(deserializer)?;
    let max = crate::network::MAX_SERVICES;
    if services.len() > max {
        return Err(de::Error::custom(format!(
            "{} services; a session may have at most {max}",
            services.len()
        )));
    }
    for (index, service) in services.iter().enumerate() {
        if services[..index]
            .iter()
            .any(|earlier| earlier.name == service.name)
        {
            return Err(de::Error::custom(format!(
                "the service name \"{}\" is used twice",
                service.name.0
            )));
        }
        let targets = &service.volumes;
        if let Some(twice) = targets.iter().enumerate().find(|(at, volume)| {
            targets[..*at]
                .iter()
                .any(|earlier| earlier.target == volume.target)
        }) {
            return Err(de::Error::custom(format!(
                "service \"{}\" mounts two volumes at {}",
                service.name.0, twice.1.target
            )));
        }
        if service.ports.len() > MAX_PORTS {
            return Err(de::Error::custom(format!(
                "service \"{}\" lists {} ports; at most {MAX_PORTS}",
                service.name.0,
                service.ports.len()
            )));
        }
    }
    Ok(services)
}

/// The most ports one service may declare.
const MAX_PORTS: usize = 16;

fn required_image<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    let text = String::deserialize(deserializer)?;
    crate::container::check_image(&text).map_err(de::Error::custom)?;
    // Project images are built here for their project alone, never fetched.
    if crate::image::is_project_image(&text) {
        return Err(de::Error::custom(format!(
            "{text:?} is a podspawn project's image, not a service's"
        )));
    }
    Ok(text)
}

/// A service's name: its DNS name on the session's network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName(pub String);

impl<'de> Deserialize<'de> for ServiceName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let ok = !text.is_empty()
            && text.len() <= 30
            && text.starts_with(|c: char| c.is_ascii_lowercase())
            && !text.ends_with('-')
            && text
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if ok {
            Ok(ServiceName(text))
        } else {
            Err(de::Error::custom(format!(
                "{:?} is not a service name (a lower-case letter, then letters, digits and \
                 '-', at most 30)",
                text.escape_debug().to_string()
            )))
        }
    }
}

/// A TCP port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16);

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let number = u32::deserialize(deserializer)?;
        match u16::try_from(number) {
            Ok(port) if port > 0 => Ok(Port(port)),
            _ => Err(de::Error::custom(format!(
                "{number} is not a port (1 to 65535)"
            ))),
        }
    }
}

/// A named volume of the session, `NAME:/path[:ro]`. A host path is refused: a
/// Podfile is the repo owner's text, not the admin's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    pub name: String,
    pub target: String,
    pub read_only: bool,
}

impl Volume {
    pub fn parse(text: &str) -> Result<Volume, String> {
        let parts: Vec<&str> = text.split(':').collect();
        let (name, target, read_only) = match parts.as_slice() {
            [name, target] => (*name, *target, false),
            [name, target, "ro"] => (*name, *target, true),
            [name, target, "rw"] => (*name, *target, false),
            _ => return Err(format!("{text:?} is not NAME:/path[:ro]")),
        };
        if name.starts_with(['/', '.', '~']) || name.contains('/') {
            return Err(format!(
                "{text:?} names a host path; a Podfile may only use named volumes \
                 (NAME:/path), which live and go with the session"
            ));
        }
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name.starts_with(|c: char| c.is_ascii_alphanumeric())
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "_-".contains(c));
        // A plain absolute path below `/`: it reaches docker's comma-separated
        // `--mount`, where quotes and commas would be read as syntax.
        let target_ok = check_workspace(target).is_ok();
        if !name_ok || !target_ok {
            return Err(format!(
                "{text:?} is not NAME:/path[:ro] (a name of letters, digits, '_' and '-'; \
                 an absolute path of letters, digits, '_', '.', '-' and '/', not / itself)"
            ));
        }
        Ok(Volume {
            name: name.to_string(),
            target: target.to_string(),
            read_only,
        })
    }
}

impl<'de> Deserialize<'de> for Volume {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Volume::parse(&text).map_err(de::Error::custom)
    }
}

/// A service's command, replacing its image's `CMD` (its entrypoint stays, as with
/// compose): an argv, or a string split into words as a shell would split it, with
/// quotes and backslashes but no expansion (no shell runs it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command(pub Vec<String>);

impl Command {
    pub fn split(text: &str) -> Result<Vec<String>, String> {
        let mut words = Vec::new();
        let mut word: Option<String> = None;
        let mut chars = text.chars();
        while let Some(c) = chars.next() {
            match c {
                c if c.is_whitespace() => {
                    words.extend(word.take());
                }
                '\'' => {
                    let current = word.get_or_insert_with(String::new);
                    loop {
                        match chars.next() {
                            Some('\'') => break,
                            Some(c) => current.push(c),
                            None => return Err(format!("{text:?} leaves a ' open")),
                        }
                    }
                }
                '"' => {
                    let current = word.get_or_insert_with(String::new);
                    loop {
                        match chars.next() {
                            Some('"') => break,
                            Some('\\') => match chars.next() {
                                Some(c @ ('"' | '\\' | '$' | '`')) => current.push(c),
                                Some(c) => {
                                    current.push('\\');
                                    current.push(c);
                                }
                                None => return Err(format!("{text:?} leaves a \" open")),
                            },
                            Some(c) => current.push(c),
                            None => return Err(format!("{text:?} leaves a \" open")),
                        }
                    }
                }
                '\\' => match chars.next() {
                    Some(c) => word.get_or_insert_with(String::new).push(c),
                    None => return Err(format!("{text:?} ends in a lone \\")),
                },
                c => word.get_or_insert_with(String::new).push(c),
            }
        }
        words.extend(word);
        Ok(words)
    }
}

impl<'de> Deserialize<'de> for Command {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Written;
        impl<'de> Visitor<'de> for Written {
            type Value = Vec<String>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a command line or a list of words")
            }
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Vec<String>, E> {
                Command::split(text).map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
                let mut words = Vec::new();
                while let Some(word) = seq.next_element::<String>()? {
                    words.push(word);
                }
                Ok(words)
            }
        }
        let argv = deserializer.deserialize_any(Written)?;
        if argv.is_empty() {
            return Err(de::Error::custom("an empty command"));
        }
        if argv.iter().any(|word| word.contains('\0')) {
            return Err(de::Error::custom("a command may not hold a NUL byte"));
        }
        Ok(Command(argv))
    }
}

/// A user's dotfiles: a git repo cloned into the home of each new container, and its
/// install script, run there as the user.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Dotfiles {
    pub repo: GitUrl,
    pub install: Option<Script>,
}

/// A git repository URL a container may clone: https or ssh (`git@host:path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GitUrl(pub String);

impl<'de> Deserialize<'de> for GitUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        let scheme_ok = text.starts_with("https://")
            || text.starts_with("ssh://")
            || (text.starts_with("git@") && text.contains(':'));
        if scheme_ok
            && text.len() <= 512
            && !text.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            Ok(GitUrl(text))
        } else {
            Err(de::Error::custom(format!(
                "{:?} is not a git URL (https://…, ssh://… or git@host:path)",
                text.escape_debug().to_string()
            )))
        }
    }
}

/// Most nodes a Podfile's YAML may expand to: aliases can make a few bytes stand for
/// an enormous document (a "billion laughs").
const MAX_NODES: usize = 20_000;

/// Parses a Podfile's YAML; an error comes back as (line, "key: problem").
pub fn parse_yaml(text: &str) -> Result<Podfile, (Option<usize>, String)> {
    if !crate::yaml::has_content(text) {
        return Ok(Podfile::default());
    }
    // Walk every node once, counting, before anything else expands them.
    NODES.with(|nodes| nodes.set(0));
    if let Err(err) = serde_yaml::from_str::<Counted>(text) {
        if NODES.with(|nodes| nodes.get()) > MAX_NODES {
            return Err((
                None,
                format!("the YAML expands to more than {MAX_NODES} values (aliases?)"),
            ));
        }
        let _ = err;
    }
    crate::yaml::from_str(text)
}

thread_local! {
    static NODES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Any YAML document, walked and counted, and given up on past `MAX_NODES`.
struct Counted;

impl Counted {
    fn count<E: de::Error>() -> Result<(), E> {
        let nodes = NODES.with(|nodes| {
            nodes.set(nodes.get() + 1);
            nodes.get()
        });
        if nodes > MAX_NODES {
            return Err(E::custom("too many values"));
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for Counted {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CountedVisitor)
    }
}

struct CountedVisitor;

impl<'de> Visitor<'de> for CountedVisitor {
    type Value = Counted;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Counted, E> {
        Counted::count().map(|()| Counted)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Counted, E> {
        Counted::count().map(|()| Counted)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Counted, E> {
        Counted::count().map(|()| Counted)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Counted, E> {
        Counted::count().map(|()| Counted)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Counted, E> {
        Counted::count().map(|()| Counted)
    }
    fn visit_unit<E: de::Error>(self) -> Result<Counted, E> {
        Counted::count().map(|()| Counted)
    }
    fn visit_none<E: de::Error>(self) -> Result<Counted, E> {
        Counted::count().map(|()| Counted)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Counted, D::Error> {
        Counted::deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Counted, A::Error> {
        Counted::count()?;
        while seq.next_element::<Counted>()?.is_some() {}
        Ok(Counted)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Counted, A::Error> {
        Counted::count()?;
        while map.next_entry::<Counted, Counted>()?.is_some() {}
        Ok(Counted)
    }
    fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<Counted, A::Error> {
        let (counted, variant) = data.variant::<Counted>()?;
        de::VariantAccess::newtype_variant::<Counted>(variant)?;
        Ok(counted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_err(text: &str) -> (Option<usize>, String) {
        parse_yaml(text).expect_err("the Podfile should be refused")
    }

    const TUTORIAL: &str = r#"base: ubuntu:24.04

packages:
  - nodejs@22
  - git
  - curl
  - ripgrep

shell: /bin/bash

env:
  DATABASE_URL: "postgres://postgres:devpass@postgres:5432/testdb"
  NODE_ENV: development

services:
  - name: postgres
    image: postgres:16
    ports: [5432]
    env:
      POSTGRES_PASSWORD: devpass
      POSTGRES_DB: testdb

on_create: |
  cd /workspace/api && npm install

on_start: |
  echo "API dev environment ready"
  echo "Run: cd /workspace/api && npm test"
"#;

    #[test]
    fn the_tutorials_podfile_parses() {
        let podfile = parse_yaml(TUTORIAL).unwrap();
        assert_eq!(podfile.base.as_deref(), Some("ubuntu:24.04"));
        assert_eq!(
            podfile.packages[0],
            Package {
                name: "nodejs".into(),
                version: Some("22".into())
            }
        );
        assert_eq!(podfile.packages.len(), 4);
        assert_eq!(podfile.shell, Some(AbsolutePath::from("/bin/bash")));
        assert_eq!(
            podfile.env[&EnvName("NODE_ENV".into())],
            EnvValue("development".into())
        );
        assert_eq!(podfile.services[0].name, ServiceName("postgres".into()));
        assert_eq!(podfile.services[0].ports, [Port(5432)]);
        assert!(podfile.on_create.unwrap().0.contains("npm install"));
        assert!(podfile.on_start.unwrap().0.contains("ready"));
    }

    #[test]
    fn a_workspace_where_a_session_mounts_its_own_is_refused() {
        for place in ["/etc", "/tmp/app", "/run/x", "/home/src", "/var/tmp"] {
            let (line, message) =
                parse_yaml(&format!("shell: /bin/sh\nworkspace: {place}\n")).expect_err("refused");
            assert_eq!(line, Some(2), "{message}");
            assert!(message.contains("the container's own"), "{message}");
        }
        assert!(parse_yaml("workspace: /srv/app\n").is_ok());
        assert!(parse_yaml("workspace: /etcetera\n").is_ok());
    }

    #[test]
    fn every_field_and_the_empty_file() {
        let podfile = parse_yaml(
            "workspace: /src/app\ndotfiles:\n  repo: https://github.com/me/dots\n  install: ./install.sh\n\
             env:\n  PORT: 3000\n  DEBUG: true\n  HOME_OF: /home/${PODSPAWN_USER}\n\
             services:\n  - name: cache\n    image: redis:7\n    volumes: [data:/data, conf:/etc/x:ro]\n    command: [redis-server, --save, \"60 1\"]\n",
        )
        .unwrap();
        assert_eq!(podfile.workspace, Some(AbsolutePath::from("/src/app")));
        assert_eq!(
            podfile.dotfiles.unwrap().repo.0,
            "https://github.com/me/dots"
        );
        let env: Vec<String> = podfile
            .env
            .values()
            .map(|v| v.expand("sarah", "api"))
            .collect();
        assert_eq!(env, ["true", "/home/sarah", "3000"]);
        let service = &podfile.services[0];
        assert!(service.volumes[1].read_only);
        assert_eq!(
            service.command,
            Some(Command(vec![
                "redis-server".into(),
                "--save".into(),
                "60 1".into()
            ]))
        );
        assert_eq!(parse_yaml("# nothing\n").unwrap(), Podfile::default());
    }

    #[test]
    fn hostile_values_are_refused_at_their_key_and_line() {
        let cases = [
            (
                "packages:\n  - \"git; rm -rf /\"\n",
                "packages",
                "not a package name",
            ),
            (
                "packages:\n  - \"$(curl evil)\"\n",
                "packages",
                "not a package name",
            ),
            (
                "packages:\n  - \"two words\"\n",
                "packages",
                "not a package name",
            ),
            (
                "packages:\n  - \"-oDebug::pkgProblemResolver=1\"\n",
                "packages",
                "not a package name",
            ),
            (
                "packages:\n  - \"git\\nrm\"\n",
                "packages",
                "not a package name",
            ),
            (
                "packages:\n  - \"nodejs@-1\"\n",
                "packages",
                "not a package name",
            ),
            ("base: --privileged\n", "base", "invalid image"),
            ("base: \"debian\\\\\"\n", "base", "invalid image"),
            (
                "workspace: \"/w /etc \\\\\"\n",
                "workspace",
                "not a workspace",
            ),
            ("shell: bash\n", "shell", "must be absolute"),
            ("env:\n  \"A B\": x\n", "env", "not a variable name"),
            ("env:\n  PODSPAWN_USER: root\n", "env", "podspawn's to set"),
            (
                "env:\n  X: ${HOME}\n",
                "env.X",
                "not a variable podspawn fills in",
            ),
            (
                "services:\n  - name: db\n    image: pg\n    volumes: [/etc:/host]\n",
                "services[0].volumes",
                "host path",
            ),
            (
                "services:\n  - name: db\n    image: pg\n    volumes: [./data:/d]\n",
                "services[0].volumes",
                "host path",
            ),
            (
                "services:\n  - name: db\n    image: pg\n    volumes: [a.b:/d]\n",
                "services[0].volumes",
                "not NAME:/path",
            ),
            (
                "services:\n  - name: db\n    image: pg\n    volumes: [\"data:/\"]\n",
                "services[0].volumes",
                "not NAME:/path",
            ),
            (
                "services:\n  - name: db\n    image: pg\n    volumes: [\"data:/a/./b\"]\n",
                "services[0].volumes",
                "not NAME:/path",
            ),
            (
                "services:\n  - name: db\n    image: pg\n    volumes: [\"data:/a\\\"b\"]\n",
                "services[0].volumes",
                "not NAME:/path",
            ),
            (
                "services:\n  - name: db\n    image: pg\n    volumes: [a:/d, b:/d]\n",
                "services",
                "two volumes at /d",
            ),
            (
                "services:\n  - name: db\n    image: podspawn/api:0123456789ab\n",
                "image",
                "a podspawn project's image",
            ),
            (
                "services:\n  - name: db\n    image: pg\n  - name: db\n    image: redis\n",
                "services",
                "used twice",
            ),
            (
                "services:\n  - {name: a, image: x}\n  - {name: b, image: x}\n  - {name: c, image: x}\n  - {name: d, image: x}\n  - {name: e, image: x}\n",
                "services",
                "at most 4",
            ),
            (
                "services:\n  - name: db\n    image: pg\n    command: \"postgres -c 'x\"\n",
                "command",
                "leaves a ' open",
            ),
            (
                "services:\n  - name: db\n    image: pg\n    command: []\n",
                "command",
                "empty command",
            ),
            (
                "services:\n  - name: db\n    image: \"--privileged\"\n",
                "image",
                "invalid image",
            ),
            (
                "services:\n  - name: Db\n    image: pg\n",
                "name",
                "not a service name",
            ),
            (
                "services:\n  - name: db\n    image: pg\n    ports: [70000]\n",
                "services[0].ports",
                "not a port",
            ),
            (
                "dotfiles:\n  repo: file:///etc\n",
                "dotfiles.repo",
                "not a git URL",
            ),
            ("packges: [git]\n", "packges", "unknown key"),
            ("packages: git\n", "packages", "invalid type"),
        ];
        let mut wrong = Vec::new();
        for (text, key, detail) in cases {
            let (line, message) = parse_err(text);
            if line.is_none() || !message.contains(key) || !message.contains(detail) {
                wrong.push(format!("{text:?} -> {line:?} {message}"));
            }
        }
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }

    #[test]
    fn aliases_that_expand_without_bound_are_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 1..8 {
            text.push_str(&format!(
                "{}: &{} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n",
                (b'a' + level) as char,
                (b'a' + level) as char,
                p = (b'a' + level - 1) as char
            ));
        }
        text.push_str("env:\n  X: y\n");
        let (_, message) = parse_err(&text);
        assert!(message.contains("expands to more than"), "{message}");
    }

    #[test]
    fn package_names_follow_debian_policy() {
        for ok in [
            "git",
            "g++",
            "libssl3",
            "python3.11",
            "nodejs@22",
            "curl@7.88.1-10+deb12u5",
        ] {
            assert!(Package::parse(ok).is_ok(), "{ok}");
        }
        for bad in [
            "", "g", "Git", "-x", "git;ls", "git@", "a@b c", "x@$(y)", "pkg/sub",
        ] {
            assert!(Package::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_command_line_splits_as_a_shell_would_without_expanding() {
        let split = |text: &str| Command::split(text).unwrap();
        assert_eq!(
            split("redis-server --appendonly yes"),
            ["redis-server", "--appendonly", "yes"]
        );
        assert_eq!(
            split(r#"postgres -c 'shared_buffers=64MB' -c "work_mem=4MB" a\ b $HOME"#),
            [
                "postgres",
                "-c",
                "shared_buffers=64MB",
                "-c",
                "work_mem=4MB",
                "a b",
                "$HOME"
            ]
        );
        assert_eq!(split(r#"x "a\"b\n" '' "#), ["x", "a\"b\\n", ""]);
        assert_eq!(split("  "), Vec::<String>::new());
        for bad in ["a 'b", "a \"b", "a\\"] {
            assert!(Command::split(bad).is_err(), "{bad:?}");
        }
    }
}
