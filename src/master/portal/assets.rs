//! The portal's front-end files, embedded at build time (build.rs gathers them from npm
//! packages and web/src), served under `/static/` with their type and a cache lifetime.

use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

#[derive(rust_embed::Embed)]
#[folder = "$OUT_DIR/assets"]
struct Assets;

pub async fn serve(Path(path): Path<String>) -> Response {
    let Some(file) = Assets::get(&path) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let mime = file.metadata.mimetype();
    let mut response = file.data.into_owned().into_response();
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(mime) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Names carry no version: an hour keeps pages fast without pinning an old script after
    // an upgrade for long.
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=3600"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_front_end_packages_are_embedded() {
        for name in [
            "xterm.js",
            "xterm.css",
            "addon-fit.js",
            "htmx.min.js",
            "uPlot.iife.min.js",
            "uPlot.min.css",
            "portal.js",
            "terminal.js",
            "charts.js",
            "portal.css",
        ] {
            let file = Assets::get(name).unwrap_or_else(|| panic!("{name} is not embedded"));
            assert!(!file.data.is_empty(), "{name} is empty");
        }
        assert_eq!(
            Assets::get("xterm.js").unwrap().metadata.mimetype(),
            "text/javascript"
        );
    }
}
