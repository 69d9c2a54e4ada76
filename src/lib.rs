//! serialhub: share a small Linux box's serial ports over RFC 2217 and raw TCP, ESP32-aware.
//!
//! Pure cores turn bytes, events and times into bytes and effects; thin loops move them.
//! Layers, bottom up (each uses only those below it; `docs/architecture.md` has the map):
//!
//! ```text
//!  cli ─▶ daemon: serve (signals, wiring) ─▶ supervisor ─▶ bridge (one thread per device)
//!         │        portal (HTTP) ─control─▶ supervisor;  both ─▶ registry (shared view)
//!         │        portal ─grant/release─▶ leases ◀─who may connect─ bridges
//!         │        supervisor ─serve/withdraw─▶ mdns (responder thread)
//!         client: discover, url, monitor, pty, lease, labgrid
//!  device: tty | GPIO-wired | simulated ESP32 (in-process, or on a pty)
//!  sim:    the simulated chip and board (pure)
//!  protocol (pure, sans-IO): telnet ─▶ rfc2217 ─▶ session ─▶ effects;  esp (loader follower);
//!                            slip (the one SLIP codec);  reset (policies, line driver);
//!                            line (settings, modem lines);
//!                            mdns (DNS-SD records, responder, browser)
//!
//!  client TCP ─▶ bridge ─▶ session ─bytes─▶ device      bridge performs the effects of the
//!  device ─▶ bridge ─▶ session (escape | raw | esp) ─▶ client, observers, log ring
//!                                                       session in control; observers' go nowhere
//! ```

pub mod cli; // command line: `serve`, `sim`, client commands, `--help`, `--version`
pub(crate) mod client; // the other side: `discover`, `url`, `monitor`, `pty`, `lease`, `labgrid`, mDNS browse
pub(crate) mod daemon; // `serve`: composition root, supervisor, bridges, portal, registry
pub(crate) mod device; // device backends behind one trait: tty, GPIO-wired, the simulator
pub(crate) mod protocol; // the sans-IO cores: telnet, rfc2217, session, esp, reset, line
pub(crate) mod sim; // the simulated ESP32 and its boards, pure: bytes and times in and out

#[cfg(test)]
mod layers {
    //! The map above, checked on the source: which layer may use which, and no import circle
    //! between modules (a file is a module). `grep -rn 'crate::' src/LAYER` shows the same by
    //! hand.

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

    /// Module path (`daemon::bridge`) -> its code outside tests.
    fn modules() -> BTreeMap<String, String> {
        fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, String>) {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                if path.is_dir() {
                    walk(&path, &[prefix, &[name]].concat(), out);
                    continue;
                }
                if path.extension().is_none_or(|e| e != "rs")
                    || name.ends_with("_test")
                    || name == "main"
                {
                    continue;
                }
                let module = match name.as_str() {
                    "mod" | "lib" => prefix.to_vec(),
                    _ => [prefix, &[name]].concat(),
                };
                let text = std::fs::read_to_string(&path).unwrap();
                let code = text.split("#[cfg(test)]").next().unwrap_or_default();
                out.insert(module.join("::"), code.to_owned());
            }
        }
        let mut out = BTreeMap::new();
        walk(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &[],
            &mut out,
        );
        out
    }

    /// The modules `code` (of `module`) names through `crate::` and `super::` paths: the
    /// longest known prefix of each.
    fn uses(module: &str, code: &str, known: &BTreeMap<String, String>) -> BTreeSet<String> {
        let parent: Vec<&str> = module.split("::").collect();
        let parent = &parent[..parent.len().saturating_sub(1)];
        let mut found = BTreeSet::new();
        for (root, base) in [("crate::", &[][..]), ("super::", parent)] {
            for (at, _) in code.match_indices(root) {
                let before = code[..at].chars().next_back();
                if before.is_some_and(|c| c == ':' || c == '_' || c.is_ascii_alphanumeric()) {
                    continue;
                }
                let path: String = code[at + root.len()..]
                    .chars()
                    .take_while(|c| {
                        c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == ':'
                    })
                    .collect();
                let segments: Vec<&str> = (base.iter().copied())
                    .chain(path.split("::").filter(|s| !s.is_empty()))
                    .collect();
                let target = (1..=segments.len())
                    .rev()
                    .map(|n| segments[..n].join("::"))
                    .find(|m| known.contains_key(m));
                found.extend(target);
            }
        }
        found
    }

    fn graph() -> BTreeMap<String, BTreeSet<String>> {
        let known = modules();
        let mut edges = BTreeMap::new();
        for (module, code) in &known {
            let mut to = uses(module, code, &known);
            to.remove(module);
            edges.insert(module.clone(), to);
        }
        edges
    }

    #[test]
    fn each_layer_uses_only_those_below_it() {
        for (module, to) in graph() {
            let layer = module.split("::").next().unwrap_or_default();
            let Some((_, allowed)) = MAY_USE.iter().find(|(l, _)| *l == layer) else {
                continue;
            };
            for target in to {
                let other = target.split("::").next().unwrap_or_default();
                assert!(
                    other == layer || allowed.contains(&other),
                    "{module} uses {target}: the {layer} layer may use only {allowed:?}"
                );
            }
        }
    }

    #[test]
    fn no_import_circle() {
        let edges = graph();
        // Depth-first, with the path so far: a module met again on it closes a circle.
        fn visit(
            m: &str,
            edges: &BTreeMap<String, BTreeSet<String>>,
            path: &mut Vec<String>,
            done: &mut BTreeSet<String>,
        ) {
            if let Some(at) = path.iter().position(|p| p == m) {
                panic!("import circle: {} -> {m}", path[at..].join(" -> "));
            }
            if done.contains(m) {
                return;
            }
            path.push(m.to_owned());
            for next in edges.get(m).into_iter().flatten() {
                visit(next, edges, path, done);
            }
            path.pop();
            done.insert(m.to_owned());
        }
        let mut done = BTreeSet::new();
        for m in edges.keys() {
            visit(m, &edges, &mut Vec::new(), &mut done);
        }
        assert!(done.len() > 20, "too few modules found: {done:?}");
    }
}
