//! The deployment files in `deploy/`, checked without a container engine or a cluster (the
//! build machines have neither): the compose file is resolved by `docker-compose config` and
//! the config it mounts loads with the environment it sets; `deploy/nats.conf` runs a real
//! nats-server; the Kubernetes manifests carry the probes, resources, GPU request and node id
//! the roles need, and the config each workload mounts loads with the environment its pod
//! gets; the systemd units run a subcommand the binary has; the Dockerfile ships the models.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use panoptes::config::{self, Config, Provider};
use serde::Deserialize as _;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_panoptes");
static NULL: Value = Value::Null;
const ROLES: [&str; 4] = ["edge", "infer", "api", "run"];
const PANOPTES_SERVICES: [&str; 4] = ["edge-1", "edge-2", "infer", "api"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("cannot read {rel}: {e}"))
}

/// Every document of a YAML text (empty ones, as after a trailing `---`, left out).
fn yaml_docs(text: &str, what: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{what}: not YAML: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn str_at<'a>(v: &'a Value, pointer: &str, what: &str) -> &'a str {
    v.pointer(pointer)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{what}: no string at {pointer} in {v:#}"))
}

/// Loads config text the way `panoptes` does, with `env` for `${VAR}`; every problem fails.
fn load_config(text: &str, file: &str, env: &BTreeMap<String, String>) -> Config {
    config::load_str(text, file, &|name| env.get(name).cloned())
        .unwrap_or_else(|e| panic!("{file} does not load with the environment {env:?}:\n{e}"))
}

// --- compose ---------------------------------------------------------------------------------

/// `docker-compose` (v1, Debian's, installed by deploy/setup.sh) or the `docker compose` plugin.
fn compose() -> Command {
    let works = |cmd: &mut Command| {
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    for exe in ["docker-compose", "/usr/bin/docker-compose"] {
        if works(Command::new(exe).arg("version")) {
            return Command::new(exe);
        }
    }
    if works(Command::new("docker").args(["compose", "version"])) {
        let mut cmd = Command::new("docker");
        cmd.arg("compose");
        return cmd;
    }
    panic!(
        "neither `docker-compose` nor `docker compose` is installed, so deploy/compose.yaml \
         cannot be checked: run `make test` (deploy/setup.sh installs Debian's docker-compose)"
    );
}

/// `compose config` over deploy/compose.yaml with exactly `env` for the S3 credentials (a
/// deploy/.env on this machine is not read).
fn compose_config(env: &[(&str, &str)]) -> Output {
    let empty = tempfile::NamedTempFile::new().unwrap();
    let mut cmd = compose();
    cmd.current_dir(root())
        .arg("-f")
        .arg("deploy/compose.yaml")
        .arg("--env-file")
        .arg(empty.path())
        .arg("config");
    for var in [
        "S3_ACCESS_KEY_ID",
        "S3_SECRET_ACCESS_KEY",
        "S3_BUCKET",
        "PANOPTES_IMAGE",
        "PANOPTES_API_PORT",
    ] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    cmd.output().expect("cannot run compose")
}

/// A service's environment as a map (compose prints a map; a list of `K=V` is accepted too).
fn compose_env(svc: &Value) -> BTreeMap<String, String> {
    match &svc["environment"] {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| {
                let v = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), v)
            })
            .collect(),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_str)
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        _ => BTreeMap::new(),
    }
}

/// A service's volumes as (source, target) pairs, from the short or the long syntax.
fn compose_volumes(svc: &Value) -> Vec<(String, String)> {
    let Some(items) = svc["volumes"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|v| match v {
            Value::String(s) => {
                let mut parts = s.split(':');
                let source = parts.next().unwrap_or_default().to_string();
                let target = parts.next().unwrap_or_default().to_string();
                (source, target)
            }
            other => (
                other["source"].as_str().unwrap_or_default().to_string(),
                other["target"].as_str().unwrap_or_default().to_string(),
            ),
        })
        .collect()
}

#[test]
fn compose_file_resolves_with_every_service_and_a_loadable_config() {
    let out = compose_config(&[
        ("S3_ACCESS_KEY_ID", "test-access-key"),
        ("S3_SECRET_ACCESS_KEY", "test-secret-key"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "compose config failed:\n{stderr}");
    let resolved = yaml_docs(
        &String::from_utf8_lossy(&out.stdout),
        "compose config output",
    );
    let services = resolved[0]["services"]
        .as_object()
        .expect("compose config printed no services");
    for name in [
        "nats",
        "qdrant",
        "minio",
        "minio-init",
        "edge-1",
        "edge-2",
        "infer",
        "api",
    ] {
        assert!(
            services.contains_key(name),
            "deploy/compose.yaml has no service {name}; it has {:?}",
            services.keys().collect::<Vec<_>>()
        );
    }

    // NATS with JetStream and the config file that raises max_payload.
    let nats = &services["nats"];
    let command: Vec<&str> = nats["command"]
        .as_array()
        .expect("nats has no command")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        command.contains(&"-js"),
        "nats runs without JetStream: {command:?}"
    );
    let conf_at = command
        .iter()
        .position(|a| *a == "-c")
        .map(|i| command[i + 1])
        .expect("nats runs without `-c nats.conf`");
    assert!(
        compose_volumes(nats)
            .iter()
            .any(|(src, dst)| src.ends_with("deploy/nats.conf") && dst == conf_at),
        "deploy/nats.conf is not mounted at {conf_at}"
    );
    for name in ["nats", "qdrant", "minio"] {
        assert!(
            services[name]["healthcheck"]["test"].is_array(),
            "{name} has no health check, so nothing can wait for it"
        );
    }

    let image = services["edge-1"]["image"]
        .as_str()
        .expect("edge-1 has no image");
    let mut nodes = BTreeSet::new();
    for name in PANOPTES_SERVICES {
        let svc = &services[name];
        let what = format!("compose service {name}");
        assert_eq!(
            svc["image"].as_str(),
            Some(image),
            "{what} runs another image"
        );

        let args: Vec<&str> = svc["command"]
            .as_array()
            .unwrap_or_else(|| panic!("{what} has no command"))
            .iter()
            .filter_map(Value::as_str)
            .collect();
        let role = if name.starts_with("edge") {
            "edge"
        } else {
            name
        };
        assert_eq!(
            args.first(),
            Some(&role),
            "{what} does not run `panoptes {role}`"
        );
        let config_path = args
            .iter()
            .position(|a| *a == "--config")
            .map(|i| args[i + 1])
            .unwrap_or_else(|| panic!("{what} has no --config"));

        let health = svc["healthcheck"]["test"].to_string();
        assert!(
            health.contains("/healthz"),
            "{what}: health check is {health}"
        );
        for dep in ["nats", "qdrant"] {
            assert_eq!(
                svc["depends_on"][dep]["condition"].as_str(),
                Some("service_healthy"),
                "{what} does not wait for a healthy {dep}"
            );
        }

        // The config it names is a file of config/ mounted into the container, and it loads
        // with the environment the service sets.
        let env = compose_env(svc);
        let (dir, file) = config_path.rsplit_once('/').unwrap();
        let (source, _) = compose_volumes(svc)
            .into_iter()
            .find(|(_, dst)| dst == dir || dst == config_path)
            .unwrap_or_else(|| panic!("{what}: nothing is mounted at {config_path}"));
        let host_file = if source.ends_with(".toml") {
            PathBuf::from(&source)
        } else {
            Path::new(&source).join(file)
        };
        assert!(
            host_file.starts_with(root().join("config")),
            "{what} mounts {host_file:?}, not a file of config/"
        );
        let text = std::fs::read_to_string(&host_file).unwrap();
        let config = load_config(&text, &host_file.display().to_string(), &env);
        assert_eq!(config.api.listen.port(), 8080, "{what} listens elsewhere");
        if role == "edge" {
            // The spool must be on the node's volume, or clips waiting for S3 die with the
            // container.
            let data = config.data_dir.display().to_string();
            assert!(
                compose_volumes(svc)
                    .iter()
                    .any(|(src, dst)| *dst == data && !src.starts_with('/')),
                "{what}: data_dir {data} is not on a named volume"
            );
        }
        let node = env
            .get("PANOPTES_NODE")
            .unwrap_or_else(|| panic!("{what} sets no PANOPTES_NODE"));
        assert!(nodes.insert(node.clone()), "two services are node {node}");
    }

    let api_ports = services["api"]["ports"].to_string();
    assert!(
        api_ports.contains(":8080/tcp")
            || api_ports.contains(":8080\"")
            || api_ports.contains("\"target\":8080"),
        "the api service does not publish port 8080: {api_ports}"
    );
}

#[test]
fn compose_file_has_no_built_in_s3_credentials() {
    let out = compose_config(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "compose config succeeded without S3 credentials: some default is built in"
    );
    assert!(
        stderr.contains("S3_ACCESS_KEY_ID") || stderr.contains("S3_SECRET_ACCESS_KEY"),
        "the error does not name the missing variable:\n{stderr}"
    );
    // Nowhere a fallback value: every use is plain or `:?` (required).
    let text = read("deploy/compose.yaml");
    for var in ["S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"] {
        for (at, _) in text.match_indices(&format!("${{{var}")) {
            let rest = &text[at + var.len() + 2..];
            assert!(
                rest.starts_with('}') || rest.starts_with(":?"),
                "deploy/compose.yaml gives {var} a default: ${{{var}{}",
                &rest[..rest.find('}').unwrap_or(rest.len())]
            );
        }
    }
}

// --- nats.conf ---------------------------------------------------------------------------------

struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn nats_conf_runs_jetstream_with_room_for_frames() {
    let conf = root().join("deploy/nats.conf");
    let test = Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .arg("-t")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run nats-server ({e}): run `make test` (deploy/setup.sh installs it)")
        });
    assert!(
        test.status.success(),
        "nats-server rejects deploy/nats.conf:\n{}",
        String::from_utf8_lossy(&test.stderr)
    );

    // Run it as the compose file does (`-js -c`), on free loopback ports and with a temporary
    // store (a copy of the file: `-sd` and `store_dir` together are refused), and ask it what
    // it took.
    let store = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(&conf).unwrap();
    let store_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("store_dir"))
        .expect("deploy/nats.conf sets no JetStream store_dir");
    let copy = store.path().join("nats.conf");
    std::fs::write(
        &copy,
        text.replace(
            store_line,
            &format!("  store_dir: {:?}", store.path().display().to_string()),
        ),
    )
    .unwrap();
    let (port, http) = (free_port(), free_port());
    let mut log = tempfile::tempfile().unwrap();
    let server = Killed(
        Command::new("nats-server")
            .args(["-js", "-c"])
            .arg(&copy)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &http.to_string()])
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap())
            .spawn()
            .unwrap(),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let varz: Value = loop {
        match ureq::get(&format!("http://127.0.0.1:{http}/varz"))
            .config()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .call()
        {
            Ok(mut r) => break r.body_mut().read_json().unwrap(),
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => {
                let mut text = String::new();
                let _ = log.seek(SeekFrom::Start(0));
                let _ = log.read_to_string(&mut text);
                panic!("nats-server with deploy/nats.conf did not start ({e}):\n{text}");
            }
        }
    };
    drop(server);
    assert_eq!(
        varz["max_payload"].as_u64(),
        Some(8 * 1024 * 1024),
        "max_payload is not 8MB: {varz:#}"
    );
    assert!(
        varz["jetstream"]["config"].is_object(),
        "JetStream is off: {varz:#}"
    );
}

// --- Kubernetes ----------------------------------------------------------------------------------

struct Manifests {
    /// (file, document) for every document of deploy/k8s/*.yaml.
    docs: Vec<(String, Value)>,
}

impl Manifests {
    fn load() -> Manifests {
        let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("deploy/k8s"))
            .expect("no deploy/k8s")
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect();
        files.sort();
        let mut docs = Vec::new();
        for path in files {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            for doc in yaml_docs(&text, &name) {
                docs.push((name.clone(), doc));
            }
        }
        Manifests { docs }
    }

    fn get(&self, kind: &str, name: &str) -> &Value {
        self.docs
            .iter()
            .map(|(_, d)| d)
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| {
                let have: Vec<String> = self
                    .docs
                    .iter()
                    .map(|(f, d)| format!("{f}: {} {}", d["kind"], d["metadata"]["name"]))
                    .collect();
                panic!("deploy/k8s has no {kind} {name}; it has {have:#?}")
            })
    }

    fn file_of(&self, kind: &str, name: &str) -> &str {
        self.docs
            .iter()
            .find(|(_, d)| d["kind"] == kind && d["metadata"]["name"] == name)
            .map(|(f, _)| f.as_str())
            .unwrap()
    }

    /// The string values of a ConfigMap's `data` or a Secret's `stringData`.
    fn strings(&self, kind: &str, name: &str) -> BTreeMap<String, String> {
        let field = if kind == "Secret" {
            "stringData"
        } else {
            "data"
        };
        self.get(kind, name)[field]
            .as_object()
            .unwrap_or_else(|| panic!("{kind} {name} has no {field}"))
            .iter()
            .map(|(k, v)| {
                let v = v
                    .as_str()
                    .unwrap_or_else(|| panic!("{kind} {name}: {k} is not a string"));
                (k.clone(), v.to_string())
            })
            .collect()
    }
}

/// One Panoptes workload: its pod spec and its `panoptes` container.
struct Workload<'a> {
    what: String,
    doc: &'a Value,
    pod: &'a Value,
    container: &'a Value,
}

impl<'a> Workload<'a> {
    fn new(m: &'a Manifests, kind: &str, name: &str) -> Workload<'a> {
        let doc = m.get(kind, name);
        let what = format!("{} ({kind} {name})", m.file_of(kind, name));
        let pod = &doc["spec"]["template"]["spec"];
        let container = pod["containers"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["name"] == "panoptes"))
            .unwrap_or_else(|| panic!("{what} has no container named panoptes"));
        Workload {
            what,
            doc,
            pod,
            container,
        }
    }

    fn args(&self) -> Vec<&str> {
        self.container["args"]
            .as_array()
            .unwrap_or_else(|| panic!("{} has no args", self.what))
            .iter()
            .filter_map(Value::as_str)
            .collect()
    }

    /// A port given by number or by the name of a container port.
    fn resolve_port(&self, port: &Value) -> u64 {
        if let Some(n) = port.as_u64() {
            return n;
        }
        let name = port
            .as_str()
            .unwrap_or_else(|| panic!("{}: port {port}", self.what));
        self.container["ports"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == name))
            .and_then(|p| p["containerPort"].as_u64())
            .unwrap_or_else(|| panic!("{}: no container port named {name}", self.what))
    }

    fn assert_http_probe(&self, probe: &str, path: &str, port: u64) {
        let p = &self.container[probe]["httpGet"];
        assert_eq!(
            p["path"].as_str(),
            Some(path),
            "{}: {probe} does not ask {path}: {:#}",
            self.what,
            self.container[probe]
        );
        assert_eq!(
            self.resolve_port(&p["port"]),
            port,
            "{}: {probe} asks another port",
            self.what
        );
    }

    /// The environment the pod gets: `env` (a downward-API value becomes a sample pod name),
    /// then ConfigMaps and Secrets named by `envFrom`, all of which must be in deploy/k8s.
    fn env(&self, m: &Manifests) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for from in self.container["envFrom"].as_array().into_iter().flatten() {
            let (kind, name) = if let Some(n) = from["configMapRef"]["name"].as_str() {
                ("ConfigMap", n)
            } else if let Some(n) = from["secretRef"]["name"].as_str() {
                ("Secret", n)
            } else {
                panic!("{}: envFrom {from}", self.what)
            };
            env.extend(m.strings(kind, name));
        }
        for var in self.container["env"].as_array().into_iter().flatten() {
            let name = str_at(var, "/name", &self.what).to_string();
            let value = if let Some(v) = var["value"].as_str() {
                v.to_string()
            } else if let Some(path) = var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                format!("sample-{}", path.replace('.', "-"))
            } else if let Some(r) = var["valueFrom"]["configMapKeyRef"].as_object() {
                m.strings("ConfigMap", r["name"].as_str().unwrap())[r["key"].as_str().unwrap()]
                    .clone()
            } else if let Some(r) = var["valueFrom"]["secretKeyRef"].as_object() {
                m.strings("Secret", r["name"].as_str().unwrap())[r["key"].as_str().unwrap()].clone()
            } else {
                panic!("{}: env {var}", self.what)
            };
            env.insert(name, value);
        }
        env
    }

    /// Where `path` comes from: the volume mounted at its directory.
    fn volume_at(&self, dir: &str) -> (&'a Value, &'a Value) {
        let mount = self.container["volumeMounts"]
            .as_array()
            .and_then(|ms| ms.iter().find(|v| v["mountPath"] == dir))
            .unwrap_or_else(|| panic!("{}: nothing is mounted at {dir}", self.what));
        let volume = self.pod["volumes"]
            .as_array()
            .and_then(|vs| vs.iter().find(|v| v["name"] == mount["name"]))
            .unwrap_or(&NULL);
        (mount, volume)
    }

    /// The config file `--config` names, read from the ConfigMap mounted at its directory,
    /// and loaded with the pod's environment.
    fn config(&self, m: &Manifests) -> Config {
        let args = self.args();
        let path = args
            .iter()
            .position(|a| *a == "--config")
            .map(|i| args[i + 1])
            .unwrap_or_else(|| panic!("{} has no --config", self.what));
        let (dir, file) = path.rsplit_once('/').unwrap();
        let (mount, volume) = self.volume_at(dir);
        // A subPath mount never sees ConfigMap updates, and camera changes come that way.
        assert!(
            mount["subPath"].is_null(),
            "{}: config mounted with subPath",
            self.what
        );
        let map = str_at(volume, "/configMap/name", &self.what);
        let text = m
            .strings("ConfigMap", map)
            .remove(file)
            .unwrap_or_else(|| panic!("{}: ConfigMap {map} has no key {file}", self.what));
        load_config(&text, &format!("ConfigMap {map} key {file}"), &self.env(m))
    }

    fn image(&self) -> &'a str {
        str_at(self.container, "/image", &self.what)
    }

    /// Probes on the config's listen port, requests and a memory limit, the node id.
    fn assert_common(&self, m: &Manifests, role: &str) -> Config {
        assert_eq!(
            self.args()[0],
            role,
            "{} does not run `panoptes {role}`",
            self.what
        );
        let config = self.config(m);
        let port = u64::from(config.api.listen.port());
        assert_eq!(port, 8080, "{}: the config listens on {port}", self.what);
        assert!(
            self.container["ports"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["containerPort"] == 8080)),
            "{} declares no container port 8080",
            self.what
        );
        self.assert_http_probe("livenessProbe", "/healthz", port);
        self.assert_http_probe("readinessProbe", "/readyz", port);
        let res = &self.container["resources"];
        for (section, key) in [
            ("requests", "cpu"),
            ("requests", "memory"),
            ("limits", "memory"),
        ] {
            assert!(
                !res[section][key].is_null(),
                "{}: no resources.{section}.{key}",
                self.what
            );
        }
        let node = self.container["env"]
            .as_array()
            .and_then(|es| es.iter().find(|e| e["name"] == "PANOPTES_NODE"))
            .unwrap_or_else(|| panic!("{} does not set PANOPTES_NODE", self.what));
        assert_eq!(
            node["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            Some("metadata.name"),
            "{}: PANOPTES_NODE is not the pod name (downward API)",
            self.what
        );
        // The selector must pick this template's pods, or the API server refuses it.
        let labels = &self.doc["spec"]["template"]["metadata"]["labels"];
        for (k, v) in self.doc["spec"]["selector"]["matchLabels"]
            .as_object()
            .unwrap_or_else(|| panic!("{} has no selector", self.what))
        {
            assert_eq!(&labels[k], v, "{}: selector {k} misses the pods", self.what);
        }
        assert_eq!(labels["app.kubernetes.io/component"], role, "{}", self.what);
        config
    }
}

fn table(text: &str, what: &str) -> toml::Table {
    toml::from_str(text).unwrap_or_else(|e| panic!("{what}: not TOML: {e}"))
}

#[test]
fn k8s_manifests_are_labelled_and_the_configs_match_the_shipped_one() {
    let m = Manifests::load();
    for file in [
        "configmap.yaml",
        "edge-statefulset.yaml",
        "infer-deployment.yaml",
        "api-deployment.yaml",
        "api-service.yaml",
        "secret.example.yaml",
    ] {
        assert!(
            m.docs.iter().any(|(f, _)| f == file),
            "deploy/k8s/{file} is missing or empty"
        );
    }
    for (file, doc) in &m.docs {
        let what = format!("{file}: {} {}", doc["kind"], doc["metadata"]["name"]);
        assert!(doc["apiVersion"].is_string(), "{what}: no apiVersion");
        let labels = &doc["metadata"]["labels"];
        assert_eq!(
            labels["app.kubernetes.io/name"], "panoptes",
            "{what}: no app.kubernetes.io/name label"
        );
        assert!(
            labels["app.kubernetes.io/component"].is_string(),
            "{what}: no app.kubernetes.io/component label"
        );
    }

    // The ConfigMap's cluster.toml says what config/cluster.toml says (comments aside), and
    // cluster-gpu.toml differs from it only in the execution provider.
    let files = m.strings("ConfigMap", "panoptes-config");
    let shipped = table(&read("config/cluster.toml"), "config/cluster.toml");
    let cluster = table(&files["cluster.toml"], "ConfigMap cluster.toml");
    assert_eq!(
        cluster, shipped,
        "deploy/k8s/configmap.yaml's cluster.toml differs from config/cluster.toml"
    );
    let mut gpu = table(&files["cluster-gpu.toml"], "ConfigMap cluster-gpu.toml");
    assert_eq!(
        gpu["infer"]["provider"].as_str(),
        Some("cuda"),
        "cluster-gpu.toml does not run the CUDA provider"
    );
    gpu["infer"]
        .as_table_mut()
        .unwrap()
        .insert("provider".into(), "cpu".into());
    assert_eq!(
        gpu, shipped,
        "cluster-gpu.toml differs from cluster.toml in more than infer.provider"
    );

    // The example Secret holds placeholders only.
    for (k, v) in m.strings("Secret", "panoptes-secrets") {
        assert!(
            v.contains("CHANGE-ME"),
            "secret.example.yaml: {k} looks like a real value"
        );
    }
}

#[test]
fn k8s_edge_statefulset_keeps_its_spool_and_node_id() {
    let m = Manifests::load();
    let edge = Workload::new(&m, "StatefulSet", "panoptes-edge");
    let config = edge.assert_common(&m, "edge");
    assert_eq!(config.infer.provider, Provider::Cpu);

    // data_dir (the spool of clips waiting for S3) is on the pod's own claim.
    let data = config.data_dir.display().to_string();
    let (mount, volume) = edge.volume_at(&data);
    assert!(
        volume.is_null(),
        "{}: {data} is a pod volume, not a volumeClaimTemplate",
        edge.what
    );
    let claims = edge.doc["spec"]["volumeClaimTemplates"]
        .as_array()
        .unwrap_or_else(|| panic!("{} has no volumeClaimTemplates", edge.what));
    let claim = claims
        .iter()
        .find(|c| c["metadata"]["name"] == mount["name"])
        .unwrap_or_else(|| panic!("{}: no claim template for {data}", edge.what));
    assert!(
        claim["spec"]["resources"]["requests"]["storage"].is_string(),
        "{}: the claim requests no storage",
        edge.what
    );

    let service = str_at(edge.doc, "/spec/serviceName", &edge.what);
    assert_eq!(
        m.get("Service", service)["spec"]["clusterIP"],
        "None",
        "the StatefulSet's Service {service} is not headless"
    );
}

#[test]
fn k8s_infer_deployment_takes_a_gpu_and_runs_cuda() {
    let m = Manifests::load();
    let infer = Workload::new(&m, "Deployment", "panoptes-infer");
    let config = infer.assert_common(&m, "infer");
    assert_eq!(
        config.infer.provider,
        Provider::Cuda,
        "{} runs a config whose infer.provider is not cuda",
        infer.what
    );
    let gpus = &infer.container["resources"]["limits"]["nvidia.com/gpu"];
    let n = gpus
        .as_u64()
        .or_else(|| gpus.as_str().and_then(|s| s.parse().ok()))
        .unwrap_or(0);
    assert!(n >= 1, "{} requests no nvidia.com/gpu: {gpus}", infer.what);
}

#[test]
fn k8s_api_deployment_is_behind_a_service_on_8080() {
    let m = Manifests::load();
    let api = Workload::new(&m, "Deployment", "panoptes-api");
    api.assert_common(&m, "api");

    let service = m.get("Service", "panoptes-api");
    let labels = &api.doc["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"]
        .as_object()
        .expect("Service panoptes-api has no selector")
    {
        assert_eq!(
            &labels[k], v,
            "Service panoptes-api selects other pods ({k})"
        );
    }
    let ports = service["spec"]["ports"].as_array().unwrap();
    assert!(
        ports
            .iter()
            .any(|p| p["port"] == 80 && api.resolve_port(&p["targetPort"]) == 8080),
        "Service panoptes-api does not send port 80 to 8080: {ports:?}"
    );

    // Every workload runs the same image (one binary, every role).
    let images: BTreeSet<&str> = [
        api.image(),
        Workload::new(&m, "StatefulSet", "panoptes-edge").image(),
        Workload::new(&m, "Deployment", "panoptes-infer").image(),
    ]
    .into();
    assert_eq!(
        images.len(),
        1,
        "the workloads run different images: {images:?}"
    );
}

// --- systemd -----------------------------------------------------------------------------------

/// `key=value` lines of a unit's [Service] section (repeated keys kept in order).
fn service_section(text: &str) -> Vec<(String, String)> {
    let mut in_service = false;
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_service = line == "[Service]";
        } else if in_service
            && !line.starts_with('#')
            && let Some((k, v)) = line.split_once('=')
        {
            out.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    out
}

#[test]
fn systemd_units_run_a_real_role_with_a_config_and_restart() {
    let dir = root().join("deploy/systemd");
    let mut units: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("no deploy/systemd")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    units.sort();
    let mut roles = BTreeSet::new();
    for unit in &units {
        let name = unit.file_name().unwrap().to_string_lossy().to_string();
        let keys = service_section(&std::fs::read_to_string(unit).unwrap());
        let get = |k: &str| {
            keys.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.as_str())
                .unwrap_or_else(|| panic!("{name}: no {k}= in [Service]"))
        };
        let exec: Vec<&str> = get("ExecStart").split_whitespace().collect();
        assert!(
            exec[0].starts_with('/') && exec[0].ends_with("/panoptes"),
            "{name}: ExecStart runs {}",
            exec[0]
        );
        let role = exec[1];
        assert!(
            ROLES.contains(&role),
            "{name}: `panoptes {role}` is no role"
        );
        // The binary has this subcommand and takes --config.
        let help = Command::new(BIN).args([role, "--help"]).output().unwrap();
        assert!(
            help.status.success() && String::from_utf8_lossy(&help.stdout).contains("--config"),
            "{name}: `panoptes {role} --help` fails or has no --config"
        );
        let config = exec
            .iter()
            .position(|a| *a == "--config")
            .and_then(|i| exec.get(i + 1))
            .unwrap_or_else(|| panic!("{name}: ExecStart has no --config FILE"));
        let shipped = root()
            .join("config")
            .join(Path::new(config).file_name().unwrap());
        assert!(
            shipped.is_file(),
            "{name}: {config} is not one of the configs in config/"
        );
        roles.insert(role.to_string());

        let restart = get("Restart");
        assert!(
            ["on-failure", "always", "on-abnormal"].contains(&restart),
            "{name}: Restart={restart}"
        );
        assert_eq!(get("User"), "panoptes", "{name}");
        assert_eq!(get("KillSignal"), "SIGTERM", "{name}");
        assert!(get("TimeoutStopSec").parse::<u32>().is_ok(), "{name}");
        assert!(
            get("EnvironmentFile").ends_with("/etc/panoptes/panoptes.env"),
            "{name}"
        );
        assert_eq!(get("NoNewPrivileges"), "yes", "{name}");
        assert_eq!(get("ProtectSystem"), "strict", "{name}");
        assert_eq!(get("PrivateTmp"), "yes", "{name}");
        assert!(
            get("ReadWritePaths").contains("/var/lib/panoptes"),
            "{name}"
        );
    }
    for role in ["edge", "infer", "api"] {
        assert!(
            roles.contains(role),
            "deploy/systemd has no unit for {role}"
        );
    }

    // systemd's own check, with ExecStart pointing at the binary built here.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
    {
        let tmp = tempfile::tempdir().unwrap();
        for unit in &units {
            let text = std::fs::read_to_string(unit)
                .unwrap()
                .replace("/usr/local/bin/panoptes", BIN);
            let copy = tmp.path().join(unit.file_name().unwrap());
            std::fs::write(&copy, text).unwrap();
            let out = Command::new("systemd-analyze")
                .args(["verify", "--man=no"])
                .arg(&copy)
                .output()
                .unwrap();
            let said = String::from_utf8_lossy(&out.stderr).to_string()
                + &String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success() && said.trim().is_empty(),
                "systemd-analyze verify {}:\n{said}",
                unit.display()
            );
        }
    } else {
        eprintln!("systemd-analyze not installed: unit files checked by content only");
    }
}

// --- Dockerfile ----------------------------------------------------------------------------------

/// The Dockerfile's instructions, continuation lines joined, comments dropped.
fn dockerfile() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in read("deploy/Dockerfile").lines() {
        let t = line.trim();
        if t.starts_with('#') || t.is_empty() {
            continue;
        }
        if let Some(rest) = t.strip_suffix('\\') {
            current.push_str(rest);
            current.push(' ');
            continue;
        }
        current.push_str(t);
        let (op, args) = current
            .split_once(char::is_whitespace)
            .unwrap_or((&current, ""));
        out.push((op.to_uppercase(), args.trim().to_string()));
        current.clear();
    }
    out
}

#[test]
fn dockerfile_builds_in_stages_and_ships_the_models() {
    let ins = dockerfile();
    let stages: Vec<String> = ins
        .iter()
        .filter(|(op, _)| op == "FROM")
        .map(|(_, a)| a.split_whitespace().last().unwrap().to_string())
        .collect();
    assert!(
        stages.len() >= 2,
        "deploy/Dockerfile is not multi-stage: {stages:?}"
    );
    let last_from = ins.iter().rposition(|(op, _)| op == "FROM").unwrap();
    let runtime = &ins[last_from..];
    let find = |op: &str| {
        runtime
            .iter()
            .filter(|(o, _)| o == op)
            .map(|(_, a)| a.as_str())
            .collect::<Vec<_>>()
    };

    // The models come from an earlier stage that ran the installer, to where
    // PANOPTES_MODELS points.
    let models_dir = find("ENV")
        .iter()
        .flat_map(|a| a.split_whitespace())
        .find_map(|kv| kv.strip_prefix("PANOPTES_MODELS="))
        .expect("the runtime stage does not set PANOPTES_MODELS")
        .to_string();
    let copy = find("COPY")
        .into_iter()
        .find(|a| a.starts_with("--from=") && a.ends_with(&format!(" {models_dir}")))
        .unwrap_or_else(|| panic!("nothing is copied to {models_dir} from another stage"));
    let from_stage = copy
        .trim_start_matches("--from=")
        .split_whitespace()
        .next()
        .unwrap();
    let stage_at = ins
        .iter()
        .position(|(op, a)| op == "FROM" && a.ends_with(&format!(" AS {from_stage}")))
        .unwrap_or_else(|| panic!("no stage {from_stage}"));
    assert!(
        ins[stage_at..last_from]
            .iter()
            .any(|(op, a)| op == "RUN" && a.contains("models/install.sh") && a.contains("--dir")),
        "stage {from_stage} does not run models/install.sh --dir"
    );
    // It has every file the installer runs, or a new conversion would be missing.
    let copied: String = ins[stage_at..last_from]
        .iter()
        .filter(|(op, _)| op == "COPY")
        .map(|(_, a)| a.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    for entry in std::fs::read_dir(root().join("models/manifests")).unwrap() {
        let manifest = table(
            &std::fs::read_to_string(entry.unwrap().path()).unwrap(),
            "manifest",
        );
        if let Some(script) = manifest
            .get("convert")
            .and_then(|c| c.get("script"))
            .and_then(|s| s.as_str())
        {
            assert!(
                copied.contains(&format!("models/{script}")),
                "the models stage does not copy models/{script}"
            );
        }
    }
    for file in ["install.sh", "install.py", "requirements.txt", "manifests"] {
        assert!(
            copied.contains(&format!("models/{file}")),
            "the models stage does not copy models/{file}"
        );
    }
    // Files copied from the build context exist.
    for (op, args) in &ins {
        if op == "COPY" && !args.starts_with("--from=") {
            let parts: Vec<&str> = args.split_whitespace().collect();
            for src in &parts[..parts.len() - 1] {
                assert!(root().join(src).exists(), "COPY {src}: no such file");
            }
        }
    }

    // The GStreamer plugins setup.sh installs for running are in the image.
    let setup = read("deploy/setup.sh");
    let apt: String = runtime
        .iter()
        .filter(|(op, _)| op == "RUN")
        .map(|(_, a)| a.as_str())
        .collect();
    for pkg in setup.split_whitespace().filter(|w| {
        (w.starts_with("gstreamer1.0-plugins-") && !w.ends_with("-apps"))
            || *w == "gstreamer1.0-libav"
    }) {
        assert!(
            apt.contains(pkg),
            "the runtime stage does not install {pkg}"
        );
    }

    let health = find("HEALTHCHECK").join(" ");
    assert!(health.contains("/healthz"), "HEALTHCHECK is {health:?}");
    assert!(
        find("EXPOSE")
            .iter()
            .any(|a| a.split_whitespace().any(|p| p == "8080"))
    );
    assert_eq!(find("ENTRYPOINT"), [r#"["panoptes"]"#]);
    let cmd = find("CMD").join(" ");
    assert!(
        cmd.contains("\"run\"") && cmd.contains("\"--config\""),
        "CMD is {cmd}"
    );
    let user = find("USER");
    assert!(
        user.last()
            .is_some_and(|u| !u.starts_with("root") && !u.starts_with('0')),
        "the image runs as root"
    );

    // The build context leaves out build outputs and installed models.
    let ignore = read("deploy/Dockerfile.dockerignore");
    for line in ["target", "data", "models/*/", "!models/manifests/"] {
        assert!(
            ignore.lines().any(|l| l.trim() == line),
            "deploy/Dockerfile.dockerignore lacks {line}"
        );
    }
}
