//! The `hutch-api` shapes against the published `tensorlake` crate's models: what the server
//! answers parses as the SDK's types, and what the SDK sends parses as the server's (whose
//! requests refuse unknown fields, so a field the SDK sends and Hutch lacks fails here).

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use hutch_api::{
    ContainerResources, CreateOutcome, CreateSandboxRequest, CreateSandboxResponse, ErrorDetails,
    ListSandboxesResponse, NetworkConfig, NodeKind, SandboxAccepted, SandboxInfo, SandboxStatus,
    Template, TerminationReason, UpdateSandboxRequest,
};
use serde_json::json;
use tensorlake::sandboxes::models as sdk;

fn sandbox(status: SandboxStatus) -> SandboxInfo {
    SandboxInfo {
        sandbox_id: "sbx1".into(),
        namespace: "default".into(),
        status,
        name: Some("web".into()),
        image: "busybox:latest".into(),
        runtime: "gvisor".into(),
        resources: ContainerResources {
            cpus: 0.5,
            memory_mb: 256,
            disk_mb: 0,
        },
        timeout_secs: 60,
        entrypoint: Some(vec!["sleep".into(), "60".into()]),
        network_policy: NetworkConfig {
            allow_internet_access: false,
            allow_out: vec![],
            deny_out: vec!["10.0.0.0/8".into()],
        },
        auto_resume: true,
        allow_unauthenticated_access: false,
        exposed_ports: vec![3000, 8080],
        file_systems: vec![],
        created_at: 1_700_000_000_000,
        sandbox_url: None,
        ingress_endpoint: Some("https://sbx.example.com".into()),
        pending_reason: None,
        termination_reason: Some(TerminationReason::Timeout),
        outcome: Some(TerminationReason::Timeout),
        terminated_at: Some(1_700_000_060_000),
        error_details: Some(ErrorDetails { message: None }),
        template_id: Some("tpl_1".into()),
        pool_id: Some("pool_1".into()),
        resource_resize: None,
        idle_timeout_secs: None,
    }
}

#[test]
fn sandbox_answers_parse_as_the_sdks_models() {
    let info = sandbox(SandboxStatus::Terminated);
    let parsed: sdk::SandboxInfo = serde_json::from_value(serde_json::to_value(&info).unwrap())
        .expect("SandboxInfo parses as the SDK's");
    assert_eq!(parsed.sandbox_id, "sbx1");
    assert_eq!(parsed.status, "terminated");
    assert_eq!(parsed.termination_reason.as_deref(), Some("timeout"));
    assert_eq!(parsed.resources.memory_mb, 256);
    assert_eq!(
        parsed.network_policy.unwrap().deny_out,
        vec!["10.0.0.0/8".to_string()]
    );
    assert_eq!(parsed.exposed_ports, Some(vec![3000, 8080]));
    assert_eq!(
        parsed.ingress_endpoint.as_deref(),
        Some("https://sbx.example.com")
    );

    let list = ListSandboxesResponse {
        sandboxes: vec![info],
        cursor: Some("5.sbx1".into()),
    };
    let parsed: sdk::ListSandboxesResponse =
        serde_json::from_value(serde_json::to_value(&list).unwrap()).unwrap();
    assert_eq!(parsed.cursor.as_deref(), Some("5.sbx1"));

    let created = CreateSandboxResponse {
        sandbox_id: "sbx1".into(),
        status: CreateOutcome::Running,
        name: None,
        sandbox_url: Some("http://127.0.0.1:9443".into()),
        ingress_endpoint: Some("http://localhost:9443".into()),
        reason: None,
        termination_reason: None,
        error_details: None,
    };
    let parsed: sdk::CreateSandboxResponse =
        serde_json::from_value(serde_json::to_value(&created).unwrap()).unwrap();
    assert_eq!(
        (parsed.status.as_str(), parsed.sandbox_url.as_deref()),
        ("running", Some("http://127.0.0.1:9443"))
    );
    assert_eq!(
        parsed.ingress_endpoint.as_deref(),
        Some("http://localhost:9443")
    );

    let accepted = SandboxAccepted {
        sandbox_id: "sbx1".into(),
        state: SandboxStatus::Pending,
        pending_reason: Some("scheduling".into()),
        name: None,
    };
    let parsed: sdk::SandboxAccepted =
        serde_json::from_value(serde_json::to_value(&accepted).unwrap()).unwrap();
    assert_eq!(parsed.state, "pending");
}

#[test]
fn what_the_sdk_sends_parses_as_the_servers_requests() {
    let sdk_create: sdk::CreateSandboxRequest = serde_json::from_value(json!({
        "image": "python:3.12", "resources": {"cpus": 2.0, "memory_mb": 512, "disk_mb": 1024},
        "timeout_secs": 30, "entrypoint": ["sleep", "1"], "name": "job",
        "network": {"allow_internet_access": false, "allow_out": [], "deny_out": []},
        "wait": false, "max_pending_secs": 5, "auto_resume": true,
        "allow_unauthenticated_access": true, "exposed_ports": [8080, 3000],
    }))
    .unwrap();
    let sent = serde_json::to_value(&sdk_create).unwrap();
    let ours: CreateSandboxRequest = serde_json::from_value(sent.clone())
        .unwrap_or_else(|e| panic!("the SDK's create {sent} does not parse: {e}"));
    assert_eq!(ours.resources.unwrap().memory_mb, Some(512));
    assert_eq!(ours.wait, Some(false));
    assert_eq!(ours.exposed_ports, Some(vec![8080, 3000]));

    // An SDK create that leaves resources unset sends none (or the -1 sentinels).
    let bare: sdk::CreateSandboxRequest =
        serde_json::from_value(json!({"image": "busybox"})).unwrap();
    let ours: CreateSandboxRequest =
        serde_json::from_value(serde_json::to_value(&bare).unwrap()).unwrap();
    assert_eq!(ours.image.as_deref(), Some("busybox"));

    let update: sdk::UpdateSandboxRequest =
        serde_json::from_value(json!({"name": "renamed", "network": null})).unwrap();
    let sent = serde_json::to_value(&update).unwrap();
    let ours: UpdateSandboxRequest = serde_json::from_value(sent.clone())
        .unwrap_or_else(|e| panic!("the SDK's update {sent} does not parse: {e}"));
    assert_eq!(ours.name.as_deref(), Some("renamed"));
}

#[test]
fn templates_parse_as_the_sdks() {
    let template = Template {
        id: "tpl_1".into(),
        name: "py".into(),
        snapshot_id: "snap_1".into(),
        snapshot_uri: "hutch://templates/tpl_1".into(),
        snapshot_format_version: "hutch_oci_layers_v1".into(),
        snapshot_size_bytes: 10,
        rootfs_disk_bytes: 1 << 30,
        rootfs_node_kind: NodeKind::Diff,
        public: false,
        dockerfile: "FROM busybox".into(),
        created_at: 1,
        updated_at: 2,
        parent_template_id: Some("tpl_0".into()),
        parent_template_name: Some("base".into()),
        image: "hutch-template/tpl_1:latest".into(),
        image_id: "sha256:00".into(),
        own_bytes: 3,
        total_bytes: 4,
        build_id: None,
    };
    let parsed: tensorlake::sandbox_templates::models::SandboxTemplate =
        serde_json::from_value(serde_json::to_value(&template).unwrap()).unwrap();
    assert_eq!(
        parsed.snapshot_uri.as_deref(),
        Some("hutch://templates/tpl_1")
    );
    assert_eq!(parsed.rootfs_node_kind.as_deref(), Some("diff"));
    assert_eq!(parsed.snapshot_size_bytes, Some(10));
}
