//! `hutch image build`: a Dockerfile into an image in the local store, every RUN in a gVisor
//! sandbox, every step cached (see `hutch_build::engine`).

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::Context;
use clap::Args;
use hutch_build::engine::{BuildEvent, BuildRequest, Engine};
use hutch_registry::{Client, ClientConfig};
use hutch_store::Store;
use indicatif::{ProgressBar, ProgressStyle};

#[derive(Args)]
pub struct BuildArgs {
    /// The build context: the directory COPY and ADD read from.
    pub context: PathBuf,
    /// The Dockerfile [default: CONTEXT/Dockerfile].
    #[arg(short = 'f', long = "file")]
    pub file: Option<PathBuf>,
    /// Name for the result (`name[:tag]`).
    #[arg(short = 't', long = "tag")]
    pub tag: Option<String>,
    /// A build argument (repeatable); `K` alone takes the value from the environment.
    #[arg(long = "build-arg", value_name = "K=V")]
    pub build_args: Vec<String>,
    /// Build up to this stage.
    #[arg(long)]
    pub target: Option<String>,
    /// A registry (`host:port`) to pull base images from over plain HTTP (repeatable; also
    /// HUTCH_INSECURE_REGISTRIES).
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    pub insecure: Vec<String>,
    /// Memory limit of every RUN (a RUN past it fails, reported out of memory).
    #[arg(long, value_name = "MIB")]
    pub memory: Option<u64>,
    /// CPU limit of every RUN.
    #[arg(long)]
    pub cpus: Option<f64>,
    /// The network of RUN steps: `default` (a sandbox network of their own, reaching out
    /// through the host's egress fence, as in Docker) or `none`; `RUN --network=` chooses
    /// per step.
    #[arg(long, value_enum, default_value = "default")]
    pub network: crate::run::NetworkArg,
    /// A secret for `RUN --mount=type=secret,id=ID` (repeatable): `id=ID,src=FILE` or
    /// `id=ID,env=VAR`. Never stored in the image, the step cache or the output.
    #[arg(long = "secret", value_name = "id=ID,src=FILE|env=VAR")]
    pub secrets: Vec<String>,
}

/// `--secret id=ID,src=FILE` or `id=ID,env=VAR` (BuildKit's forms; `type=file|env` too).
fn read_secret(spec: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let (mut id, mut src, mut env) = (None, None, None);
    for field in spec.split(',') {
        match field.split_once('=') {
            Some(("id", v)) => id = Some(v.to_string()),
            Some(("src" | "source", v)) => src = Some(v.to_string()),
            Some(("env", v)) => env = Some(v.to_string()),
            Some(("type", "file" | "env")) => {}
            _ => anyhow::bail!("--secret {field:?}: expected id=ID,src=FILE or id=ID,env=VAR"),
        }
    }
    let id = id
        .filter(|i| !i.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--secret needs id=ID"))?;
    let value = match (src, env) {
        (Some(path), None) => {
            let meta = std::fs::metadata(&path)
                .with_context(|| format!("--secret id={id}: reading {path}"))?;
            anyhow::ensure!(
                meta.is_file()
                    && meta.len() <= hutch_build::engine::mounts::MAX_SECRET_BYTES as u64,
                "--secret id={id}: {path} is not a file of at most {} KiB",
                hutch_build::engine::mounts::MAX_SECRET_BYTES >> 10
            );
            std::fs::read(&path).with_context(|| format!("--secret id={id}: reading {path}"))?
        }
        (None, Some(var)) => std::env::var(&var)
            .map(String::into_bytes)
            .map_err(|_| anyhow::anyhow!("--secret id={id}: the variable {var} is not set"))?,
        // BuildKit: neither names the file or variable after the id.
        (None, None) => std::env::var(&id)
            .map(String::into_bytes)
            .map_err(|_| anyhow::anyhow!("--secret id={id}: give src=FILE or env=VAR"))?,
        (Some(_), Some(_)) => anyhow::bail!("--secret id={id}: src= and env= both given"),
    };
    anyhow::ensure!(
        value.len() <= hutch_build::engine::mounts::MAX_SECRET_BYTES,
        "--secret id={id}: larger than {} KiB",
        hutch_build::engine::mounts::MAX_SECRET_BYTES >> 10
    );
    Ok((id, value))
}

pub async fn build_cmd(store: &Store, args: BuildArgs) -> anyhow::Result<u8> {
    let (image, _) = build_image(store, &args).await?;
    println!("{}\t{}", image.name, image.id);
    Ok(0)
}

/// Runs the build of `args` (`FROM` may name a registered template); the image and the
/// Dockerfile's text.
pub async fn build_image(
    store: &Store,
    args: &BuildArgs,
) -> anyhow::Result<(hutch_store::Image, String)> {
    let dockerfile_path = args
        .file
        .clone()
        .unwrap_or_else(|| args.context.join("Dockerfile"));
    let dockerfile = std::fs::read_to_string(&dockerfile_path)
        .with_context(|| format!("reading {}", dockerfile_path.display()))?;
    anyhow::ensure!(
        args.context.is_dir(),
        "the build context {} is not a directory",
        args.context.display()
    );
    let mut build_args = BTreeMap::new();
    for kv in &args.build_args {
        match kv.split_once('=') {
            Some((k, v)) => build_args.insert(k.to_string(), v.to_string()),
            None => std::env::var(kv)
                .ok()
                .and_then(|v| build_args.insert(kv.clone(), v)),
        };
    }
    let backend = crate::run::backend_at(crate::home())?;
    let registry = Client::new(ClientConfig::from_env(&args.insecure))?;
    let progress = Progress::new(std::io::stderr().is_terminal());
    let events = |event: BuildEvent| progress.handle(event);
    let templates = hutch_state::templates::Templates::open(&crate::home(), store.clone())?;
    let store_for_builtins = store.clone();
    let resolve = move |name: &str| {
        templates.image_of(name).or_else(|| {
            let builtin =
                hutch_state::default_image::builtin(name, hutch_state::debian_image::DEBIAN_IMAGE)?;
            crate::image::builtin(&store_for_builtins, &builtin)
                .ok()
                .map(|i| i.name)
        })
    };
    // RUN sandboxes of builds killed midway (by this CLI or a server) end here.
    let swept = hutch_build::engine::sweep_orphans(&backend).await;
    if swept > 0 {
        tracing::info!(swept, "removed sandboxes of interrupted builds");
    }
    let engine = Engine {
        backend: &backend,
        store,
        registry: &registry,
        events: &events,
        templates: Some(&resolve),
    };
    let request = BuildRequest {
        context: args.context.clone(),
        dockerfile,
        dockerfile_name: dockerfile_path.display().to_string(),
        tag: args.tag.clone(),
        build_args,
        target: args.target.clone(),
        memory_mb: args.memory,
        cpus: args.cpus,
        secrets: args
            .secrets
            .iter()
            .map(|s| read_secret(s))
            .collect::<anyhow::Result<_>>()?,
        cache_scope: "local".into(),
        network: match args.network {
            crate::run::NetworkArg::Default => Some(hutch_runtime::net::NetworkPolicy::default()),
            crate::run::NetworkArg::None => None,
        },
    };
    let image = engine.build(&request).await?;
    Ok((image, request.dockerfile))
}

/// The build's events on stderr: one line per step and the RUN output as it comes; on a
/// terminal, also a spinner under them naming the running step and its time.
/// The most of an unfinished output line the terminal renderer holds before printing it.
const MAX_PARTIAL_LINE: usize = 64 << 10;

struct Progress {
    spinner: Option<ProgressBar>,
    /// On a terminal, output is printed above the spinner a whole line at a time; this is
    /// the unfinished last line.
    partial: Mutex<Vec<u8>>,
}

impl Progress {
    fn new(tty: bool) -> Self {
        let spinner = tty.then(|| {
            let bar = ProgressBar::new_spinner();
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} ({elapsed})") {
                bar.set_style(style);
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Self {
            spinner,
            partial: Mutex::default(),
        }
    }

    fn handle(&self, event: BuildEvent) {
        let line = match event {
            BuildEvent::Step {
                stage,
                line,
                text,
                cached,
            } => {
                let step = format!(
                    "[stage {stage}] line {line}: {text}{}",
                    if cached { " (cached)" } else { "" }
                );
                if let Some(spinner) = &self.spinner {
                    self.flush();
                    spinner.set_message(step.clone());
                    spinner.reset_elapsed();
                }
                step
            }
            BuildEvent::Output { data, .. } => {
                let Some(spinner) = &self.spinner else {
                    let _ = std::io::stderr().lock().write_all(&data);
                    return;
                };
                let mut partial = self.partial.lock().unwrap_or_else(|e| e.into_inner());
                partial.extend_from_slice(&data);
                if let Some(end) = partial.iter().rposition(|&b| b == b'\n') {
                    let whole: Vec<u8> = partial.drain(..=end).collect();
                    let text = String::from_utf8_lossy(&whole[..end]);
                    spinner.suspend(|| eprintln!("{text}"));
                } else if partial.len() >= MAX_PARTIAL_LINE {
                    // A step printing without newlines (`cat /dev/zero`): print what is held
                    // rather than hold it all.
                    let text = String::from_utf8_lossy(&partial).into_owned();
                    partial.clear();
                    spinner.suspend(|| eprintln!("{text}"));
                }
                return;
            }
            BuildEvent::Warning { line, message } => format!("warning: line {line}: {message}"),
        };
        match &self.spinner {
            Some(spinner) => spinner.suspend(|| eprintln!("{line}")),
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }

    /// Prints an unfinished output line as it is.
    fn flush(&self) {
        let mut partial = self.partial.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(spinner) = &self.spinner
            && !partial.is_empty()
        {
            let text = String::from_utf8_lossy(&partial).into_owned();
            partial.clear();
            spinner.suspend(|| eprintln!("{text}"));
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.flush();
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_without_newlines_is_printed_not_held() {
        let progress = Progress::new(true);
        for _ in 0..64 {
            progress.handle(BuildEvent::Output {
                stderr: false,
                data: bytes::Bytes::from(vec![b'0'; 16 << 10]),
            });
        }
        let held = progress
            .partial
            .lock()
            .map(|p| p.len())
            .unwrap_or(usize::MAX);
        // 1 MiB went through; what stays held is under the 64 KiB a line may hold.
        assert!(held < 64 << 10, "{held} bytes of one line held");
    }
}
