//! The static file server (`--www`) follows symlinks only to what really lives under its
//! root: a link to a file or a folder outside it, or an `index.html` that points out, is
//! not found, while a link that stays inside is served.

mod common;

use common::*;

#[tokio::test]
async fn symlinks_out_of_the_root_are_not_served() {
    let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("www-links-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let root = base.join("www");
    let outside = base.join("outside");
    std::fs::create_dir_all(root.join("sub")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "SECRET").unwrap();
    std::fs::write(outside.join("index.html"), "SECRET").unwrap();
    std::fs::write(root.join("page.html"), "<p>inside</p>").unwrap();
    let link = |target: &std::path::Path, at: &str| {
        std::os::unix::fs::symlink(target, root.join(at)).unwrap();
    };
    link(&outside.join("secret.txt"), "file-out.txt"); // a file outside
    link(&outside, "dir-out"); // a folder outside
    link(&outside.join("index.html"), "sub/index.html"); // a folder's index pointing out
    link(
        std::path::Path::new("../outside/secret.txt"),
        "relative-out.txt",
    );
    link(&root.join("page.html"), "alias.html"); // stays inside: fine

    let server = ServerProc::start(&["--www", root.to_str().unwrap()]);
    let addr = server.addr;

    let (status, _, body) = get(addr, "/alias.html").await;
    assert_eq!((status, body.as_slice()), (200, &b"<p>inside</p>"[..]));

    for path in [
        "/file-out.txt",
        "/relative-out.txt",
        "/dir-out/secret.txt",
        "/dir-out/",
        "/sub/",
    ] {
        let (status, _, body) = get(addr, path).await;
        assert_eq!(status, 404, "{path}: {}", String::from_utf8_lossy(&body));
        assert!(
            !String::from_utf8_lossy(&body).contains("SECRET"),
            "{path} leaked a file outside the root"
        );
    }
    let _ = std::fs::remove_dir_all(&base);
}
