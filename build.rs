//! Gathers the portal's front-end files into `$OUT_DIR/assets`, which the binary embeds
//! (src/master/portal/assets.rs): third-party packages from npm (web/package-lock.json pins
//! them; `npm ci` fetches them when web/node_modules is missing or older than the lock) and
//! the portal's own script and style sheet from web/src.

use std::path::Path;
use std::process::Command;

/// (file in web/, name it is served under /static/)
const ASSETS: &[(&str, &str)] = &[
    ("node_modules/@xterm/xterm/lib/xterm.js", "xterm.js"),
    ("node_modules/@xterm/xterm/css/xterm.css", "xterm.css"),
    (
        "node_modules/@xterm/addon-fit/lib/addon-fit.js",
        "addon-fit.js",
    ),
    (
        "node_modules/@xterm/addon-canvas/lib/addon-canvas.js",
        "addon-canvas.js",
    ),
    ("node_modules/htmx.org/dist/htmx.min.js", "htmx.min.js"),
    (
        "node_modules/uplot/dist/uPlot.iife.min.js",
        "uPlot.iife.min.js",
    ),
    ("node_modules/uplot/dist/uPlot.min.css", "uPlot.min.css"),
    ("src/portal.js", "portal.js"),
    ("src/terminal.js", "terminal.js"),
    ("src/charts.js", "charts.js"),
    ("src/joblog.js", "joblog.js"),
    ("src/portal.css", "portal.css"),
];

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn main() {
    let web = Path::new("web");
    let lock = web.join("package-lock.json");
    let installed = web.join("node_modules/.package-lock.json");
    println!("cargo::rerun-if-changed=web/package-lock.json");
    println!("cargo::rerun-if-changed=web/src");
    if modified(&installed).is_none() || modified(&installed) < modified(&lock) {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
            .current_dir(web)
            .status()
            .unwrap_or_else(|e| panic!("cannot run npm (install Node.js and npm): {e}"));
        assert!(status.success(), "npm ci in web/ failed: {status}");
    }
    let out = Path::new(&std::env::var("OUT_DIR").unwrap()).join("assets");
    std::fs::create_dir_all(&out).unwrap();
    for (from, to) in ASSETS {
        let from = web.join(from);
        println!("cargo::rerun-if-changed={}", from.display());
        std::fs::copy(&from, out.join(to))
            .unwrap_or_else(|e| panic!("cannot copy {}: {e}", from.display()));
    }
}
