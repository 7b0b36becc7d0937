//! A devcontainer.json read as a Podfile. It is JSONC (comments, trailing commas);
//! what podspawn can do is mapped (`image`→`base`, `containerEnv`/`remoteEnv`→`env`,
//! `postCreateCommand`→`on_create`, `postStartCommand`→`on_start`,
//! `workspaceFolder`→`workspace`), and what it does not do is named in one warning,
//! never dropped silently.

use serde_json::Value;

use super::model::{EnvName, EnvValue, Podfile, Script};

/// Keys mapped onto the Podfile.
const MAPPED: &[&str] = &[
    "image",
    "containerEnv",
    "remoteEnv",
    "postCreateCommand",
    "postStartCommand",
    "workspaceFolder",
];

/// Parses devcontainer.json text into a Podfile and the warnings to show once.
pub fn parse(text: &str) -> Result<(Podfile, Vec<String>), (Option<usize>, String)> {
    let json = plain_json(text);
    let value: Value = serde_json::from_str(&json)
        .map_err(|err| (Some(err.line()), format!("not JSON: {err}")))?;
    let Value::Object(object) = value else {
        return Err((None, "expected a JSON object".to_string()));
    };
    let line_of = |key: &str| line_of_key(text, key);
    let mut podfile = Podfile::default();
    let mut warnings = Vec::new();
    match object.get("image") {
        Some(Value::String(image)) => {
            crate::container::check_image(image)
                .map_err(|err| (line_of("image"), format!("image: {err}")))?;
            podfile.base = Some(image.clone());
        }
        Some(_) => return Err((line_of("image"), "image: expected a string".to_string())),
        None if object.contains_key("build") || object.contains_key("dockerFile") => {
            return Err((
                line_of("build"),
                "it builds from a Dockerfile (build), which podspawn does not do; give it an \
                 image, or write a podfile.yaml"
                    .to_string(),
            ));
        }
        None => {}
    }
    for key in ["containerEnv", "remoteEnv"] {
        let Some(env) = object.get(key) else { continue };
        let Value::Object(env) = env else {
            return Err((line_of(key), format!("{key}: expected an object")));
        };
        for (name, value) in env {
            let name =
                EnvName::parse(name).map_err(|err| (line_of(key), format!("{key}: {err}")))?;
            let text = match value {
                Value::String(text) => text.clone(),
                Value::Number(number) => number.to_string(),
                Value::Bool(flag) => flag.to_string(),
                _ => return Err((line_of(key), format!("{key}.{}: expected a string", name.0))),
            };
            let value = EnvValue::parse(text)
                .map_err(|err| (line_of(key), format!("{key}.{}: {err}", name.0)))?;
            podfile.env.insert(name, value);
        }
    }
    for (key, slot) in [
        ("postCreateCommand", &mut podfile.on_create),
        ("postStartCommand", &mut podfile.on_start),
    ] {
        if let Some(command) = object.get(key) {
            *slot = Some(Script(
                script(command).map_err(|err| (line_of(key), format!("{key}: {err}")))?,
            ));
        }
    }
    if let Some(folder) = object.get("workspaceFolder") {
        let Value::String(path) = folder else {
            return Err((
                line_of("workspaceFolder"),
                "workspaceFolder: expected an absolute path".to_string(),
            ));
        };
        let path = super::model::check_session_workspace(path).map_err(|err| {
            (
                line_of("workspaceFolder"),
                format!("workspaceFolder: {err}"),
            )
        })?;
        podfile.workspace = Some(path);
    }
    if let Some(ports) = object.get("forwardPorts") {
        warnings.push(format!(
            "forwardPorts {ports} noted: reach a port of the container with ssh -L"
        ));
    }
    let dropped: Vec<&str> = object
        .keys()
        .map(String::as_str)
        .filter(|key| !MAPPED.contains(key) && *key != "forwardPorts")
        .collect();
    if !dropped.is_empty() {
        warnings.push(format!(
            "ignored from devcontainer.json (podspawn does not do these): {}",
            dropped.join(", ")
        ));
    }
    Ok((podfile, warnings))
}

/// A lifecycle command: a string for the shell, an array run as its argv (quoted for
/// the shell here), or an object of named commands (not done).
fn script(command: &Value) -> Result<String, String> {
    match command {
        Value::String(text) if !text.contains('\0') => Ok(text.clone()),
        Value::Array(words) => {
            let words: Option<Vec<String>> = words
                .iter()
                .map(|word| match word {
                    Value::String(word) if !word.contains('\0') => Some(shell_quote(word)),
                    _ => None,
                })
                .collect();
            words
                .map(|words| words.join(" "))
                .ok_or_else(|| "expected an array of strings".to_string())
        }
        _ => Err(
            "expected a string or an array of strings (named commands are not supported)"
                .to_string(),
        ),
    }
}

/// `word` quoted for `sh`.
fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

/// The line where `"key"` first appears, for error messages.
fn line_of_key(text: &str, key: &str) -> Option<usize> {
    let needle = format!("\"{key}\"");
    text.lines()
        .position(|line| line.contains(&needle))
        .map(|index| index + 1)
}

/// JSONC as plain JSON: comments (`//`, `/* */`) and trailing commas removed outside
/// strings. Line breaks are kept, so JSON's line numbers are the file's.
fn plain_json(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    let mut in_string = false;
    while at < chars.len() {
        let c = chars[at];
        if in_string {
            out.push(c);
            if c == '\\' && at + 1 < chars.len() {
                out.push(chars[at + 1]);
                at += 2;
                continue;
            }
            if c == '"' {
                in_string = false;
            }
            at += 1;
            continue;
        }
        match (c, chars.get(at + 1)) {
            ('"', _) => {
                in_string = true;
                out.push(c);
                at += 1;
            }
            ('/', Some('/')) => {
                while at < chars.len() && chars[at] != '\n' {
                    at += 1;
                }
            }
            ('/', Some('*')) => {
                at += 2;
                while at < chars.len() && !(chars[at] == '*' && chars.get(at + 1) == Some(&'/')) {
                    if chars[at] == '\n' {
                        out.push('\n');
                    }
                    at += 1;
                }
                at += 2;
            }
            (',', _) => {
                // A comma followed only by blanks (and comments) before `}` or `]`.
                if !matches!(next_significant(&chars, at + 1), Some('}' | ']')) {
                    out.push(c);
                }
                at += 1;
            }
            _ => {
                out.push(c);
                at += 1;
            }
        }
    }
    out
}

/// The first character from `at` on that is neither blank nor in a comment.
fn next_significant(chars: &[char], mut at: usize) -> Option<char> {
    loop {
        match (chars.get(at)?, chars.get(at + 1)) {
            (c, _) if c.is_whitespace() => at += 1,
            ('/', Some('/')) => {
                while chars.get(at).is_some_and(|c| *c != '\n') {
                    at += 1;
                }
            }
            ('/', Some('*')) => {
                at += 2;
                while chars.get(at).is_some()
                    && !(chars[at] == '*' && chars.get(at + 1) == Some(&'/'))
                {
                    at += 1;
                }
                at += 2;
            }
            (c, _) => return Some(*c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commented_devcontainer_with_trailing_commas_maps_onto_a_podfile() {
        let text = r#"// VS Code's file
{
    "name": "api", // a name
    "image": "mcr.microsoft.com/devcontainers/base:ubuntu", /* the base */
    "containerEnv": { "NODE_ENV": "development", "PORT": 3000, },
    "remoteEnv": { "WHO": "${PODSPAWN_USER}" },
    "postCreateCommand": ["npm", "install", "it's"],
    "postStartCommand": "echo hi // not a comment",
    "forwardPorts": [3000],
    "features": { "ghcr.io/devcontainers/features/node:1": {} },
    "remoteUser": "node",
}
"#;
        let (podfile, warnings) = parse(text).unwrap();
        assert_eq!(
            podfile.base.as_deref(),
            Some("mcr.microsoft.com/devcontainers/base:ubuntu")
        );
        assert_eq!(podfile.env.len(), 3);
        assert_eq!(podfile.on_create.unwrap().0, "'npm' 'install' 'it'\\''s'");
        assert_eq!(podfile.on_start.unwrap().0, "echo hi // not a comment");
        assert_eq!(
            warnings,
            [
                "forwardPorts [3000] noted: reach a port of the container with ssh -L",
                "ignored from devcontainer.json (podspawn does not do these): features, name, remoteUser",
            ]
        );
    }

    #[test]
    fn what_cannot_be_mapped_is_an_error_with_its_line() {
        let (line, message) =
            parse("{\n  \"build\": {\"dockerfile\": \"Dockerfile\"}\n}").unwrap_err();
        assert_eq!(line, Some(2));
        assert!(message.contains("builds from a Dockerfile"), "{message}");
        let (line, message) = parse("{\n\n  \"image\": \"--privileged\"\n}").unwrap_err();
        assert_eq!(line, Some(3));
        assert!(message.contains("invalid image"), "{message}");
        let (_, message) = parse("{\"remoteEnv\": {\"X\": \"${HOME}\"}}").unwrap_err();
        assert!(
            message.contains("not a variable podspawn fills in"),
            "{message}"
        );
        let (_, message) = parse("{\"postCreateCommand\": {\"a\": \"b\"}}").unwrap_err();
        assert!(message.contains("named commands"), "{message}");
        assert!(parse("[1]").is_err());
        // Many commas: linear, not exponential.
        let many = format!(
            "{{\"containerEnv\": {{{}\"Z\": \"z\",}}}}",
            "\"A\": \"a\", ".repeat(2000)
        );
        let (podfile, _) = parse(&many).unwrap();
        assert_eq!(
            podfile.env.len(),
            2,
            "the same key twice is one key in JSON"
        );
        assert!(parse("{ \"image\": \"x\" ").is_err());
        // Nothing that could break a Dockerfile line.
        for bad in [
            r#"{"image": "x\\"}"#,
            r#"{"image": "x y"}"#,
            r#"{"workspaceFolder": "/w /etc/evil \\"}"#,
            r#"{"workspaceFolder": "/w/../etc"}"#,
            r#"{"workspaceFolder": "relative"}"#,
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
