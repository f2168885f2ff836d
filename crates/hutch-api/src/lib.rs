//! The control plane's JSON shapes, with their OpenAPI schemas.
//!
//! This crate owns what `hutch serve` accepts and answers on its API listener, nothing else:
//! the Tensorlake lifecycle API (`/v1/namespaces/{ns}/sandboxes...` and the flat
//! `/sandboxes...`), the platform API (templates and template builds), and Hutch's own
//! routes (`/hutch/v1/...`, `/healthz`). Field names, optional fields and defaults are those
//! the server answers with and the `tensorlake` crate 0.5.160 parses and sends
//! (`crates/hutch-cli/tests/api_shapes.rs` checks both ways against its models). It has no
//! I/O and knows no routes: the server's `openapi.rs` pairs these types with its paths. The data plane (`/api/v1/...` inside a sandbox) is
//! `hutch-wire`'s, and so is the one error body ([`ErrorBody`]) both planes answer with.

pub mod lifecycle;
pub mod native;
pub mod platform;

pub use hutch_wire::ErrorBody;
pub use lifecycle::{
    ArchivedSandboxInfo, ClaimSandboxRequest, ClaimSandboxResponse, ContainerResources,
    CreateOutcome, CreateSandboxPoolResponse, CreateSandboxRequest, CreateSandboxResources,
    CreateSandboxResponse, ErrorDetails, FileSystemMount, GpuResources, ListArchivedSandboxesQuery,
    ListArchivedSandboxesResponse, ListSandboxPoolsResponse, ListSandboxesQuery,
    ListSandboxesResponse, NetworkConfig, PageDirection, PoolContainerInfo, PoolCounts,
    ResizeSandboxResources, SandboxAccepted, SandboxAction, SandboxInfo, SandboxPoolInfo,
    SandboxPoolRequest, SandboxResourceResizeInfo, SandboxStatus, StopSandboxRequest,
    TerminationReason, UpdateSandboxRequest,
};
pub use native::{
    DefaultImageStatus, EgressEntry, EgressLog, EgressVerdict, Health, ImageBuildState,
    PullImageRequest,
};
pub use platform::{
    BuildParent, BuildState, BuilderSpec, CompleteBuildRequest, ImageCatalog, KeyIntrospection,
    NodeKind, Pagination, ParentTemplateRef, PrepareBuildRequest, PrepareBuildResponse, Template,
    TemplateBuild, TemplateList, TemplateListQuery,
};
