//! YAML as podspawn reads it, for files people write (the server config, Podfiles):
//! strict serde, and an error that names the line and the key (`session.mode`, not
//! just `session`), however serde_yaml phrased it.

use serde::de::DeserializeOwned;

/// Parses `text`; an error comes back as (line, "key.path: problem").
pub fn from_str<T: DeserializeOwned>(text: &str) -> Result<T, (Option<usize>, String)> {
    serde_yaml::from_str(text).map_err(|err| {
        let (line, message) = describe(text, &err);
        (refine_line(text, line, &message), message)
    })
}

/// serde_yaml places an error in a list item at the list's first item, and one in
/// a value checked by our own code at its mapping; when the message quotes the
/// refused value, the line that holds it (from there on) is the
/// one to name.
fn refine_line(text: &str, line: Option<usize>, message: &str) -> Option<usize> {
    let start = line?;
    let quoted = message.split_once('"').and_then(|(_, rest)| {
        // The Debug form ends at the first quote not escaped.
        let mut end = None;
        let mut escaped = false;
        for (index, c) in rest.char_indices() {
            match c {
                '\\' if !escaped => escaped = true,
                '"' if !escaped => {
                    end = Some(index);
                    break;
                }
                _ => escaped = false,
            }
        }
        end.map(|end| &rest[..end])
    });
    let Some(value) = quoted.filter(|value| !value.is_empty() && !value.contains('\\')) else {
        return line;
    };
    let found = text
        .lines()
        .enumerate()
        .skip(start - 1)
        .find(|(_, text_line)| text_line.contains(value))
        .map(|(index, _)| index + 1);
    found.or(line)
}

/// Whether `text` holds anything but blank lines, comments and a document marker.
pub fn has_content(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .any(|line| !line.is_empty() && !line.starts_with('#') && line != "---")
}

/// Turns a serde_yaml error into (line, "key.path: problem"). serde_yaml reports the
/// path of the *mapping* that holds a bad value, and the position of the value; the key
/// itself is read back from the text at that position, so the admin sees
/// `session.grace_period`, not just `session`.
fn describe(text: &str, err: &serde_yaml::Error) -> (Option<usize>, String) {
    let location = err.location();
    let line = location.as_ref().map(|location| location.line());
    let mut message = err.to_string();
    // " at line L column C" is printed in front by our caller instead.
    if let Some(at) = message.rfind(" at line ")
        && message[at..].contains(" column ")
    {
        message.truncate(at);
    }
    // "expected struct AuthConfig" names our Rust type, not anything in the file.
    if let Some(at) = message.find("expected struct ") {
        message.truncate(at);
        message.push_str("expected a mapping of keys");
    }
    let (parent, problem) = match message.split_once(": ") {
        Some((path, problem)) if is_key_path(path) => (Some(path.to_string()), problem.to_string()),
        _ => (None, message),
    };
    let join = |key: &str| match &parent {
        Some(parent) => format!("{parent}.{key}"),
        None => key.to_string(),
    };
    if let Some(rest) = problem.strip_prefix("unknown field `")
        && let Some((field, expected)) = rest.split_once('`')
    {
        let expected = expected.trim_start_matches(", ");
        return (line, format!("{}: unknown key ({expected})", join(field)));
    }
    let key = location.and_then(|location| key_at(text, location.line(), location.column()));
    match key {
        Some(key) => (line, format!("{}: {problem}", join(&key))),
        None => match parent {
            Some(parent) => (line, format!("{parent}: {problem}")),
            None => (line, problem),
        },
    }
}

fn is_key_path(text: &str) -> bool {
    !text.is_empty()
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | '[' | ']'))
}

/// The mapping key at (line, column), both 1-based, where serde_yaml marks an error
/// in the key's value.
fn key_at(text: &str, line: usize, column: usize) -> Option<String> {
    let text_line = text.lines().nth(line.checked_sub(1)?)?;
    let from: String = text_line.chars().skip(column.saturating_sub(1)).collect();
    let key: String = from
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == '-')
        .collect();
    let after = from[key.len()..].trim_start();
    (!key.is_empty() && after.starts_with(':')).then_some(key)
}
