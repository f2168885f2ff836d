//! The Debian + python build case the build benchmarks share: a Dockerfile (ENV, WORKDIR,
//! COPY, two RUNs, USER, CMD) over the Debian fixture in a local registry, its context, and
//! the direct build of it.

use std::path::Path;
use std::process::Command;

/// `hutch image build` of `context` into the store of `home`, as `bench:1`, its base from the
/// plain-HTTP `registry`.
pub fn hutch_build(hutch: &Path, home: &Path, registry: &str, context: &Path) -> Command {
    let mut cmd = Command::new(hutch);
    cmd.env("HUTCH_HOME", home)
        .args(["image", "build", "--insecure-registry", registry])
        .args(["-t", "bench:1"])
        .arg(context);
    cmd
}

/// Writes the Dockerfile, `FROM <registry>/debian:1`, and the files it copies into `dir`.
pub fn write_context(dir: &Path, registry: &str) -> std::io::Result<()> {
    std::fs::write(
        dir.join("Dockerfile"),
        format!(
            r#"FROM {registry}/debian:1
ENV PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
COPY app.py settings.json ./
RUN python3 -c "import json; json.dump({{'rows': list(range(1000))}}, open('/app/data.json', 'w'))" && python3 app.py > /app/out.txt
RUN useradd -m runner && chown -R runner /app
USER runner
CMD ["python3", "/app/app.py"]
"#
        ),
    )?;
    std::fs::write(
        dir.join("app.py"),
        "import json\nprint(len(json.load(open('/app/data.json'))['rows']))\n",
    )?;
    std::fs::write(dir.join("settings.json"), "{\"debug\": false}\n")
}
