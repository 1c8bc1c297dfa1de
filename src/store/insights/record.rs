//! The insight record and what both backends share: kinds, ids, filters, the page cursor
//! and the errors.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::geometry::BBox;

/// Insight store failures.
#[derive(Debug, thiserror::Error)]
pub enum InsightError {
    /// SQLite failed.
    #[error("insight store: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored row could not be read back.
    #[error("insight store: bad row: {0}")]
    BadRow(String),
    /// The Qdrant server failed or refused; the message names the server and what to do.
    #[error("insight store: {0}")]
    Qdrant(String),
}

/// What kind of finding an insight is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// An object the detector found.
    Object,
    /// Text read in the picture.
    Text,
    /// Words heard.
    Speech,
}

impl Kind {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Object => "object",
            Kind::Text => "text",
            Kind::Speech => "speech",
        }
    }

    /// Parses the lowercase name.
    pub fn parse(s: &str) -> Option<Kind> {
        [Kind::Object, Kind::Text, Kind::Speech]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// The clip an insight is in, and where in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClipLink {
    /// Object key of the clip.
    pub key: String,
    /// Seconds from the start of the clip.
    pub offset_s: f64,
}

/// One insight (DESIGN.md's insight record).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Insight {
    /// UUIDv5 of camera, kind, capture time and index.
    pub id: Uuid,
    /// Camera id.
    pub camera: String,
    /// object, text or speech.
    pub kind: Kind,
    /// When it was first seen (capture time).
    pub ts: DateTime<Utc>,
    /// When it was last seen, for findings that lasted (a parked car, a sign, a sentence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ts_end: Option<DateTime<Utc>>,
    /// Object class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    /// Text read or heard.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// 0..1.
    pub confidence: f32,
    /// Where in the picture, normalised.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub bbox: Option<BBox>,
    /// Object key of the JPEG it was found in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// The clip it is in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip: Option<ClipLink>,
    /// The model that found it.
    pub model: String,
}

impl Insight {
    /// The words search sees: the label of an object, the text of text and speech.
    pub fn body(&self) -> Option<&str> {
        match self.kind {
            Kind::Object => self.label.as_deref(),
            Kind::Text | Kind::Speech => self.text.as_deref(),
        }
        .filter(|s| !s.trim().is_empty())
    }
}

/// Namespace of insight ids.
const NAMESPACE: Uuid = Uuid::from_u128(0x6f1c_2a4e_9b3d_4c55_8e7f_0a1b_2c3d_4e5f);

/// The id of the `index`-th insight of `kind` found in the capture at `capture_ns` of
/// `camera`: the same work done twice gives the same id.
pub fn insight_id(camera: &str, kind: Kind, capture_ns: i64, index: usize) -> Uuid {
    Uuid::new_v5(
        &NAMESPACE,
        format!("{camera}/{}/{capture_ns}/{index}", kind.as_str()).as_bytes(),
    )
}

/// Filters shared by listing and semantic search.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    /// One camera.
    pub camera: Option<String>,
    /// One kind.
    pub kind: Option<Kind>,
    /// One object class.
    pub label: Option<String>,
    /// Seen at or after (ms since the epoch).
    pub from_ms: Option<i64>,
    /// Seen before (ms since the epoch).
    pub to_ms: Option<i64>,
}

/// Where a page of results ends: the last item's time and sequence number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// ts of the last item, ms.
    pub ts_ms: i64,
    /// Its row sequence number.
    pub seq: i64,
}

impl Cursor {
    /// Opaque text form for the API.
    pub fn encode(&self) -> String {
        format!("{}.{}", self.ts_ms, self.seq)
    }

    /// Parses [`Cursor::encode`]'s output.
    pub fn decode(s: &str) -> Option<Cursor> {
        let (a, b) = s.split_once('.')?;
        Some(Cursor {
            ts_ms: a.parse().ok()?,
            seq: b.parse().ok()?,
        })
    }
}

/// A listing request.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Filters.
    pub filter: Filter,
    /// Words that must all appear (full-text).
    pub q: Option<String>,
    /// Largest page.
    pub limit: usize,
    /// Continue after this item.
    pub cursor: Option<Cursor>,
}

pub(super) fn ms(t: &DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(super) fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

/// The words of a `q=` search: runs of letters and digits; anything else separates them.
pub(super) fn query_words(q: &str) -> Vec<&str> {
    q.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_distinct() {
        let a = insight_id("lobby", Kind::Object, 42, 0);
        assert_eq!(a, insight_id("lobby", Kind::Object, 42, 0));
        assert_ne!(a, insight_id("lobby", Kind::Object, 42, 1));
        assert_ne!(a, insight_id("lobby", Kind::Text, 42, 0));
        assert_eq!(a.get_version_num(), 5);
    }
}
