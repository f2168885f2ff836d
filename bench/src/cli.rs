//! What every benchmark binary reads from its command line and environment.

use std::path::PathBuf;

/// The `hutch` binary under test: the first argument, else `target/release/hutch`.
pub fn hutch_binary() -> PathBuf {
    std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/release/hutch"))
}

/// Iterations: `HUTCH_BENCH_N`, else `default`.
pub fn iterations(default: usize) -> usize {
    std::env::var("HUTCH_BENCH_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The fixture images: `HUTCH_FIXTURES`, else `~/.cache/hutch/fixtures`.
pub fn fixtures_dir() -> PathBuf {
    std::env::var_os("HUTCH_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
                .join(".cache/hutch/fixtures")
        })
}

/// A port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits until `hutch serve` (whose log is `home/serve.log`) listens on `port`.
pub fn wait_for_server(port: u16, home: &std::path::Path) -> anyhow::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if std::time::Instant::now() > deadline {
            anyhow::bail!(
                "hutch serve did not start; see {}",
                home.join("serve.log").display()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Ok(())
}
