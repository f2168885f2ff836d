//! Detecting the runsc build (real runsc, no sandbox of Hutch's booted).

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use hutch_runtime::gvisor::Runsc;

/// A detection killed midway (its probe sandbox's state directory, its half-written cache)
/// leaves nothing for good: the next detection, which finds no cache, removes it.
#[test]
fn a_detection_killed_midway_leaves_nothing_behind() {
    let root = tempfile::tempdir().expect("tempdir");
    // No such process can exist (above any pid_max).
    let probe = root.path().join(".probe.2147483646");
    std::fs::create_dir_all(probe.join("state")).expect("probe dir");
    let cache = root.path().join(".build.2147483646");
    std::fs::write(&cache, b"{\"half").expect("cache tmp");
    // A live process's (pid 1 is always alive) is not touched.
    let live = root.path().join(".probe.1");
    std::fs::create_dir_all(&live).expect("live probe dir");

    let runsc = Runsc::detect(root.path().to_path_buf()).expect("runsc is installed");
    assert!(!runsc.build.version.is_empty());
    assert!(!probe.exists(), "dead probe directory left");
    assert!(!cache.exists(), "dead cache temp file left");
    assert!(live.exists(), "a live detection's probe was removed");
    assert!(root.path().join("build.json").is_file());
}
