//! The architecture holds in the source: no two files of `src/` import each other, directly
//! or round a loop, and no stage imports a stage above it (DESIGN.md: api -> infer/edge ->
//! bus/store/media -> config). Imports are read from `use` items and `crate::`/`super::`/
//! `self::` paths outside `#[cfg(test)]` modules and comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path, e.g. `["store", "insights", "sqlite"]`; `[]` is the crate root.
type Module = Vec<String>;

/// The stages by layer: a file may import its own stage and the stages of lower layers.
const LAYERS: &[(&str, u8)] = &[
    ("config", 0),
    ("geometry", 0),
    ("telemetry", 1),
    ("bus", 1),
    ("store", 1),
    ("media", 1),
    ("edge", 2),
    ("infer", 2),
    ("replay", 2),
    ("api", 3),
    ("run", 4),
];

fn layer(m: &Module) -> Option<u8> {
    let stage = m.first()?;
    LAYERS.iter().find(|(s, _)| s == stage).map(|(_, l)| *l)
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "crate".into()
    } else {
        m.join("::")
    }
}

/// Every `.rs` file under `dir`, by module path.
fn modules(root: &Path, dir: &Path, out: &mut BTreeMap<Module, PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            modules(root, &p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            let rel = p.strip_prefix(root).unwrap().with_extension("");
            let mut m: Module = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            if m.last().is_some_and(|l| l == "mod") {
                m.pop();
            }
            if m == ["lib"] {
                m.clear();
            }
            out.insert(m, p);
        }
    }
}

/// The source without comments, string literals and the `#[cfg(test)]` module.
fn code(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '/' if chars.peek() == Some(&'/') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '"' => {
                let mut escaped = false;
                for c in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        break;
                    }
                }
                out.push_str("\"\"");
            }
            _ => out.push(c),
        }
    }
    out
}

/// `a::{b, c::{d, e}}` -> `a::b`, `a::c::d`, `a::c::e`.
fn expand(tree: &str) -> Vec<String> {
    let Some(open) = tree.find('{') else {
        return vec![tree.to_string()];
    };
    let close = tree.rfind('}').unwrap_or(tree.len());
    let (prefix, inner) = (&tree[..open], &tree[open + 1..close]);
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in inner.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&inner[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&inner[start..]);
    parts
        .into_iter()
        .filter(|p| !p.is_empty())
        .flat_map(|p| expand(&format!("{prefix}{p}")))
        .collect()
}

/// The file a path used in module `from` leads to: the longest prefix that is a file.
fn resolve(from: &Module, path: &[&str], files: &BTreeMap<Module, PathBuf>) -> Option<Module> {
    let (mut cur, rest): (Module, &[&str]) = match path.first()? {
        &"crate" => (Vec::new(), &path[1..]),
        &"self" => (from.clone(), &path[1..]),
        &"super" => {
            let mut m = from.clone();
            let mut rest = path;
            while rest.first() == Some(&"super") {
                m.pop();
                rest = &rest[1..];
            }
            (m, rest)
        }
        // A child module named without `self::` (a `use child::Item` next to `mod child`).
        first => {
            let mut child = from.clone();
            child.push(first.to_string());
            if !files.contains_key(&child) {
                return None;
            }
            (from.clone(), path)
        }
    };
    let mut best = files.contains_key(&cur).then(|| cur.clone());
    for seg in rest {
        cur.push(seg.to_string());
        if files.contains_key(&cur) {
            best = Some(cur.clone());
        } else {
            break;
        }
    }
    // The crate root only declares the stages.
    best.filter(|m| !m.is_empty())
}

fn imports(files: &BTreeMap<Module, PathBuf>) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut graph = BTreeMap::new();
    for (m, p) in files {
        let src = code(&std::fs::read_to_string(p).unwrap());
        let mut paths: Vec<String> = Vec::new();
        // `use` items, whole trees.
        let mut rest = src.as_str();
        while let Some(i) = rest.find("use ") {
            let before = rest[..i].chars().last();
            rest = &rest[i + 4..];
            if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                continue;
            }
            let end = rest.find(';').unwrap_or(rest.len());
            let tree: String = rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
            paths.extend(expand(&tree));
            rest = &rest[end..];
        }
        // Paths written in place: `crate::a::b`, `super::x`.
        for start in ["crate::", "super::", "self::"] {
            let mut from = 0;
            while let Some(i) = src[from..].find(start) {
                let at = from + i;
                from = at + start.len();
                if src[..at]
                    .chars()
                    .last()
                    .is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':')
                {
                    continue;
                }
                let len = src[at..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(src.len() - at);
                paths.push(src[at..at + len].to_string());
            }
        }
        let mut to = BTreeSet::new();
        for p in paths {
            let p = p.split(" as ").next().unwrap_or_default().to_string();
            let segs: Vec<&str> = p.split("::").filter(|s| !s.is_empty()).collect();
            if let Some(t) = resolve(m, &segs, files)
                && t != *m
            {
                to.insert(t);
            }
        }
        graph.insert(m.clone(), to);
    }
    graph
}

/// One import loop if there is any: Tarjan's strongly connected components.
fn a_loop(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    struct State<'a> {
        graph: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        found: Option<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in &s.graph[v] {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 && s.found.is_none() {
                s.found = Some(comp);
            }
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        found: None,
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.found
}

fn source_graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = BTreeMap::new();
    modules(&root, &root, &mut files);
    assert!(files.len() > 20, "found only {} files", files.len());
    imports(&files)
}

#[test]
fn no_file_imports_one_that_imports_it_back() {
    let graph = source_graph();
    if let Some(comp) = a_loop(&graph) {
        let mut edges = Vec::new();
        for a in &comp {
            for b in &graph[a] {
                if comp.contains(b) {
                    edges.push(format!("{} -> {}", name(a), name(b)));
                }
            }
        }
        panic!("an import loop between files:\n  {}", edges.join("\n  "));
    }
}

/// Imports from a file of one stage into another stage of the same or a higher layer.
fn upward(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<String> {
    let mut wrong = Vec::new();
    for (a, tos) in graph {
        let Some(la) = layer(a) else { continue };
        for b in tos {
            match layer(b) {
                None => wrong.push(format!("{} -> {} (not a known stage)", name(a), name(b))),
                Some(lb) if a[0] != b[0] && lb >= la => {
                    wrong.push(format!("{} -> {}", name(a), name(b)))
                }
                Some(_) => {}
            }
        }
    }
    wrong
}

#[test]
fn no_stage_imports_a_stage_above_it_or_beside_it() {
    let wrong = upward(&source_graph());
    assert!(
        wrong.is_empty(),
        "imports up the layers:\n  {}",
        wrong.join("\n  ")
    );
}

/// The reader itself: a loop and an upward import written into a small tree are found.
#[test]
fn the_reader_finds_a_loop_and_an_upward_import() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    for (file, text) in [
        ("lib.rs", "pub mod store;\npub mod infer;\n"),
        (
            "store/mod.rs",
            "mod a;\nmod b;\npub use a::A; // use crate::infer::X;\n",
        ),
        ("store/a.rs", "use super::b::{B, self};\npub struct A;\n"),
        (
            "store/b.rs",
            "pub struct B(crate::store::a::A);\nconst S: &str = \"crate::api\";\n",
        ),
        (
            "infer/mod.rs",
            "use crate::store::A;\n#[cfg(test)]\nmod tests {\n    use crate::api;\n}\n",
        ),
        ("infer/c.rs", "pub fn f() { let _ = crate::infer::g; }\n"),
        ("store/d.rs", "use crate::{config, infer::c::f};\n"),
    ] {
        let p = src.join(file);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    let mut files = BTreeMap::new();
    modules(src, src, &mut files);
    let g = imports(&files);
    let m = |s: &str| -> Module { s.split("::").map(str::to_string).collect() };
    assert_eq!(g[&m("store")], BTreeSet::from([m("store::a")]));
    assert_eq!(g[&m("store::a")], BTreeSet::from([m("store::b")]));
    assert_eq!(g[&m("store::b")], BTreeSet::from([m("store::a")]));
    assert_eq!(g[&m("infer")], BTreeSet::from([m("store")]));
    assert_eq!(g[&m("infer::c")], BTreeSet::from([m("infer")]));
    let mut found = a_loop(&g).expect("store::a and store::b import each other");
    found.sort();
    assert_eq!(found, vec![m("store::a"), m("store::b")]);
    assert_eq!(g[&m("store::d")], BTreeSet::from([m("infer::c")]));
    assert_eq!(upward(&g), vec!["store::d -> infer::c".to_string()]);
}
