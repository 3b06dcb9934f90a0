//! Embeds the web page (`web/dist`, built from `web/` by `npm run build`,
//! see docs/web.md) into the binary, so running the collector or `etcdmon
//! up` needs no Node and no files beside the binary. Each file is also
//! gzipped here, once, and served compressed to browsers that accept it.
//!
//! Writes `$OUT_DIR/web_assets.rs`: `WEB_ASSETS: &[(path, content type,
//! bytes, gzipped bytes)]`, empty when `web/dist` has no `index.html`.

use std::io::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let dist = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/dist");
    println!("cargo:rerun-if-changed=web/dist");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        collect(&dist, &dist, &mut files);
    }
    files.sort();
    let mut code = String::from("/// The embedded files: (path, content type, bytes, gzipped bytes).\npub const WEB_ASSETS: &[(&str, &str, &[u8], &[u8])] = &[\n");
    for (i, rel) in files.iter().enumerate() {
        let src = dist.join(rel);
        let bytes = std::fs::read(&src).expect("read a web/dist file");
        let gz = out.join(format!("web-{i}.gz"));
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&bytes).expect("gzip");
        std::fs::write(&gz, enc.finish().expect("gzip")).expect("write gzip");
        code.push_str(&format!(
            "    ({:?}, {:?}, include_bytes!({:?}), include_bytes!({:?})),\n",
            format!("/{rel}"),
            content_type(rel),
            src.display().to_string(),
            gz.display().to_string(),
        ));
    }
    code.push_str("];\n");
    std::fs::write(out.join("web_assets.rs"), code).expect("write web_assets.rs");
}

/// Paths of the files under `dir`, relative to `root`, with `/` separators.
fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    for entry in std::fs::read_dir(dir).expect("read web/dist") {
        let path = entry.expect("a web/dist entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
        if path.is_dir() {
            collect(root, &path, out);
        } else if let Ok(rel) = path.strip_prefix(root) {
            out.push(rel.to_string_lossy().replace('\\', "/"));
        }
    }
}

fn content_type(path: &str) -> &'static str {
    match path.rsplit('.').next().unwrap_or("") {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "ico" => "image/x-icon",
        "json" | "map" => "application/json",
        "woff2" => "font/woff2",
        "txt" => "text/plain; charset=utf-8",
        _ => "application/octet-stream",
    }
}
