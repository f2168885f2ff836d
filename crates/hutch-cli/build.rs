//! Builds `hutch-agent` as a static binary and hands it to `hutch` to embed.
//!
//! The agent must run in images that have no libc at all (busybox, distroless), and this
//! toolchain has no musl target, so it is linked with glibc's `crt-static`. That flag breaks
//! proc-macros when applied to a whole workspace build, so the agent gets its own cargo
//! invocation with an explicit `--target` (which keeps host crates dynamic) and its own
//! target directory (so it never waits on the outer build's lock).

use std::env;
use std::path::PathBuf;
use std::process::Command;

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let workspace = manifest
        .parent()
        .and_then(|p| p.parent())
        .expect("crates/hutch-cli sits two levels below the workspace")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    for dir in ["crates/hutch-agent", "crates/hutch-wire", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=HUTCH_AGENT_BIN");

    let built = match env::var_os("HUTCH_AGENT_BIN") {
        Some(prebuilt) => PathBuf::from(prebuilt),
        None => {
            let target_dir = env::var_os("CARGO_TARGET_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| workspace.join("target"))
                .join("agent");
            let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let status = Command::new(cargo)
                .current_dir(&workspace)
                .args([
                    "build",
                    "--release",
                    "-p",
                    "hutch-agent",
                    "--target",
                    TARGET,
                ])
                .arg("--target-dir")
                .arg(&target_dir)
                .env_remove("RUSTFLAGS")
                .env_remove("CARGO_ENCODED_RUSTFLAGS")
                .env_remove("RUSTC_WORKSPACE_WRAPPER")
                .env_remove("CARGO_BUILD_TARGET")
                .env(
                    "CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUSTFLAGS",
                    "-C target-feature=+crt-static",
                )
                .env("CARGO_PROFILE_RELEASE_STRIP", "symbols")
                .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
                .env("CARGO_PROFILE_RELEASE_LTO", "true")
                .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "s")
                .status()
                .expect("running cargo to build hutch-agent");
            assert!(status.success(), "building hutch-agent failed");
            target_dir.join(TARGET).join("release").join("hutch-agent")
        }
    };
    let bytes = std::fs::read(&built).expect("reading the built agent");
    std::fs::write(out_dir.join("hutch-agent"), &bytes).expect("copying the agent");
    // A content fingerprint, so `hutch` can name its extracted copy without hashing at run time.
    let mut hash: u64 = 0xcbf29ce484222325;
    for b in &bytes {
        hash = (hash ^ u64::from(*b)).wrapping_mul(0x100000001b3);
    }
    std::fs::write(out_dir.join("hutch-agent.id"), format!("{hash:016x}")).expect("writing id");
}
