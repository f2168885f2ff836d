//! Pulling an image into the store: resolve the manifest (an index resolves to
//! linux/amd64), fetch and verify the config, then download the layers the store lacks,
//! several at once, each one stored and unpacked in the same pass while it streams in. A
//! dropped download resumes with a range request; the store verifies every byte and
//! publishes nothing until all of it is in.

use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use hutch_store::{Digest, Image, Ingest, IngestLayer, Store};
use oci_spec::image::ImageConfiguration;
use tokio::sync::{Semaphore, mpsc};

use crate::body::CONFIG_LIMIT;
use crate::client::Client;
use crate::error::RegistryError;
use crate::events::{Event, Sink};
use crate::manifest::{self, Index, Manifest};
use crate::reference::Reference;

/// Layers downloaded at once.
const CONCURRENT_LAYERS: usize = 3;
/// Attempts per layer before a dropped download is an error.
const ATTEMPTS: u32 = 4;

fn digest_of(bytes: &[u8]) -> String {
    Digest::of_bytes(bytes).to_string()
}

fn parse_digest(r: &Reference, value: &str, what: &str) -> Result<Digest, RegistryError> {
    Digest::parse(value).map_err(|e| RegistryError::Malformed {
        reference: r.to_string(),
        what: what.to_string(),
        detail: e.to_string(),
    })
}

/// Pulls `r` into `store` under [`Reference::store_name`], reporting progress to `events`.
pub async fn pull(
    client: &Client,
    store: &Store,
    r: &Reference,
    events: Sink<'_>,
) -> Result<Image, RegistryError> {
    let malformed = |what: &str, detail: String| RegistryError::Malformed {
        reference: r.to_string(),
        what: what.to_string(),
        detail,
    };
    let wanted = r.manifest_reference().to_string();
    let (mut body, content_type) = client.manifest(r, &wanted).await?;
    let mut kind = manifest::kind(&content_type, &body);
    if let Some(pinned) = &r.digest {
        let actual = digest_of(&body);
        if &actual != pinned {
            return Err(RegistryError::DigestMismatch {
                reference: r.to_string(),
                what: "the manifest".into(),
                expected: pinned.clone(),
                actual,
            });
        }
    }
    if manifest::is_index(&kind) {
        let index: Index = serde_json::from_slice(&body)
            .map_err(|e| malformed("the image index", e.to_string()))?;
        let chosen = manifest::select_platform(&index).map_err(|available| {
            RegistryError::NoMatchingPlatform {
                reference: r.to_string(),
                available,
            }
        })?;
        // Checked as the store's before it names anything, even a URL.
        let digest = parse_digest(
            r,
            chosen.digest().as_ref(),
            "the linux/amd64 manifest digest",
        )?
        .to_string();
        let (b, ct) = client.manifest(r, &digest).await?;
        let actual = digest_of(&b);
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                reference: r.to_string(),
                what: format!("the linux/amd64 manifest {digest}"),
                expected: digest,
                actual,
            });
        }
        kind = manifest::kind(&ct, &b);
        body = b;
    }
    if !manifest::is_manifest(&kind) {
        return Err(RegistryError::UnknownMediaType {
            reference: r.to_string(),
            what: "manifest".into(),
            media_type: kind,
        });
    }
    let parsed: Manifest =
        serde_json::from_slice(&body).map_err(|e| malformed("the manifest", e.to_string()))?;
    if !manifest::config_type_ok(parsed.config().media_type()) {
        return Err(RegistryError::UnknownMediaType {
            reference: r.to_string(),
            what: "config".into(),
            media_type: parsed.config().media_type().to_string(),
        });
    }
    for layer in parsed.layers() {
        if !manifest::layer_type_ok(layer.media_type()) {
            return Err(RegistryError::UnknownMediaType {
                reference: r.to_string(),
                what: format!("layer {}", layer.digest()),
                media_type: layer.media_type().to_string(),
            });
        }
    }
    let manifest_digest = Digest::of_bytes(&body);
    let total = parsed
        .layers()
        .iter()
        .fold(0u64, |sum, l| sum.saturating_add(l.size()));
    events(Event::Resolved {
        reference: r.to_string(),
        manifest_digest: manifest_digest.to_string(),
        layers: parsed.layers().len(),
        total_bytes: total,
    });

    // The config names the layers' diff_ids, which is what the store keeps layers by.
    let config_digest = parse_digest(r, parsed.config().digest().as_ref(), "the config digest")?;
    let config = fetch_small(
        client,
        r,
        parsed.config().digest().as_ref(),
        parsed.config().size(),
        "config",
    )
    .await?;
    let image_config: ImageConfiguration =
        serde_json::from_slice(&config).map_err(|e| malformed("the config", e.to_string()))?;
    let diff_ids: Vec<Digest> = image_config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|id| parse_digest(r, id, "a diff_id"))
        .collect::<Result<_, _>>()?;
    if diff_ids.len() != parsed.layers().len() {
        return Err(malformed(
            "the config",
            format!(
                "it lists {} diff_ids for {} layers",
                diff_ids.len(),
                parsed.layers().len()
            ),
        ));
    }

    let ingest = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.ingest())
            .await
            .expect("ingest task")
            .map_err(|e| RegistryError::store(r, e))?
    };
    let ingest = Arc::new(ingest);
    ingest
        .add_bytes(&body, &manifest_digest, "the manifest")
        .and_then(|()| ingest.add_bytes(&config, &config_digest, "the config"))
        .map_err(|e| RegistryError::store(r, e))?;

    let mut layers = Vec::with_capacity(parsed.layers().len());
    let mut seen = std::collections::HashSet::new();
    let limit = Arc::new(Semaphore::new(CONCURRENT_LAYERS));
    let mut downloads = Vec::new();
    let count = parsed.layers().len();
    for (i, (desc, diff_id)) in parsed.layers().iter().zip(&diff_ids).enumerate() {
        let blob = parse_digest(r, desc.digest().as_ref(), "a layer digest")?;
        layers.push(IngestLayer {
            diff_id: diff_id.clone(),
            blob: blob.clone(),
        });
        // Skipped only when both the layer and its blob are stored: the same layer with
        // another compression still brings its blob, so the image can be saved and pushed.
        if !seen.insert(diff_id.clone()) || (store.has_layer(diff_id) && store.has_blob(&blob)) {
            events(Event::LayerSkipped {
                digest: desc.digest().to_string(),
                size: desc.size(),
            });
            continue;
        }
        let what = format!("{} ({} of {count})", desc.digest(), i + 1);
        let limit = Arc::clone(&limit);
        let ingest = Arc::clone(&ingest);
        let (client, r) = (client.clone(), r.clone());
        let (desc, diff_id) = (desc.clone(), diff_id.clone());
        downloads.push(async move {
            let _permit = limit.acquire().await.expect("semaphore");
            download_layer(&client, &r, ingest, &desc, blob, diff_id, what, events).await
        });
    }
    for result in futures_util::future::join_all(downloads).await {
        result?;
    }
    let name = r.store_name();
    let ingest = Arc::try_unwrap(ingest)
        .map_err(|_| malformed("the pull", "a layer task still runs".into()))?;
    let image = tokio::task::spawn_blocking(move || {
        ingest.commit(&name, &manifest_digest, &config_digest, &layers)
    })
    .await
    .expect("commit task")
    .map_err(|e| RegistryError::store(r, e))?;
    events(Event::Done {
        reference: r.to_string(),
        image: image.name.clone(),
        id: image.id.to_string(),
    });
    Ok(image)
}

/// A config blob, verified; never more than its descriptor's size is read.
async fn fetch_small(
    client: &Client,
    r: &Reference,
    digest: &str,
    size: u64,
    what: &str,
) -> Result<Bytes, RegistryError> {
    if size > CONFIG_LIMIT {
        return Err(RegistryError::TooLarge {
            reference: r.to_string(),
            what: format!("the {what} (its manifest says {size} bytes)"),
            limit: CONFIG_LIMIT,
        });
    }
    let (resp, _) = client.blob(r, digest, 0).await?;
    let bytes = client
        .read_body(r, resp, size, &format!("the {what} {digest}"))
        .await?;
    let actual = digest_of(&bytes);
    if actual != digest || bytes.len() as u64 != size {
        return Err(RegistryError::DigestMismatch {
            reference: r.to_string(),
            what: format!("the {what} ({} bytes, {size} announced)", bytes.len()),
            expected: digest.to_string(),
            actual,
        });
    }
    Ok(bytes)
}

/// Streams one layer into the store, resuming a dropped download with a range request (or
/// skipping what was already delivered when the registry ignores ranges).
#[allow(clippy::too_many_arguments)]
async fn download_layer(
    client: &Client,
    r: &Reference,
    ingest: Arc<Ingest>,
    desc: &manifest::Descriptor,
    blob: Digest,
    diff_id: Digest,
    what: String,
    events: Sink<'_>,
) -> Result<(), RegistryError> {
    events(Event::LayerStarted {
        digest: desc.digest().to_string(),
        size: desc.size(),
    });
    let (tx, rx) = mpsc::channel::<Bytes>(32);
    let size = desc.size();
    let worker = tokio::task::spawn_blocking({
        let (blob, diff_id, what) = (blob.clone(), diff_id.clone(), what.clone());
        move || {
            let reader = ChannelReader {
                rx,
                current: Bytes::new(),
            };
            ingest.add_layer(reader, &blob, Some(size), &diff_id, &what)
        }
    });
    let fed = feed(client, r, desc, tx, events).await;
    let stored = worker.await.expect("layer task");
    // A network failure explains a short stream better than the store's size check does.
    fed?;
    stored.map_err(|e| RegistryError::store(r, e))?;
    events(Event::LayerDone {
        digest: desc.digest().to_string(),
        size: desc.size(),
    });
    Ok(())
}

async fn feed(
    client: &Client,
    r: &Reference,
    desc: &manifest::Descriptor,
    tx: mpsc::Sender<Bytes>,
    events: Sink<'_>,
) -> Result<(), RegistryError> {
    let mut delivered = 0u64;
    let mut attempt = 0u32;
    let mut last_report = 0u64;
    loop {
        attempt += 1;
        let failure = match client.blob(r, desc.digest().as_ref(), delivered).await {
            Ok((resp, ranged)) => {
                let mut skip = if ranged { 0 } else { delivered };
                let mut stream = resp.bytes_stream();
                let mut broke = None;
                while let Some(chunk) = stream.next().await {
                    let mut chunk = match chunk {
                        Ok(c) => c,
                        Err(e) => {
                            broke = Some(client.transport_error(r, e));
                            break;
                        }
                    };
                    if skip > 0 {
                        let n = skip.min(chunk.len() as u64);
                        chunk = chunk.slice(n as usize..);
                        skip -= n;
                        if chunk.is_empty() {
                            continue;
                        }
                    }
                    // Never more than the descriptor says: the store would refuse the excess
                    // too, but a registry streaming forever should not be read forever.
                    if delivered + chunk.len() as u64 > desc.size() {
                        return Err(RegistryError::TooLarge {
                            reference: r.to_string(),
                            what: format!("layer {}", desc.digest()),
                            limit: desc.size(),
                        });
                    }
                    delivered += chunk.len() as u64;
                    if tx.send(chunk).await.is_err() {
                        // The store stopped reading: its error says why.
                        return Ok(());
                    }
                    if delivered - last_report >= 1 << 20 || delivered == desc.size() {
                        last_report = delivered;
                        events(Event::LayerProgress {
                            digest: desc.digest().to_string(),
                            bytes: delivered,
                            size: desc.size(),
                        });
                    }
                }
                match broke {
                    Some(e) => e,
                    None if delivered >= desc.size() => return Ok(()),
                    None => RegistryError::Truncated {
                        reference: r.to_string(),
                        what: format!("layer {}", desc.digest()),
                        got: delivered,
                        expected: desc.size(),
                    },
                }
            }
            Err(e @ (RegistryError::Transport { .. } | RegistryError::Server { .. })) => e,
            Err(e) => return Err(e),
        };
        if attempt >= ATTEMPTS {
            return Err(failure);
        }
        events(Event::LayerRetry {
            digest: desc.digest().to_string(),
            offset: delivered,
            error: failure.to_string(),
        });
        tokio::time::sleep(std::time::Duration::from_millis(200 * u64::from(attempt))).await;
    }
}

/// The blocking side of a layer download: reads the chunks the network side sends.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}
