//! Property tests of the parsers that read what users and clients write: the config loader
//! (arbitrary text, valid files, files with fields broken on purpose), `${ENV}` substitution,
//! clip ids, page cursors and URL redaction. None may panic on any input; what is valid must
//! come back exactly as written. Case counts are small so the file runs in a few seconds.

use std::collections::BTreeMap;
use std::time::Duration;

use panoptes::config::{self, ConfigErrors, LogFormat, Transport};
use panoptes::store::insights::{Cursor, Kind};
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

fn cases(n: u32) -> ProptestConfig {
    ProptestConfig {
        cases: n,
        // No proptest-regressions files in the tree: a failure prints its input.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn no_env(_: &str) -> Option<String> {
    None
}

fn load(text: &str) -> Result<config::Config, ConfigErrors> {
    config::load_str(text, "p.toml", &no_env)
}

/// Pieces config files are made of, so random text is near-TOML rather than noise that
/// the TOML parser rejects on its first byte.
fn tokens() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("\n".to_string()),
        Just("[[cameras]]\n".to_string()),
        Just("[sampling]\n".to_string()),
        Just("[edge]\n".to_string()),
        Just("[api]\n".to_string()),
        Just("[bus]\n".to_string()),
        Just("[infer.detection]\n".to_string()),
        Just("[store.s3]\n".to_string()),
        Just("cameras = ".to_string()),
        Just("id = ".to_string()),
        Just("url = ".to_string()),
        Just("interval = ".to_string()),
        Just("sample_interval = ".to_string()),
        Just("keys = ".to_string()),
        Just("listen = ".to_string()),
        Just("kind = ".to_string()),
        Just("\"rtsp://h/p\"".to_string()),
        Just("\"rtsp://u:p@h/p\"".to_string()),
        Just("\"-5s\"".to_string()),
        Just("\"10s\"".to_string()),
        Just("\"${X}\"".to_string()),
        Just("\"${X:-d}\"".to_string()),
        Just("\"${".to_string()),
        Just("[".to_string()),
        Just("]".to_string()),
        Just("{".to_string()),
        Just("}".to_string()),
        Just("=".to_string()),
        Just(",".to_string()),
        Just("\"".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("nan".to_string()),
        Just("true".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        "[a-z_]{1,8}",
        "\"[^\"\\\\]{0,8}\"",
        any::<i64>().prop_map(|n| n.to_string()),
        ".{0,4}",
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

/// A TOML value of any type, for putting where another type belongs.
fn any_value() -> impl Strategy<Value = toml::Value> {
    let leaf = prop_oneof![
        any::<i64>().prop_map(toml::Value::Integer),
        (-3i64..3).prop_map(toml::Value::Integer),
        any::<f64>().prop_map(toml::Value::Float),
        any::<bool>().prop_map(toml::Value::Boolean),
        ".{0,12}".prop_map(toml::Value::String),
        "-?[0-9]{1,6}(ns|ms|s|m|h|d|y|)".prop_map(toml::Value::String),
        "(rtsp|http|nats)://([a-z]{1,5}(:[a-z0-9#/?]{0,5})?@)?[a-z0-9.]{0,8}(:[0-9]{1,6})?/[a-z]{0,4}"
            .prop_map(toml::Value::String),
        Just(toml::Value::String("${UNSET_IN_PROPS}".into())),
    ];
    leaf.prop_recursive(2, 8, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(toml::Value::Array),
            prop::collection::btree_map("[a-z_]{1,6}", inner, 0..3)
                .prop_map(|m| toml::Value::Table(m.into_iter().collect())),
        ]
    })
}

/// A valid config with a value in most fields: the base the mutation test breaks.
const FULL: &str = r#"
data_dir = "/tmp/panoptes-props"
[log]
format = "json"
level = "info"
[api]
listen = "127.0.0.1:8080"
keys = ["0123456789abcdef0123"]
rate_limit = 10
max_body = 4096
[bus]
kind = "memory"
frames_capacity = 8
ack_wait = "30s"
[edge]
connect_timeout = "5s"
first_frame_timeout = "5s"
stall_timeout = "5s"
backoff_initial = "1s"
backoff_max = "10s"
[sampling]
interval = "2s"
max_width = 640
max_height = 480
jpeg_quality = 80
audio_chunk = "1s"
[recording]
enabled = true
segment = "4s"
[media]
profile = "cpu"
decoders = 1
queue = 4
[infer]
enabled = false
batch = 2
batch_wait = "10ms"
[infer.detection]
min_confidence = 0.5
nms_iou = 0.5
[store]
kind = "local"
[insights]
kind = "sqlite"
[cluster]
heartbeat = "1s"
member_ttl = "3s"
[[cameras]]
id = "lobby"
url = "rtsp://127.0.0.1:8554/lobby"
username = "viewer"
password = "not-a-secret"
transport = "udp"
sample_interval = "1s"
record = false
[[cameras]]
id = "dock"
url = "rtsp://127.0.0.1:8554/dock"
"#;

/// Every (path, is_table) in `v`, as field paths: `sampling.interval`, `cameras[1]`.
fn paths(prefix: &str, v: &toml::Value, out: &mut Vec<(String, bool)>) {
    match v {
        toml::Value::Table(t) => {
            if !prefix.is_empty() {
                out.push((prefix.to_string(), true));
            }
            for (k, v) in t {
                let p = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                paths(&p, v, out);
            }
        }
        toml::Value::Array(a) if a.iter().all(toml::Value::is_table) && !a.is_empty() => {
            for (i, v) in a.iter().enumerate() {
                paths(&format!("{prefix}[{i}]"), v, out);
            }
        }
        _ => out.push((prefix.to_string(), false)),
    }
}

/// The value at a field path made by [`paths`].
fn at<'a>(root: &'a mut toml::Value, path: &str) -> &'a mut toml::Value {
    let mut v = root;
    for part in path.split('.') {
        let (key, index) = match part.split_once('[') {
            Some((k, i)) => (k, Some(i.trim_end_matches(']').parse::<usize>().unwrap())),
            None => (part, None),
        };
        v = v.as_table_mut().unwrap().get_mut(key).unwrap();
        if let Some(i) = index {
            v = &mut v.as_array_mut().unwrap()[i];
        }
    }
    v
}

#[derive(Debug, Clone)]
enum Mutation {
    /// Put a value (often of the wrong type) in the n-th leaf field.
    Replace(usize, toml::Value),
    /// Add a field no struct has to the n-th table.
    Unknown(usize),
    /// Drop the n-th leaf field.
    Remove(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), any_value()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<usize>().prop_map(Mutation::Unknown),
        any::<usize>().prop_map(Mutation::Remove),
    ]
}

/// One camera of a generated valid config.
#[derive(Debug, Clone)]
struct Cam {
    id: String,
    host: String,
    port: u16,
    path: String,
    transport: Transport,
    sample_interval: Option<Duration>,
    record: Option<bool>,
    audio: bool,
}

fn duration() -> impl Strategy<Value = Duration> {
    // Whole milliseconds from 1 ms to about a year: what humantime writes and reads back.
    (1u64..31_536_000_000).prop_map(Duration::from_millis)
}

fn camera() -> impl Strategy<Value = Cam> {
    (
        "[A-Za-z0-9_-]{1,64}",
        prop_oneof![
            "[a-z][a-z0-9-]{0,15}(\\.[a-z][a-z0-9]{0,8}){0,3}",
            (any::<u8>(), any::<u8>(), any::<u8>(), 1u8..255)
                .prop_map(|(a, b, c, d)| format!("{a}.{b}.{c}.{d}")),
        ],
        1u16..,
        "[A-Za-z0-9_./-]{0,30}",
        prop_oneof![Just(Transport::Tcp), Just(Transport::Udp)],
        prop::option::of(duration()),
        prop::option::of(any::<bool>()),
        any::<bool>(),
    )
        .prop_map(
            |(id, host, port, path, transport, sample_interval, record, audio)| Cam {
                id,
                host,
                port,
                path,
                transport,
                sample_interval,
                record,
                audio,
            },
        )
}

fn s(v: &str) -> toml::Value {
    toml::Value::String(v.to_string())
}

fn dur(d: Duration) -> toml::Value {
    s(&humantime::format_duration(d).to_string())
}

proptest! {
    #![proptest_config(cases(512))]

    /// Whatever the text, loading returns (a config or errors) and the errors print.
    #[test]
    fn any_text_loads_or_fails_without_panicking(text in prop_oneof![tokens(), ".{0,200}"]) {
        if let Err(e) = load(&text) {
            prop_assert!(!e.0.is_empty());
            let _ = e.to_string();
        }
    }

    /// `${...}` in any string, with any environment: substitution returns, and a string
    /// with no `${` is left exactly as it was.
    #[test]
    fn env_substitution_never_panics(
        strings in prop::collection::vec(
            prop::collection::vec(
                prop_oneof![
                    Just("${".to_string()), Just("}".to_string()), Just(":-".to_string()),
                    Just("$".to_string()), "[A-Z_]{1,3}", ".{0,3}",
                ],
                0..12,
            ).prop_map(|v| v.concat()),
            1..6,
        ),
        env in prop::collection::btree_map("[A-Z_]{1,3}", ".{0,8}", 0..4),
    ) {
        let mut table = toml::Table::new();
        for (i, text) in strings.iter().enumerate() {
            table.insert(format!("k{i}"), toml::Value::Array(vec![s(text)]));
        }
        let lookup = |k: &str| env.get(k).cloned();
        let errors = config::substitute(&mut table, &lookup);
        for (field, message) in &errors {
            prop_assert!(field.starts_with('k') && field.ends_with("[0]"), "{field}");
            prop_assert!(!message.is_empty());
        }
        for (i, text) in strings.iter().enumerate() {
            if !text.contains("${") {
                prop_assert_eq!(&table[&format!("k{i}")][0], &s(text));
            }
        }
    }

    /// A set variable is replaced by its value exactly once: a value that itself holds
    /// `${...}` is not expanded again, and an unset one takes its default.
    #[test]
    fn env_values_and_defaults_are_inserted_verbatim(
        before in "[^$]{0,10}",
        after in "[^$]{0,10}",
        name in "[a-z0-9_]{1,12}",
        value in prop_oneof![".{1,16}", Just("${OTHER}".to_string()), Just("${OTHER:-x}".to_string())],
        default in "[^}]{0,10}",
    ) {
        let mut table = toml::Table::new();
        table.insert("set".into(), s(&format!("{before}${{{name}}}{after}")));
        table.insert("unset".into(), s(&format!("{before}${{NOT_{name}:-{default}}}{after}")));
        // OTHER is set too: a value naming it must still come through as written.
        let lookup = |k: &str| match k {
            "OTHER" => Some("expanded-again".to_string()),
            k if k == name => Some(value.clone()),
            _ => None,
        };
        let errors = config::substitute(&mut table, &lookup);
        prop_assert!(errors.is_empty(), "{errors:?}");
        prop_assert_eq!(&table["set"], &s(&format!("{before}{value}{after}")));
        prop_assert_eq!(&table["unset"], &s(&format!("{before}{default}{after}")));
    }
}

proptest! {
    #![proptest_config(cases(256))]

    /// A valid config with any values in range loads, and every field reads back as written.
    #[test]
    fn valid_configs_round_trip(
        interval in duration(),
        segment in (1_000u64..86_400_000).prop_map(Duration::from_millis),
        jpeg_quality in 1u32..=100,
        max_width in 16u32..10_000,
        rate_limit in any::<u32>(),
        max_body in any::<u32>(),
        json_logs in any::<bool>(),
        port in 1u16..,
        cams in prop::collection::vec(camera(), 0..6),
    ) {
        let mut cams = cams;
        let mut ids = std::collections::HashSet::new();
        cams.retain(|c| ids.insert(c.id.clone()));
        let mut root = toml::Table::new();
        let table = |pairs: Vec<(&str, toml::Value)>| {
            toml::Value::Table(pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
        };
        root.insert("sampling".into(), table(vec![
            ("interval", dur(interval)),
            ("jpeg_quality", toml::Value::Integer(jpeg_quality.into())),
            ("max_width", toml::Value::Integer(max_width.into())),
        ]));
        root.insert("recording".into(), table(vec![("segment", dur(segment))]));
        root.insert("log".into(), table(vec![("format", s(if json_logs { "json" } else { "human" }))]));
        root.insert("api".into(), table(vec![
            ("listen", s(&format!("0.0.0.0:{port}"))),
            ("rate_limit", toml::Value::Integer(rate_limit.into())),
            ("max_body", toml::Value::Integer(max_body.into())),
        ]));
        let cameras = cams.iter().map(|c| {
            let mut t: BTreeMap<&str, toml::Value> = BTreeMap::new();
            t.insert("id", s(&c.id));
            t.insert("url", s(&format!("rtsp://{}:{}/{}", c.host, c.port, c.path)));
            t.insert("transport", s(match c.transport { Transport::Tcp => "tcp", Transport::Udp => "udp" }));
            t.insert("audio", toml::Value::Boolean(c.audio));
            if let Some(d) = c.sample_interval {
                t.insert("sample_interval", dur(d));
            }
            if let Some(r) = c.record {
                t.insert("record", toml::Value::Boolean(r));
            }
            table(t.into_iter().collect())
        }).collect();
        root.insert("cameras".into(), toml::Value::Array(cameras));
        let text = toml::to_string(&root).unwrap();

        let c = load(&text).map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(c.sampling.interval, interval);
        prop_assert_eq!(c.recording.segment, segment);
        prop_assert_eq!(c.sampling.jpeg_quality, jpeg_quality);
        prop_assert_eq!(c.sampling.max_width, max_width);
        prop_assert_eq!(c.api.rate_limit, rate_limit);
        prop_assert_eq!(c.api.max_body, max_body as usize);
        prop_assert_eq!(c.api.listen.port(), port);
        prop_assert_eq!(c.log.format, if json_logs { LogFormat::Json } else { LogFormat::Human });
        prop_assert_eq!(c.cameras.len(), cams.len());
        for (got, want) in c.cameras.iter().zip(&cams) {
            prop_assert_eq!(&got.id, &want.id);
            prop_assert_eq!(&got.url, &format!("rtsp://{}:{}/{}", want.host, want.port, want.path));
            prop_assert_eq!(got.transport, want.transport);
            prop_assert_eq!(got.sample_interval, want.sample_interval);
            prop_assert_eq!(got.record, want.record);
            prop_assert_eq!(got.audio, want.audio);
        }
    }

    /// A valid file with fields broken on purpose (wrong types, unknown fields, fields
    /// dropped): loading never panics, and every unknown field is named in one run.
    #[test]
    fn broken_fields_are_each_reported(mutations in prop::collection::vec(mutation(), 1..6)) {
        let mut root = toml::Value::Table(toml::from_str(FULL).unwrap());
        let mut unknown = Vec::new();
        for (n, m) in mutations.iter().enumerate() {
            let mut all = Vec::new();
            paths("", &root, &mut all);
            let tables: Vec<&String> = all.iter().filter(|(_, t)| *t).map(|(p, _)| p).collect();
            let leaves: Vec<&String> = all.iter().filter(|(_, t)| !*t).map(|(p, _)| p).collect();
            match m {
                Mutation::Replace(i, v) if !leaves.is_empty() => {
                    let p = leaves[i % leaves.len()].clone();
                    unknown.retain(|u: &String| !u.starts_with(&format!("{p}.")));
                    *at(&mut root, &p) = v.clone();
                }
                Mutation::Unknown(i) if !tables.is_empty() => {
                    let p = tables[i % tables.len()].clone();
                    let key = format!("zz_unknown_{n}");
                    at(&mut root, &p).as_table_mut().unwrap().insert(key.clone(), toml::Value::Integer(1));
                    unknown.push(format!("{p}.{key}"));
                }
                Mutation::Remove(i) if !leaves.is_empty() => {
                    let p = leaves[i % leaves.len()].clone();
                    unknown.retain(|u| u != &p);
                    let (parent, key) = p.rsplit_once('.').unwrap_or(("", &p));
                    if parent.is_empty() {
                        root.as_table_mut().unwrap().remove(key);
                    } else if let Some(t) = at(&mut root, parent).as_table_mut() {
                        t.remove(key);
                    }
                }
                _ => {}
            }
        }
        let text = toml::to_string(&root).unwrap();
        match load(&text) {
            Ok(_) => prop_assert!(unknown.is_empty(), "{unknown:?} accepted:\n{text}"),
            Err(e) => {
                let _ = e.to_string();
                for u in &unknown {
                    // Only where the table holding it survived as a table (a Replace may have
                    // turned `cameras` into a string, making every camera moot).
                    // Reported as unknown, or for its value: a later Replace may have put an
                    // unset `${...}` there, which substitution reports before the field check.
                    let reported = e.0.iter().any(|x| &x.field == u);
                    let parent_broken = e.0.iter().any(|x| u.starts_with(&format!("{}.", x.field)) || u.starts_with(&format!("{}[", x.field)) || x.field.is_empty());
                    prop_assert!(reported || parent_broken, "{u} not reported in\n{e}\n{text}");
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(cases(512))]

    /// Clip ids come from the URL path: any text is parsed or refused without a panic, and
    /// an id the store makes parses back into its parts.
    #[test]
    fn clip_ids_parse_back(
        junk in ".{0,40}",
        camera in "[A-Za-z0-9_-]{1,64}",
        start in 0i64..i64::MAX,
        len in 0i64..i64::MAX,
    ) {
        let _ = panoptes::store::objects::parse_clip_id(&junk);
        let end = start.saturating_add(len);
        let id = format!("{camera}-{start}-{end}");
        prop_assert_eq!(panoptes::store::objects::parse_clip_id(&id), Some((camera.as_str(), start, end)));
        let _ = panoptes::store::objects::clip_key(&camera, start, end);
    }

    /// Page cursors come from the query string: any text is decoded or refused, and every
    /// cursor the API hands out decodes to itself.
    #[test]
    fn cursors_decode_back(junk in ".{0,40}", ts_ms in any::<i64>(), seq in any::<i64>()) {
        let _ = Cursor::decode(&junk);
        let c = Cursor { ts_ms, seq };
        prop_assert_eq!(Cursor::decode(&c.encode()), Some(c));
    }

    /// `kind` comes from the query string too.
    #[test]
    fn kinds_parse_back(
        junk in prop_oneof![".{0,12}", "(?i)(object|text|speech)", " ?(object|text|speech) ?"],
    ) {
        if let Some(k) = Kind::parse(&junk) {
            prop_assert_eq!(k.as_str(), junk.as_str());
        }
        for k in [Kind::Object, Kind::Text, Kind::Speech] {
            prop_assert_eq!(Kind::parse(k.as_str()), Some(k));
        }
    }

    /// A URL shown in logs or the API never carries its password, whatever else is in it.
    #[test]
    fn redacted_urls_hold_no_password(
        user in "[A-Za-z0-9._~-]{0,8}",
        password in "[A-Za-z0-9]{6,12}",
        rest in "[a-z0-9.:/?#%@\\[\\] -]{0,30}",
    ) {
        let password = format!("PW{password}");
        let raw = format!("rtsp://{user}:{password}@{rest}");
        let shown = config::redact_url(&raw);
        prop_assert!(!shown.contains(&password), "{raw} -> {shown}");
    }
}
