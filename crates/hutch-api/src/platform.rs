//! The platform API's bodies (camelCase, as the `tensorlake` crate's platform client sends
//! and parses them): templates, template builds, the key introspection the SDK's build flow
//! starts with, and the CAS image catalog.

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

/// A template's root filesystem: a whole image, or layers over its parent's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum NodeKind {
    Base,
    Diff,
}

/// A template as the platform API shows it: the `tensorlake` crate's `SandboxTemplate` plus
/// Hutch's lineage and size fields.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Template {
    pub id: String,
    pub name: String,
    pub snapshot_id: String,
    pub snapshot_uri: String,
    pub snapshot_format_version: String,
    /// Stored bytes of the layers it adds.
    pub snapshot_size_bytes: u64,
    pub rootfs_disk_bytes: u64,
    pub rootfs_node_kind: NodeKind,
    pub public: bool,
    pub dockerfile: String,
    /// Milliseconds since the epoch.
    pub created_at: i64,
    pub updated_at: i64,
    pub parent_template_id: Option<String>,
    pub parent_template_name: Option<String>,
    /// The store image sandboxes start from.
    pub image: String,
    pub image_id: String,
    /// Unpacked bytes of the layers it adds.
    pub own_bytes: u64,
    /// Unpacked bytes of the whole root filesystem.
    pub total_bytes: u64,
    pub build_id: Option<String>,
}

/// `GET .../sandbox-templates`: a page, by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct TemplateList {
    pub items: Vec<Template>,
    pub pagination: Pagination,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Pagination {
    /// The next page's path and query; `null` on the last page.
    pub next: Option<String>,
}

/// `GET .../sandbox-templates?pageSize=&next=`. Both are read as strings and checked by the
/// server, whose refusal names the value as it was sent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct TemplateListQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[param(value_type = Option<usize>, minimum = 1, maximum = 1000)]
    pub page_size: Option<String>,
    /// Where the page starts, from `pagination.next`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// `GET /images/v4/images`: the CAS image catalog the SDKs list beside templates; empty,
/// since content-addressed streaming images are not built here yet.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ImageCatalog {
    #[schema(value_type = Vec<Object>)]
    pub items: Vec<serde_json::Value>,
    pub pagination: Pagination,
}

/// `POST .../sandbox-template-builds` (prepare); older SDKs send fewer fields, and fields
/// this server does not read are ignored.
// `rootfsNodeKind` is read as a string: only `diff` means anything (a diff needs its
// `parentTemplate`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrepareBuildRequest {
    pub name: String,
    pub dockerfile: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_image: Option<String>,
    #[serde(default)]
    pub public: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<NodeKind>)]
    pub rootfs_node_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_template: Option<ParentTemplateRef>,
    /// Templates a `COPY --from` names; the host engine resolves them itself.
    // Not read, so taken whatever it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<Object>>)]
    pub additional_local_images: Option<serde_json::Value>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ParentTemplateRef {
    pub template_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// What prepare answers: the builder sandbox to create and the spec to hand
/// `tl-rootfs-build`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrepareBuildResponse {
    pub build_id: String,
    /// Proves the builder sandbox's claim on the build channel; shown once.
    pub build_token: String,
    pub template_id: String,
    pub snapshot_id: String,
    pub snapshot_uri: String,
    pub rootfs_node_kind: NodeKind,
    pub builder: BuilderSpec,
    pub parent: Option<BuildParent>,
}

/// The sandbox the SDK creates to run the build's relay.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuilderSpec {
    pub image: String,
    pub command: String,
    pub cpus: f64,
    pub memory_mb: i64,
    pub disk_mb: u64,
}

/// The parent template a diff build sits on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BuildParent {
    pub parent_manifest_uri: String,
    pub rootfs_disk_bytes: u64,
    pub template_id: String,
    pub name: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BuildState {
    Prepared,
    Building,
    Built,
    Failed,
    Completed,
}

/// `GET .../sandbox-template-builds/{id}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateBuild {
    pub build_id: String,
    pub name: String,
    pub state: BuildState,
    pub rootfs_node_kind: NodeKind,
    pub parent_template_id: Option<String>,
    pub template_id: String,
    pub snapshot_id: String,
    pub builder_sandbox_id: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// `POST .../sandbox-template-builds/{id}/complete`: what the builder reported; it must
/// match what the host recorded.
// `rootfsNodeKind` is read as a string, so any other value is a mismatch (409), not a
// malformed request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompleteBuildRequest {
    pub snapshot_id: String,
    pub snapshot_uri: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_format_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<NodeKind>)]
    pub rootfs_node_kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_manifest_uri: Option<String>,
}

/// `POST /platform/v1/keys/introspect`: the presented key and its (one, local) scope, under
/// both the camelCase and snake_case names SDKs read. `id` is `null` (and `name` absent) for
/// a key this server does not know, on a server that does not require keys.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct KeyIntrospection {
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "organizationId")]
    pub organization_id_camel: String,
    #[serde(rename = "projectId")]
    pub project_id_camel: String,
    pub organization_id: String,
    pub project_id: String,
}

impl KeyIntrospection {
    /// The local scope every key has.
    pub fn local(id: Option<String>, name: Option<String>) -> Self {
        Self {
            id,
            name,
            organization_id_camel: "local".into(),
            project_id_camel: "default".into(),
            organization_id: "local".into(),
            project_id: "default".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn prepare_answers_in_the_shape_the_sdk_reads() {
        let answer = PrepareBuildResponse {
            build_id: "bld_1".into(),
            build_token: "tok".into(),
            template_id: "tpl_1".into(),
            snapshot_id: "snap".into(),
            snapshot_uri: "hutch://t".into(),
            rootfs_node_kind: NodeKind::Base,
            builder: BuilderSpec {
                image: "hutch/rootfs-builder".into(),
                command: "tl-rootfs-build".into(),
                cpus: 1.0,
                memory_mb: 512,
                disk_mb: 10240,
            },
            parent: None,
        };
        assert_eq!(
            serde_json::to_value(&answer).unwrap(),
            json!({"buildId": "bld_1", "buildToken": "tok", "templateId": "tpl_1",
                   "snapshotId": "snap", "snapshotUri": "hutch://t", "rootfsNodeKind": "base",
                   "builder": {"image": "hutch/rootfs-builder", "command": "tl-rootfs-build",
                               "cpus": 1.0, "memoryMb": 512, "diskMb": 10240},
                   "parent": null})
        );
    }

    #[test]
    fn introspection_names_the_scope_both_ways() {
        assert_eq!(
            serde_json::to_value(KeyIntrospection::local(None, None)).unwrap(),
            json!({"id": null, "organizationId": "local", "projectId": "default",
                   "organization_id": "local", "project_id": "default"})
        );
    }

    #[test]
    fn build_requests_take_any_node_kind_and_ignore_what_is_not_read() {
        // A kind the host did not build is a mismatch the host reports, not a parse error.
        let prepare: PrepareBuildRequest = serde_json::from_value(json!({
            "name": "t", "dockerfile": "FROM busybox", "rootfsNodeKind": "zzz",
            "additionalLocalImages": 5, "fromANewerSdk": true
        }))
        .unwrap();
        assert_eq!(prepare.rootfs_node_kind.as_deref(), Some("zzz"));
        let complete: CompleteBuildRequest = serde_json::from_value(json!({
            "snapshotId": "s", "snapshotUri": "u", "rootfsNodeKind": "zzz", "snapshotSizeBytes": 3
        }))
        .unwrap();
        assert_eq!(complete.rootfs_node_kind.as_deref(), Some("zzz"));
    }

    #[test]
    fn an_empty_catalog_has_a_null_next_page() {
        assert_eq!(
            serde_json::to_value(ImageCatalog::default()).unwrap(),
            json!({"items": [], "pagination": {"next": null}})
        );
    }
}
