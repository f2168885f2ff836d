//! `hutch image build` with what real Dockerfiles use: RUN steps with a network (a sandbox
//! network of their own, as in Docker; `--network none` and `RUN --network=none` take it
//! away) and BuildKit heredocs in RUN and COPY. "The internet" is a test host in a namespace
//! the test creates (TEST-NET-3); nothing here sends traffic anywhere else.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;

use common::testnet::TestHost;
use common::{Home, stderr, stdout};

const GREETING: &[u8] = b"hello from the test net\n";

fn build(home: &Home, context: &Path, extra: &[&str], tag: &str) -> std::process::Output {
    let mut args = vec!["image", "build", "-t", tag];
    args.extend_from_slice(extra);
    args.push(context.to_str().unwrap());
    home.hutch()
        // No resolver of the host's is ever asked: the build's sandboxes get the test host's.
        .env("HUTCH_SANDBOX_DNS", "203.0.113.250")
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn context_with(dockerfile: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    dir
}

/// `cat` of `path` in a sandbox of `image`.
fn cat(home: &Home, image: &str, path: &str) -> String {
    let out = home.run(&["run", image, "--", "cat", path]);
    assert!(out.status.success(), "cat {path}: {}", stderr(&out));
    stdout(&out)
}

#[test]
fn run_steps_reach_the_network_by_default_and_not_when_told_not_to() {
    let host = TestHost::start(&[("hello.txt", GREETING)]);
    // A store of its own: a step cached by an earlier run would prove nothing.
    let home = Home::private_with(&["busybox"]);
    let url = host.url("hello.txt");

    // Docker's default: RUN has a network.
    let ctx = context_with(&format!(
        "FROM busybox\nRUN wget -q -O /fetched.txt {url}\n"
    ));
    let out = build(&home, ctx.path(), &[], "net-default:1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        cat(&home, "net-default:1", "/fetched.txt").as_bytes(),
        GREETING
    );

    // `--network none`: the same step fails, naming its line, and no image is made.
    let ctx = context_with(&format!(
        "FROM busybox\nRUN echo again && wget -q -T 5 -O /fetched.txt {url}\n"
    ));
    let out = build(&home, ctx.path(), &["--network", "none"], "net-none:1");
    assert!(!out.status.success(), "fetched with --network none");
    assert!(stderr(&out).contains(":2"), "{}", stderr(&out));
    assert!(
        !home
            .run(&["run", "net-none:1", "--", "true"])
            .status
            .success()
    );

    // `RUN --network=none` for one step only; `--network=default` is the build's network.
    let ctx = context_with(&format!(
        "FROM busybox\n\
         RUN --network=default wget -q -O /a.txt {url}\n\
         RUN --network=none if wget -q -T 5 -O /b.txt {url}; then echo reached; exit 1; fi\n\
         RUN --network=none ip -o link | grep -v ' lo' | wc -l > /links\n"
    ));
    let out = build(&home, ctx.path(), &[], "net-step:1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cat(&home, "net-step:1", "/a.txt").as_bytes(), GREETING);
    assert_eq!(cat(&home, "net-step:1", "/links").trim(), "0");

    // The step cache knows a step's network: the same RUN without one is a new step.
    let ctx = context_with(&format!(
        "FROM busybox\nRUN wget -q -O /fetched.txt {url}\n"
    ));
    let out = build(&home, ctx.path(), &["--network", "none"], "net-none:2");
    assert!(
        !out.status.success(),
        "a cached step with a network was reused"
    );

    // A RUN step is fenced like any sandbox: a service listening on all of the host's
    // addresses is not reachable through the host's end of the step's link.
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let ctx = context_with(&format!(
        "FROM busybox\nRUN gw=$(ip route | awk '/default/ {{print $3}}') && test -n \"$gw\" && \
         if nc -w 3 $gw {port} </dev/null; then echo reached-the-host; exit 1; fi\n"
    ));
    let out = build(&home, ctx.path(), &[], "net-fence:1");
    assert!(out.status.success(), "{}", stderr(&out));
    drop(listener);
}

#[test]
fn a_network_flag_the_builder_cannot_honour_is_refused_clearly() {
    let home = Home::new();
    home.ensure_image("busybox");
    for (line, want) in [
        (
            "RUN --network=host true",
            "RUN --network=host is not supported",
        ),
        ("RUN --network=bridge true", "expected default or none"),
    ] {
        let ctx = context_with(&format!("FROM busybox\n{line}\n"));
        let out = build(&home, ctx.path(), &[], "net-bad:1");
        assert!(!out.status.success(), "{line}");
        assert!(stderr(&out).contains(want), "{line}: {}", stderr(&out));
    }
    let ctx = context_with("FROM --platform=linux/arm64 busybox\nRUN true\n");
    let out = build(&home, ctx.path(), &[], "plat:1");
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("FROM --platform=linux/arm64: this builder makes linux/amd64 images only"),
        "{}",
        stderr(&out)
    );
    // The automatic platform ARGs name what it makes, in FROM and (declared) in a stage.
    let ctx = context_with(
        "ARG TARGETPLATFORM\nFROM --platform=$TARGETPLATFORM busybox\nARG TARGETARCH\n\
         RUN echo \"$TARGETARCH $TARGETPLATFORM\" > /arch\n",
    );
    let out = build(&home, ctx.path(), &["--network", "none"], "plat:2");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cat(&home, "plat:2", "/arch"), "amd64 \n");
}

#[test]
fn heredocs_in_run_and_copy_behave_as_in_buildkit() {
    let home = Home::private_with(&["busybox"]);
    let ctx = context_with(
        "FROM busybox\n\
         ARG NAME=world\n\
         ENV GREETING=hello\n\
         RUN <<EOF\n\
         echo \"$GREETING\" > /one\n\
         echo two >> /one\n\
         EOF\n\
         RUN <<-EOT\n\
         \techo tabs-stripped > /two\n\
         \tEOT\n\
         RUN cat <<A > /three && cat <<'B' >> /three\n\
         first $GREETING\n\
         A\n\
         second $GREETING\n\
         B\n\
         RUN <<SCRIPT\n\
         #!/bin/sh\n\
         echo \"ran as $0\" > /four\n\
         SCRIPT\n\
         COPY <<conf.txt <<'raw.txt' /etc/app/\n\
         name=$NAME greeting=${GREETING}\n\
         \"quoted\" \\$HOME\n\
         conf.txt\n\
         name=$NAME\n\
         raw.txt\n\
         COPY --chmod=0750 <<EOF /usr/local/bin/hi\n\
         #!/bin/sh\n\
         echo hi\n\
         EOF\n\
         CMD [\"hi\"]\n",
    );
    let out = build(&home, ctx.path(), &["--network", "none"], "heredocs:1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cat(&home, "heredocs:1", "/one"), "hello\ntwo\n");
    assert_eq!(cat(&home, "heredocs:1", "/two"), "tabs-stripped\n");
    assert_eq!(
        cat(&home, "heredocs:1", "/three"),
        "first hello\nsecond $GREETING\n"
    );
    // The `#!` script ran from a file outside the image's tree.
    assert_eq!(
        cat(&home, "heredocs:1", "/four"),
        "ran as /dev/pipes/SCRIPT\n"
    );
    assert_eq!(
        cat(&home, "heredocs:1", "/etc/app/conf.txt"),
        "name=world greeting=hello\n\"quoted\" $HOME\n"
    );
    assert_eq!(cat(&home, "heredocs:1", "/etc/app/raw.txt"), "name=$NAME\n");
    let modes = home.run(&[
        "run",
        "heredocs:1",
        "--",
        "stat",
        "-c",
        "%a %u:%g %n",
        "/etc/app/conf.txt",
        "/usr/local/bin/hi",
    ]);
    assert_eq!(
        stdout(&modes),
        "644 0:0 /etc/app/conf.txt\n750 0:0 /usr/local/bin/hi\n",
        "{}",
        stderr(&modes)
    );
    let ran = home.run(&["run", "heredocs:1"]);
    assert_eq!(stdout(&ran), "hi\n", "{}", stderr(&ran));
    let pipes = home.run(&["run", "heredocs:1", "--", "ls", "/dev/pipes"]);
    assert!(
        !pipes.status.success() || stdout(&pipes).is_empty(),
        "{}",
        stdout(&pipes)
    );

    // The cache keys on the bodies: a changed body is a new step.
    let changed = std::fs::read_to_string(ctx.path().join("Dockerfile"))
        .unwrap()
        .replace("echo two >> /one", "echo TWO >> /one");
    std::fs::write(ctx.path().join("Dockerfile"), changed).unwrap();
    let out = build(&home, ctx.path(), &["--network", "none"], "heredocs:2");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(cat(&home, "heredocs:2", "/one"), "hello\nTWO\n");
}

#[test]
fn hostile_heredocs_get_clear_errors() {
    let home = Home::new();
    home.ensure_image("busybox");
    let cases = [
        (
            "FROM busybox\nCOPY <<../../etc/passwd /\nroot::0:0::/:/bin/sh\n../../etc/passwd\n",
            "Dockerfile:2: invalid heredoc delimiter \"../../etc/passwd\"",
        ),
        (
            "FROM busybox\nCOPY <<a/b /\nx\na/b\n",
            "invalid heredoc delimiter \"a/b\"",
        ),
        (
            "FROM busybox\nRUN cat <<$(id)\nx\n$(id)\n",
            "invalid heredoc delimiter \"$(id)\"",
        ),
        (
            "FROM busybox\nRUN cat <<EOF\nnever ends\n",
            "Dockerfile:2: unterminated heredoc <<EOF",
        ),
    ];
    for (dockerfile, want) in cases {
        let ctx = context_with(dockerfile);
        let out = build(&home, ctx.path(), &["--network", "none"], "hostile:1");
        assert!(!out.status.success(), "{dockerfile}");
        assert!(
            stderr(&out).contains(want),
            "{dockerfile}: {}",
            stderr(&out)
        );
    }
    // A heredoc named like a symlink that a directory source stages (a named source is
    // followed; a link inside a copied directory stays a link) replaces it in the layer:
    // nothing is written through the link on the host. The link's absolute target is the
    // host path of a context file.
    // A store of its own: a cached step would write nothing at all.
    let home = Home::private_with(&["busybox"]);
    let ctx = context_with("FROM busybox\nCOPY dir/ <<link /d/\nfrom the heredoc\nlink\n");
    let target = ctx.path().join("victim");
    std::fs::write(&target, "untouched\n").unwrap();
    std::fs::create_dir(ctx.path().join("dir")).unwrap();
    std::os::unix::fs::symlink(&target, ctx.path().join("dir/link")).unwrap();
    let out = build(&home, ctx.path(), &["--network", "none"], "hostile:2");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched\n");
    assert_eq!(cat(&home, "hostile:2", "/d/link"), "from the heredoc\n");
}

/// The host's first global IPv4 address.
fn host_address() -> String {
    let out = std::process::Command::new("ip")
        .args(["-4", "-o", "addr", "show", "scope", "global"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap()
        .to_string()
}

#[test]
fn add_of_a_url_downloads_through_the_step_network_and_checks_its_checksum() {
    let host = TestHost::start(&[("hello.txt", GREETING)]);
    let home = Home::private_with(&["busybox"]);
    let url = host.url("hello.txt");
    let sum = format!("sha256:{}", hex_sha256(GREETING));
    let ctx = context_with(&format!(
        "FROM busybox\nADD --checksum={sum} {url} /dl/\nADD --chmod=644 {url} /renamed.txt\n"
    ));
    let out = build(&home, ctx.path(), &[], "add-url:1");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        cat(&home, "add-url:1", "/dl/hello.txt").as_bytes(),
        GREETING
    );
    let modes = home.run(&[
        "run",
        "add-url:1",
        "--",
        "stat",
        "-c",
        "%a %u",
        "/dl/hello.txt",
        "/renamed.txt",
    ]);
    assert_eq!(stdout(&modes), "600 0\n644 0\n", "{}", stderr(&modes));

    // A wrong checksum fails, naming the line and the URL.
    let wrong = format!("sha256:{}", "0".repeat(64));
    let ctx = context_with(&format!(
        "FROM busybox\nADD --checksum={wrong} {url} /dl/\n"
    ));
    let out = build(&home, ctx.path(), &[], "add-url:2");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "Dockerfile:2: ADD {url}: the checksum does not match"
        )),
        "{}",
        stderr(&out)
    );

    // No network, no download.
    let ctx = context_with(&format!("FROM busybox\nADD {url} /dl/\n"));
    let out = build(&home, ctx.path(), &["--network", "none"], "add-url:3");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("the build has no network"),
        "{}",
        stderr(&out)
    );

    // A missing file names the URL and the answer.
    let missing = host.url("nope.txt");
    let ctx = context_with(&format!("FROM busybox\nADD {missing} /dl/\n"));
    let out = build(&home, ctx.path(), &[], "add-url:4");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains(&format!(
            "Dockerfile:2: ADD {missing}: the server answered 404"
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn add_of_a_url_cannot_reach_the_host_s_own_services() {
    // A server on all of the host's addresses: the host itself could fetch from it, a build
    // step must not (an ADD fetched by the host would be a way in).
    let www = tempfile::tempdir().unwrap();
    std::fs::write(www.path().join("secret.txt"), "host-only\n").unwrap();
    // Port 0: the server takes a free port itself and says which (no port released here
    // for another test to take in between).
    let mut server = std::process::Command::new("python3")
        .args(["-u", "-m", "http.server", "0", "--bind", "0.0.0.0"])
        .current_dir(www.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(server.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    // "Serving HTTP on 0.0.0.0 port 43215 (http://0.0.0.0:43215/) ..."
    let port: u16 = line
        .split_whitespace()
        .skip_while(|w| *w != "port")
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {line:?}"));
    // Reachable from the host: the test's own check that the server is up.
    let mut up = false;
    for _ in 0..50 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(up, "the host's test server did not start");
    let home = Home::private_with(&["busybox"]);
    for addr in ["127.0.0.1".to_string(), host_address()] {
        let ctx = context_with(&format!(
            "FROM busybox\nADD http://{addr}:{port}/secret.txt /stolen.txt\n"
        ));
        let out = build(&home, ctx.path(), &[], "ssrf:1");
        assert!(!out.status.success(), "ADD reached the host at {addr}");
        assert!(
            stderr(&out).contains("Dockerfile:2: ADD http://"),
            "{}",
            stderr(&out)
        );
    }
    let _ = server.kill();
    let _ = server.wait();
}

fn hex_sha256(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}
