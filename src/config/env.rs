//! `${VAR}` and `${VAR:-default}` substitution inside string values.
//!
//! Substitution happens on parsed TOML strings, not on the raw text, so a value from the
//! environment (a password with a quote in it) can never change the structure of the file.

/// Replaces variables in every string of `table`; returns (field, message) for each
/// variable that is unset and has no default.
pub fn substitute(
    table: &mut toml::Table,
    env: &dyn Fn(&str) -> Option<String>,
) -> Vec<(String, String)> {
    let mut errors = Vec::new();
    for (key, value) in table.iter_mut() {
        walk(value, key.clone(), env, &mut errors);
    }
    errors
}

fn walk(
    value: &mut toml::Value,
    path: String,
    env: &dyn Fn(&str) -> Option<String>,
    errors: &mut Vec<(String, String)>,
) {
    match value {
        toml::Value::String(s) => match expand(s, env) {
            Ok(v) => *s = v,
            Err(m) => errors.push((path, m)),
        },
        toml::Value::Array(items) => {
            for (i, v) in items.iter_mut().enumerate() {
                walk(v, format!("{path}[{i}]"), env, errors);
            }
        }
        toml::Value::Table(t) => {
            for (k, v) in t.iter_mut() {
                walk(v, format!("{path}.{k}"), env, errors);
            }
        }
        _ => {}
    }
}

/// Expands the variables in one string. `$$` is not special; `${` without a closing
/// brace is an error so a typo does not silently become part of a URL or password.
pub fn expand(s: &str, env: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            return Err("unterminated ${...}; close it with '}'".into());
        };
        let inner = &after[..end];
        let (name, default) = match inner.split_once(":-") {
            Some((n, d)) => (n, Some(d)),
            None => (inner, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "\"${{{inner}}}\" is not a variable reference; use ${{NAME}} or ${{NAME:-default}}"
            ));
        }
        match env(name)
            .filter(|v| !v.is_empty())
            .or(default.map(str::to_string))
        {
            Some(v) => out.push_str(&v),
            None => {
                return Err(format!(
                    "environment variable {name} is not set; export it or write ${{{name}:-default}}"
                ));
            }
        }
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn expands_defaults_and_values() {
        let env = |k: &str| (k == "A").then(|| "1".to_string());
        assert_eq!(expand("x${A}y", &env).unwrap(), "x1y");
        assert_eq!(expand("${B:-two}", &env).unwrap(), "two");
        assert_eq!(expand("${A:-two}", &env).unwrap(), "1");
        assert_eq!(expand("plain", &env).unwrap(), "plain");
        assert!(expand("${B}", &env).unwrap_err().contains("B is not set"));
        assert!(expand("${A", &env).is_err());
        assert!(expand("${a b}", &env).is_err());
    }
}
