//! The web page the collector embeds (`collector/web/dist`, committed so that
//! building the collector needs no Node) is the build of its sources: the
//! sources are built again into a temp dir with the committed lockfile's
//! packages (`scripts/setup` installs them) and every file must match byte for
//! byte. The embedded page then stays under its weight budget.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

/// First-load budget of the page, gzipped (issue 15): 300 KB.
const BUDGET_GZIP_BYTES: usize = 300 * 1024;

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("web")
}

/// Every file under `dir`, by path relative to it.
fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display())) {
            let p = e.expect("entry").path();
            if p.is_dir() {
                walk(root, &p, out);
            } else {
                let rel = p.strip_prefix(root).expect("under root");
                out.insert(
                    rel.to_string_lossy().into_owned(),
                    std::fs::read(&p).expect("read"),
                );
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn the_committed_page_is_the_build_of_its_sources() {
    let web = web_dir();
    assert!(
        web.join("node_modules/.bin/vite").exists(),
        "collector/web/node_modules is missing: run scripts/setup"
    );
    let out = tempfile::tempdir().expect("tmp");
    let built = Command::new("npm")
        .args(["run", "build", "--", "--outDir"])
        .arg(out.path())
        .arg("--emptyOutDir")
        .current_dir(&web)
        .output()
        .expect("run npm");
    assert!(
        built.status.success(),
        "npm run build failed:\n{}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );
    let fresh = files(out.path());
    let committed = files(&web.join("dist"));
    assert_eq!(
        fresh.keys().collect::<Vec<_>>(),
        committed.keys().collect::<Vec<_>>(),
        "collector/web/dist is not the build of collector/web: run scripts/setup and commit dist"
    );
    for (name, bytes) in &fresh {
        assert!(
            committed[name] == *bytes,
            "collector/web/dist/{name} differs from its build: run scripts/setup and commit dist"
        );
    }
}

#[test]
fn the_embedded_page_is_within_its_weight_budget() {
    use std::io::Write as _;
    let committed = files(&web_dir().join("dist"));
    assert!(committed.contains_key("index.html"), "no built page");
    let gzipped: usize = committed
        .values()
        .map(|bytes| {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(bytes).expect("gzip");
            enc.finish().expect("gzip").len()
        })
        .sum();
    println!(
        "first load: {} files, {gzipped} bytes gzipped",
        committed.len()
    );
    assert!(
        gzipped < BUDGET_GZIP_BYTES,
        "the page weighs {gzipped} bytes gzipped, over {BUDGET_GZIP_BYTES}"
    );
}
