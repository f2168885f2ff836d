//! The Dockerfile build corpus under buildah, the reference builder: every case of
//! `fixtures/builds` builds, and holds the files, owners, modes and config it was designed
//! to; every case of `fixtures/builds-bad` that buildah is known to reject fails. Hutch's own
//! builds are compared with these results elsewhere; this proves the reference side works.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::buildah::{
    Built, SECRET_ENV, bad_cases, case_build_args, case_secrets, cases, corpus_filter,
    expected_failure, try_buildah_build,
};
use common::fixtures;
use common::registry::Registry;
use common::testnet::TestHost;
use common::tree::{self, Kind, Node};
use serde_json::json;

/// A registry holding the two bases the corpus builds on, as `busybox:1` and `debian:1`.
fn corpus_registry() -> Registry {
    let registry = Registry::start();
    registry.push_oci_layout(&fixtures().join("busybox"), "latest", "busybox:1");
    registry.push_oci_layout(&fixtures().join("debian"), "latest", "debian:1");
    registry
}

/// The corpus's test host (`TESTHOST`: TEST-NET-3, a namespace the test makes), serving what
/// `fixtures/testhost-www.py` writes: what the network cases download.
fn corpus_test_host() -> TestHost {
    TestHost::start_with(|www| {
        let out = std::process::Command::new("python3")
            .arg(common::workspace().join("fixtures/testhost-www.py"))
            .arg(www)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "testhost-www.py: {}",
            common::stderr(&out)
        );
    })
}

/// At least this many cases, unless `$HUTCH_CORPUS_ONLY` narrows them.
fn at_least(cases: &[PathBuf], n: usize) {
    if corpus_filter().is_none() {
        assert!(cases.len() >= n, "only {} cases", cases.len());
    }
    assert!(!cases.is_empty(), "no case matches $HUTCH_CORPUS_ONLY");
}

/// A case's build args: its `build-args` file's, and `TESTHOST` (`addr:port` of `host`).
fn case_args(case: &Path, host: &TestHost) -> Vec<(String, String)> {
    let mut args = case_build_args(case);
    args.push(("TESTHOST".into(), format!("{}:{}", host.addr, host.port)));
    args
}

/// Runs `job` on every item, a few at a time (each buildah build has a storage of its own),
/// returning the results in item order.
fn in_parallel<T: Sync, R: Send>(items: &[T], job: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<Option<R>>> = Mutex::new(items.iter().map(|_| None).collect());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get() + 1);
    std::thread::scope(|scope| {
        for _ in 0..workers.min(items.len()) {
            scope.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let result = job(item);
                    results.lock().unwrap()[i] = Some(result);
                }
            });
        }
    });
    results
        .into_inner()
        .unwrap()
        .into_iter()
        .map(Option::unwrap)
        .collect()
}

fn name(case: &Path) -> String {
    case.file_name().unwrap().to_string_lossy().into_owned()
}

#[test]
fn every_case_builds_under_buildah_as_designed() {
    let registry = corpus_registry();
    let host = corpus_test_host();
    let cases = cases();
    at_least(&cases, 45);
    let built = in_parallel(&cases, |case| {
        let args = case_args(case, &host);
        let args: Vec<(&str, &str)> = args.iter().map(|(k, v)| (&**k, &**v)).collect();
        try_buildah_build(case, &registry, &args)
    });
    let mut failures = Vec::new();
    for (case, built) in cases.iter().zip(built) {
        match built {
            Ok(built) => check(&name(case), &Image::new(built)),
            Err(log) => failures.push(format!("{}:\n{log}", name(case))),
        }
    }
    assert!(
        failures.is_empty(),
        "buildah failed:\n{}",
        failures.join("\n")
    );
}

/// Bad cases buildah builds anyway, though Docker rejects them (Hutch must too).
const BUILDAH_ACCEPTS: &[&str] = &[
    // buildah 1.28 silently drops a RUN before the first FROM.
    "instruction-before-from",
];

#[test]
fn every_bad_case_is_well_formed_and_fails_under_buildah() {
    let cases = bad_cases();
    assert!(cases.len() >= 8, "only {} bad cases", cases.len());
    for case in &cases {
        let expected = expected_failure(case);
        let lines = std::fs::read_to_string(case.join("Dockerfile"))
            .unwrap()
            .lines()
            .count();
        assert!(
            (1..=lines).contains(&expected.line) && !expected.error.is_empty(),
            "{}: {expected:?} (the Dockerfile has {lines} lines)",
            name(case)
        );
    }
    let registry = corpus_registry();
    let rejected: Vec<PathBuf> = cases
        .into_iter()
        .filter(|c| !BUILDAH_ACCEPTS.contains(&name(c).as_str()))
        .collect();
    let results = in_parallel(&rejected, |case| try_buildah_build(case, &registry, &[]));
    for (case, result) in rejected.iter().zip(results) {
        assert!(result.is_err(), "buildah built the bad case {}", name(case));
    }
}

/// A built image with its tree snapshotted, and assertions that name the path they fail on.
struct Image {
    built: Built,
    nodes: BTreeMap<PathBuf, Node>,
}

impl Image {
    fn new(built: Built) -> Image {
        let nodes = tree::snapshot(&built.rootfs);
        Image { built, nodes }
    }

    fn node(&self, path: &str) -> &Node {
        self.nodes
            .get(Path::new(path))
            .unwrap_or_else(|| panic!("{path} missing; config {}", self.built.config))
    }

    fn absent(&self, path: &str) {
        assert!(
            !self.nodes.contains_key(Path::new(path)),
            "{path} should not be there"
        );
    }

    fn file(&self, path: &str, content: &str) {
        assert_eq!(self.read(path), content, "{path}");
    }

    fn read(&self, path: &str) -> String {
        assert_eq!(self.node(path).kind, Kind::File, "{path}");
        std::fs::read_to_string(self.built.rootfs.join(&path[1..])).unwrap()
    }

    fn kind(&self, path: &str, kind: Kind) {
        assert_eq!(self.node(path).kind, kind, "{path}");
    }

    fn owner(&self, path: &str, uid: u32, gid: u32) {
        let node = self.node(path);
        assert_eq!((node.uid, node.gid), (uid, gid), "owner of {path}");
    }

    fn mode(&self, path: &str, mode: u32) {
        assert_eq!(
            self.node(path).mode,
            mode,
            "mode of {path}: {:o}",
            self.node(path).mode
        );
    }

    fn symlink(&self, path: &str, target: &str) {
        let node = self.node(path);
        assert_eq!(node.kind, Kind::Symlink, "{path}");
        assert_eq!(node.target.as_deref(), Some(Path::new(target)), "{path}");
    }

    fn same_inode(&self, a: &str, b: &str) {
        let (x, y) = (self.node(a), self.node(b));
        assert!(
            x.same_inode_as.is_some() && x.same_inode_as == y.same_inode_as,
            "{a} and {b} should be one inode"
        );
    }

    /// The names directly inside a directory, sorted.
    fn children(&self, dir: &str) -> Vec<String> {
        self.node(dir);
        self.nodes
            .keys()
            .filter(|p| p.parent() == Some(Path::new(dir)))
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect()
    }

    fn config(&self, key: &str) -> &serde_json::Value {
        &self.built.config[key]
    }

    fn env(&self) -> Vec<&str> {
        self.config("Env")
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
            .unwrap_or_default()
    }

    fn has_env(&self, entries: &[&str]) {
        let env = self.env();
        for entry in entries {
            assert!(env.contains(entry), "Env lacks {entry:?}: {env:?}");
        }
    }
}

/// What each case was designed to produce (see the comment at the top of its Dockerfile).
fn check(case: &str, image: &Image) {
    let shell = if case.contains("debian") {
        "/usr/bin/bash"
    } else {
        "/bin/busybox"
    };
    image.kind(shell, Kind::File);
    assert!(
        image.env().iter().any(|e| e.starts_with("PATH=")),
        "{case}: no PATH in {}",
        image.built.config
    );
    match case {
        "01-copy-basics" => {
            assert_eq!(
                image.children("/copied/src-contents"),
                [".hidden", ".hidden-dir", "file", "sub"]
            );
            image.file(
                "/copied/src-contents/.hidden-dir/inside",
                "hidden in a hidden dir\n",
            );
            image.file("/copied/src-slash/sub/nested", "nested\n");
            image.file("/copied/renamed", "top file\n");
            image.file("/copied/into-dir/top.txt", "top file\n");
            assert_eq!(
                image.children("/copied/glob"),
                ["a.txt", "b.txt", "top.txt", "with space.txt"]
            );
            assert_eq!(
                image.children("/copied/charclass"),
                ["a.txt", "b.txt", "c.md"]
            );
            image.file("/copied/.dotfile", "dotfile\n");
            image.file("/copied/json form/with space.txt", "spaces in the name\n");
            image.file("/etc/hutch-layer2", "replaces busybox layer 2 file\n");
            image.file("/etc/nested", "nested\n");
            image.kind("/etc/passwd", Kind::File);
            assert_ne!(image.node("/usr/local/bin/script.sh").mode & 0o111, 0);
            image.file(
                "/copied/listing",
                ".\n..\n.hidden\n.hidden-dir\nfile\nsub\n",
            );
        }
        "02-dockerignore" => {
            assert_eq!(
                image.children("/ctx"),
                [
                    ".dockerignore",
                    "app",
                    "build",
                    "docs",
                    "secret.env.example"
                ]
            );
            image.file(
                "/ctx/app/deep/important.log",
                "important log kept by exception\n",
            );
            image.file("/ctx/app/deep/er/keep.txt", "deep keep\n");
            assert_eq!(image.children("/ctx/app/logs"), Vec::<String>::new());
            assert_eq!(
                image.children("/ctx/app/deep/er/logs"),
                Vec::<String>::new()
            );
            assert_eq!(image.children("/ctx/build"), ["keep"]);
            assert_eq!(image.children("/ctx/docs"), ["README.md"]);
            assert_eq!(image.children("/docs-glob"), ["README.md"]);
        }
        "03-chown-chmod" => {
            image.owner("/owned/numeric", 1234, 5678);
            image.owner("/owned/numeric-user-only", 1234, 1234);
            image.owner("/owned/by-name", 1000, 1000);
            image.owner("/owned/name-user-only", 1000, 1000);
            image.owner("/owned/nobody", 65534, 65534);
            image.owner("/owned/mixed", 1000, 65534);
            // Directories COPY creates on the way get the --chown owner too.
            image.owner("/owned", 1234, 5678);
            image.owner("/owned/new/parents", 1234, 5678);
            image.owner("/owned/new/parents/tree/sub/two", 1234, 5678);
            image.mode("/modes/0640", 0o640);
            image.mode("/modes/755", 0o755);
            image.mode("/modes/setuid", 0o4755);
            image.mode("/modes/tree/one", 0o700);
            image.mode("/modes/tree/sub", 0o700);
            image.mode("/modes/both", 0o600);
            image.owner("/modes/both", 1000, 1000);
        }
        "04-add" => {
            for root in ["/from-tar", "/from-tgz"] {
                let at = |p: &str| format!("{root}/pkg/{p}");
                image.file(&at("README"), "from the tar\n");
                image.same_inode(&at("README"), &at("hard"));
                image.symlink(&at("link"), "README");
                image.symlink(&at("abs-link"), "/etc/passwd");
                image.owner(&at("private"), 1234, 5678);
                image.mode(&at("private"), 0o700);
                image.owner(&at("private/key"), 1234, 5678);
                image.mode(&at("private/key"), 0o600);
                image.mode(&at("setgid"), 0o2755);
                image.mode(&at("bin/tool"), 0o755);
            }
            image.file("/added/plain.txt", "plain file added\n");
            image.owner("/added/owned.txt", 1000, 1000);
            image.kind("/copied-not-extracted/archive.tar", Kind::File);
        }
        "05-workdir-user" => {
            image.file("/pwd", "/srv/a/b\n/srv/a/b/c\n/opt/app\n/opt/sibling\n");
            image.file("/srv/a/b/c/rel.txt", "relative copy\n");
            image.file("/srv/a/b/c/sub/rel.txt", "relative copy\n");
            image.owner("/tmp/made-by-app", 1000, 1000);
            image.owner("/tmp/made-by-1234", 1234, 5678);
            image.file(
                "/tmp/id-app",
                "uid=1000(app) gid=1000(app) groups=1000(app)\n",
            );
            // A WORKDIR created while USER is app belongs to app, parents included.
            image.owner("/srv/made-as-app", 1000, 1000);
            image.owner("/srv/made-as-app/inner/file", 1000, 1000);
            image.owner("/home/app/work/note", 1000, 1000);
            assert_eq!(image.config("WorkingDir"), "/home/app/work");
            assert_eq!(image.config("User"), "1000");
        }
        "06-env" => {
            image.has_env(&[
                "GREETING=bye",
                "NAME=big world",
                "QUOTED=single $NOT_EXPANDED",
                "LEGACY=this form takes the rest of the line",
                "COMBINED=hello, big world",
                "SAME_LINE=hello-then",
                "DEFAULTED=fallback",
                "SET_DEFAULT=big world",
                "ALT=present",
                "ALT_UNSET=",
                "EMPTY=",
                "DOLLAR=$GREETING",
                "BRACES=${NAME}",
                "PATH=/opt/tools/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            ]);
            assert_eq!(image.env().len(), 16, "{:?}", image.env());
            assert_eq!(image.config("WorkingDir"), "/env-dir/work");
            image.file("/env-dir/env.txt", "env file\n");
            image.file("/env-dir/renamed-bye", "env file\n");
            let at_run =
                std::fs::read_to_string(image.built.rootfs.join("env-dir/env-at-run")).unwrap();
            assert!(at_run.contains("COMBINED=hello, big world\n"), "{at_run}");
            assert!(at_run.contains("DOLLAR=$GREETING\n"), "{at_run}");
        }
        "07-args" => {
            image.file(
                "/args.txt",
                "global before redeclaring: []\n\
                 global redeclared: [global-default] [from-command-line]\n\
                 variant [custom] never given []\n\
                 after ENV: [env-wins]\n",
            );
            assert_eq!(image.children("/variant"), ["variant-custom.txt"]);
            assert_eq!(image.children("/suffix"), ["file-suffixed.txt", "file.txt"]);
            image.owner("/owned-by-runas", 1000, 0);
            image.owner("/tmp/app/made-in-workdir", 1000, 1000);
            assert_eq!(image.config("User"), "app");
            assert_eq!(image.config("WorkingDir"), "/tmp/app");
            image.has_env(&["PERSISTED=custom", "VARIANT=env-wins"]);
            // ARGs reach RUN, never the config.
            assert_eq!(image.env().len(), 3, "{:?}", image.env());
        }
        "08-multistage" => {
            image.file("/app/bin/program", "#!/bin/sh\necho \"compiled code\"\n");
            image.mode("/app/bin/program", 0o755);
            image.symlink("/app/program-link", "bin/program");
            image.same_inode("/app/share/data", "/app/share/data-hardlink");
            image.file("/app/tested", "compiled code\ntested\n");
            image.kind("/app/src/main.src", Kind::File);
            image.owner("/app/share-owned", 1000, 1000);
            image.owner("/app/share-owned/data", 1000, 1000);
            image.absent("/build");
            image.absent("/unused");
            assert_eq!(image.config("Entrypoint"), &json!(["/app/bin/program"]));
            // The ENTRYPOINT dropped busybox's Cmd.
            assert!(image.config("Cmd").is_null(), "{}", image.built.config);
        }
        "09-copy-from-image" => {
            image.kind("/from-debian/debian_version", Kind::File);
            // The symlink /etc/os-release was followed.
            image.kind("/from-debian/os-release", Kind::File);
            assert_eq!(
                image.node("/from-debian/os-release").sha256,
                image.node("/from-debian/usr-lib-os-release").sha256
            );
            assert_eq!(
                image.children("/from-debian/skel"),
                [".bash_logout", ".bashrc", ".profile"]
            );
            assert_eq!(
                image.children("/from-debian/owned"),
                ["host.conf", "issue", "issue.net"]
            );
            image.owner("/from-debian/owned/issue.net", 1000, 1000);
        }
        "10-deletions" => {
            image.absent("/etc/hutch-layer2");
            image.absent("/var");
            image.absent("/bin/vi");
            image.absent("/bin/wget");
            assert_eq!(image.children("/home"), ["app"]);
            assert_eq!(image.children("/home/app"), ["new"]);
            assert_eq!(image.children("/scratch"), ["dir", "stays"]);
            assert_eq!(image.children("/scratch/dir"), ["inside"]);
            image.file(
                "/etc/group",
                "root:x:0:\napp:x:1000:\nnogroup:x:65534:\nextra:x:4242:\n",
            );
        }
        "11-links" => {
            image.symlink("/ctx-links/rel", "target.txt");
            image.symlink("/ctx-links/abs", "/etc/passwd");
            image.symlink("/ctx-links/dangling", "nowhere");
            image.symlink("/ctx-links/dir-link", "sub");
            image.file("/ctx-top-link", "link target\n");
            image.file("/ctx-dir-link-followed/file", "in sub\n");
            image.same_inode("/run-links/hard-a", "/run-links/hard-b");
            image.same_inode("/run-links/hard-a", "/run-links/hard-c");
            assert_eq!(image.node("/run-links/hard-a").nlink, 3);
            image.same_inode("/etc/passwd", "/run-links/passwd-hardlink");
            image.symlink("/run-links/rel", "hard-a");
            image.symlink("/run-links/abs", "/run-links/hard-a");
            image.symlink("/run-links/dangling", "../missing");
            image.symlink("/run-links/etc-dir", "/etc");
            image.file("/run-links/becomes-file", "was a symlink\n");
            image.symlink("/bin/vi", "/bin/busybox");
            image.symlink("/bin/new-applet", "busybox");
        }
        "12-run-perms" => {
            image.mode("/perms/setuid", 0o444);
            image.mode("/perms/setgid", 0o2711);
            image.mode("/perms/dirs/sticky", 0o1777);
            image.mode("/perms/dirs/setgid-dir", 0o2770);
            image.owner("/perms/dirs/setgid-dir", 0, 5678);
            image.mode("/perms/none", 0);
            image.mode("/perms/write-only", 0o222);
            image.mode("/perms/dirs/private", 0o700);
            image.owner("/perms/dirs/private/f", 1234, 5678);
            image.owner("/perms/app-owned", 1000, 1000);
            image.owner("/perms/nobody", 65534, 65534);
            image.owner("/perms/dirs", 42, 42);
            image.mode("/etc/passwd", 0o600);
            image.owner("/home/app", 1000, 1000);
            image.mode("/home/app", 0o750);
            image.mode("/tmp", 0o700);
        }
        "13-entrypoint-exec" => {
            assert_eq!(
                image.config("Entrypoint"),
                &json!(["/bin/echo", "quoted \"arg\"", "tab\there", "$NOT_EXPANDED"])
            );
            assert_eq!(image.config("Cmd"), &json!(["--flag", "value with spaces"]));
        }
        "14-entrypoint-shell" => {
            assert_eq!(
                image.config("Entrypoint"),
                &json!(["/bin/sh", "-c", "echo \"hello $WHO\" && exec \"$@\""])
            );
            assert_eq!(
                image.config("Cmd"),
                &json!(["/bin/sh", "-c", "echo cmd in shell form; exit 3"])
            );
            image.has_env(&["WHO=world"]);
        }
        "15-warn-only" => {
            image.file("/data/data.txt", "data\n");
            image.file("/data/after", "after the warnings\n");
            assert_eq!(image.config("Cmd"), &json!(["sh"]));
            assert!(image.config("Entrypoint").is_null());
            assert_eq!(image.env().len(), 1, "{:?}", image.env());
            assert_eq!(image.config("Labels")["org.example.name"], "warn only");
            assert_eq!(image.config("Labels")["version"], "1");
            assert_eq!(
                image.config("ExposedPorts"),
                &json!({"8080/tcp": {}, "9090/udp": {}})
            );
            assert_eq!(image.config("StopSignal"), "SIGTERM");
            assert_eq!(image.config("Volumes"), &json!({"/tmp": {}, "/var": {}}));
        }
        "22-heredocs" => {
            image.file("/out/one", "hello world\nsecond-line\n");
            image.file("/out/two", "tabs-stripped\n");
            image.file("/out/three", "first hello\nsecond $GREETING\n");
            image.file("/etc/app/conf.txt", "name=world greeting=hello\n");
            image.file("/etc/app/raw.txt", "name=$NAME\n");
            image.file("/usr/local/bin/hi", "#!/bin/sh\necho hi\n");
            image.mode("/usr/local/bin/hi", 0o750);
        }
        "23-run-mounts" => {
            image.file("/result/cache", "cached\n");
            image.file("/result/bind", "from the context\n");
            image.file("/result/bind-listing", "input.txt\nother.txt\n");
            image.file("/result/bind-file", "from the context\n");
            image.file("/result/from-stage", "from-stage\n");
            image.file("/result/tmpfs", "tmp\n");
            for stub in [
                "/root/corpus-cache",
                "/src",
                "/etc/one-file",
                "/in",
                "/scratch",
            ] {
                image.absent(stub);
            }
        }
        "24-copy-flags" => {
            assert_eq!(image.children("/excl"), ["src", "tests"]);
            assert_eq!(image.children("/excl/src"), ["main.py", "util.py"]);
            image.mode("/usr/local/bin/tool", 0o755);
            image.mode("/ro/main.py", 0o640);
        }
        "25-net-add-url" => {
            image.file("/dl/hello.txt", "hello from the corpus test host\n");
            image.file("/etc/data.json", "{\"n\": 42, \"name\": \"corpus\"}\n");
        }
        "26-debian-net-fetch" => {
            image.file("/fetched.txt", "hello from the corpus test host\n");
            image.file("/n.txt", "42\n");
        }
        "27-net-add-url-owner" => {
            image.file("/srv/www/hello.txt", "hello from the corpus test host\n");
            image.owner("/srv/www/hello.txt", 1000, 1000);
            image.mode("/srv/www/hello.txt", 0o644);
        }
        "28-net-cache-fetch" => {
            image.file("/data.json", "{\"n\": 42, \"name\": \"corpus\"}\n");
            image.absent("/root/dl-cache");
        }
        "29-net-heredoc-fetch" => {
            image.file("/fetched/hello.txt", "hello from the corpus test host\n");
            image.file("/fetched/data.json", "{\"n\": 42, \"name\": \"corpus\"}\n");
        }
        "30-net-step-offline" => {
            image.file("/offline", "offline\n");
            image.absent("/unexpected");
            image.file("/online", "hello from the corpus test host\n");
        }
        "31-net-debian-pip-index" => {
            image.file("/greeting", "hello in green (colors 1.1)\n");
            image.file("/words", "['alpha', 'beta', 'gamma']\n");
            let site = "/usr/local/lib/python3.11/dist-packages";
            image.file(
                &format!("{site}/hutch_colors/__init__.py"),
                "VERSION = \"1.1\"\nRED = \"red\"\nGREEN = \"green\"\n",
            );
            image.kind(
                &format!("{site}/hutch_greet-1.0.dist-info/RECORD"),
                Kind::File,
            );
            image.mode("/usr/local/bin/hutch-greet", 0o755);
            image.file(
                "/usr/local/share/hutch-data/words.txt",
                "alpha\nbeta\ngamma\n",
            );
            image.absent("/tmp/pip.whl");
            image.absent(&format!("{site}/hutch_greet/__pycache__"));
            assert_eq!(
                image.config("Labels")["org.opencontainers.image.title"],
                "greeter"
            );
            assert_eq!(image.config("ExposedPorts"), &json!({"8000/tcp": {}}));
            assert_eq!(image.config("StopSignal"), "SIGINT");
            assert_eq!(image.config("Volumes"), &json!({"/data": {}}));
            assert_eq!(image.config("WorkingDir"), "/data");
            assert_eq!(image.config("Cmd"), &json!(["hutch-greet"]));
        }
        "32-net-debian-pip-venv" => {
            image.file("/app/versions", "1.0 /venv/share/hutch-data/words.txt\n");
            image.file(
                "/venv/lib/python3.11/site-packages/hutch_colors/__init__.py",
                "VERSION = \"1.0\"\nRED = \"red\"\n",
            );
            image.kind("/venv/bin/python", Kind::Symlink);
            image.absent("/root/.cache/pip");
            image.absent("/tmp/pip");
            assert!(image.env().iter().any(|e| e.starts_with("PATH=/venv/bin:")));
        }
        "33-net-npm-tarballs" => {
            image.file(
                "/app/node_modules/hutch-left/index.js",
                "module.exports = (s) => s.padStart(8);\n",
            );
            image.file("/app/node_modules/hutch-right/README.md", "# hutch-right\n");
            image.kind("/app/node_modules/hutch-right/package.json", Kind::File);
            image.absent("/tmp/npm");
            image.absent("/app/node_modules/hutch-left/package");
        }
        "34-net-debian-npm-registry" => {
            image.file(
                "/app/installed.txt",
                "hutch-left@1.0.0\nhutch-right@1.0.0\n",
            );
            image.file("/app/node_modules/hutch-left/README.md", "# hutch-left\n");
            image.kind("/app/node_modules/hutch-right/index.js", Kind::File);
        }
        "35-net-add-urls" => {
            image.file("/multi/hello.txt", "hello from the corpus test host\n");
            image.file("/multi/data.json", "{\"n\": 42, \"name\": \"corpus\"}\n");
            image.kind("/archives/bundle.tar.gz", Kind::File);
            image.absent("/archives/bundle");
            image.kind("/srv/index.html", Kind::File);
        }
        "36-net-bind-from-stage" => {
            image.file("/n", "\"n\": 42\n");
            image.file("/HELLO", "HELLO FROM THE CORPUS TEST HOST\n");
            image.absent("/dl");
            image.absent("/mnt/dl");
        }
        "37-net-secret-tmpfs" => {
            image.file(
                "/fetched.sha256",
                "e78b9b3fa1723910e701304e48a36d5af103f1f34ee90477266d55b3d8a8ee66\n",
            );
            image.file("/fetched.size", "28\n");
            image.absent("/run/secrets/path");
            image.absent("/work");
            image.absent("/secret-path.txt");
        }
        "38-net-add-url-user" => {
            image.file(
                "/home/app/dl/hello.txt",
                "hello from the corpus test host\n",
            );
            image.owner("/home/app/dl/hello.txt", 1000, 1000);
            image.owner("/home/app/dl/renamed.json", 0, 0);
            image.file(
                "/tmp/listing",
                "hello.txt 1000:1000 600 32\nrenamed.json 0:0 600 28\n",
            );
            assert_eq!(image.config("User"), "app");
        }
        "39-net-bundle-extract" => {
            image.mode("/opt/bundle/bin", 0o750);
            image.mode("/opt/bundle/bin/tool", 0o755);
            image.owner("/opt/bundle/etc/conf", 1000, 1000);
            image.mode("/opt/bundle/etc/conf", 0o600);
            image.symlink("/opt/bundle/link", "bin/tool");
            image.same_inode("/opt/bundle/bin/tool", "/opt/bundle/bin/tool-again");
            image.file("/tool-output", "tool\n");
        }
        "40-secrets" => {
            image.file("/token.hash", "94eec754abc60975\n");
            image.file("/token.size", "27\n");
            image.kind("/envtoken.hash", Kind::File);
            image.file("/optional", "absent\n");
            image.absent("/run/secrets/token");
            image.absent("/etc/app/token");
            image.absent("/token.txt");
        }
        "41-heredocs-more" => {
            image.file("/out/args", "args: first second by builder\n");
            image.file("/out/a", "literal $WHO and \\$HOME\n");
            image.file("/out/b", "EXPANDED BUILDER\n");
            image.file("/out/tabbed", "made by builder\n  keeps inner spaces\n");
            image.kind("/out/sizes", Kind::File);
        }
        "42-mounts-exec-form" => {
            let listing = image.read("/result/context");
            assert!(
                listing.contains("kept.txt\n") && listing.contains("sub\n"),
                "{listing}"
            );
            image.file("/result/cached", "v1\n");
            image.absent("/ctx");
            image.absent("/var/cache/app");
        }
        "43-cache-mount-options" => {
            image.file("/owned-stat", "1000 1000 750\n");
            image.file("/private-listing", "x\n");
            image.file("/seeded", "seeded\n");
            // (buildah keeps /cache, made for the targets: see `drop_made_mount_parents`.)
        }
        "44-bind-rw-and-image" => {
            image.file("/from-rw", "input\n");
            image.file("/rw-listing", "in.txt\nnew\n");
            image.file("/from-image", "layer2\n");
            image.file("/ro-listing", "in.txt\n");
            image.absent("/data");
            image.absent("/etc/layer2-of-image");
        }
        "45-copy-exclude-from-stage" => {
            image.file("/opt/app/bin/app", "app\n");
            image.owner("/opt/app/bin/app", 1000, 1000);
            image.file("/opt/app/notes.txt", "keep\n");
            image.absent("/opt/app/logs");
            image.absent("/opt/app/bin/app.tmp");
            image.mode("/etc/conf/app.conf", 0o640);
            image.absent("/etc/conf/app.conf.bak");
        }
        "21-config" => {
            let labels = image.config("Labels");
            assert_eq!(labels["org.opencontainers.image.version"], "2.5.1");
            assert_eq!(labels["from.base"], "kept");
            assert_eq!(labels["overridden"], "second");
            assert_eq!(labels["spaced key"], "a value with spaces");
            assert_eq!(labels["legacy"], "the rest of the line");
            assert_eq!(labels["escaped"], "a $dollar and \"quotes\"");
            assert_eq!(
                image.config("ExposedPorts"),
                &json!({"8080/tcp": {}, "53/udp": {}, "9000-9002/tcp": {}, "7000/TCP": {}, "443/tcp": {}})
            );
            assert_eq!(image.config("StopSignal"), "SIGQUIT");
            assert_eq!(
                image.config("Volumes"),
                &json!({"/srv/data": {}, "/srv/cache": {}, "/var/log/app": {}})
            );
            image.file("/srv/app.txt", "app\n");
        }
        "16-entrypoint-resets-cmd" => {
            assert_eq!(image.config("Entrypoint"), &json!(["/bin/sh", "-c"]));
            assert!(image.config("Cmd").is_null(), "{}", image.built.config);
            assert_eq!(image.config("User"), "app");
        }
        "17-debian-python" => {
            let squares: serde_json::Value = serde_json::from_slice(
                &std::fs::read(image.built.rootfs.join("work/out/squares.json")).unwrap(),
            )
            .unwrap();
            assert_eq!(squares["9"], 81);
            image.owner("/work/out/nested", 33, 33);
            image.mode("/work/out/nested/digest", 0o640);
            image.symlink("/work/out/nested/squares-link", "../squares.json");
            image.file("/work/major", "3\n");
            image.file("/work/bash-loop", "line 1\nline 2\nline 3\n");
            image.absent("/etc/debian_version");
            image.absent("/work/__pycache__");
            assert_eq!(image.config("WorkingDir"), "/work");
            assert_eq!(
                image.config("Cmd"),
                &json!(["python3", "/work/generate.py", "/tmp/out"])
            );
        }
        "18-debian-users" => {
            // `games` is uid 5 with primary group 60 (`games`); gid 5 is `tty`.
            image.owner("/chown/user-only", 5, 60);
            image.owner("/chown/user-and-group", 5, 60);
            image.owner("/chown/uid-only", 5, 5);
            image.owner("/chown/other-group", 5, 5);
            image.owner("/home/builder/owned.txt", 2000, 2100);
            image.owner("/home/builder/both", 2000, 2100);
            image.file(
                "/home/builder/id.txt",
                "uid=2000(builder) gid=2100(builders) groups=2100(builders)\n",
            );
            image.file("/home/builder/home.txt", "/home/builder\n");
            assert_eq!(image.children("/usr/share/doc"), ["README"]);
            assert_eq!(image.config("User"), "builder");
        }
        "19-parser" => {
            image.file("/parsed/backslash", "C:\\path\\kept\n");
            image.file("/parsed/continued", "continued\n");
            image.file("/parsed/env", "a  b|c\n");
            image.file("/parsed/file.txt", "parsed\n");
            assert_eq!(image.config("Cmd"), &json!(["echo", "C:\\dir"]));
        }
        "20-stage-from-arg" => {
            image.file("/chosen", "fancy\n");
            image.mode("/flavour", 0o600);
        }
        other => panic!("no checks for the case {other}: add them to `check`"),
    }
}

/// Paths buildah leaves in every image whose stage ran a RUN (an empty `/etc/hostname`, its
/// bind-mount target); not content, and Hutch does not mimic them.
const BUILDAH_ARTIFACTS: &[&str] = &["/etc/hostname"];

/// Forgets the empty directories buildah leaves where it made the way to a `RUN --mount`
/// target (`/root/.cache` for a cache at `/root/.cache/pip`, `/run/secrets` for a secret):
/// BuildKit removes every directory it made for a mount, the target's parents too, and so does
/// Hutch. Only directories absent from Hutch's tree, above a target the Dockerfile names (or
/// `/run/secrets/ID`), and left empty once these are gone.
fn drop_made_mount_parents(
    case: &Path,
    ours: &BTreeMap<PathBuf, Node>,
    reference: &mut BTreeMap<PathBuf, Node>,
) {
    let dockerfile = std::fs::read_to_string(case.join("Dockerfile")).unwrap();
    let mut targets: Vec<PathBuf> = Vec::new();
    for flag in dockerfile.split_whitespace() {
        let Some(spec) = flag.strip_prefix("--mount=") else {
            continue;
        };
        let field = |name: &str| {
            spec.split(',')
                .find_map(|kv| kv.strip_prefix(name).and_then(|v| v.strip_prefix('=')))
        };
        match (field("target").or(field("dst")), field("type"), field("id")) {
            (Some(target), _, _) => targets.push(target.into()),
            (None, Some("secret"), Some(id)) => targets.push(Path::new("/run/secrets").join(id)),
            _ => {}
        }
    }
    let mut parents: Vec<PathBuf> = targets
        .iter()
        .flat_map(|t| t.ancestors().skip(1).map(Path::to_path_buf))
        .filter(|p| p != Path::new("/") && !ours.contains_key(p))
        .collect();
    // Deepest first, so a parent is judged after its children went.
    parents.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    parents.dedup();
    for parent in parents {
        let empty = !reference
            .keys()
            .any(|k| k != &parent && k.starts_with(&parent));
        if empty && reference.get(&parent).is_some_and(|n| n.kind == Kind::Dir) {
            reference.remove(&parent);
        }
    }
}

/// Builds `case` with `hutch image build` into `home`'s store; returns the image name, or
/// the build's stderr on failure.
fn hutch_build(
    home: &common::Home,
    case: &Path,
    registry: &Registry,
    host: &TestHost,
) -> Result<String, String> {
    let name = format!(
        "corpus/{}:1",
        case.file_name().unwrap().to_string_lossy().to_lowercase()
    );
    let mut cmd = home.hutch();
    cmd.args([
        "image",
        "build",
        "--insecure-registry",
        &registry.host(),
        "-t",
        &name,
    ])
    .arg("--build-arg")
    .arg(format!("REGISTRY={}", registry.host()));
    for (k, v) in case_args(case, host) {
        cmd.arg("--build-arg").arg(format!("{k}={v}"));
    }
    for secret in case_secrets(case, case) {
        cmd.arg("--secret").arg(secret);
    }
    cmd.env(SECRET_ENV.0, SECRET_ENV.1);
    let out = cmd
        .arg(case)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    if out.status.success() {
        Ok(name)
    } else {
        Err(common::stderr(&out))
    }
}

fn config_of(home: &common::Home, name: &str) -> serde_json::Value {
    let store = hutch_store::Store::open(&home.path().join("store")).unwrap();
    let image = store.image(name).unwrap();
    let bytes = std::fs::read(store.blob_file(&image.id)).unwrap();
    let config: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    config["config"].clone()
}

/// The parts of an image config both builders must agree on.
fn comparable(config: &serde_json::Value) -> serde_json::Value {
    let empty_is_null = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) if s.is_empty() => serde_json::Value::Null,
        serde_json::Value::Array(a) if a.is_empty() => serde_json::Value::Null,
        other => other.clone(),
    };
    // buildah signs its images with its version; not content.
    let mut labels = config["Labels"].clone();
    if let Some(map) = labels.as_object_mut() {
        map.remove("io.buildah.version");
    }
    let empty_map_is_null = |v: &serde_json::Value| match v {
        serde_json::Value::Object(m) if m.is_empty() => serde_json::Value::Null,
        other => other.clone(),
    };
    json!({
        "Env": config["Env"],
        "WorkingDir": empty_is_null(&config["WorkingDir"]),
        "User": empty_is_null(&config["User"]),
        "Entrypoint": empty_is_null(&config["Entrypoint"]),
        "Cmd": empty_is_null(&config["Cmd"]),
        "Labels": empty_map_is_null(&labels),
        "ExposedPorts": empty_map_is_null(&config["ExposedPorts"]),
        "StopSignal": empty_is_null(&config["StopSignal"]),
        "Volumes": empty_map_is_null(&config["Volumes"]),
    })
}

#[test]
fn hutch_builds_equal_buildah_builds() {
    let registry = corpus_registry();
    let host = corpus_test_host();
    let home = common::Home::private();
    let cases = cases();
    at_least(&cases, 45);
    let reference: Vec<Result<Built, String>> = in_parallel(&cases, |case| {
        try_buildah_build(
            case,
            &registry,
            &case_args(case, &host)
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect::<Vec<_>>(),
        )
    });
    let mut failures = Vec::new();
    let scratch = tempfile::tempdir_in("/tmp").unwrap();
    for (case, theirs) in cases.iter().zip(reference) {
        let label = case.file_name().unwrap().to_string_lossy().to_string();
        let theirs = theirs.unwrap_or_else(|e| panic!("{label}: buildah failed: {e}"));
        let name = match hutch_build(&home, case, &registry, &host) {
            Ok(name) => name,
            Err(e) => {
                failures.push(format!("{label}: hutch image build failed:\n{e}"));
                continue;
            }
        };
        let merged = common::tree::Merged::mount(&home, &name, &scratch.path().join(&label));
        let mut ours = tree::snapshot(&merged.0);
        let mut reference = tree::snapshot(&theirs.rootfs);
        for path in BUILDAH_ARTIFACTS {
            ours.remove(Path::new(path));
            reference.remove(Path::new(path));
        }
        drop_made_mount_parents(case, &ours, &mut reference);
        let differences = tree::diff(&ours, &reference);
        if !differences.is_empty() {
            failures.push(format!(
                "{label}: rootfs differs (hutch vs buildah):\n  {}",
                differences.join("\n  ")
            ));
        }
        let (a, b) = (
            comparable(&config_of(&home, &name)),
            comparable(&theirs.config),
        );
        if a != b {
            failures.push(format!(
                "{label}: config differs:\n  hutch:   {a}\n  buildah: {b}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n\n")
    );
}

#[test]
fn bad_builds_fail_naming_the_line_and_register_nothing() {
    let registry = corpus_registry();
    let host = corpus_test_host();
    let home = common::Home::private();
    let mut failures = Vec::new();
    for case in bad_cases() {
        let label = case.file_name().unwrap().to_string_lossy().to_string();
        let expected = expected_failure(&case);
        match hutch_build(&home, &case, &registry, &host) {
            Ok(name) => failures.push(format!("{label}: built {name}, expected a failure")),
            Err(stderr) => {
                let line = format!("Dockerfile:{}:", expected.line);
                if !stderr.contains(&expected.error) || !stderr.contains(&line) {
                    failures.push(format!(
                        "{label}: expected {:?} at {line}, got:\n{stderr}",
                        expected.error
                    ));
                }
            }
        }
        // Nothing half-registered: no image of that case's name.
        let name = format!("corpus/{}:1", label.to_lowercase());
        let store = hutch_store::Store::open(&home.path().join("store")).unwrap();
        assert!(
            store.image(&name).is_err(),
            "{label}: {name} was registered"
        );
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
