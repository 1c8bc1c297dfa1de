//! The synthetic data set: a million insights from about a thousand cameras over 30 days,
//! with the kinds, labels, texts and skew of a deployment.

use std::collections::HashSet;

use chrono::DateTime;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use panoptes::infer::BBox;
use panoptes::store::insights::{Insight, Kind, insight_id};
use panoptes::store::objects::snapshot_key;

use crate::{DAY_MS, DAYS, SEED};

/// The 80 COCO classes, most often seen by building and street cameras first.
pub(crate) const LABELS: [&str; 80] = [
    "person",
    "car",
    "truck",
    "bicycle",
    "motorcycle",
    "bus",
    "backpack",
    "handbag",
    "dog",
    "chair",
    "bench",
    "bottle",
    "cup",
    "suitcase",
    "umbrella",
    "cell phone",
    "potted plant",
    "traffic light",
    "stop sign",
    "cat",
    "bird",
    "laptop",
    "tv",
    "dining table",
    "book",
    "clock",
    "train",
    "boat",
    "parking meter",
    "fire hydrant",
    "skateboard",
    "couch",
    "tie",
    "sports ball",
    "keyboard",
    "mouse",
    "remote",
    "horse",
    "sink",
    "refrigerator",
    "microwave",
    "oven",
    "toaster",
    "bed",
    "toilet",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
    "wine glass",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "frisbee",
    "skis",
    "snowboard",
    "kite",
    "baseball bat",
    "baseball glove",
    "surfboard",
    "tennis racket",
    "airplane",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
];

/// Paraphrases searched for: none of them is a stored text word for word.
pub(crate) const SEARCHES: [&str; 16] = [
    "a lorry reached the warehouse loading bay",
    "someone asked for a door to be opened",
    "vehicle registration number",
    "emergency exit sign",
    "a dog walking around",
    "a man riding a bike",
    "parcel delivery at the front desk",
    "a van is obstructing the entrance",
    "a kitten",
    "a mug of coffee",
    "somebody was called to the front desk",
    "parking is not allowed here",
    "a coach at the stop",
    "people walking by",
    "chemist shop",
    "slippery floor warning",
];

/// Words looked up with `q=`, from rare to common in the data set.
pub(crate) const WORDS: [&str; 11] = [
    "hangar", "pharmacy", "forklift", "courier", "dock", "exit", "gate", "parking", "truck", "car",
    "person",
];

/// Cumulative weights for picking an index.
pub(crate) struct Weighted(Vec<f64>);

impl Weighted {
    pub(crate) fn new(weights: impl IntoIterator<Item = f64>) -> Weighted {
        let mut acc = 0.0;
        Weighted(
            weights
                .into_iter()
                .map(|w| {
                    acc += w;
                    acc
                })
                .collect(),
        )
    }

    pub(crate) fn pick(&self, rng: &mut impl Rng) -> usize {
        let total = self.0.last().copied().unwrap_or(0.0);
        let x = rng.random::<f64>() * total;
        self.0.partition_point(|&c| c <= x).min(self.0.len() - 1)
    }
}

/// Everything the generator and the load clients share: cameras, texts, sentences.
pub(crate) struct DataSet {
    pub(crate) cameras: Vec<String>,
    /// Per kind (object, text, speech): how often each camera reports it (0 where it cannot).
    pub(crate) by_kind: [Weighted; 3],
    pub(crate) labels: Weighted,
    pub(crate) signs: Vec<String>,
    pub(crate) plates: Vec<String>,
    pub(crate) sentences: Vec<String>,
    pub(crate) sentence_weights: Weighted,
}

pub(crate) fn kind_index(k: Kind) -> usize {
    match k {
        Kind::Object => 0,
        Kind::Text => 1,
        Kind::Speech => 2,
    }
}

impl DataSet {
    pub(crate) fn new(cameras: usize) -> DataSet {
        let mut rng = StdRng::seed_from_u64(SEED);
        let ids: Vec<String> = (0..cameras).map(|c| format!("cam-{c:04}")).collect();
        // Busy cameras (an entrance) report ~10x what quiet ones (a back corridor) do.
        let activity: Vec<f64> = (0..cameras)
            .map(|c| 1.0 / ((c + 20) as f64).powf(0.7))
            .collect();
        let sees_text = |c: usize| c % 5 < 2;
        let hears = |c: usize| c % 10 < 3;
        let by_kind = [
            Weighted::new(activity.iter().copied()),
            Weighted::new(
                activity
                    .iter()
                    .enumerate()
                    .map(|(c, w)| if sees_text(c) { *w } else { 0.0 }),
            ),
            Weighted::new(
                activity
                    .iter()
                    .enumerate()
                    .map(|(c, w)| if hears(c) { *w } else { 0.0 }),
            ),
        ];
        let labels = Weighted::new((0..LABELS.len()).map(|r| 1.0 / ((r + 1) as f64).powf(1.5)));

        let mut signs = Vec::new();
        for prefix in [
            "DOCK", "GATE", "BAY", "LOT", "LEVEL", "ZONE", "DOOR", "PLATFORM", "AISLE", "SECTION",
            "ENTRANCE", "HANGAR",
        ] {
            for n in 1..=60 {
                signs.push(format!("{prefix} {n}"));
            }
        }
        for s in [
            "NO PARKING",
            "STAFF ONLY",
            "EMERGENCY EXIT",
            "FIRE EXIT KEEP CLEAR",
            "LOADING ZONE",
            "DELIVERIES ONLY",
            "VISITOR PARKING",
            "SPEED LIMIT 10",
            "AUTHORISED PERSONNEL ONLY",
            "PANOPTES DOCK 42",
            "RECEPTION",
            "CAUTION WET FLOOR",
            "HIGH VOLTAGE",
            "PUSH",
            "PULL",
            "OPEN 24 HOURS",
            "TOILETS",
            "LIFT OUT OF ORDER",
            "STAIRS",
            "KEEP LEFT",
            "NO ENTRY",
            "ONE WAY",
            "WAITING AREA",
            "CCTV IN OPERATION",
        ] {
            signs.push(s.to_string());
        }
        for a in [
            "ACME",
            "NORTHWIND",
            "CONTOSO",
            "GLOBEX",
            "INITECH",
            "UMBRELLA",
            "STARK",
            "WAYNE",
            "TYRELL",
            "CYBERDYNE",
        ] {
            for b in [
                "LOGISTICS",
                "FOODS",
                "PHARMACY",
                "MOTORS",
                "BAKERY",
                "HARDWARE",
                "BANK",
                "HOTEL",
            ] {
                signs.push(format!("{a} {b}"));
            }
        }
        let letter = |rng: &mut StdRng| (b'A' + rng.random_range(0..26u8)) as char;
        let digit = |rng: &mut StdRng| (b'0' + rng.random_range(0..10u8)) as char;
        let mut plates = HashSet::new();
        while plates.len() < 2500 {
            let p: String = if rng.random_bool(0.5) {
                // AB12 CDE
                [
                    letter(&mut rng),
                    letter(&mut rng),
                    digit(&mut rng),
                    digit(&mut rng),
                    ' ',
                    letter(&mut rng),
                    letter(&mut rng),
                    letter(&mut rng),
                ]
                .iter()
                .collect()
            } else {
                // ABC 1234
                [
                    letter(&mut rng),
                    letter(&mut rng),
                    letter(&mut rng),
                    ' ',
                    digit(&mut rng),
                    digit(&mut rng),
                    digit(&mut rng),
                    digit(&mut rng),
                ]
                .iter()
                .collect()
            };
            plates.insert(p);
        }
        let mut plates: Vec<String> = plates.into_iter().collect();
        plates.sort();

        let subjects = [
            "The delivery truck",
            "A white van",
            "The courier",
            "A taxi",
            "The forklift",
            "A cyclist",
            "The bus",
            "A customer",
            "The security guard",
            "The cleaner",
            "A visitor",
            "The night shift",
        ];
        let verbs = [
            "arrived at",
            "is waiting at",
            "just left",
            "is blocking",
            "was seen near",
            "is parked at",
            "came back to",
            "is heading to",
        ];
        let places = [
            "the loading dock",
            "gate three",
            "the main entrance",
            "the car park",
            "the back door",
            "reception",
            "the warehouse",
            "bay seven",
            "the side street",
            "the north exit",
            "the staff entrance",
            "the lobby",
        ];
        let times = [
            "this morning",
            "a minute ago",
            "just now",
            "at noon",
            "again",
            "before the shift change",
            "after closing time",
            "for the second time today",
        ];
        let names = [
            "John", "Maria", "Ahmed", "Li", "Sarah", "Tom", "Priya", "Olga", "Kofi", "Ana",
        ];
        let things = [
            "car", "van", "pallet", "bins", "boxes", "trolley", "ladder", "bike",
        ];
        let mut sentences = Vec::new();
        for n in names {
            for p in places {
                sentences.push(format!("{n}, please come to {p}."));
            }
        }
        for p in places {
            sentences.push(format!("Can someone open {p}?"));
            for t in things {
                sentences.push(format!("Please move the {t} away from {p}."));
            }
        }
        let mut seen: HashSet<String> = sentences.iter().cloned().collect();
        while sentences.len() < 3000 {
            let s = format!(
                "{} {} {} {}.",
                subjects[rng.random_range(0..subjects.len())],
                verbs[rng.random_range(0..verbs.len())],
                places[rng.random_range(0..places.len())],
                times[rng.random_range(0..times.len())]
            );
            if seen.insert(s.clone()) {
                sentences.push(s);
            }
        }
        let sentence_weights =
            Weighted::new((0..sentences.len()).map(|r| 1.0 / ((r + 1) as f64).powf(0.5)));
        DataSet {
            cameras: ids,
            by_kind,
            labels,
            signs,
            plates,
            sentences,
            sentence_weights,
        }
    }

    /// Every distinct text the insights carry (what gets an embedding).
    pub(crate) fn bodies(&self) -> Vec<String> {
        LABELS
            .iter()
            .map(|s| s.to_string())
            .chain(self.signs.iter().cloned())
            .chain(self.plates.iter().cloned())
            .chain(self.sentences.iter().cloned())
            .collect()
    }

    /// The signs camera `c` has in view.
    pub(crate) fn camera_sign(&self, c: usize, rng: &mut impl Rng) -> &str {
        let j = rng.random_range(0..3usize);
        &self.signs[(c * 7 + j * 131) % self.signs.len()]
    }

    /// A camera that reports `kind`, busy ones more often.
    pub(crate) fn camera_for(&self, kind: Kind, rng: &mut impl Rng) -> usize {
        self.by_kind[kind_index(kind)].pick(rng)
    }

    /// The `i`-th of `n` insights spread over [`start_ms`, `start_ms` + 30 days).
    pub(crate) fn insight(&self, i: usize, n: usize, start_ms: i64, rng: &mut StdRng) -> Insight {
        let span = DAYS * DAY_MS;
        let step = span as f64 / n as f64;
        let ts_ms = start_ms + (i as f64 * step) as i64 + rng.random_range(0..step.max(1.0) as i64);
        let roll = rng.random::<f64>();
        let kind = if roll < 0.85 {
            Kind::Object
        } else if roll < 0.95 {
            Kind::Text
        } else {
            Kind::Speech
        };
        let c = self.camera_for(kind, rng);
        let camera = self.cameras[c].clone();
        let ts = DateTime::from_timestamp_millis(ts_ms).unwrap_or_default();
        let secs = |s: i64| Some(ts + chrono::Duration::milliseconds(s));
        let bbox = |rng: &mut StdRng| {
            let (w, h) = (
                rng.random_range(0.03..0.5f32),
                rng.random_range(0.05..0.8f32),
            );
            BBox {
                x: rng.random_range(0.0..1.0 - w),
                y: rng.random_range(0.0..1.0 - h),
                w,
                h,
            }
        };
        let (label, text, ts_end, bbox, snapshot, model) = match kind {
            Kind::Object => {
                let label = LABELS[self.labels.pick(rng)].to_string();
                let end = rng
                    .random_bool(0.35)
                    .then(|| secs(10_000 * rng.random_range(1..=30i64)))
                    .flatten();
                (
                    Some(label),
                    None,
                    end,
                    Some(bbox(rng)),
                    Some(snapshot_key(&camera, ts_ms)),
                    "yolov8n",
                )
            }
            Kind::Text => {
                let text = if rng.random_bool(0.65) {
                    self.camera_sign(c, rng).to_string()
                } else {
                    self.plates[rng.random_range(0..self.plates.len())].clone()
                };
                let end = rng
                    .random_bool(0.7)
                    .then(|| secs(10_000 * rng.random_range(1..=360i64)))
                    .flatten();
                (
                    None,
                    Some(text),
                    end,
                    Some(bbox(rng)),
                    Some(snapshot_key(&camera, ts_ms)),
                    "ppocr",
                )
            }
            Kind::Speech => {
                let text = self.sentences[self.sentence_weights.pick(rng)].clone();
                (
                    None,
                    Some(text),
                    secs(rng.random_range(1500..8000i64)),
                    None,
                    None,
                    "whisper-tiny.en",
                )
            }
        };
        Insight {
            id: insight_id(&camera, kind, ts_ms * 1_000_000, i),
            camera,
            kind,
            ts,
            ts_end,
            label,
            text,
            confidence: rng.random_range(0.4..0.99f32),
            bbox,
            snapshot,
            clip: None,
            model: model.into(),
        }
    }
}
