//! Static files from the `--www` directory (the chat demo and its wasm package).
//!
//! Safety first: the request path is percent-decoded strictly, every segment is checked
//! (no `..`, no dot-files, no backslashes or NULs), and the resolved file must still be
//! inside the canonical root after symlinks are followed, so no request can read outside
//! the directory.

use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http::{header, HeaderMap, Method, Response, StatusCode};
use http_body_util::Full;

use crate::responses::text_response;

/// Largest file served (the whole file is read into memory per request).
const MAX_FILE: u64 = 64 * 1024 * 1024;

/// A static-file root.
#[derive(Debug, Clone)]
pub(crate) struct StaticFiles {
    root: PathBuf,
}

/// Shown for `/` when there is no `index.html`, so a fresh server answers something useful.
const FALLBACK_INDEX: &str = "<!doctype html>\n<meta charset=\"utf-8\">\n<title>roomcast</title>\n\
<p>roomcast is running. Connect a WebSocket to <code>/ws</code> (optionally <code>?user=NAME</code>).\n\
Health: <a href=\"/healthz\">/healthz</a>, metrics: <a href=\"/metrics\">/metrics</a>.</p>\n";

impl StaticFiles {
    pub(crate) fn new(root: &Path) -> StaticFiles {
        StaticFiles {
            root: root.to_path_buf(),
        }
    }

    /// Answers a GET or HEAD for `path` (still percent-encoded).
    pub(crate) async fn serve(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
    ) -> Response<Full<Bytes>> {
        let head = method == Method::HEAD;
        let Some(segments) = safe_segments(path) else {
            return text_response(StatusCode::NOT_FOUND, "not found\n");
        };
        let root = match tokio::fs::canonicalize(&self.root).await {
            Ok(r) => r,
            Err(_) => return fallback(path, head),
        };
        let mut file = root.clone();
        file.extend(&segments);
        let Ok(meta) = tokio::fs::metadata(&file).await else {
            return fallback(path, head);
        };
        if meta.is_dir() {
            if !path.ends_with('/') {
                // Relative links in the page resolve against the directory only with the
                // trailing slash.
                let location = format!("{path}/");
                return Response::builder()
                    .status(StatusCode::MOVED_PERMANENTLY)
                    .header(header::LOCATION, location)
                    .body(Full::new(Bytes::new()))
                    .unwrap_or_default();
            }
            file.push("index.html");
        }
        // Symlinks may point anywhere: only serve what really lives under the root.
        let Ok(real) = tokio::fs::canonicalize(&file).await else {
            return fallback(path, head);
        };
        if !real.starts_with(&root) {
            return text_response(StatusCode::NOT_FOUND, "not found\n");
        }
        let Ok(meta) = tokio::fs::metadata(&real).await else {
            return fallback(path, head);
        };
        if !meta.is_file() {
            return text_response(StatusCode::NOT_FOUND, "not found\n");
        }
        if meta.len() > MAX_FILE {
            return text_response(StatusCode::PAYLOAD_TOO_LARGE, "file too large\n");
        }
        let mtime = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let etag = format!("\"{:x}-{:x}\"", meta.len(), mtime);
        let builder = Response::builder()
            .header(header::CONTENT_TYPE, content_type(&real))
            .header(header::ETAG, &etag)
            .header(header::CACHE_CONTROL, "no-cache")
            .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff");
        let not_modified = headers
            .get(header::IF_NONE_MATCH)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
        if not_modified {
            return builder
                .status(StatusCode::NOT_MODIFIED)
                .body(Full::new(Bytes::new()))
                .unwrap_or_default();
        }
        if head {
            return builder
                .header(header::CONTENT_LENGTH, meta.len())
                .body(Full::new(Bytes::new()))
                .unwrap_or_default();
        }
        match tokio::fs::read(&real).await {
            Ok(body) => builder
                .body(Full::new(Bytes::from(body)))
                .unwrap_or_default(),
            Err(_) => text_response(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

/// What `/` shows without an `index.html`; a plain 404 for anything else.
pub(crate) fn fallback(path: &str, head: bool) -> Response<Full<Bytes>> {
    if path == "/" || path == "/index.html" {
        let body = if head { "" } else { FALLBACK_INDEX };
        return Response::builder()
            .header(header::CONTENT_TYPE, "text/html; charset=utf-8")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap_or_default();
    }
    text_response(StatusCode::NOT_FOUND, "not found\n")
}

/// Splits a request path into decoded segments, or `None` if any segment could escape
/// the root or name a hidden file.
fn safe_segments(path: &str) -> Option<Vec<String>> {
    let decoded = percent_decode(path)?;
    let mut out = Vec::new();
    for seg in decoded.split('/') {
        if seg.is_empty() {
            continue;
        }
        if seg.starts_with('.')
            || seg.contains('\\')
            || seg.contains('\0')
            || seg.contains(':')
            || seg.chars().any(char::is_control)
        {
            return None;
        }
        out.push(seg.to_owned());
    }
    Some(out)
}

/// Strict percent-decoding of a URL path (`+` stays `+`); `None` on a bad escape or
/// non-UTF-8 result.
fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The `Content-Type` for a file name; browsers refuse to compile wasm streamed with any
/// type but `application/wasm` and to run module scripts without a JavaScript type.
fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .unwrap_or_default();
    match ext.as_str() {
        "html" | "htm" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "wasm" => "application/wasm",
        "css" => "text/css; charset=utf-8",
        "json" | "map" => "application/json",
        "txt" | "md" => "text/plain; charset=utf-8",
        "svg" => "image/svg+xml",
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "gif" => "image/gif",
        "webp" => "image/webp",
        "ico" => "image/x-icon",
        "woff" => "font/woff",
        "woff2" => "font/woff2",
        "ts" => "text/plain; charset=utf-8",
        "xml" => "application/xml",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_traversal_and_hidden_files() {
        assert_eq!(
            safe_segments("/a/b.js"),
            Some(vec!["a".into(), "b.js".into()])
        );
        assert_eq!(safe_segments("/"), Some(vec![]));
        assert_eq!(safe_segments("//x"), Some(vec!["x".into()]));
        for bad in [
            "/../etc/passwd",
            "/a/../../b",
            "/%2e%2e/secret",
            "/%2E%2E%2Fsecret",
            "/.git/config",
            "/a\\..\\b",
            "/a%5c..%5cb",
            "/%00",
            "/%zz",
            "/%c3",
            "/c:/windows",
        ] {
            assert_eq!(safe_segments(bad), None, "{bad}");
        }
    }

    #[test]
    fn content_types() {
        assert_eq!(content_type(Path::new("a.wasm")), "application/wasm");
        assert_eq!(
            content_type(Path::new("a.JS")),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(
            content_type(Path::new("index.html")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("blob")), "application/octet-stream");
    }
}
