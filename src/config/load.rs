//! Reading a config file: TOML, `${VAR}` substitution, every bad field reported at once,
//! then [`validate`](super::validate::validate).

use std::collections::HashSet;
use std::fmt;
use std::path::Path;

use super::cameras::CameraConfig;
use super::env::substitute;
use super::root::Config;
use super::validate::validate;

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the problem is in.
    pub file: String,
    /// Dotted path of the field, e.g. `cameras[2].url`.
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file, self.message)
        } else {
            write!(f, "{}: {}: {}", self.file, self.field, self.message)
        }
    }
}

/// Every problem found in one config file.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(
            f,
            "{n} problem{} in the config:",
            if n == 1 { "" } else { "s" }
        )?;
        for e in &self.0 {
            writeln!(f, "  {e}")?;
        }
        Ok(())
    }
}

/// Reads, substitutes, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: file.clone(),
            field: String::new(),
            message: format!("cannot read the file: {e}"),
        }])
    })?;
    load_str(&text, &file, &|name| std::env::var(name).ok())
}

/// Parses and validates config text; `file` names it in errors, `env` resolves `${VAR}`.
pub fn load_str(
    text: &str,
    file: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    let err = |field: &str, message: String| ConfigError {
        file: file.to_string(),
        field: field.to_string(),
        message,
    };
    let mut value: toml::Table = toml::from_str(text)
        .map_err(|e| ConfigErrors(vec![err("", format!("not valid TOML: {e}"))]))?;
    let substituted = substitute(&mut value, env);
    // A field whose variable is unset keeps its `${...}` text; other complaints about that
    // field would only repeat the first one.
    let unset: HashSet<String> = substituted.iter().map(|(f, _)| f.clone()).collect();
    let mut found: Vec<(String, String)> = Vec::new();

    // Cameras are parsed one by one so that indexes in messages match the file, and so
    // that one broken camera does not hide the others' mistakes.
    let mut cameras_raw = Vec::new();
    if let Some(c) = value.remove("cameras") {
        match c {
            toml::Value::Array(items) => cameras_raw = items,
            _ => found.push((
                "cameras".into(),
                "must be an array of tables: write each camera as [[cameras]]".into(),
            )),
        }
    }
    // Every other field has a default, so after the bad fields are dropped this succeeds.
    let Some(mut config) = deserialize_all::<Config>(toml::Value::Table(value), "", &mut found)
    else {
        let mut errors: Vec<ConfigError> = substituted
            .into_iter()
            .chain(found)
            .map(|(f, m)| err(&f, m))
            .collect();
        if errors.is_empty() {
            errors.push(err("", "cannot be read as a config".into()));
        }
        return Err(ConfigErrors(errors));
    };
    let cameras: Vec<Option<CameraConfig>> = cameras_raw
        .into_iter()
        .enumerate()
        .map(|(i, raw)| deserialize_all(raw, &format!("cameras[{i}]"), &mut found))
        .collect();
    config.cameras = cameras.iter().flatten().cloned().collect();
    found.extend(validate(&config, &cameras));
    let errors: Vec<ConfigError> = substituted
        .into_iter()
        .chain(found.into_iter().filter(|(f, _)| !unset.contains(f)))
        .map(|(f, m)| err(&f, m))
        .collect();
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Deserializes `raw` as a `T`, reporting every bad field rather than the first: serde stops
/// at the first error, so the field it names is dropped (falling back to its default) and
/// the rest is tried again. Returns `None` when what is left still does not make a `T`
/// (a required field is missing), after reporting why.
fn deserialize_all<T: serde::de::DeserializeOwned>(
    mut raw: toml::Value,
    prefix: &str,
    found: &mut Vec<(String, String)>,
) -> Option<T> {
    let mut removed = HashSet::new();
    // Each round removes one field, so the loop ends; the bound is a second guard.
    for _ in 0..1000 {
        match serde_path_to_error::deserialize::<_, T>(raw.clone()) {
            Ok(v) => return Some(v),
            Err(e) => {
                let field = join_path(prefix, &e);
                let message = serde_message(e.inner());
                // A required field dropped for being wrong is not also "missing".
                let dropped_here = message
                    .strip_prefix("missing field `")
                    .and_then(|m| m.split('`').next())
                    .is_some_and(|name| {
                        removed.contains(&if field.is_empty() {
                            name.to_string()
                        } else {
                            format!("{field}.{name}")
                        })
                    });
                if !dropped_here {
                    found.push((field.clone(), message));
                }
                if !remove_field(&mut raw, e.path()) {
                    return None;
                }
                removed.insert(field);
            }
        }
    }
    None
}

/// Removes the innermost table key on `path` (an array is removed whole, so that the
/// indexes of later complaints still match the file); false when the path names no key.
fn remove_field(raw: &mut toml::Value, path: &serde_path_to_error::Path) -> bool {
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some(last_key) = segments
        .iter()
        .rposition(|s| matches!(s, Segment::Map { .. }))
    else {
        return false;
    };
    let mut at = raw;
    for s in &segments[..last_key] {
        let next = match (s, at) {
            (Segment::Map { key }, toml::Value::Table(t)) => t.get_mut(key),
            (Segment::Seq { index }, toml::Value::Array(a)) => a.get_mut(*index),
            _ => None,
        };
        match next {
            Some(v) => at = v,
            None => return false,
        }
    }
    match (segments[last_key], at) {
        (Segment::Map { key }, toml::Value::Table(t)) => t.remove(key).is_some(),
        _ => false,
    }
}

/// `prefix` joined with the path serde reached before failing, e.g. `cameras[2].sample_interval`.
fn join_path(prefix: &str, e: &serde_path_to_error::Error<toml::de::Error>) -> String {
    let path = e.path().to_string();
    match (prefix.is_empty(), path == ".") {
        (_, true) => prefix.to_string(),
        (true, false) => path,
        (false, false) => format!("{prefix}.{path}"),
    }
}

fn serde_message(e: &toml::de::Error) -> String {
    let m = e.message().trim().to_string();
    if m.starts_with("unknown field") {
        format!("{m}; remove it or fix its spelling")
    } else if m.ends_with("expected a duration") {
        format!("{m}; write a positive duration with a unit, e.g. \"10s\", \"500ms\" or \"2m\"")
    } else if m == "invalid socket address syntax" {
        format!("{m}; write an IP address and port, e.g. \"0.0.0.0:8080\"")
    } else if m.starts_with("invalid value: integer `-") {
        format!("{m}; it must not be negative")
    } else {
        m
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::redact_url;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = load_str(
            "data_dir = \"./data\"\n[api]\nlisten = \"127.0.0.1:8080\"\n[[cameras]]\nid = \"lobby\"\nurl = \"rtsp://127.0.0.1:8554/lobby\"\n",
            "t.toml",
            &no_env,
        )
        .unwrap();
        assert_eq!(c.cameras.len(), 1);
        assert_eq!(c.sampling.interval, Duration::from_secs(10));
        assert_eq!(c.recording.segment, Duration::from_secs(10));
        assert!(c.cameras[0].records(&c.recording));
    }

    #[test]
    fn frame_batch_follows_the_provider_unless_set() {
        let batch = |text: &str| {
            load_str(text, "t.toml", &|_| None)
                .unwrap()
                .infer
                .frame_batch()
        };
        assert_eq!(batch(""), 1);
        assert_eq!(batch("[infer]\nprovider = \"cuda\"\n"), 8);
        assert_eq!(batch("[infer]\nprovider = \"tensorrt\"\n"), 8);
        assert_eq!(batch("[infer]\nbatch = 5\n"), 5);
        assert_eq!(batch("[infer]\nprovider = \"cuda\"\nbatch = 1\n"), 1);
        assert!(load_str("[infer]\nbatch = 0\n", "t.toml", &|_| None).is_err());
    }

    #[test]
    fn speech_window_follows_the_provider_unless_set() {
        let window = |text: &str| {
            load_str(text, "t.toml", &|_| None)
                .unwrap()
                .infer
                .speech_min_window()
        };
        assert_eq!(window(""), Duration::from_secs(6));
        assert_eq!(
            window("[infer]\nprovider = \"cuda\"\n"),
            Duration::from_secs(30)
        );
        assert_eq!(
            window("[infer]\nprovider = \"tensorrt\"\n"),
            Duration::from_secs(30)
        );
        assert_eq!(
            window("[infer.speech]\nmin_window = \"10s\"\n"),
            Duration::from_secs(10)
        );
        assert!(
            load_str("[infer.speech]\nmin_window = \"40s\"\n", "t.toml", &|_| {
                None
            })
            .is_err()
        );
        assert!(load_str("[infer.speech]\nmin_window = \"0s\"\n", "t.toml", &|_| None).is_err());
    }

    #[test]
    fn every_mistake_is_reported() {
        let text = r#"
data_dir = "./data"
colour = "blue"
[sampling]
interval = "soon"
[[cameras]]
id = "a"
url = "rtsp://user:pw@10.0.0.1/stream"
[[cameras]]
id = "a"
url = "http://x/y"
[[cameras]]
id = "b"
url = "rtsp://h/p"
fps = 3
"#;
        let errs = load_str(text, "t.toml", &no_env).unwrap_err().0;
        let fields: Vec<_> = errs.iter().map(|e| e.field.as_str()).collect();
        assert!(fields.contains(&"colour"), "{errs:?}");
        assert!(fields.contains(&"sampling.interval"), "{errs:?}");
        assert!(fields.contains(&"cameras[0].url"), "{errs:?}");
        assert!(fields.contains(&"cameras[1].id"), "{errs:?}");
        assert!(fields.contains(&"cameras[1].url"), "{errs:?}");
        assert!(fields.contains(&"cameras[2].fps"), "{errs:?}");
        let url_err = errs.iter().find(|e| e.field == "cameras[0].url").unwrap();
        assert!(url_err.message.contains("credentials"));
        assert!(
            !format!("{errs:?}").contains("pw@"),
            "credentials leaked into errors"
        );
    }

    #[test]
    fn env_substitution_and_secret_redaction() {
        let env = |k: &str| (k == "CAM_PASS").then(|| "hunter2".to_string());
        let c = load_str(
            "[[cameras]]\nid = \"x\"\nurl = \"rtsp://${CAM_HOST:-127.0.0.1}/x\"\nusername = \"u\"\npassword = \"${CAM_PASS}\"\n",
            "t.toml",
            &env,
        )
        .unwrap();
        assert_eq!(c.cameras[0].url, "rtsp://127.0.0.1/x");
        assert_eq!(c.cameras[0].password.as_ref().unwrap().expose(), "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn missing_env_var_is_an_error() {
        let errs = load_str(
            "[[cameras]]\nid = \"x\"\nurl = \"rtsp://h/x\"\nusername = \"u\"\npassword = \"${NOPE}\"\n",
            "t.toml",
            &no_env,
        )
        .unwrap_err()
        .0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "cameras[0].password");
        assert!(errs[0].message.contains("NOPE"));
    }

    #[test]
    fn redact_url_removes_credentials() {
        assert_eq!(
            redact_url("rtsp://admin:secret@cam.local:554/s"),
            "rtsp://cam.local:554/s"
        );
        assert!(!redact_url("rtsp://admin:se cret@bad url").contains("se cret"));
    }
}
