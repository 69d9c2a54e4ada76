//! The map in `lib.rs`, checked on the source: which layer may use which, and no import circle
//! between modules (a file is a module). `grep -rn 'crate::' src/LAYER` shows the same by hand.
//!
//! Only code outside tests counts: comments, the contents of string and character literals
//! and every item under `#[cfg(test)]` (wherever it stands in the file) are taken out first,
//! and test-only files (`tests.rs`, `*_test.rs`) are not read. `protocol::tests::purity`
//! reads the protocol layer the same way.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// What each layer may use besides itself.
const MAY_USE: [(&str, &[&str]); 6] = [
    ("protocol", &[]),
    ("sim", &["protocol"]),
    ("device", &["protocol", "sim"]),
    ("client", &["protocol", "device"]),
    ("daemon", &["protocol", "device", "sim"]),
    ("cli", &["protocol", "device", "sim", "client", "daemon"]),
];

/// Whether `name` (a file's stem) holds tests only.
pub(crate) fn test_file(name: &str) -> bool {
    name == "tests" || name.ends_with("_test")
}

/// `text` as code outside tests: comments gone, string and character literals emptied (so
/// neither can hide a path or fake one), and every item under `#[cfg(test)]` cut out — a
/// `mod tests { … }` at the end as much as a helper, a field or a `mod tests;` in between.
pub(crate) fn code_outside_tests(text: &str) -> String {
    const MARK: &str = "#[cfg(test)]";
    let code = blank(text);
    let mut out = String::with_capacity(code.len());
    let mut rest = code.as_str();
    while let Some(at) = rest.find(MARK) {
        out.push_str(&rest[..at]);
        rest = &rest[at + MARK.len()..];
        rest = &rest[item_end(rest)..];
    }
    out.push_str(rest);
    out
}

/// `text` without comments, with `""` for every string literal and `' '` for every character
/// literal (lifetimes stay).
fn blank(text: &str) -> String {
    let c: Vec<char> = text.chars().collect();
    let ident = |i: usize| c[i].is_alphanumeric() || c[i] == '_';
    let at = |i: usize, s: &str| s.chars().enumerate().all(|(k, x)| c.get(i + k) == Some(&x));
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < c.len() {
        // A raw string: r"…", r#"…"#, br"…" (the `b` is already out).
        let raw_start = c[i] == 'r'
            && (i == 0 || !ident(i - 1) || (c[i - 1] == 'b' && (i == 1 || !ident(i - 2))));
        let hashes = c[i + 1..].iter().take_while(|&&x| x == '#').count();
        if raw_start && c.get(i + 1 + hashes) == Some(&'"') {
            let close: String = std::iter::once('"')
                .chain(std::iter::repeat_n('#', hashes))
                .collect();
            i += 2 + hashes;
            while i < c.len() && !at(i, &close) {
                i += 1;
            }
            i += close.chars().count();
            out.push_str("\"\"");
            continue;
        }
        if at(i, "//") {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if at(i, "/*") {
            let mut depth = 0;
            while i < c.len() {
                if at(i, "/*") {
                    depth += 1;
                    i += 2;
                } else if at(i, "*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
            out.push(' ');
            continue;
        }
        match c[i] {
            '"' => {
                i += 1;
                while i < c.len() && c[i] != '"' {
                    i += if c[i] == '\\' { 2 } else { 1 };
                }
                i += 1;
                out.push_str("\"\"");
            }
            // '\n', '\'', '\u{1F600}'
            '\'' if c.get(i + 1) == Some(&'\\') => {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            }
            // 'x' (not a lifetime: 'a is followed by no quote)
            '\'' if c.get(i + 2) == Some(&'\'') => {
                i += 3;
                out.push_str("' '");
            }
            ch => {
                out.push(ch);
                i += 1;
            }
        }
    }
    out
}

/// Where the item that `s` starts with ends (after its `#[cfg(test)]`, in blanked code): after
/// its `;` or `,`, or after the block its head opens; before the `}` of the block it stands in
/// if it was the last thing there.
fn item_end(s: &str) -> usize {
    let b = s.as_bytes();
    // Inside ( ), [ ] (attributes too) or < > (generics; not `->` or `=>`).
    let mut depth = 0i32;
    for i in 0..b.len() {
        match b[i] {
            b'(' | b'[' | b'<' => depth += 1,
            b'>' if i > 0 && matches!(b[i - 1], b'-' | b'=') => {}
            b')' | b']' | b'>' => depth -= 1,
            b';' | b',' if depth == 0 => return i + 1,
            b'{' if depth == 0 => {
                let mut open = 0;
                for (k, &x) in b.iter().enumerate().skip(i) {
                    match x {
                        b'{' => open += 1,
                        b'}' => {
                            open -= 1;
                            if open == 0 {
                                return k + 1;
                            }
                        }
                        _ => {}
                    }
                }
                return b.len();
            }
            b'}' if depth == 0 => return i,
            _ => {}
        }
        if depth < 0 {
            return i;
        }
    }
    b.len()
}

/// Module path (`daemon::bridge`) -> its code outside tests, for every file under `dir`.
fn modules(dir: &Path) -> BTreeMap<String, String> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                walk(&path, &[prefix, &[name]].concat(), out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") || test_file(&name) || name == "main" {
                continue;
            }
            let module = match name.as_str() {
                "mod" | "lib" => prefix.to_vec(),
                _ => [prefix, &[name]].concat(),
            };
            let text = std::fs::read_to_string(&path).unwrap();
            out.insert(module.join("::"), code_outside_tests(&text));
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, &[], &mut out);
    out
}

/// The paths a `use` (or a path in code) names from `s` on: `a::b::C` is one, `a::{b, c::{D,
/// E}}` three; `{self}` names the group's head.
fn paths(s: &str) -> Vec<String> {
    let head: String = s
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':')
        .collect();
    let rest = &s[head.len()..];
    if !head.ends_with("::") || !rest.starts_with('{') {
        return vec![head];
    }
    let mut open = 0;
    let mut parts = Vec::new();
    let mut from = 1;
    for (i, ch) in rest.char_indices() {
        match ch {
            '{' => open += 1,
            ',' if open == 1 => {
                parts.push(&rest[from..i]);
                from = i + 1;
            }
            '}' => {
                open -= 1;
                if open == 0 {
                    parts.push(&rest[from..i]);
                    break;
                }
            }
            _ => {}
        }
    }
    (parts.iter())
        .flat_map(|p| paths(p.trim_start()))
        .map(|p| format!("{head}{p}"))
        .collect()
}

/// The modules `code` (of `module`) names through `crate::` and `super::` paths: the longest
/// known prefix of each.
fn uses(module: &str, code: &str, known: &BTreeMap<String, String>) -> BTreeSet<String> {
    let own: Vec<&str> = module.split("::").collect();
    let parent = &own[..own.len().saturating_sub(1)];
    let mut found = BTreeSet::new();
    for (root, base) in [("crate::", &[][..]), ("super::", parent)] {
        for (at, _) in code.match_indices(root) {
            let before = code[..at].chars().next_back();
            if before.is_some_and(|c| c == ':' || c == '_' || c.is_ascii_alphanumeric()) {
                continue;
            }
            for path in paths(&code[at + root.len()..]) {
                let mut segments: Vec<&str> = base.to_vec();
                for s in path.split("::").filter(|s| !s.is_empty()) {
                    match s {
                        "super" => {
                            segments.pop();
                        }
                        "self" => {}
                        _ => segments.push(s),
                    }
                }
                let target = (1..=segments.len())
                    .rev()
                    .map(|n| segments[..n].join("::"))
                    .find(|m| known.contains_key(m));
                found.extend(target);
            }
        }
    }
    found
}

/// Module -> the modules it uses, for the modules in `known`.
fn graph(known: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (module, code) in known {
        let mut to = uses(module, code, known);
        to.remove(module);
        edges.insert(module.clone(), to);
    }
    edges
}

fn crate_graph() -> BTreeMap<String, BTreeSet<String>> {
    graph(&modules(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src")))
}

/// Uses that break the layer rule: (module, what it uses, what its layer may use).
fn layer_breaches(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<String> {
    let mut out = Vec::new();
    for (module, to) in edges {
        let layer = module.split("::").next().unwrap_or_default();
        let Some((_, allowed)) = MAY_USE.iter().find(|(l, _)| *l == layer) else {
            continue;
        };
        for target in to {
            let other = target.split("::").next().unwrap_or_default();
            if other != layer && !allowed.contains(&other) {
                out.push(format!(
                    "{module} uses {target}: the {layer} layer may use only {allowed:?}"
                ));
            }
        }
    }
    out
}

/// A circle in `edges`, if there is one: `a -> b -> a`.
fn circle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<String> {
    // Depth-first, with the path so far: a module met again on it closes a circle.
    fn visit(
        m: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<String> {
        if let Some(at) = path.iter().position(|p| p == m) {
            return Some(format!("{} -> {m}", path[at..].join(" -> ")));
        }
        if done.contains(m) {
            return None;
        }
        path.push(m.to_owned());
        for next in edges.get(m).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(m.to_owned());
        None
    }
    let mut done = BTreeSet::new();
    (edges.keys()).find_map(|m| visit(m, edges, &mut Vec::new(), &mut done))
}

#[test]
fn each_layer_uses_only_those_below_it() {
    let breaches = layer_breaches(&crate_graph());
    assert!(breaches.is_empty(), "{}", breaches.join("\n"));
}

#[test]
fn no_import_circle() {
    let edges = crate_graph();
    if let Some(c) = circle(&edges) {
        panic!("import circle: {c}");
    }
    assert!(edges.len() > 20, "too few modules found: {edges:?}");
    // What the rules are checked on: every layer, and the daemon's modules with their uses.
    for m in [
        "daemon::mdns",
        "daemon::hub",
        "protocol::mdns::machine",
        "client::lan",
    ] {
        assert!(!edges[m].is_empty(), "{m} uses nothing? {edges:?}");
    }
    assert!(edges["daemon::mdns"].contains("protocol::mdns"));
    assert!(
        edges["daemon::hub"].contains("daemon::lineup"),
        "{:?}",
        edges["daemon::hub"]
    );
}

/// The checks themselves, on made-up sources: a circle is found and named, a layer breach is
/// found, and neither tests nor comments nor strings count.
#[test]
fn the_checks_find_circles_and_breaches_and_ignore_tests() {
    let src = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
        (pairs.iter())
            .map(|(m, text)| (m.to_string(), code_outside_tests(text)))
            .collect()
    };
    let known = src(&[
        ("daemon", "pub(crate) mod config; pub(crate) mod mdns;"),
        ("daemon::config", "use crate::daemon::mdns::MdnsConfig;"),
        (
            "daemon::mdns",
            "use crate::daemon::{registry::Entry, config};",
        ),
        (
            "daemon::registry",
            "pub(crate) x: crate::daemon::config::Busy,",
        ),
        ("protocol", ""),
        (
            "protocol::mdns",
            "use super::super::daemon::registry::Entry;",
        ),
    ]);
    let edges = graph(&known);
    assert_eq!(
        circle(&edges).as_deref(),
        Some("daemon::config -> daemon::mdns -> daemon::config")
    );
    assert_eq!(
        edges["daemon::mdns"],
        BTreeSet::from(["daemon::config".into(), "daemon::registry".into()])
    );
    assert_eq!(
        layer_breaches(&edges),
        ["protocol::mdns uses daemon::registry: the protocol layer may use only []"]
    );
    // Broken: no circle, no breach — what is left is in tests, comments and strings only.
    let config = r#"
use crate::protocol::Protocol;
#[cfg(test)]
use crate::daemon::mdns::Probe;
#[cfg(test)]
fn helper() -> Result<(), crate::daemon::mdns::E> { let _ = '{'; }
pub(crate) struct MdnsConfig {
    a: u8,
    #[cfg(test)]
    b: crate::daemon::mdns::X,
}
pub(crate) enum E { A, #[cfg(test)] B { c: u8 }, D }
#[cfg(test)]
#[path = "config_test.rs"]
mod tests;
fn after() { let _ = crate::daemon::registry::Entry; }
#[cfg(test)]
mod more { use crate::daemon::mdns::Y; fn f() { if x { y } } }
"#;
    let registry = r##"
/// [`crate::daemon::mdns`]
/* crate::daemon::mdns */
const S: &str = "crate::daemon::mdns {";
const R: &str = r#"crate::daemon::mdns"#;
"##;
    let known = src(&[
        ("daemon::config", config),
        ("daemon::mdns", "use crate::daemon::config::MdnsConfig;"),
        ("daemon::registry", registry),
        ("protocol", "// crate::daemon::config is not used here"),
    ]);
    let edges = graph(&known);
    assert_eq!(circle(&edges), None, "{edges:?}");
    assert_eq!(
        edges["daemon::config"],
        BTreeSet::from(["protocol".into(), "daemon::registry".into()]),
        "code after a test item still counts: {}",
        known["daemon::config"]
    );
    assert!(edges["daemon::registry"].is_empty() && edges["protocol"].is_empty());
    assert!(layer_breaches(&edges).is_empty());
}
