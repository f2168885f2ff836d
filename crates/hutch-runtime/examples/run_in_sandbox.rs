//! The runtime as a library, no server: create a gVisor sandbox from an image in the store,
//! run a command in it, print its output, delete it.
//!
//! ```text
//! HUTCH_HOME=/tmp/hutch-example \
//! HUTCH_AGENT_BIN=$(HUTCH_HOME=/tmp/hutch-example target/release/hutch agent-path) \
//!   cargo run -p hutch-runtime --example run_in_sandbox -- busybox echo hello
//! ```
//! (import the image first: `hutch image import ~/.cache/hutch/fixtures/busybox --name busybox`)

use std::io::Write;
use std::path::PathBuf;

use hutch_runtime::agent::ExecEvent;
use hutch_runtime::gvisor::{GvisorBackend, GvisorConfig};
use hutch_runtime::{Backend, Capability, SandboxSpec};
use hutch_store::Store;
use hutch_wire::StartProcess;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let image = args.next().unwrap_or_else(|| "busybox".into());
    let command: Vec<String> = args.collect();
    let home =
        PathBuf::from(std::env::var("HUTCH_HOME").unwrap_or_else(|_| "/var/lib/hutch".into()));
    let agent_binary = PathBuf::from(std::env::var("HUTCH_AGENT_BIN")?);
    let store = Store::open(&home.join("store"))?;
    let backend = GvisorBackend::new(GvisorConfig { home, agent_binary }, store)?;

    for (name, capability) in backend.capabilities().iter() {
        if let Capability::Unsupported { reason } = capability {
            eprintln!("note: {name} unsupported ({reason})");
        }
    }
    let sandbox = backend
        .create(SandboxSpec {
            image,
            memory_mb: Some(256),
            ..SandboxSpec::default()
        })
        .await?;
    let (program, rest) = command
        .split_first()
        .map_or(("uname", &[][..]), |(p, r)| (p.as_str(), r));
    let mut stream = sandbox
        .agent
        .exec(&StartProcess {
            command: program.into(),
            args: if rest.is_empty() && program == "uname" {
                vec!["-a".into()]
            } else {
                rest.to_vec()
            },
            ..StartProcess::default()
        })
        .await?;
    let code = loop {
        match stream.next().await? {
            Some(ExecEvent::Stdout { data, .. }) => std::io::stdout().write_all(&data)?,
            Some(ExecEvent::Stderr { data, .. }) => std::io::stderr().write_all(&data)?,
            Some(ExecEvent::Exit(exit)) => break exit.shell_code(),
            Some(_) => {}
            None => break 255,
        }
    };
    backend.delete(&sandbox.info.id).await?;
    std::process::exit(code);
}
