use std::os::unix::fs::{PermissionsExt, symlink};

use super::*;

const IGNORE: &str = "secret.key\nlogs\ndocs\n!docs/README.md\nignored-link\n";

/// A context at `<tmp>/ctx` with a sibling `<tmp>/outside` for links to point at. Links that
/// lead out live under `bad/` and `sub/`, so wildcards at the top stay usable.
struct Fixture {
    _tmp: tempfile::TempDir,
    ctx: PathBuf,
    ignore: DockerIgnore,
}

fn fixture() -> Fixture {
    let tmp = tempfile::tempdir().unwrap();
    let ctx = tmp.path().join("ctx");
    let outside = tmp.path().join("outside");
    for dir in ["dir/sub", "docs", "logs", "sub", "bad"] {
        fs::create_dir_all(ctx.join(dir)).unwrap();
    }
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("file"), "outside").unwrap();
    let files = [
        ("a.txt", "a"),
        ("b.txt", "b"),
        (".env", "dot"),
        ("secret.key", "k"),
        ("dir/x.txt", "x"),
        ("dir/sub/y.txt", "y"),
        ("docs/README.md", "readme"),
        ("docs/internal.md", "internal"),
        ("logs/l.txt", "log"),
    ];
    for (path, content) in files {
        fs::write(ctx.join(path), content).unwrap();
    }
    let links = [
        ("link-file", "a.txt"),
        ("link-dir", "dir"),
        ("link-chain", "link-dir/sub"),
        ("ignored-link", "a.txt"),
        ("bad/link-out", "../../outside"),
        ("bad/abs-out", "/etc"),
        ("bad/dangling", "nowhere"),
        ("sub/link-to-outside", "../../outside"),
    ];
    for (link, target) in links {
        symlink(target, ctx.join(link)).unwrap();
    }
    symlink(ctx.join("dir"), ctx.join("abs-in")).unwrap();
    Fixture {
        _tmp: tmp,
        ctx,
        ignore: DockerIgnore::parse(IGNORE),
    }
}

fn patterns(p: &[&str]) -> Vec<String> {
    p.iter().map(|s| s.to_string()).collect()
}

/// (rel, abs relative to the context, kind)
fn describe(ctx: &Path, entries: &[ContextEntry]) -> Vec<(String, String, EntryKind)> {
    entries
        .iter()
        .map(|e| {
            let real = e
                .abs
                .strip_prefix(ctx)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            (e.rel.to_string_lossy().into_owned(), real, e.kind)
        })
        .collect()
}

#[test]
fn resolves_sources() {
    use EntryKind::{Dir, File};
    let fx = fixture();
    // (sources, [(rel, real path, kind)])
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str, EntryKind)]);
    let cases: &[Case] = &[
        (&["a.txt"], &[("a.txt", "a.txt", File)]),
        (&["/a.txt"], &[("a.txt", "a.txt", File)]),
        (&["./dir/../a.txt"], &[("a.txt", "a.txt", File)]),
        (
            &["*.txt"],
            &[("a.txt", "a.txt", File), ("b.txt", "b.txt", File)],
        ),
        (
            &["?.txt"],
            &[("a.txt", "a.txt", File), ("b.txt", "b.txt", File)],
        ),
        (&["[b-z].txt"], &[("b.txt", "b.txt", File)]),
        (&[".*"], &[(".env", ".env", File)]),
        (
            &["*"],
            &[
                (".env", ".env", File),
                ("a.txt", "a.txt", File),
                ("abs-in", "dir", Dir),
                ("b.txt", "b.txt", File),
                ("bad", "bad", Dir),
                ("dir", "dir", Dir),
                ("docs", "docs", Dir), // excluded, but README.md is re-included
                ("link-chain", "dir/sub", Dir),
                ("link-dir", "dir", Dir),
                ("link-file", "a.txt", File),
                ("sub", "sub", Dir),
            ],
        ),
        (&["dir"], &[("dir", "dir", Dir)]),
        (&["dir/"], &[("dir", "dir", Dir)]),
        (
            &["dir/*/y.txt"],
            &[("dir/sub/y.txt", "dir/sub/y.txt", File)],
        ),
        // Through `dir` and both links to it; `bad/` holds no x.txt, its links are passed over.
        (
            &["*/x.txt"],
            &[
                ("abs-in/x.txt", "dir/x.txt", File),
                ("dir/x.txt", "dir/x.txt", File),
                ("link-dir/x.txt", "dir/x.txt", File),
            ],
        ),
        (&["docs"], &[("docs", "docs", Dir)]),
        (
            &["docs/README.md"],
            &[("docs/README.md", "docs/README.md", File)],
        ),
        (&["docs/*"], &[("docs/README.md", "docs/README.md", File)]),
        // A source that is a link is followed, keeping the link's name.
        (&["link-file"], &[("link-file", "a.txt", File)]),
        (&["link-dir"], &[("link-dir", "dir", Dir)]),
        (&["link-chain"], &[("link-chain", "dir/sub", Dir)]),
        (
            &["link-dir/x.txt"],
            &[("link-dir/x.txt", "dir/x.txt", File)],
        ),
        (
            &["link-dir/sub/../x.txt"],
            &[("link-dir/x.txt", "dir/x.txt", File)],
        ),
        (&["abs-in/sub"], &[("abs-in/sub", "dir/sub", Dir)]),
        (&["."], &[(".", "", Dir)]),
        (&["/"], &[(".", "", Dir)]),
        (&["dir/.."], &[(".", "", Dir)]),
        (
            &["b.txt", "a.txt"],
            &[("b.txt", "b.txt", File), ("a.txt", "a.txt", File)],
        ),
    ];
    for &(sources, want) in cases {
        let got = resolve_sources(&fx.ctx, &fx.ignore, &patterns(sources))
            .unwrap_or_else(|e| panic!("{sources:?}: {e}"));
        let want: Vec<(String, String, EntryKind)> = want
            .iter()
            .map(|&(r, a, k)| (r.to_string(), a.to_string(), k))
            .collect();
        assert_eq!(describe(&fx.ctx, &got), want, "{sources:?}");
    }
}

#[test]
fn refuses_escapes_and_reports_missing_sources() {
    let fx = fixture();
    let cases: &[(&[&str], &str)] = &[
        (&["../outside/file"], "escapes ../outside/file"),
        (&["/../../etc/passwd"], "escapes /../../etc/passwd"),
        (&["dir/../../x"], "escapes dir/../../x"),
        (
            &["sub/link-to-outside/file"],
            "escapes sub/link-to-outside/file",
        ),
        (&["sub/link-to-outside"], "escapes sub/link-to-outside"),
        (&["bad/link-out/file"], "escapes bad/link-out/file"),
        (&["bad/abs-out/passwd"], "escapes bad/abs-out/passwd"),
        (&["bad/abs-out"], "escapes bad/abs-out"),
        (&["bad/*"], "escapes bad/*"),
        (&["missing"], "missing missing"),
        (&[""], "missing "),
        (&["a.txt", "missing"], "missing missing"),
        (&["nope*"], "missing nope*"),
        (&["a.txt/x"], "missing a.txt/x"),
        (&["bad/dangling"], "missing bad/dangling"),
        (&["secret.key"], "missing secret.key"),
        (&["*.key"], "missing *.key"),
        (&["logs"], "missing logs"),
        (&["logs/l.txt"], "missing logs/l.txt"),
        (&["docs/internal.md"], "missing docs/internal.md"),
        (&["ignored-link"], "missing ignored-link"),
        (&["/etc/passwd"], "missing /etc/passwd"), // absolute = inside the context
        (&["[ab"], "io [ab"),
    ];
    for &(sources, want) in cases {
        let got = match resolve_sources(&fx.ctx, &fx.ignore, &patterns(sources)) {
            Err(ContextError::Escapes { source }) => format!("escapes {source}"),
            Err(ContextError::NotFound { source }) => format!("missing {source}"),
            Err(ContextError::Io { source, .. }) => format!("io {source}"),
            Ok(found) => format!("found {:?}", describe(&fx.ctx, &found)),
        };
        assert_eq!(got, want, "{sources:?}");
    }
}

#[test]
fn symlink_loops_are_an_error_not_a_hang() {
    let fx = fixture();
    symlink("loop2", fx.ctx.join("loop1")).unwrap();
    symlink("loop1", fx.ctx.join("loop2")).unwrap();
    let err = resolve_sources(&fx.ctx, &fx.ignore, &patterns(&["loop1/x"])).unwrap_err();
    assert!(
        err.to_string()
            .ends_with("for source \"loop1/x\": too many levels of symbolic links"),
        "{err}"
    );
}

#[test]
fn errors_name_the_source() {
    let cases = [
        (
            ContextError::Escapes {
                source: "../x".into(),
            },
            "../x: outside the build context",
        ),
        (
            ContextError::NotFound {
                source: "*.go".into(),
            },
            "*.go: not found in the build context (missing, or excluded by .dockerignore)",
        ),
    ];
    let empty = ContextError::NotFound {
        source: String::new(),
    };
    assert!(empty.to_string().starts_with("\"\": not found"), "{empty}");
    for (err, want) in cases {
        assert_eq!(err.to_string(), want);
    }
}

#[test]
fn walking_skips_ignored_paths_and_keeps_links_as_links() {
    use EntryKind::{Dir, File, Symlink};
    let fx = fixture();
    let root = resolve_sources(&fx.ctx, &fx.ignore, &patterns(&["."])).unwrap();
    let want: &[(&str, EntryKind)] = &[
        (".", Dir),
        (".env", File),
        ("a.txt", File),
        ("abs-in", Symlink),
        ("b.txt", File),
        ("bad", Dir),
        ("bad/abs-out", Symlink),
        ("bad/dangling", Symlink),
        ("bad/link-out", Symlink),
        ("dir", Dir),
        ("dir/sub", Dir),
        ("dir/sub/y.txt", File),
        ("dir/x.txt", File),
        ("docs", Dir),
        ("docs/README.md", File),
        ("link-chain", Symlink),
        ("link-dir", Symlink),
        ("link-file", Symlink),
        ("sub", Dir),
        ("sub/link-to-outside", Symlink),
    ];
    let got: Vec<(String, EntryKind)> = walk(&fx.ctx, &root[0], &fx.ignore)
        .unwrap()
        .into_iter()
        .map(|e| (e.rel.to_string_lossy().into_owned(), e.kind))
        .collect();
    let want: Vec<(String, EntryKind)> = want.iter().map(|&(r, k)| (r.to_string(), k)).collect();
    assert_eq!(got, want);

    // Below a followed link, descendants are named under the link and read from the target.
    let link = resolve_sources(&fx.ctx, &fx.ignore, &patterns(&["link-dir"])).unwrap();
    let below = describe(&fx.ctx, &walk(&fx.ctx, &link[0], &fx.ignore).unwrap());
    let want = [
        ("link-dir", "dir", Dir),
        ("link-dir/sub", "dir/sub", Dir),
        ("link-dir/sub/y.txt", "dir/sub/y.txt", File),
        ("link-dir/x.txt", "dir/x.txt", File),
    ];
    let want: Vec<_> = want
        .iter()
        .map(|&(r, a, k)| (r.to_string(), a.to_string(), k))
        .collect();
    assert_eq!(below, want);
}

#[test]
fn digest_covers_content_modes_paths_and_links_but_not_ignored_files() {
    let fx = fixture();
    let digest = |sources: &[&str]| {
        let entries = resolve_sources(&fx.ctx, &fx.ignore, &patterns(sources)).unwrap();
        digest_sources(&entries, &fx.ignore, &fx.ctx).unwrap()
    };
    let base = digest(&["."]);
    assert_eq!(base.len(), 64);
    assert_eq!(digest(&["."]), base, "deterministic");
    assert_ne!(digest(&["dir"]), base);
    assert_ne!(
        digest(&["dir"]),
        digest(&["link-dir"]),
        "the copy's name counts"
    );
    assert_ne!(
        digest(&["a.txt", "b.txt"]),
        digest(&["b.txt", "a.txt"]),
        "copy order counts"
    );

    // Ignored files and timestamps do not matter.
    fs::write(fx.ctx.join("secret.key"), "changed").unwrap();
    fs::write(fx.ctx.join("logs/new.txt"), "new").unwrap();
    fs::write(fx.ctx.join("docs/internal.md"), "changed").unwrap();
    let a = fx.ctx.join("a.txt");
    let file = fs::File::options().write(true).open(&a).unwrap();
    file.set_modified(std::time::UNIX_EPOCH).unwrap();
    assert_eq!(digest(&["."]), base, "ignored and timestamp-only changes");

    let mut seen = vec![base];
    let mut changed = |what: &str| {
        let now = digest(&["."]);
        assert!(!seen.contains(&now), "{what} did not change the digest");
        seen.push(now);
    };
    fs::write(&a, "A").unwrap();
    changed("content");
    fs::set_permissions(&a, fs::Permissions::from_mode(0o755)).unwrap();
    changed("mode");
    fs::rename(fx.ctx.join("b.txt"), fx.ctx.join("c.txt")).unwrap();
    changed("rename");
    fs::remove_file(fx.ctx.join("link-file")).unwrap();
    symlink("c.txt", fx.ctx.join("link-file")).unwrap();
    changed("link target");
    fs::create_dir(fx.ctx.join("empty")).unwrap();
    changed("empty directory");
    fs::write(fx.ctx.join("docs/README.md"), "re-included").unwrap();
    changed("re-included file");

    // A followed link's digest follows its target's content.
    let before = digest(&["link-file"]);
    fs::write(fx.ctx.join("c.txt"), "new content").unwrap();
    assert_ne!(digest(&["link-file"]), before);
}

#[test]
fn entries_outside_the_context_are_refused() {
    let fx = fixture();
    let outside = fx.ctx.parent().unwrap().join("outside");
    let entry = ContextEntry {
        rel: PathBuf::from("x"),
        abs: outside,
        kind: EntryKind::Dir,
    };
    let is_escape = |r: Result<_, ContextError>| matches!(r, Err(ContextError::Escapes { source }) if source == "x");
    assert!(is_escape(
        digest_sources(std::slice::from_ref(&entry), &fx.ignore, &fx.ctx).map(|_| ())
    ));
    assert!(is_escape(walk(&fx.ctx, &entry, &fx.ignore).map(|_| ())));
}
