//! Dockerfile parsing with Docker/BuildKit's rules, into stages of typed instructions.
//!
//! Values are kept exactly as written: nothing is expanded and quotes are not removed, because
//! Docker expands with variables only known while building (ARGs, earlier ENVs, `--build-arg`).
//! The builder runs [`crate::expand::expand`] (with [`Dockerfile::escape`]) over the
//! instructions Docker expands; see that module for which.

mod lines;
#[cfg(test)]
mod tests;
mod words;

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use words::{env_words, extract_flags, is_arg_space, split_whitespace};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dockerfile {
    /// ARGs before the first FROM: usable in FROM lines, and in a stage only if redeclared there.
    pub global_args: Vec<ArgDecl>,
    pub stages: Vec<Stage>,
    /// The escape character chosen by the `# escape=` directive (`\` by default), needed to
    /// expand words with Docker's rules.
    pub escape: char,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArgDecl {
    pub name: String,
    /// As written, quotes included (`ARG A="x y"` keeps `"x y"`): expand before use.
    pub default: Option<String>,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    /// The image or earlier stage, as written (`$VAR`s not expanded).
    pub base: String,
    /// The `AS` name, lowercased.
    pub name: Option<String>,
    pub platform: Option<String>,
    pub line: usize,
    pub instructions: Vec<Instruction>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instruction {
    /// 1-based line where the instruction starts (continuations are part of it).
    pub line: usize,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Kind {
    Run(Run),
    /// `sources` are the context (or `--from`) paths; `heredocs` are files written inline.
    Copy {
        sources: Vec<String>,
        heredocs: Vec<Heredoc>,
        dest: String,
        from: Option<String>,
        chown: Option<String>,
        chmod: Option<String>,
        options: CopyOptions,
    },
    Add {
        sources: Vec<String>,
        heredocs: Vec<Heredoc>,
        dest: String,
        chown: Option<String>,
        chmod: Option<String>,
        options: CopyOptions,
    },
    /// `ENV k=v k2="v 2"` or the legacy `ENV k v w` (value `v w`); keys and values as
    /// written, quotes included: Docker expands both.
    Env(Vec<(String, String)>),
    Arg(Vec<ArgDecl>),
    Workdir(String),
    User(String),
    Entrypoint(Command),
    Cmd(Command),
    /// LABEL, EXPOSE, STOPSIGNAL, VOLUME, HEALTHCHECK, SHELL, ONBUILD and MAINTAINER: they
    /// change the image's config only. `args` is the raw text after the instruction name
    /// (template builds warn with it, as the reference does).
    Config {
        instruction: String,
        args: String,
        setting: Setting,
    },
}

/// What a config-only instruction sets; words as written (the builder expands those Docker
/// expands: LABEL keys and values, EXPOSE, STOPSIGNAL, VOLUME).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Setting {
    Labels(Vec<(String, String)>),
    Expose(Vec<String>),
    StopSignal(String),
    Volumes(Vec<String>),
    /// `None` for `HEALTHCHECK NONE` (disables an inherited check).
    Healthcheck(Option<Healthcheck>),
    Shell(Vec<String>),
    /// The trigger as written after `ONBUILD`.
    OnBuild(String),
    Maintainer(String),
}

/// `HEALTHCHECK [flags] CMD ...`; durations in nanoseconds (0: not given), as the image
/// config stores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthcheck {
    pub test: Command,
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub start_interval: i64,
    pub retries: i64,
}

/// COPY and ADD flags beyond the common ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyOptions {
    /// `--exclude=PATTERN` (repeatable): `.dockerignore`-style patterns left out of the copy.
    pub exclude: Vec<String>,
    /// `--parents`: sources keep their path (from the context root, or from a `/./` in the
    /// source) under the destination.
    pub parents: bool,
    /// `ADD --checksum=sha256:...`.
    pub checksum: Option<String>,
}

/// A RUN instruction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    pub command: Command,
    /// The heredocs the command line opens, in order.
    pub heredocs: Vec<Heredoc>,
    /// `--network=`: the build's choice when unset.
    pub network: Option<RunNetwork>,
    /// `--mount=` (repeatable), in order.
    pub mounts: Vec<RunMount>,
}

/// `RUN --mount=type=...,...` as written (values not expanded yet).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunMount {
    pub kind: MountType,
    /// Where in the step's sandbox (`target`, `dst`, `destination`).
    pub target: Option<String>,
    /// `source`/`src`: a path in the context, the `from` stage or image, or the cache.
    pub source: Option<String>,
    /// A stage name or index, or an image.
    pub from: Option<String>,
    /// A cache's or a secret's id.
    pub id: Option<String>,
    pub sharing: Sharing,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `readonly`/`ro` or `rw`/`readwrite`; each type has its own default.
    pub read_only: Option<bool>,
    /// A tmpfs's size in bytes.
    pub size: Option<u64>,
    /// A secret that must be given to the build.
    pub required: bool,
    /// A secret given as this environment variable rather than a file.
    pub env: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountType {
    #[default]
    Bind,
    Cache,
    Tmpfs,
    Secret,
}

/// How concurrent builds share a cache mount.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sharing {
    #[default]
    Shared,
    Private,
    Locked,
}

/// `RUN --network=`: `default` (the sandbox network under the build's policy) or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RunNetwork {
    None,
    Default,
}

/// A heredoc (`<<EOF` ... `EOF`) of a RUN, COPY or ADD line, as BuildKit reads them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heredoc {
    /// The opening word as written in the instruction (`<<-"EOF"`).
    pub word: String,
    /// The delimiter without quotes: COPY's file name.
    pub name: String,
    /// The body verbatim, each line ending in `\n`.
    pub content: String,
    /// No quotes around the delimiter: COPY and ADD expand build variables in the body.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from each line of the body.
    pub chomp: bool,
}

impl Heredoc {
    /// The body as the instruction uses it (tabs stripped for `<<-`).
    pub fn body(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        self.content
            .split_inclusive('\n')
            .map(|l| l.trim_start_matches('\t'))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Run with the image's shell; the text is passed to it untouched.
    Shell(String),
    /// A valid JSON array of strings. Anything else starting with `[` (invalid JSON) is
    /// silently a shell command, as in Docker.
    Exec(Vec<String>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub message: String,
}

const JSON_NOT_STRINGS: &str =
    "when using JSON array syntax, arrays must be comprised of strings only";

pub fn parse(text: &str) -> Result<Dockerfile, ParseError> {
    let (escape, lines) = lines::logical_lines(text)?;
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    let mut stage_lines: HashMap<String, usize> = HashMap::new();
    for logical in &lines {
        let line = logical.line;
        let error = |message: String| ParseError { line, message };
        match parse_line(&logical.text, &logical.heredocs, escape, line).map_err(error)? {
            Parsed::From {
                base,
                name,
                platform,
            } => {
                if let Some(name) = &name
                    && let Some(first) = stage_lines.insert(name.clone(), line)
                {
                    return Err(error(format!(
                        "duplicate stage name {name:?} (first defined on line {first})"
                    )));
                }
                stages.push(Stage {
                    base,
                    name,
                    platform,
                    line,
                    instructions: Vec::new(),
                });
            }
            Parsed::Instruction { name, kind } => match (stages.last_mut(), kind) {
                (Some(stage), kind) => stage.instructions.push(Instruction { line, kind }),
                (None, Kind::Arg(args)) => global_args.extend(args),
                (None, _) => {
                    return Err(error(format!(
                        "{name} before the first FROM: only ARG may come before FROM"
                    )));
                }
            },
        }
    }
    let Some(last) = lines.last() else {
        return Err(ParseError {
            line: 1,
            message: "file with no instructions".into(),
        });
    };
    if stages.is_empty() {
        return Err(ParseError {
            line: last.line,
            message: "no FROM instruction: a Dockerfile needs at least one build stage".into(),
        });
    }
    Ok(Dockerfile {
        global_args,
        stages,
        escape,
    })
}

enum Parsed {
    From {
        base: String,
        name: Option<String>,
        platform: Option<String>,
    },
    Instruction {
        name: String,
        kind: Kind,
    },
}

fn parse_line(
    text: &str,
    heredocs: &[Heredoc],
    escape: char,
    line: usize,
) -> Result<Parsed, String> {
    let text = text.trim();
    let (word, args) = text.split_once(is_arg_space).unwrap_or((text, ""));
    let args = args.trim_start_matches(is_arg_space);
    let name = word.to_ascii_uppercase();
    let lower = word.to_ascii_lowercase();
    if lower == "onbuild" {
        let setting = onbuild_trigger(args)?;
        let kind = Kind::Config {
            instruction: name.clone(),
            args: args.to_string(),
            setting,
        };
        return Ok(Parsed::Instruction { name, kind });
    }
    // Every instruction may carry `--flags`; each accepts its own set (most accept none).
    let (rest, flag_words) = extract_flags(args);
    let config = |setting: Setting| Kind::Config {
        instruction: name.clone(),
        args: args.to_string(),
        setting,
    };
    let kind = match lower.as_str() {
        "label" => {
            Flags::parse(&name, &flag_words, &[], &[])?;
            if rest.trim().is_empty() {
                return Err("LABEL requires at least one argument".into());
            }
            config(Setting::Labels(
                env_pairs(rest, escape).map_err(|e| e.replace("ENV", "LABEL"))?,
            ))
        }
        "expose" => {
            Flags::parse(&name, &flag_words, &[], &[])?;
            let ports = split_whitespace(rest);
            if ports.is_empty() {
                return Err("EXPOSE requires at least one argument".into());
            }
            config(Setting::Expose(ports))
        }
        "stopsignal" => {
            Flags::parse(&name, &flag_words, &[], &[])?;
            match split_whitespace(rest).as_slice() {
                [signal] => config(Setting::StopSignal(signal.clone())),
                _ => return Err("STOPSIGNAL requires exactly one argument".into()),
            }
        }
        "volume" => {
            Flags::parse(&name, &flag_words, &[], &[])?;
            let volumes = maybe_json_list(rest)?;
            if volumes.is_empty() {
                return Err("VOLUME requires at least one argument".into());
            }
            config(Setting::Volumes(volumes))
        }
        "shell" => {
            Flags::parse(&name, &flag_words, &[], &[])?;
            match json_array(rest)? {
                Some(shell) if !shell.is_empty() => config(Setting::Shell(shell)),
                Some(_) => return Err("SHELL requires at least one argument".into()),
                None => return Err("SHELL requires the arguments to be in JSON form".into()),
            }
        }
        "maintainer" => {
            Flags::parse(&name, &flag_words, &[], &[])?;
            if rest.trim().is_empty() {
                return Err("MAINTAINER requires exactly one argument".into());
            }
            config(Setting::Maintainer(rest.trim().to_string()))
        }
        "healthcheck" => {
            let mut flags = Flags::parse(
                &name,
                &flag_words,
                &[
                    "interval",
                    "timeout",
                    "start-period",
                    "start-interval",
                    "retries",
                ],
                &[],
            )?;
            let (kind_word, command) = rest.split_once(is_arg_space).unwrap_or((rest, ""));
            let check = match kind_word.to_ascii_uppercase().as_str() {
                "NONE" => {
                    if !command.trim().is_empty() || !flags.0.is_empty() {
                        return Err("HEALTHCHECK NONE takes no arguments".into());
                    }
                    None
                }
                "CMD" => {
                    let command = command.trim_start_matches(is_arg_space);
                    if command.trim().is_empty() {
                        return Err("Missing command after HEALTHCHECK CMD".into());
                    }
                    let duration = |flags: &mut Flags, flag: &str| -> Result<i64, String> {
                        match flags.take(flag) {
                            None => Ok(0),
                            Some(text) => {
                                let ns = parse_duration(&text)
                                    .map_err(|e| format!("--{flag}={text}: {e}"))?;
                                if ns < 1_000_000 {
                                    return Err(format!(
                                        "--{flag}={text}: a duration cannot be less than 1ms"
                                    ));
                                }
                                Ok(ns)
                            }
                        }
                    };
                    let retries = match flags.take("retries") {
                        None => 0,
                        Some(n) => match n.parse::<i64>() {
                            Ok(n) if n >= 0 => n,
                            _ => {
                                return Err(format!(
                                    "--retries={n}: expected a whole number of at least 0"
                                ));
                            }
                        },
                    };
                    Some(Healthcheck {
                        interval: duration(&mut flags, "interval")?,
                        timeout: duration(&mut flags, "timeout")?,
                        start_period: duration(&mut flags, "start-period")?,
                        start_interval: duration(&mut flags, "start-interval")?,
                        retries,
                        test: maybe_json(command)?,
                    })
                }
                other => {
                    return Err(format!("Unknown type {other:?} in HEALTHCHECK (try CMD)"));
                }
            };
            config(Setting::Healthcheck(check))
        }
        "from" => {
            let mut flags = Flags::parse(&name, &flag_words, &["platform"], &[])?;
            let (base, stage) = match split_whitespace(rest).as_slice() {
                [base] => (base.clone(), None),
                [base, as_, stage] if as_.eq_ignore_ascii_case("as") => {
                    (base.clone(), Some(stage_name(stage)?))
                }
                _ => return Err("FROM requires either one or three arguments".into()),
            };
            let platform = flags.take("platform");
            return Ok(Parsed::From {
                base,
                name: stage,
                platform,
            });
        }
        "run" => {
            // `--mount` repeats; every other flag may appear once.
            let (mount_words, flag_words): (Vec<String>, Vec<String>) = flag_words
                .into_iter()
                .partition(|w| w.strip_prefix("--").unwrap_or(w).starts_with("mount="));
            let mounts = mount_words
                .iter()
                .map(|w| parse_mount(w.split_once('=').map_or("", |(_, v)| v)))
                .collect::<Result<Vec<_>, String>>()?;
            if mounts.len() > MAX_RUN_MOUNTS {
                return Err(format!("RUN takes at most {MAX_RUN_MOUNTS} --mount flags"));
            }
            let mut flags = Flags::parse(&name, &flag_words, &["network", "security"], &[])?;
            if let Some(security) = flags.take("security")
                && security != "sandbox"
            {
                return Err(format!(
                    "RUN --security={security} is not supported: build steps run sandboxed"
                ));
            }
            let network = match flags.take("network").as_deref() {
                None => None,
                Some("default") => Some(RunNetwork::Default),
                Some("none") => Some(RunNetwork::None),
                Some("host") => {
                    return Err("RUN --network=host is not supported: a build step gets a \
                         sandbox network of its own (default) or none"
                        .into());
                }
                Some(other) => {
                    return Err(format!("RUN --network={other}: expected default or none"));
                }
            };
            let command = if heredocs.is_empty() {
                maybe_json(rest)?
            } else {
                Command::Shell(rest.to_string())
            };
            Kind::Run(Run {
                command,
                heredocs: heredocs.to_vec(),
                network,
                mounts,
            })
        }
        "cmd" | "entrypoint" => {
            Flags::parse(&name, &flag_words, &[], &[])?;
            let command = maybe_json(rest)?;
            match lower.as_str() {
                "cmd" => Kind::Cmd(command),
                _ => Kind::Entrypoint(command),
            }
        }
        "copy" | "add" => {
            let is_copy = lower == "copy";
            // `--exclude` repeats; every other flag may appear once.
            let (exclude_words, flag_words): (Vec<String>, Vec<String>) = flag_words
                .into_iter()
                .partition(|w| w.strip_prefix("--").unwrap_or(w).starts_with("exclude="));
            let exclude: Vec<String> = exclude_words
                .iter()
                .map(|w| w.split_once('=').map_or("", |(_, v)| v).to_string())
                .collect();
            if exclude.iter().any(String::is_empty) {
                return Err("missing a value on flag --exclude".into());
            }
            let (strings, bools): (&[&str], &[&str]) = if is_copy {
                (&["from", "chown", "chmod"], &["link", "parents"])
            } else {
                (&["chown", "chmod", "checksum"], &["link", "keep-git-dir"])
            };
            let mut flags = Flags::parse(&name, &flag_words, strings, bools)?;
            if flags.take("keep-git-dir").as_deref() == Some("true") {
                return Err(
                    "ADD --keep-git-dir: Git sources are not supported by this builder; clone \
                     in a RUN step (RUN steps have a network)"
                        .into(),
                );
            }
            let options = CopyOptions {
                exclude,
                parents: flags.take("parents").as_deref() == Some("true"),
                checksum: flags.take("checksum"),
            };
            if let Some(sum) = &options.checksum
                && !sum.starts_with("sha256:")
            {
                return Err(format!(
                    "ADD --checksum={sum}: expected sha256:<64 hex digits>"
                ));
            }
            let mut sources = if heredocs.is_empty() {
                maybe_json_list(rest)?
            } else {
                split_whitespace(rest)
            };
            if sources.len() < 2 {
                return Err(format!(
                    "{name} requires at least two arguments, but only one was provided. \
                     Destination could not be determined."
                ));
            }
            let dest = sources.pop().unwrap_or_default();
            if heredocs.iter().any(|h| h.word == dest) {
                return Err(format!("{name}: a heredoc cannot be the destination"));
            }
            sources.retain(|s| !heredocs.iter().any(|h| &h.word == s));
            let heredocs = heredocs.to_vec();
            let (chown, chmod) = (flags.take("chown"), flags.take("chmod"));
            if is_copy {
                Kind::Copy {
                    sources,
                    heredocs,
                    dest,
                    from: flags.take("from"),
                    chown,
                    chmod,
                    options,
                }
            } else {
                Kind::Add {
                    sources,
                    heredocs,
                    dest,
                    chown,
                    chmod,
                    options,
                }
            }
        }
        "env" => {
            Flags::parse(&name, &flag_words, &[], &[])?;
            Kind::Env(env_pairs(rest, escape)?)
        }
        "arg" => {
            Flags::parse(&name, &flag_words, &[], &[])?;
            Kind::Arg(arg_decls(rest, escape, line)?)
        }
        "workdir" | "user" => {
            Flags::parse(&name, &flag_words, &[], &[])?;
            if rest.is_empty() {
                return Err(format!("{name} requires exactly one argument"));
            }
            match lower.as_str() {
                "workdir" => Kind::Workdir(rest.to_string()),
                _ => Kind::User(rest.to_string()),
            }
        }
        _ => return Err(format!("unknown instruction: {name}")),
    };
    Ok(Parsed::Instruction { name, kind })
}

/// The most `--mount` flags one RUN takes.
pub const MAX_RUN_MOUNTS: usize = 32;

/// One `--mount=` value: comma-separated `key=value` fields (and bare `ro`, `rw`,
/// `readonly`, `required`), as BuildKit reads them.
fn parse_mount(value: &str) -> Result<RunMount, String> {
    let mut mount = RunMount::default();
    let bad = |why: String| format!("--mount={value}: {why}");
    let number = |key: &str, v: &str, radix: u32| -> Result<u32, String> {
        u32::from_str_radix(v, radix).map_err(|_| bad(format!("{key}={v} is not a number")))
    };
    let boolean = |key: &str, v: Option<&str>| -> Result<bool, String> {
        match v.map(str::to_ascii_lowercase).as_deref() {
            None | Some("true") | Some("1") => Ok(true),
            Some("false") | Some("0") => Ok(false),
            Some(other) => Err(bad(format!("{key}={other}: expected true or false"))),
        }
    };
    for field in value.split(',').filter(|f| !f.is_empty()) {
        let (key, v) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v)),
            None => (field.trim().to_ascii_lowercase(), None),
        };
        let need = |v: Option<&str>| -> Result<String, String> {
            v.filter(|v| !v.is_empty())
                .map(str::to_string)
                .ok_or_else(|| bad(format!("{key} needs a value")))
        };
        match key.as_str() {
            "type" => {
                mount.kind = match need(v)?.as_str() {
                    "bind" => MountType::Bind,
                    "cache" => MountType::Cache,
                    "tmpfs" => MountType::Tmpfs,
                    "secret" => MountType::Secret,
                    "ssh" => {
                        return Err(bad(
                            "type=ssh is not supported: build steps get no SSH agent; \
                             give a key or token with --secret and RUN --mount=type=secret"
                                .into(),
                        ));
                    }
                    other => return Err(bad(format!("unknown mount type {other:?}"))),
                };
            }
            "target" | "dst" | "destination" => mount.target = Some(need(v)?),
            "source" | "src" => mount.source = Some(need(v)?),
            "from" => mount.from = Some(need(v)?),
            "id" => mount.id = Some(need(v)?),
            "sharing" => {
                mount.sharing = match need(v)?.as_str() {
                    "shared" => Sharing::Shared,
                    "private" => Sharing::Private,
                    "locked" => Sharing::Locked,
                    other => return Err(bad(format!("unknown sharing mode {other:?}"))),
                };
            }
            "mode" => {
                let mode = number("mode", &need(v)?, 8)?;
                if mode > 0o7777 {
                    return Err(bad(format!("mode={mode:o} is not a file mode")));
                }
                mount.mode = Some(mode);
            }
            "uid" => mount.uid = Some(number("uid", &need(v)?, 10)?),
            "gid" => mount.gid = Some(number("gid", &need(v)?, 10)?),
            "ro" | "readonly" => mount.read_only = Some(boolean(&key, v)?),
            "rw" | "readwrite" => mount.read_only = Some(!boolean(&key, v)?),
            "required" => mount.required = boolean(&key, v)?,
            "env" => mount.env = Some(need(v)?),
            "size" => {
                let text = need(v)?;
                mount.size = Some(parse_size(&text).ok_or_else(|| bad(format!("size={text}")))?);
            }
            other => return Err(bad(format!("unknown field {other:?}"))),
        }
    }
    match mount.kind {
        MountType::Secret => {
            if mount.id.is_none() {
                // BuildKit: the id defaults to the target's file name.
                mount.id = mount
                    .target
                    .as_deref()
                    .and_then(|t| t.rsplit('/').next())
                    .filter(|n| !n.is_empty())
                    .map(str::to_string);
            }
            if mount.id.is_none() {
                return Err(bad("a secret mount needs an id".into()));
            }
        }
        _ if mount.target.is_none() => return Err(bad("a target is required".into())),
        _ => {}
    }
    if mount.env.is_some() && mount.kind != MountType::Secret {
        return Err(bad("env= is for secret mounts".into()));
    }
    Ok(mount)
}

/// `1024`, `64k`, `100m`, `1g` (powers of 1024) in bytes.
fn parse_size(text: &str) -> Option<u64> {
    let lower = text.to_ascii_lowercase();
    let trimmed = lower.trim_end_matches('b');
    let (digits, scale) = match trimmed.chars().last()? {
        'k' => (&trimmed[..trimmed.len() - 1], 1u64 << 10),
        'm' => (&trimmed[..trimmed.len() - 1], 1 << 20),
        'g' => (&trimmed[..trimmed.len() - 1], 1 << 30),
        _ => (trimmed, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(scale)
}

/// `ONBUILD <instruction>`: the trigger is stored as written, and checked now as Docker does.
fn onbuild_trigger(args: &str) -> Result<Setting, String> {
    let trigger = args.trim();
    let first = trigger
        .split(is_arg_space)
        .next()
        .unwrap_or("")
        .to_ascii_uppercase();
    match first.as_str() {
        "" => Err("ONBUILD requires at least one argument".into()),
        "ONBUILD" => Err("Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed".into()),
        "FROM" | "MAINTAINER" => Err(format!("{first} isn't allowed as an ONBUILD trigger")),
        _ => {
            // The trigger must itself parse (it runs in a later build).
            parse_line(trigger, &[], '\\', 0)?;
            Ok(Setting::OnBuild(trigger.to_string()))
        }
    }
}

/// A Go duration (`1h2m3.5s`, `300ms`, `10us`) in nanoseconds, as HEALTHCHECK flags take it.
fn parse_duration(text: &str) -> Result<i64, String> {
    let bad = || format!("invalid duration {text:?}");
    if text == "0" {
        return Ok(0);
    }
    let mut rest = text;
    let mut total: f64 = 0.0;
    if rest.is_empty() || rest.starts_with('-') {
        return Err(bad());
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let number: f64 = rest[..number_len].parse().map_err(|_| bad())?;
        rest = &rest[number_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "\u{b5}s" | "\u{3bc}s" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    if total > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(total as i64)
}

/// `[a-z][a-z0-9-_.]*` after lowercasing, as BuildKit requires.
fn stage_name(written: &str) -> Result<String, String> {
    let name = written.to_ascii_lowercase();
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if !valid {
        return Err(format!(
            "invalid name for build stage: {written:?}, name can't start with a number or contain symbols"
        ));
    }
    Ok(name)
}

/// `Ok(None)` when `rest` is not a JSON array at all (BuildKit then falls back to the other
/// form); an array holding anything but strings is an error.
fn json_array(rest: &str) -> Result<Option<Vec<String>>, String> {
    if !rest.trim_start().starts_with('[') {
        return Ok(None);
    }
    let Ok(values) = serde_json::from_str::<Vec<serde_json::Value>>(rest) else {
        return Ok(None);
    };
    values
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            _ => Err(JSON_NOT_STRINGS.to_string()),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn maybe_json(rest: &str) -> Result<Command, String> {
    Ok(match json_array(rest)? {
        Some(args) => Command::Exec(args),
        None => Command::Shell(rest.to_string()),
    })
}

fn maybe_json_list(rest: &str) -> Result<Vec<String>, String> {
    Ok(json_array(rest)?.unwrap_or_else(|| split_whitespace(rest)))
}

fn env_pairs(rest: &str, escape: char) -> Result<Vec<(String, String)>, String> {
    let words = env_words(rest, escape);
    let Some(first) = words.first() else {
        return Err("ENV requires at least one argument".into());
    };
    // Legacy `ENV name value...`: the first word decides, and the value is the rest of the
    // line verbatim, spaces and all.
    if !first.contains('=') {
        return match rest.split_once(is_arg_space) {
            Some((key, value)) => Ok(vec![(
                key.to_string(),
                value.trim_start_matches(is_arg_space).to_string(),
            )]),
            None => Err("ENV must have two arguments".into()),
        };
    }
    words
        .iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err("ENV names can not be blank".to_string()),
            Some((key, value)) => Ok((key.to_string(), value.to_string())),
            None => Err(format!(
                "Syntax error - can't find = in {word:?}. Must be of the form: name=value"
            )),
        })
        .collect()
}

fn arg_decls(rest: &str, escape: char, line: usize) -> Result<Vec<ArgDecl>, String> {
    let words = env_words(rest, escape);
    if words.is_empty() {
        return Err("ARG requires at least one argument".into());
    }
    words
        .into_iter()
        .map(|word| match word.split_once('=') {
            Some(("", _)) => Err("ARG names can not be blank".to_string()),
            Some((name, default)) => Ok(ArgDecl {
                name: name.into(),
                default: Some(default.into()),
                line,
            }),
            None => Ok(ArgDecl {
                name: word,
                default: None,
                line,
            }),
        })
        .collect()
}

/// Parsed `--name=value` flags for one instruction, validated like BuildKit's `BFlags`.
struct Flags(HashMap<String, String>);

impl Flags {
    fn parse(
        instruction: &str,
        words: &[String],
        strings: &[&str],
        bools: &[&str],
    ) -> Result<Flags, String> {
        let mut values = HashMap::new();
        for word in words {
            let flag = word.strip_prefix("--").unwrap_or(word);
            let (flag, value) = match flag.split_once('=') {
                Some((flag, value)) => (flag, Some(value)),
                None => (flag, None),
            };
            let value = if strings.contains(&flag) {
                value
                    .ok_or_else(|| format!("missing a value on flag --{flag}"))?
                    .to_string()
            } else if bools.contains(&flag) {
                match value.map(|v| (v, v.to_ascii_lowercase())) {
                    None => "true".to_string(),
                    Some((_, lower)) if lower == "true" || lower == "false" => lower,
                    Some(("", _)) => return Err(format!("missing a value on flag --{flag}")),
                    Some((v, _)) => {
                        return Err(format!(
                            "expecting boolean value for flag --{flag}, not: {v}"
                        ));
                    }
                }
            } else {
                return Err(format!("unknown flag for {instruction}: --{flag}"));
            };
            if values.insert(flag.to_string(), value).is_some() {
                return Err(format!("duplicate flag specified: --{flag}"));
            }
        }
        Ok(Flags(values))
    }

    /// A string flag's value; an empty value (`--from=`) means "not given", as in Docker.
    fn take(&mut self, flag: &str) -> Option<String> {
        self.0.remove(flag).filter(|v| !v.is_empty())
    }
}
