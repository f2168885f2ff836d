//! The gVisor backend through the `Backend` trait alone: what it reports it can do, how it
//! refuses what it cannot, and the optional operations that need no running sandbox. Runs
//! against a real store and the installed runsc (no sandbox is started).

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use hutch_runtime::gvisor::{GvisorBackend, GvisorConfig};
use hutch_runtime::{
    Backend, Capability, CapabilityName as C, CapabilityReason, CheckpointOptions, RestoreSpec,
    RuntimeError, SandboxSpec, SnapshotDescriptor,
};

struct Fixture {
    home: tempfile::TempDir,
    backend: GvisorBackend,
}

fn fixture() -> Fixture {
    // Unix socket paths are short: a home directly under /tmp.
    let home = tempfile::Builder::new()
        .prefix("hs")
        .tempdir_in("/tmp")
        .unwrap();
    // `new` only checks that the agent binary exists; nothing here boots a sandbox.
    let agent_binary = home.path().join("agent");
    std::fs::write(&agent_binary, b"").unwrap();
    let store = hutch_store::Store::open(&home.path().join("store")).unwrap();
    let backend = GvisorBackend::new(
        GvisorConfig {
            home: home.path().to_path_buf(),
            agent_binary,
        },
        store,
    )
    .unwrap();
    Fixture { home, backend }
}

fn feature_gated(capability: Capability) -> String {
    match capability {
        Capability::Unsupported {
            reason: CapabilityReason::FeatureGated { feature },
        } => feature,
        other => panic!("expected a feature-gated capability, got {other:?}"),
    }
}

#[test]
fn the_optional_operations_it_offers_are_reported_supported() {
    let f = fixture();
    let caps = f.backend.capabilities();
    for name in [
        C::SandboxRunAttached,
        C::SandboxWritableLayer,
        C::SandboxSocket,
        // Served by the agent's inotify watches (tests/files_more.rs in hutch-cli).
        C::FilesystemWatch,
    ] {
        assert!(caps.is_supported(name), "{name}");
    }
    // Networks: with the 2024-07 runsc or later (and root), else refused naming why.
    let networks = f
        .backend
        .runsc()
        .build
        .date()
        .is_some_and(|d| d >= 20_240_700);
    for name in [C::NetworkEgress, C::NetworkAttach] {
        match caps.get(name) {
            Capability::Supported => assert!(networks, "{name} on an old runsc"),
            Capability::Unsupported {
                reason: CapabilityReason::HostGated { detail },
            } => assert!(!networks && detail.contains("runsc"), "{name}: {detail}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(feature_gated(caps.get(C::SandboxCheckpoint)).contains("issue 16"));
    assert!(feature_gated(caps.get(C::SandboxRestore)).contains("issue 16"));
}

#[tokio::test]
async fn network_attach_checkpoint_and_restore_are_refused_as_reported() {
    let f = fixture();
    let backend: &dyn Backend = &f.backend;
    let caps = backend.capabilities();
    let check = |result: Result<(), RuntimeError>, name: C| match result {
        Err(RuntimeError::UnsupportedCapability {
            backend: "gvisor",
            capability,
            reason,
        }) => {
            assert_eq!(capability, name);
            assert_eq!(Capability::Unsupported { reason }, caps.get(name));
        }
        other => panic!("{name}: expected a refusal, got {other:?}"),
    };
    // A policy for a sandbox that does not exist: not found, typed.
    if caps.is_supported(C::NetworkAttach) {
        let unknown = backend
            .attach_network("no-such-sbx", &hutch_runtime::net::NetworkPolicy::default())
            .await;
        assert!(
            matches!(unknown, Err(RuntimeError::NotFound { .. })),
            "{unknown:?}"
        );
    }
    check(
        backend
            .checkpoint(
                "sbx",
                Path::new("/tmp/nowhere"),
                &CheckpointOptions::default(),
            )
            .await
            .map(|_| ()),
        C::SandboxCheckpoint,
    );
    let snapshot = SnapshotDescriptor {
        sandbox_id: "sbx".into(),
        dir: "/tmp/nowhere".into(),
        image: "busybox:latest".into(),
        image_id: "sha256:00".into(),
        spec: SandboxSpec::default(),
        memory: true,
        created_at: 0,
        backend: "gvisor".into(),
    };
    check(
        backend
            .restore(RestoreSpec {
                snapshot,
                id: None,
                labels: Default::default(),
            })
            .await
            .map(|_| ()),
        C::SandboxRestore,
    );
}

#[tokio::test]
async fn the_build_channel_socket_is_placed_in_the_sandboxs_run_directory_only() {
    let f = fixture();
    let backend: &dyn Backend = &f.backend;
    let invalid = |name: &str| {
        matches!(
            backend.listen_in_sandbox("sbx", name),
            Err(RuntimeError::InvalidSpec { .. })
        )
    };
    for name in [
        "",
        hutch_wire::AGENT_SOCKET_NAME,
        "../escape.sock",
        "a/b",
        ".hidden",
    ] {
        assert!(invalid(name), "{name:?} was accepted");
    }
    assert!(matches!(
        backend.listen_in_sandbox("../x", "build.sock"),
        Err(RuntimeError::InvalidSpec { .. })
    ));
    assert!(matches!(
        backend.listen_in_sandbox("nosuch", "build.sock"),
        Err(RuntimeError::NotFound { .. })
    ));

    // A sandbox's run directory as `create` leaves it, with a stale file where the socket
    // goes: the socket replaces it and a client reaches the listener.
    let run = f.home.path().join("sandboxes/sbx/run");
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(run.join("build.sock"), b"stale").unwrap();
    let listener = backend.listen_in_sandbox("sbx", "build.sock").unwrap();
    let client = tokio::net::UnixStream::connect(run.join("build.sock"));
    let (accepted, connected) = tokio::join!(listener.accept(), client);
    accepted.unwrap();
    connected.unwrap();
}

#[tokio::test]
async fn the_writable_layer_of_an_unknown_sandbox_is_not_found() {
    let f = fixture();
    let backend: &dyn Backend = &f.backend;
    assert!(matches!(
        backend.writable_layer("nosuch"),
        Err(RuntimeError::NotFound { .. })
    ));
    assert!(matches!(
        backend.writable_layer("../../etc"),
        Err(RuntimeError::InvalidSpec { .. })
    ));
}
