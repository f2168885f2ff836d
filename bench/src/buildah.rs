//! buildah, the floor of the build benches: a private storage and configuration per
//! instance, so nothing of the host's images or settings takes part.

use std::path::Path;
use std::process::{Command, Stdio};

/// A private buildah storage and configuration, removed (and unmounted) on drop.
pub struct Buildah {
    dir: tempfile::TempDir,
}

impl Buildah {
    pub fn new() -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("hbbuildah")
            .tempdir_in("/tmp")?;
        for d in ["root", "run", "tmp"] {
            std::fs::create_dir_all(dir.path().join(d))?;
        }
        std::fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{}\"\nrunroot = \"{}\"\n",
                dir.path().join("root").display(),
                dir.path().join("run").display()
            ),
        )?;
        std::fs::write(
            dir.path().join("policy.json"),
            r#"{"default": [{"type": "insecureAcceptAnything"}]}"#,
        )?;
        std::fs::write(dir.path().join("auth.json"), "{}")?;
        Ok(Self { dir })
    }

    pub fn bud(&self, context: &Path) -> Command {
        let d = self.dir.path();
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(d.join("root"))
            .arg("--runroot")
            .arg(d.join("run"))
            .args(["--storage-driver", "overlay"])
            .env("CONTAINERS_STORAGE_CONF", d.join("storage.conf"))
            .env("TMPDIR", d.join("tmp"))
            .args([
                "bud",
                "--isolation",
                "chroot",
                "--layers",
                "--pull",
                "--tls-verify=false",
                "--no-hosts",
                "--dns=none",
                "--quiet",
            ])
            .arg("--authfile")
            .arg(d.join("auth.json"))
            .arg("--signature-policy")
            .arg(d.join("policy.json"))
            .args(["-t", "bench:1"])
            .arg(context);
        cmd
    }
}

impl Drop for Buildah {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("root/overlay"))
            .stderr(Stdio::null())
            .status();
    }
}
