//! Pushing an image from the store: every blob the registry lacks (checked with HEAD), in a
//! monolithic upload each, then the manifest under the reference's tag.

use hutch_store::{Digest, Store};
use reqwest::header::{CONTENT_TYPE, HeaderMap, LOCATION};
use reqwest::{Method, StatusCode};

use crate::client::{Body, Client};
use crate::error::RegistryError;
use crate::events::{Event, Sink};
use crate::manifest::{self, Manifest};
use crate::reference::Reference;

/// Pushes the store's image `name` to `r`.
pub async fn push(
    client: &Client,
    store: &Store,
    name: &str,
    r: &Reference,
    events: Sink<'_>,
) -> Result<(), RegistryError> {
    let image = store.image(name).map_err(|e| RegistryError::store(r, e))?;
    let manifest_file = store.blob_file(&image.manifest_digest);
    let body = std::fs::read(&manifest_file).map_err(|e| {
        RegistryError::store(
            r,
            hutch_store::StoreError::Io {
                context: format!(
                    "reading the manifest of {name} ({})",
                    manifest_file.display()
                ),
                source: e,
            },
        )
    })?;
    let parsed: Manifest = serde_json::from_slice(&body).map_err(|e| RegistryError::Malformed {
        reference: r.to_string(),
        what: format!("the stored manifest of {name}"),
        detail: e.to_string(),
    })?;
    // Sizes a registry announced for layers the store already had were never checked.
    let total = parsed
        .layers()
        .iter()
        .fold(0u64, |sum, l| sum.saturating_add(l.size()));
    events(Event::Resolved {
        reference: r.to_string(),
        manifest_digest: image.manifest_digest.to_string(),
        layers: parsed.layers().len(),
        total_bytes: total,
    });
    for desc in std::iter::once(parsed.config()).chain(parsed.layers()) {
        push_blob(
            client,
            store,
            r,
            desc.digest().as_ref(),
            desc.size(),
            events,
        )
        .await?;
    }
    let tag = r
        .tag
        .clone()
        .unwrap_or_else(|| image.manifest_digest.to_string());
    let media_type = parsed
        .media_type()
        .as_ref()
        .map_or_else(|| manifest::OCI_MANIFEST.to_string(), ToString::to_string);
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        media_type.parse().map_err(|_| RegistryError::Malformed {
            reference: r.to_string(),
            what: "the manifest media type".into(),
            detail: media_type.clone(),
        })?,
    );
    let path = format!("/v2/{}/manifests/{tag}", r.repository);
    let resp = client
        .send(
            r,
            Method::PUT,
            &path,
            headers,
            Body::Bytes(body.into()),
            true,
        )
        .await?;
    client.check(r, resp, "the manifest upload").await?;
    events(Event::Done {
        reference: r.to_string(),
        image: name.to_string(),
        id: image.id.to_string(),
    });
    Ok(())
}

async fn push_blob(
    client: &Client,
    store: &Store,
    r: &Reference,
    digest: &str,
    size: u64,
    events: Sink<'_>,
) -> Result<(), RegistryError> {
    let parsed = Digest::parse(digest).map_err(|e| RegistryError::Malformed {
        reference: r.to_string(),
        what: "a blob digest".into(),
        detail: e.to_string(),
    })?;
    let file = store.blob_file(&parsed);
    if !file.is_file() {
        return Err(RegistryError::store(
            r,
            hutch_store::StoreError::Corrupt {
                path: file,
                reason: format!("blob {digest} is missing; the image cannot be pushed"),
            },
        ));
    }
    let path = format!("/v2/{}/blobs/{digest}", r.repository);
    let head = client
        .send(r, Method::HEAD, &path, HeaderMap::new(), Body::Empty, true)
        .await?;
    if head.status() == StatusCode::OK {
        events(Event::LayerSkipped {
            digest: digest.to_string(),
            size,
        });
        return Ok(());
    }
    events(Event::LayerStarted {
        digest: digest.to_string(),
        size,
    });
    let start = format!("/v2/{}/blobs/uploads/", r.repository);
    let resp = client
        .send(r, Method::POST, &start, HeaderMap::new(), Body::Empty, true)
        .await?;
    let resp = client.check(r, resp, "starting a blob upload").await?;
    let location = resp
        .headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| RegistryError::Malformed {
            reference: r.to_string(),
            what: "the upload answer".into(),
            detail: "no Location header".into(),
        })?
        .to_string();
    let location = if location.starts_with('/') {
        format!("{}{location}", client.base(r))
    } else {
        location
    };
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{location}{sep}digest={digest}");
    let mut headers = HeaderMap::new();
    headers.insert(
        CONTENT_TYPE,
        "application/octet-stream".parse().expect("static header"),
    );
    let resp = client
        .send(r, Method::PUT, &url, headers, Body::File(file, size), true)
        .await?;
    client
        .check(r, resp, &format!("the upload of blob {digest}"))
        .await?;
    events(Event::LayerDone {
        digest: digest.to_string(),
        size,
    });
    Ok(())
}
