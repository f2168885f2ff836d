//! `hutch pool`: warm pools on a running `hutch serve` (`/v1/namespaces/{ns}/sandbox-pools`).

use clap::Subcommand;
use hutch_api::{
    ClaimSandboxResponse, CreateSandboxPoolResponse, CreateSandboxResources,
    ListSandboxPoolsResponse, SandboxPoolInfo, SandboxPoolRequest,
};
use hyper::Method;

use crate::client;

#[derive(Subcommand)]
pub enum PoolCommand {
    /// List pools with their warm, booting and claimed counts.
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Create a pool and print its id.
    Create {
        /// Image of its sandboxes [default: the server's default image]
        #[arg(long)]
        image: Option<String>,
        /// Sandboxes kept booted and unclaimed.
        #[arg(long, default_value_t = 1)]
        warm: i64,
        /// Most sandboxes at once: warm, booting and claimed.
        #[arg(long)]
        max: Option<i64>,
        #[arg(long)]
        cpus: Option<f64>,
        /// Memory limit in MiB.
        #[arg(long)]
        memory: Option<i64>,
        /// Lifetime of a claimed sandbox in seconds, from its claim (0: none).
        #[arg(long, default_value_t = 0)]
        timeout: i64,
    },
    /// Show a pool: configuration, and each sandbox with its state.
    Describe {
        pool: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete pools (their warm sandboxes go with them; refused while claimed ones run).
    Rm {
        #[arg(required = true)]
        pools: Vec<String>,
    },
    /// Claim a sandbox from a pool and print its id (and whether it came warm).
    Claim { pool: String },
}

fn pools_path() -> String {
    crate::sbx::sandboxes_path().replace("/sandboxes", "/sandbox-pools")
}

pub async fn dispatch(cmd: PoolCommand) -> anyhow::Result<u8> {
    let api = client::server_url();
    match cmd {
        PoolCommand::Ls { json } => {
            let list: ListSandboxPoolsResponse =
                client::call(&api, Method::GET, &pools_path(), None, None::<&()>).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list.pools)?);
                return Ok(0);
            }
            println!(
                "{:<26} {:<24} {:>5} {:>8} {:>8} {:>5}",
                "ID", "IMAGE", "WARM", "BOOTING", "CLAIMED", "MAX"
            );
            for p in &list.pools {
                println!(
                    "{:<26} {:<24} {:>5} {:>8} {:>8} {:>5}",
                    p.pool_id,
                    p.image,
                    format!("{}/{}", p.status.warm, p.warm_containers.unwrap_or(0)),
                    p.status.booting,
                    p.status.claimed,
                    p.max_containers.map_or("-".into(), |m| m.to_string()),
                );
            }
        }
        PoolCommand::Create {
            image,
            warm,
            max,
            cpus,
            memory,
            timeout,
        } => {
            let body = SandboxPoolRequest {
                image,
                resources: Some(CreateSandboxResources {
                    cpus,
                    memory_mb: memory,
                    ..CreateSandboxResources::default()
                }),
                timeout_secs: timeout,
                warm_containers: Some(warm),
                max_containers: max,
                ..SandboxPoolRequest::default()
            };
            let created: CreateSandboxPoolResponse =
                client::call(&api, Method::POST, &pools_path(), None, Some(&body)).await?;
            println!("{}", created.pool_id);
        }
        PoolCommand::Describe { pool, json } => {
            let path = format!("{}/{pool}", pools_path());
            let p: SandboxPoolInfo =
                client::call(&api, Method::GET, &path, None, None::<&()>).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&p)?);
                return Ok(0);
            }
            println!("pool       {} (generation {})", p.pool_id, p.generation);
            println!("image      {}", p.image);
            println!(
                "resources  {} cpus, {} MiB",
                p.resources.cpus, p.resources.memory_mb
            );
            println!(
                "size       {} warm wanted, at most {}",
                p.warm_containers.unwrap_or(0),
                p.max_containers
                    .map_or("unbounded".into(), |m| m.to_string())
            );
            println!(
                "now        {} warm, {} booting, {} claimed, {} evicting",
                p.status.warm, p.status.booting, p.status.claimed, p.status.evicting
            );
            if let Some(e) = &p.error {
                println!("error      {e}");
            }
            for c in &p.containers {
                println!("  {:<22} {}", c.id, c.state);
            }
        }
        PoolCommand::Rm { pools } => {
            for p in pools {
                let path = format!("{}/{p}", pools_path());
                client::json(&api, Method::DELETE, &path, None, None).await?;
            }
        }
        PoolCommand::Claim { pool } => {
            let path = format!("{}/{pool}/sandboxes", pools_path());
            let claimed: ClaimSandboxResponse =
                client::call(&api, Method::POST, &path, None, None::<&()>).await?;
            println!(
                "{}\t{}",
                claimed.sandbox.sandbox_id,
                if claimed.warm { "warm" } else { "cold" }
            );
        }
    }
    Ok(0)
}
