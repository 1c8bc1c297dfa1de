//! Following a camera across samples: the same object in the same place, or the same text,
//! on consecutive samples extends one insight (`ts` .. `ts_end`) instead of adding one per
//! sample; a frame older than the camera's latest analysed one gives insights of its own.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::{Detection, TextLine};
use crate::geometry::BBox;
use crate::store::insights::{Insight, Kind, insight_id};

/// Overlap above which a detection continues the previous sample's object of that label.
const SAME_PLACE_IOU: f32 = 0.5;
/// What a camera's previous sample showed: the insights it may extend.
#[derive(Default)]
pub(super) struct Track {
    pub(super) objects: Vec<Insight>,
    pub(super) texts: HashMap<String, Insight>,
    /// Capture time of the latest frame followed.
    pub(super) last: Option<DateTime<Utc>>,
}

/// A sampled frame from the bus.
pub(super) struct FrameIn {
    pub(super) camera: String,
    pub(super) capture_ns: i64,
    pub(super) at: DateTime<Utc>,
    pub(super) jpeg: Bytes,
}

impl From<&crate::bus::Message> for FrameIn {
    fn from(m: &crate::bus::Message) -> Self {
        let capture_ns = m
            .header("capture-ns")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| Utc::now().timestamp_nanos_opt().unwrap_or(0));
        FrameIn {
            camera: m.header("camera").unwrap_or_default().to_string(),
            capture_ns,
            at: DateTime::from_timestamp_nanos(capture_ns),
            jpeg: m.payload.clone(),
        }
    }
}

/// [`follow`] for frames that may come out of order. A frame older than the camera's
/// latest analysed one (it waited while a newer one went first, or came back for another
/// try) has findings that stand on their own, and the track goes on following the newer
/// frame.
pub(super) fn follow_camera(
    track: &mut Track,
    frame: &FrameIn,
    objects: Vec<Detection>,
    texts: Vec<TextLine>,
    detector: &str,
    continue_within: Duration,
) -> (Vec<Insight>, bool) {
    let mut alone = Track::default();
    let track = if track.last.is_some_and(|last| frame.at < last) {
        &mut alone
    } else {
        track.last = Some(frame.at);
        track
    };
    follow(track, frame, objects, texts, detector, continue_within)
}

/// Matches one frame's findings against the camera's previous sample: continued ones
/// are extended, the rest start new insights (with this frame as snapshot). Returns the
/// insights to write and whether any is new.
fn follow(
    track: &mut Track,
    frame: &FrameIn,
    objects: Vec<Detection>,
    texts: Vec<TextLine>,
    detector: &str,
    continue_within: Duration,
) -> (Vec<Insight>, bool) {
    let at = frame.at;
    let snapshot = crate::store::objects::snapshot_key(&frame.camera, at.timestamp_millis());
    let recent = |i: &Insight| {
        let last = i.ts_end.unwrap_or(i.ts);
        (at - last).to_std().is_ok_and(|d| d <= continue_within)
    };
    let mut out = Vec::new();
    let mut fresh = false;
    let mut objects_now = Vec::new();
    for (index, o) in objects.into_iter().enumerate() {
        let prev = track.objects.iter().position(|p| {
            p.label.as_deref() == Some(o.label.as_str())
                && recent(p)
                && p.bbox.is_some_and(|b| b.iou(&o.bbox) >= SAME_PLACE_IOU)
        });
        let insight = match prev {
            Some(k) => extend(track.objects.swap_remove(k), at, o.bbox, o.confidence),
            None => {
                fresh = true;
                Insight {
                    label: Some(o.label),
                    ..frame.insight(
                        Kind::Object,
                        index,
                        o.confidence,
                        o.bbox,
                        &snapshot,
                        detector,
                    )
                }
            }
        };
        out.push(insight.clone());
        objects_now.push(insight);
    }
    track.objects = objects_now;
    let mut texts_now = HashMap::new();
    for (index, t) in texts.into_iter().enumerate() {
        let key = normalize(&t.text);
        let insight = match track.texts.remove(&key).filter(|p| recent(p)) {
            Some(p) => extend(p, at, t.bbox, t.confidence),
            None => {
                fresh = true;
                Insight {
                    text: Some(t.text),
                    ..frame.insight(Kind::Text, index, t.confidence, t.bbox, &snapshot, "ppocr")
                }
            }
        };
        out.push(insight.clone());
        texts_now.insert(key, insight);
    }
    track.texts = texts_now;
    (out, fresh)
}

/// A frame the change gate found unchanged: what the camera's last analysed frame found is
/// still there, so those insights last until this frame (a parked car stays one insight
/// for hours). Returns the insights extended; a frame older than the latest one followed
/// extends nothing.
pub(super) fn still_there(
    track: &mut Track,
    at: DateTime<Utc>,
    continue_within: Duration,
) -> Vec<Insight> {
    if track.last.is_some_and(|last| at < last) {
        return Vec::new();
    }
    track.last = Some(at);
    let mut out = Vec::new();
    for i in track.objects.iter_mut().chain(track.texts.values_mut()) {
        let last = i.ts_end.unwrap_or(i.ts);
        if (at - last).to_std().is_ok_and(|d| d <= continue_within) {
            i.ts_end = Some(at);
            out.push(i.clone());
        }
    }
    out
}

impl FrameIn {
    /// A new insight found in this frame, with neither label nor text yet.
    fn insight(
        &self,
        kind: Kind,
        index: usize,
        confidence: f32,
        bbox: BBox,
        snapshot: &str,
        model: &str,
    ) -> Insight {
        Insight {
            id: insight_id(&self.camera, kind, self.capture_ns, index),
            camera: self.camera.clone(),
            kind,
            ts: self.at,
            ts_end: None,
            label: None,
            text: None,
            confidence,
            bbox: Some(bbox),
            snapshot: Some(snapshot.to_string()),
            clip: None,
            model: model.to_string(),
        }
    }
}

/// A finding seen again at `at`: it lasts until then, where it is now.
fn extend(mut i: Insight, at: DateTime<Utc>, bbox: BBox, confidence: f32) -> Insight {
    i.ts_end = Some(at);
    i.bbox = Some(bbox);
    i.confidence = i.confidence.max(confidence);
    i
}

fn normalize(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(at_s: i64) -> FrameIn {
        let capture_ns = 1_800_000_000_000_000_000 + at_s * 1_000_000_000;
        FrameIn {
            camera: "lobby".into(),
            capture_ns,
            at: DateTime::from_timestamp_nanos(capture_ns),
            jpeg: Bytes::new(),
        }
    }

    fn person(x: f32) -> Detection {
        Detection {
            label: "person".into(),
            class: 0,
            confidence: 0.8,
            bbox: BBox {
                x,
                y: 0.1,
                w: 0.2,
                h: 0.5,
            },
        }
    }

    fn sign() -> TextLine {
        TextLine {
            text: "DOCK 42".into(),
            confidence: 0.9,
            bbox: BBox {
                x: 0.1,
                y: 0.4,
                w: 0.5,
                h: 0.1,
            },
        }
    }

    #[test]
    fn a_finding_on_consecutive_samples_is_one_insight() {
        let mut track = Track::default();
        let within = Duration::from_secs(6);
        let (first, fresh) = follow(
            &mut track,
            &frame(0),
            vec![person(0.1)],
            vec![sign()],
            "yolo",
            within,
        );
        assert!(fresh);
        assert_eq!(first.len(), 2);
        // Same place, same text, 2 s later: the same two insights, lasting longer.
        let (second, fresh) = follow(
            &mut track,
            &frame(2),
            vec![person(0.12)],
            vec![sign()],
            "yolo",
            within,
        );
        assert!(!fresh, "nothing new, so no new snapshot");
        assert_eq!(second[0].id, first[0].id);
        assert_eq!(second[1].id, first[1].id);
        assert_eq!(second[0].ts_end, Some(frame(2).at));
        assert_eq!(second[0].snapshot, first[0].snapshot);
        // Moved across the picture: a new insight.
        let (third, fresh) = follow(
            &mut track,
            &frame(4),
            vec![person(0.7)],
            vec![],
            "yolo",
            within,
        );
        assert!(fresh);
        assert_ne!(third[0].id, first[0].id);
        // The sign comes back after a long gap: a new insight too.
        let (fourth, _) = follow(&mut track, &frame(30), vec![], vec![sign()], "yolo", within);
        assert_ne!(fourth[0].id, first[1].id);
        assert_eq!(fourth[0].ts_end, None);
    }

    #[test]
    fn an_unchanged_frame_extends_what_the_last_analysed_one_found() {
        let mut track = Track::default();
        let within = Duration::from_secs(30);
        let (first, _) = follow_camera(
            &mut track,
            &frame(0),
            vec![person(0.1)],
            vec![sign()],
            "yolo",
            within,
        );
        // Unchanged samples every 10 s for a minute: the same two insights, lasting.
        for at in [10, 20, 30, 40, 50, 60] {
            let still = still_there(&mut track, frame(at).at, within);
            assert_eq!(still.len(), 2);
            assert_eq!(
                still.iter().map(|i| i.id).collect::<Vec<_>>(),
                first.iter().map(|i| i.id).collect::<Vec<_>>()
            );
            assert!(still.iter().all(|i| i.ts_end == Some(frame(at).at)));
        }
        // A late frame extends nothing and does not move the track back.
        assert!(still_there(&mut track, frame(5).at, within).is_empty());
        assert_eq!(track.last, Some(frame(60).at));
        // The next analysed frame still continues them.
        let (next, fresh) = follow_camera(
            &mut track,
            &frame(70),
            vec![person(0.1)],
            vec![sign()],
            "yolo",
            within,
        );
        assert!(!fresh);
        assert_eq!(next[0].id, first[0].id);
        // After a gap longer than `within`, nothing is extended any more.
        assert!(still_there(&mut track, frame(200).at, within).is_empty());
    }

    #[test]
    fn a_late_frame_stands_alone_and_the_track_follows_the_newest() {
        let mut track = Track::default();
        let within = Duration::from_secs(30);
        let see = |track: &mut Track, at| {
            follow_camera(track, &frame(at), vec![person(0.1)], vec![], "yolo", within)
        };
        let (newest, _) = see(&mut track, 20);
        // Captured before the frame already followed: a new insight of its own time, and
        // the newer insight is neither extended backwards nor replaced.
        let (late, fresh) = see(&mut track, 10);
        assert!(fresh);
        assert_ne!(late[0].id, newest[0].id);
        assert_eq!(late[0].ts, frame(10).at);
        assert_eq!(late[0].ts_end, None);
        let (next, fresh) = see(&mut track, 30);
        assert!(!fresh);
        assert_eq!(next[0].id, newest[0].id);
        assert_eq!(next[0].ts_end, Some(frame(30).at));
    }
}
