//! What must never be shown: secret values, and the credentials inside URLs.

use std::fmt;

use serde::Deserialize;

/// A string that must never be printed: camera passwords and the like.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret value, for handing to the RTSP client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"***\"")
    }
}

/// Removes user name and password from a URL so it can be logged or shown.
pub fn redact_url(raw: &str) -> String {
    match url::Url::parse(raw) {
        Ok(mut u) => {
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.to_string()
        }
        // Unparseable: keep only what follows the last '@' so no credentials can leak.
        Err(_) => match raw.rfind('@') {
            Some(i) => format!("rtsp://***@{}", &raw[i + 1..]),
            None => raw.to_string(),
        },
    }
}

/// Whether a URL carries a user name or password. Any `@` counts: a password holding `#`,
/// `/` or `?` makes the URL parse with the `@` in the path or fragment, where redaction
/// would not find it.
pub(super) fn has_credentials(raw: &str, u: &url::Url) -> bool {
    !u.username().is_empty() || u.password().is_some() || raw.contains('@')
}
