//! What travels on the bus: the streams and their subjects, messages with headers, and the
//! bus's errors. Both backends and every stage speak these types.

use bytes::Bytes;

/// The streams of the bus, one per kind of message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    /// Sampled JPEG frames: fresh frames matter most. The oldest are dropped when full,
    /// and the in-process bus hands out the newest waiting frame first, so inference that
    /// falls behind analyses what the cameras see now rather than a backlog.
    Frames,
    /// PCM audio segments.
    Audio,
    /// Clip records.
    Clips,
    /// Insights.
    Insights,
}

impl StreamKind {
    /// Every stream.
    pub const ALL: [StreamKind; 4] = [
        StreamKind::Frames,
        StreamKind::Audio,
        StreamKind::Clips,
        StreamKind::Insights,
    ];

    /// The subject word: `frames`, `audio`, `clips`, `insights`.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Frames => "frames",
            StreamKind::Audio => "audio",
            StreamKind::Clips => "clips",
            StreamKind::Insights => "insights",
        }
    }

    /// The subject for one camera, e.g. `panoptes.frames.lobby`.
    pub fn subject(self, camera: &str) -> String {
        format!("panoptes.{}.{camera}", self.as_str())
    }

    /// The stream a subject belongs to.
    pub fn of_subject(subject: &str) -> Option<StreamKind> {
        let mut parts = subject.splitn(3, '.');
        if parts.next() != Some("panoptes") {
            return None;
        }
        let kind = parts.next()?;
        parts.next().filter(|c| !c.is_empty())?;
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

/// Message headers (small, ordered).
pub type Headers = Vec<(String, String)>;

/// One message on the bus.
#[derive(Debug, Clone)]
pub struct Message {
    /// Full subject, e.g. `panoptes.frames.lobby`.
    pub subject: String,
    /// Metadata such as camera, capture time and `Nats-Msg-Id`.
    pub headers: Headers,
    /// The body: JPEG, PCM or JSON.
    pub payload: Bytes,
}

impl Message {
    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Bus failures.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The subject is not `panoptes.<frames|audio|clips|insights>.<camera>`.
    #[error("subject {subject:?} is not a Panoptes subject (panoptes.<kind>.<camera>)")]
    BadSubject {
        /// The subject given.
        subject: String,
    },
    /// The bus is shutting down.
    #[error("the bus is closed")]
    Closed,
    /// The message was not stored: the server is away or refused it.
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// Setting up the bus failed.
    #[error("bus: {0}")]
    Nats(String),
}

/// What happened to a published message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// Stored.
    Stored,
    /// Stored, and the oldest message of the stream was dropped to make room.
    StoredDroppedOldest,
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn subjects_round_trip() {
        let s = StreamKind::Frames.subject("lobby");
        assert_eq!(s, "panoptes.frames.lobby");
        assert_eq!(StreamKind::of_subject(&s), Some(StreamKind::Frames));
        assert_eq!(StreamKind::of_subject("panoptes.frames."), None);
        assert_eq!(StreamKind::of_subject("other.frames.x"), None);
        assert_eq!(StreamKind::of_subject("panoptes.video.x"), None);
    }
}
