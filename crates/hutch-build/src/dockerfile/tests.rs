use super::*;

fn s(v: &str) -> String {
    v.to_string()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn copy(sources: &[&str], dest: &str) -> Kind {
    Kind::Copy {
        sources: strings(sources),
        heredocs: Vec::new(),
        dest: s(dest),
        from: None,
        chown: None,
        chmod: None,
        options: CopyOptions::default(),
    }
}

fn run(command: Command) -> Kind {
    Kind::Run(Run {
        command,
        heredocs: Vec::new(),
        network: None,
        mounts: Vec::new(),
    })
}

fn arg(name: &str, default: Option<&str>, line: usize) -> ArgDecl {
    ArgDecl {
        name: s(name),
        default: default.map(s),
        line,
    }
}

fn config(instruction: &str, args: &str, setting: Setting) -> Kind {
    Kind::Config {
        instruction: s(instruction),
        args: s(args),
        setting,
    }
}

/// Each case is one instruction on line 2, after `FROM scratch`.
#[test]
fn instructions() {
    use Command::{Exec, Shell};
    let cases: Vec<(&str, Kind)> = vec![
        ("RUN echo hi", run(Shell(s("echo hi")))),
        (
            "run   echo   $HOME \"q\"  ",
            run(Shell(s("echo   $HOME \"q\""))),
        ),
        ("RUN a \\\n  && b", run(Shell(s("a   && b")))),
        (
            "RUN [\"echo\", \"hi there\"]",
            run(Exec(strings(&["echo", "hi there"]))),
        ),
        ("RUN [ \"echo\" ]  ", run(Exec(strings(&["echo"])))),
        ("RUN []", run(Exec(vec![]))),
        ("RUN [\"echo\", 'hi']", run(Shell(s("[\"echo\", 'hi']")))),
        ("RUN [echo]", run(Shell(s("[echo]")))),
        ("RUN [\"a\"] extra", run(Shell(s("[\"a\"] extra")))),
        ("RUN echo $((1<<3))", run(Shell(s("echo $((1<<3))")))),
        ("RUN cat <<<word", run(Shell(s("cat <<<word")))),
        ("CMD [\"a\", \"b\"]", Kind::Cmd(Exec(strings(&["a", "b"])))),
        ("CMD", Kind::Cmd(Shell(s("")))),
        (
            "Entrypoint exec foo --bar",
            Kind::Entrypoint(Shell(s("exec foo --bar"))),
        ),
        ("COPY a b /dest/", copy(&["a", "b"], "/dest/")),
        (
            "copy [\"a b\", \"c\", \"/d e/\"]",
            copy(&["a b", "c"], "/d e/"),
        ),
        ("COPY \"a b\" /d", copy(&["\"a", "b\""], "/d")),
        ("COPY $SRC ${DEST}", copy(&["$SRC"], "${DEST}")),
        ("COPY --link a /d", copy(&["a"], "/d")),
        ("COPY --link=FALSE a /d", copy(&["a"], "/d")),
        ("COPY --from= a /d", copy(&["a"], "/d")),
        ("COPY -- --weird /d", copy(&["--weird"], "/d")),
        (
            "COPY --from=build --chown=\"app:app\" --chmod=755 [\"a\", \"/d\"]",
            Kind::Copy {
                sources: strings(&["a"]),
                heredocs: Vec::new(),
                dest: s("/d"),
                from: Some(s("build")),
                chown: Some(s("app:app")),
                chmod: Some(s("755")),
                options: CopyOptions::default(),
            },
        ),
        (
            "ADD --chown=1 --chmod=644 --link http://x/y /d",
            Kind::Add {
                sources: strings(&["http://x/y"]),
                heredocs: Vec::new(),
                dest: s("/d"),
                chown: Some(s("1")),
                chmod: Some(s("644")),
                options: CopyOptions::default(),
            },
        ),
        (
            "ENV a=1 b=\"x y\" c='$z' d=",
            Kind::Env(vec![
                (s("a"), s("1")),
                (s("b"), s("\"x y\"")),
                (s("c"), s("'$z'")),
                (s("d"), s("")),
            ]),
        ),
        ("ENV a 1  \"2\"", Kind::Env(vec![(s("a"), s("1  \"2\""))])),
        ("ENV a=x\\ y", Kind::Env(vec![(s("a"), s("x\\ y"))])),
        ("ENV a=b=c", Kind::Env(vec![(s("a"), s("b=c"))])),
        (
            "ARG a b=2 c= d=\"x y\"",
            Kind::Arg(vec![
                arg("a", None, 2),
                arg("b", Some("2"), 2),
                arg("c", Some(""), 2),
                arg("d", Some("\"x y\""), 2),
            ]),
        ),
        ("WORKDIR /a b", Kind::Workdir(s("/a b"))),
        ("WORKDIR \"/x y\"", Kind::Workdir(s("\"/x y\""))),
        ("USER app:app", Kind::User(s("app:app"))),
        (
            "EXPOSE 80/tcp  443",
            config(
                "EXPOSE",
                "80/tcp  443",
                Setting::Expose(strings(&["80/tcp", "443"])),
            ),
        ),
        (
            "healthcheck --interval=5s --retries=3 --start-period=1m30s CMD true",
            config(
                "HEALTHCHECK",
                "--interval=5s --retries=3 --start-period=1m30s CMD true",
                Setting::Healthcheck(Some(Healthcheck {
                    test: Shell(s("true")),
                    interval: 5_000_000_000,
                    timeout: 0,
                    start_period: 90_000_000_000,
                    start_interval: 0,
                    retries: 3,
                })),
            ),
        ),
        (
            "HEALTHCHECK --timeout=250ms CMD [\"curl\", \"-f\", \"x\"]",
            config(
                "HEALTHCHECK",
                "--timeout=250ms CMD [\"curl\", \"-f\", \"x\"]",
                Setting::Healthcheck(Some(Healthcheck {
                    test: Exec(strings(&["curl", "-f", "x"])),
                    interval: 0,
                    timeout: 250_000_000,
                    start_period: 0,
                    start_interval: 0,
                    retries: 0,
                })),
            ),
        ),
        (
            "HEALTHCHECK none",
            config("HEALTHCHECK", "none", Setting::Healthcheck(None)),
        ),
        (
            "LABEL a=b \"c d\"=e",
            config(
                "LABEL",
                "a=b \"c d\"=e",
                Setting::Labels(vec![(s("a"), s("b")), (s("\"c d\""), s("e"))]),
            ),
        ),
        (
            "LABEL legacy some value",
            config(
                "LABEL",
                "legacy some value",
                Setting::Labels(vec![(s("legacy"), s("some value"))]),
            ),
        ),
        (
            "MAINTAINER me <me@x>",
            config(
                "MAINTAINER",
                "me <me@x>",
                Setting::Maintainer(s("me <me@x>")),
            ),
        ),
        (
            "ONBUILD RUN make",
            config("ONBUILD", "RUN make", Setting::OnBuild(s("RUN make"))),
        ),
        (
            "SHELL [\"bash\", \"-c\"]",
            config(
                "SHELL",
                "[\"bash\", \"-c\"]",
                Setting::Shell(strings(&["bash", "-c"])),
            ),
        ),
        (
            "STOPSIGNAL SIGKILL",
            config("STOPSIGNAL", "SIGKILL", Setting::StopSignal(s("SIGKILL"))),
        ),
        (
            "VOLUME /a [b",
            config("VOLUME", "/a [b", Setting::Volumes(strings(&["/a", "[b"]))),
        ),
        (
            "VOLUME [\"/x y\", \"/z\"]",
            config(
                "VOLUME",
                "[\"/x y\", \"/z\"]",
                Setting::Volumes(strings(&["/x y", "/z"])),
            ),
        ),
    ];
    for (text, want) in cases {
        let parsed =
            parse(&format!("FROM scratch\n{text}")).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        let got: Vec<Instruction> = parsed
            .stages
            .into_iter()
            .flat_map(|s| s.instructions)
            .collect();
        assert_eq!(
            got,
            vec![Instruction {
                line: 2,
                kind: want
            }],
            "{text:?}"
        );
    }
}

#[test]
fn errors() {
    let not_strings = "when using JSON array syntax, arrays must be comprised of strings only";
    let copy_args = "COPY requires at least two arguments, but only one was provided. \
                     Destination could not be determined.";
    let cases: &[(&str, usize, &str)] = &[
        ("", 1, "file with no instructions"),
        ("# only a comment\n\n  \n", 1, "file with no instructions"),
        (
            "ARG a\n\nARG b",
            3,
            "no FROM instruction: a Dockerfile needs at least one build stage",
        ),
        (
            "RUN x\nFROM a",
            1,
            "RUN before the first FROM: only ARG may come before FROM",
        ),
        (
            "LABEL a=b\nFROM a",
            1,
            "LABEL before the first FROM: only ARG may come before FROM",
        ),
        ("foo bar", 1, "unknown instruction: FOO"),
        ("FROM a\n\nFooBar x", 3, "unknown instruction: FOOBAR"),
        ("FROM a\nCOPY a", 2, copy_args),
        ("FROM a\nCOPY [\"a\"]", 2, copy_args),
        ("FROM a\nCOPY", 2, copy_args),
        (
            "FROM a\nADD a",
            2,
            "ADD requires at least two arguments, but only one was provided. \
             Destination could not be determined.",
        ),
        (
            "FROM a\nCOPY --bogus a b",
            2,
            "unknown flag for COPY: --bogus",
        ),
        (
            "FROM a\nCOPY --checksum=sha256:00 a b",
            2,
            "unknown flag for COPY: --checksum",
        ),
        (
            "FROM a\nADD --keep-git-dir https://x/y.git /d",
            2,
            "ADD --keep-git-dir: Git sources are not supported by this builder; clone in a RUN step (RUN steps have a network)",
        ),
        (
            "FROM a\nADD --checksum=md5:00 https://x/y /d",
            2,
            "ADD --checksum=md5:00: expected sha256:<64 hex digits>",
        ),
        (
            "FROM a\nCOPY --exclude= a b",
            2,
            "missing a value on flag --exclude",
        ),
        (
            "FROM a\nADD --from=x a b",
            2,
            "unknown flag for ADD: --from",
        ),
        (
            "FROM a\nADD --parents a b",
            2,
            "unknown flag for ADD: --parents",
        ),
        (
            "FROM a\nCOPY --from a b",
            2,
            "missing a value on flag --from",
        ),
        (
            "FROM a\nCOPY --link= a b",
            2,
            "missing a value on flag --link",
        ),
        (
            "FROM a\nCOPY --link=Maybe a b",
            2,
            "expecting boolean value for flag --link, not: Maybe",
        ),
        (
            "FROM a\nCOPY --from=a --from=b a b",
            2,
            "duplicate flag specified: --from",
        ),
        (
            "FROM a\nRUN --mount=type=ssh make",
            2,
            "--mount=type=ssh: type=ssh is not supported: build steps get no SSH agent; give a key or token with --secret and RUN --mount=type=secret",
        ),
        (
            "FROM a\nRUN --mount=type=cache make",
            2,
            "--mount=type=cache: a target is required",
        ),
        (
            "FROM a\nRUN --mount=type=cache,target=/x,sharing=sometimes make",
            2,
            "--mount=type=cache,target=/x,sharing=sometimes: unknown sharing mode \"sometimes\"",
        ),
        (
            "FROM a\nRUN --mount=type=bind,target=/x,colour=red make",
            2,
            "--mount=type=bind,target=/x,colour=red: unknown field \"colour\"",
        ),
        (
            "FROM a\nRUN --mount=type=secret make",
            2,
            "--mount=type=secret: a secret mount needs an id",
        ),
        (
            "FROM a\nRUN --security=insecure make",
            2,
            "RUN --security=insecure is not supported: build steps run sandboxed",
        ),
        ("FROM a\nVOLUME", 2, "VOLUME requires at least one argument"),
        (
            "FROM a\nSHELL bash -c",
            2,
            "SHELL requires the arguments to be in JSON form",
        ),
        (
            "FROM a\nSHELL []",
            2,
            "SHELL requires at least one argument",
        ),
        (
            "FROM a\nSTOPSIGNAL A B",
            2,
            "STOPSIGNAL requires exactly one argument",
        ),
        (
            "FROM a\nHEALTHCHECK RUN x",
            2,
            "Unknown type \"RUN\" in HEALTHCHECK (try CMD)",
        ),
        (
            "FROM a\nHEALTHCHECK NONE x",
            2,
            "HEALTHCHECK NONE takes no arguments",
        ),
        (
            "FROM a\nHEALTHCHECK CMD",
            2,
            "Missing command after HEALTHCHECK CMD",
        ),
        (
            "FROM a\nHEALTHCHECK --interval=5 CMD x",
            2,
            "--interval=5: invalid duration \"5\"",
        ),
        (
            "FROM a\nHEALTHCHECK --interval=10us CMD x",
            2,
            "--interval=10us: a duration cannot be less than 1ms",
        ),
        (
            "FROM a\nHEALTHCHECK --retries=-1 CMD x",
            2,
            "--retries=-1: expected a whole number of at least 0",
        ),
        (
            "FROM a\nONBUILD ONBUILD RUN x",
            2,
            "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
        ),
        (
            "FROM a\nONBUILD FROM x",
            2,
            "FROM isn't allowed as an ONBUILD trigger",
        ),
        ("FROM a\nONBUILD BOGUS x", 2, "unknown instruction: BOGUS"),
        ("FROM a\nLABEL", 2, "LABEL requires at least one argument"),
        ("FROM a\nEXPOSE", 2, "EXPOSE requires at least one argument"),
        (
            "FROM a\nRUN --network=host make",
            2,
            "RUN --network=host is not supported: a build step gets a sandbox network of its own (default) or none",
        ),
        (
            "FROM a\nRUN --network=bridge make",
            2,
            "RUN --network=bridge: expected default or none",
        ),
        (
            "FROM a\nCOPY <<EOF\nx\nEOF",
            2,
            "COPY requires at least two arguments, but only one was provided. Destination could not be determined.",
        ),
        (
            "FROM a\nRUN cat <<EOF\nno end",
            2,
            "unterminated heredoc <<EOF: no line \"EOF\" ends it",
        ),
        ("FROM a\nCMD --help", 2, "unknown flag for CMD: --help"),
        ("FROM a\nENV --x=1 a=b", 2, "unknown flag for ENV: --x"),
        ("FROM a\nRUN [\"a\", 1]", 2, not_strings),
        ("FROM a\nCOPY [\"a\", null, \"/d\"]", 2, not_strings),
        ("FROM", 1, "FROM requires either one or three arguments"),
        ("FROM a b", 1, "FROM requires either one or three arguments"),
        (
            "FROM a AS",
            1,
            "FROM requires either one or three arguments",
        ),
        (
            "FROM a to b",
            1,
            "FROM requires either one or three arguments",
        ),
        (
            "FROM a AS 1x",
            1,
            "invalid name for build stage: \"1x\", name can't start with a number or contain symbols",
        ),
        (
            "FROM a AS b$c",
            1,
            "invalid name for build stage: \"b$c\", name can't start with a number or contain symbols",
        ),
        ("FROM --platform a", 1, "missing a value on flag --platform"),
        ("FROM --bogus=1 a", 1, "unknown flag for FROM: --bogus"),
        (
            "FROM a AS x\nRUN y\nFROM b AS X",
            3,
            "duplicate stage name \"x\" (first defined on line 1)",
        ),
        ("FROM a\nENV", 2, "ENV requires at least one argument"),
        ("FROM a\nENV a", 2, "ENV must have two arguments"),
        (
            "FROM a\nENV a=1 b",
            2,
            "Syntax error - can't find = in \"b\". Must be of the form: name=value",
        ),
        ("FROM a\nENV =1", 2, "ENV names can not be blank"),
        ("FROM a\nARG", 2, "ARG requires at least one argument"),
        ("FROM a\nARG =x", 2, "ARG names can not be blank"),
        (
            "FROM a\nWORKDIR",
            2,
            "WORKDIR requires exactly one argument",
        ),
        ("FROM a\nUSER   ", 2, "USER requires exactly one argument"),
        (
            "# escape=x\nFROM a",
            1,
            "invalid escape token 'x' does not match ` or \\",
        ),
    ];
    for &(text, line, message) in cases {
        let want = ParseError {
            line,
            message: s(message),
        };
        assert_eq!(parse(text), Err(want), "{text:?}");
    }
}

#[test]
fn whole_file_structure() {
    let text = "\
# syntax=docker/dockerfile:1
# escape=`

ARG BASE=alpine
ARG VERSION

# build stage
FROM --platform=$BUILDPLATFORM ${BASE}:${VERSION} AS Build
RUN make `
    all
COPY . /src

from build as test
  # indented comment
  RUN make test

FROM scratch
COPY --from=build /out/app /app
";
    let want = Dockerfile {
        global_args: vec![arg("BASE", Some("alpine"), 4), arg("VERSION", None, 5)],
        escape: '`',
        stages: vec![
            Stage {
                base: s("${BASE}:${VERSION}"),
                name: Some(s("build")),
                platform: Some(s("$BUILDPLATFORM")),
                line: 8,
                instructions: vec![
                    Instruction {
                        line: 9,
                        kind: run(Command::Shell(s("make     all"))),
                    },
                    Instruction {
                        line: 11,
                        kind: copy(&["."], "/src"),
                    },
                ],
            },
            Stage {
                base: s("build"),
                name: Some(s("test")),
                platform: None,
                line: 13,
                instructions: vec![Instruction {
                    line: 15,
                    kind: run(Command::Shell(s("make test"))),
                }],
            },
            Stage {
                base: s("scratch"),
                name: None,
                platform: None,
                line: 17,
                instructions: vec![Instruction {
                    line: 18,
                    kind: Kind::Copy {
                        sources: strings(&["/out/app"]),
                        heredocs: Vec::new(),
                        dest: s("/app"),
                        from: Some(s("build")),
                        chown: None,
                        chmod: None,
                        options: CopyOptions::default(),
                    },
                }],
            },
        ],
    };
    assert_eq!(parse(text), Ok(want));
}

#[test]
fn parse_error_display_names_the_line() {
    let err = parse("FROM a\n\nNOPE x").unwrap_err();
    assert_eq!(err.to_string(), "line 3: unknown instruction: NOPE");
}

#[test]
fn serde_round_trip() {
    let parsed = parse("ARG A=1\nFROM x AS y\nENV k=v\nCMD [\"a\"]\nEXPOSE 80").unwrap();
    let json = serde_json::to_string(&parsed).unwrap();
    assert_eq!(serde_json::from_str::<Dockerfile>(&json).unwrap(), parsed);
}

#[test]
fn heredocs_in_run_copy_and_add() {
    let parsed = parse(
        "FROM a\n\
         RUN --network=none <<EOF\necho $HOME\nEOF\n\
         RUN 3<<-'X' cat \\\n  <<Y\n\tx\n\tX\ny\nY\n\
         COPY --chmod=600 <<a.conf <<\"b.sh\" ctx.txt /etc/\nA=$V\na.conf\nB\nb.sh\n\
         ADD <<EOF /x\nhi\nEOF\n\
         RUN [\"echo\", \"<<EOF\"]\n",
    )
    .unwrap();
    let kinds: Vec<&Kind> = parsed.stages[0]
        .instructions
        .iter()
        .map(|i| &i.kind)
        .collect();
    let heredoc = |word: &str, name: &str, content: &str, expand: bool, chomp: bool| Heredoc {
        word: s(word),
        name: s(name),
        content: s(content),
        expand,
        chomp,
    };
    assert_eq!(
        kinds[0],
        &Kind::Run(Run {
            command: Command::Shell(s("<<EOF")),
            heredocs: vec![heredoc("<<EOF", "EOF", "echo $HOME\n", true, false)],
            network: Some(RunNetwork::None),
            mounts: Vec::new(),
        })
    );
    assert_eq!(
        kinds[1],
        &Kind::Run(Run {
            command: Command::Shell(s("3<<-'X' cat   <<Y")),
            heredocs: vec![
                heredoc("3<<-'X'", "X", "\tx\n", false, true),
                heredoc("<<Y", "Y", "y\n", true, false)
            ],
            network: None,
            mounts: Vec::new(),
        })
    );
    assert_eq!(
        kinds[2],
        &Kind::Copy {
            sources: strings(&["ctx.txt"]),
            heredocs: vec![
                heredoc("<<a.conf", "a.conf", "A=$V\n", true, false),
                heredoc("<<\"b.sh\"", "b.sh", "B\n", false, false)
            ],
            dest: s("/etc/"),
            from: None,
            chown: None,
            chmod: Some(s("600")),
            options: CopyOptions::default(),
        }
    );
    assert!(
        matches!(kinds[3], Kind::Add { sources, heredocs, .. } if sources.is_empty() && heredocs.len() == 1)
    );
    // JSON form: a quoted "<<EOF" is an argument, not a heredoc.
    assert_eq!(kinds[4], &run(Command::Exec(strings(&["echo", "<<EOF"]))));
    assert_eq!(parsed.stages[0].instructions[2].line, 11);
    assert_eq!(parsed.stages[0].instructions[4].line, 19);
}

#[test]
fn run_mounts() {
    let parsed = parse(
        "FROM a\n\
         RUN --mount=type=cache,target=/root/.cache/pip,id=pip,sharing=locked,mode=0700,uid=1000,gid=1000 \
             --mount=type=bind,source=req.txt,target=/tmp/req.txt,from=build,rw \
             --mount=type=tmpfs,target=/scratch,size=64m \
             --mount=type=secret,target=/run/secrets/token,required \
             --mount=target=/ctx \
             --network=none pip install\n",
    )
    .unwrap();
    let Kind::Run(run) = &parsed.stages[0].instructions[0].kind else {
        panic!("not a RUN");
    };
    assert_eq!(run.network, Some(RunNetwork::None));
    assert_eq!(run.command, Command::Shell(s("pip install")));
    assert_eq!(
        run.mounts,
        vec![
            RunMount {
                kind: MountType::Cache,
                target: Some(s("/root/.cache/pip")),
                id: Some(s("pip")),
                sharing: Sharing::Locked,
                mode: Some(0o700),
                uid: Some(1000),
                gid: Some(1000),
                ..RunMount::default()
            },
            RunMount {
                kind: MountType::Bind,
                target: Some(s("/tmp/req.txt")),
                source: Some(s("req.txt")),
                from: Some(s("build")),
                read_only: Some(false),
                ..RunMount::default()
            },
            RunMount {
                kind: MountType::Tmpfs,
                target: Some(s("/scratch")),
                size: Some(64 << 20),
                ..RunMount::default()
            },
            RunMount {
                kind: MountType::Secret,
                target: Some(s("/run/secrets/token")),
                id: Some(s("token")),
                required: true,
                ..RunMount::default()
            },
            RunMount {
                target: Some(s("/ctx")),
                ..RunMount::default()
            },
        ]
    );
}
