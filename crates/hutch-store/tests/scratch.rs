//! `Store::scratch_dir`: a working directory in `tmp/` that other `Store`s leave alone while
//! it lives (open's cleanup, fsck, fsck --repair), unlike lock-less leftovers beside it.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

mod fixture;

use std::fs;
use std::time::{Duration, SystemTime};

use fixture::Env;
use hutch_store::{FindingKind, Store, StoreError};

#[test]
fn a_live_scratch_dir_survives_open_and_repair_while_leftovers_go() {
    let env = Env::new();
    let root = env.store.root().to_path_buf();
    let scratch = env.store.scratch_dir("build-context").expect("scratch");
    let work = scratch.path().to_path_buf();
    assert!(work.starts_with(root.join("tmp")), "{}", work.display());
    assert_eq!(fs::read_dir(&work).expect("ls").count(), 0, "starts empty");
    fs::write(work.join("Dockerfile"), b"FROM scratch\n").expect("write");

    // What the server used to leave in tmp/ (a tempdir with no lock), and a scratch dir whose
    // owner died (its lock file is there, nobody holds it).
    let lockless = root.join("tmp/build-context-abc123");
    fs::create_dir_all(lockless.join("sub")).expect("lockless");
    let orphan = root.join("tmp/scratch-build-context-1-2-3");
    fs::create_dir_all(orphan.join("work")).expect("orphan");
    fs::write(orphan.join(".lock"), b"").expect("orphan lock");

    // Another handle on the same root, as `hutch image ls` in another process opens it.
    Store::open(&root).expect("open again");
    assert!(
        !lockless.exists(),
        "a lock-less leftover is cleaned on open"
    );
    assert!(
        !orphan.exists(),
        "an abandoned scratch dir is cleaned on open"
    );
    assert_eq!(
        fs::read(work.join("Dockerfile")).expect("still there"),
        b"FROM scratch\n"
    );

    let other = Store::open(&root).expect("open");
    fs::create_dir(&lockless).expect("lockless again");
    let report = other.fsck(false).expect("fsck");
    assert_eq!(
        report
            .findings
            .iter()
            .map(|f| (f.kind, f.subject.as_str()))
            .collect::<Vec<_>>(),
        [(FindingKind::StaleTmp, "tmp/build-context-abc123")],
        "only the leftover is reported: {report:#?}"
    );
    let repaired = other.fsck(true).expect("repair");
    assert!(
        repaired.findings.iter().all(|f| f.repaired),
        "{repaired:#?}"
    );
    assert!(!lockless.exists(), "repair removes the leftover");
    assert!(
        work.join("Dockerfile").is_file(),
        "repair keeps the live scratch dir"
    );

    let dir = work.parent().expect("parent").to_path_buf();
    drop(scratch);
    assert!(!dir.exists(), "dropping the guard removes the directory");
    assert!(other.fsck(false).expect("fsck").is_clean());
}

#[test]
fn a_scratch_dir_needs_a_plain_label_and_a_fresh_name() {
    let env = Env::new();
    for bad in ["", "../up", "Upper", "a/b", &"x".repeat(33)] {
        match env.store.scratch_dir(bad) {
            Err(StoreError::InvalidName { .. }) => {}
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    let a = env.store.scratch_dir("default-image").expect("a");
    let b = env.store.scratch_dir("default-image").expect("b");
    assert_ne!(a.path(), b.path());
}

/// A process killed between creating a scratch dir and publishing its lock leaves a dir
/// with no `.lock` (maybe a `.lock.pending`). Cleanup takes it for one being set up while it
/// is fresh, and removes it once it is old: it does not stay forever.
#[test]
fn a_scratch_dir_left_without_its_lock_is_swept_once_old() {
    let env = Env::new();
    let root = env.store.root().to_path_buf();
    let fresh = root.join("tmp/scratch-build-context-1-2-3");
    let aged = root.join("tmp/scratch-build-context-4-5-6");
    let aged_pending = root.join("tmp/scratch-default-image-7-8-9");
    for dir in [&fresh, &aged, &aged_pending] {
        fs::create_dir(dir).expect("mkdir");
    }
    fs::write(aged_pending.join(".lock.pending"), b"").expect("pending lock");
    let two_hours_ago = SystemTime::now() - Duration::from_secs(2 * 60 * 60);
    for dir in [&aged, &aged_pending] {
        fs::File::open(dir)
            .and_then(|d| d.set_modified(two_hours_ago))
            .expect("age the dir");
    }

    Store::open(&root).expect("open again");
    assert!(
        fresh.is_dir(),
        "a fresh lock-less scratch dir may still be set up"
    );
    assert!(!aged.exists(), "an old lock-less scratch dir is swept");
    assert!(
        !aged_pending.exists(),
        "an old half-locked scratch dir is swept"
    );
}
