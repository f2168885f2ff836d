//! Images on the server: the implicit pull of a create that names an image (as the
//! server's `--pull` policy says: when the store lacks it, always, or never),
//! and `POST /hutch/v1/images/pull`, which pulls while streaming the registry client's
//! progress events as JSON lines. The server pulls on its API clients' behalf, so its
//! registry client carries the operator's [`EgressPolicy`]: an image reference cannot aim
//! the server at its own network, and a failed pull tells the client no more than that.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hutch_registry::{
    Client, ClientConfig, EgressPolicy, Event, PullPolicy, Reference, RegistryError,
};

use crate::App;
use crate::auth::Caller;
use crate::error::ApiError;

/// The registry client the server pulls with (insecure registries from
/// `HUTCH_INSECURE_REGISTRIES`; credentials from Docker's config of the server's user, for
/// the registries `egress` lends them to), every connection checked against `egress`.
pub fn client(egress: &EgressPolicy) -> anyhow::Result<Client> {
    let mut config = ClientConfig::from_env(&[]);
    config.egress = Some(egress.clone());
    Ok(Client::new(config)?)
}

/// Progress lines of one pull that may wait for a client reading slowly.
const PULL_EVENTS: usize = 256;

fn pull_failed(reference: &str, e: &RegistryError) -> ApiError {
    tracing::info!(%reference, error = %e, "pull failed");
    let (status, code) = match e {
        RegistryError::InvalidReference { .. } => (StatusCode::BAD_REQUEST, "image_not_found"),
        RegistryError::Refused { .. } => (StatusCode::FORBIDDEN, "registry_not_allowed"),
        _ => (StatusCode::NOT_FOUND, "image_not_found"),
    };
    ApiError::new(
        status,
        code,
        format!("image {reference:?} is not in the store and could not be pulled: {e}"),
    )
}

fn store_has(app: &App, name: &str) -> bool {
    app.sandboxes.store().image(name).is_ok()
}

/// The store name of `reference`, pulling it first when the store lacks it.
pub async fn ensure(app: &App, reference: &str) -> Result<String, ApiError> {
    // The built-in images and the default's aliases are made here, never pulled.
    let default = app.sandboxes.default_image();
    if let Some(name) = hutch_state::default_image::builtin(reference, default) {
        if app.sandboxes.default_images().builds(&name) || store_has(app, &name) {
            return Ok(name);
        }
        if name != default {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "image_not_found",
                format!("built-in image {name:?} is missing from the store"),
            ));
        }
        // A default named by --default-image that is not there yet: pulled like any image.
        return Box::pin(ensure(app, &name)).await;
    }
    let parsed = Reference::parse(reference).map_err(|e| pull_failed(reference, &e))?;
    let name = parsed.store_name();
    let store = app.sandboxes.store();
    match (app.pull_policy, store.image(&name)) {
        (PullPolicy::Always, _) => {}
        (_, Ok(image)) => return Ok(image.name),
        (_, Err(e)) if !e.is_not_found() => return Err(ApiError::bad_request(e.to_string())),
        (PullPolicy::Never, Err(_)) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "image_not_found",
                format!(
                    "image {reference:?} is not in the store (the server does not pull: --pull never)"
                ),
            ));
        }
        (PullPolicy::Missing, Err(_)) => {}
    }
    tracing::info!(%reference, "pulling a missing image");
    let log = |event: Event| tracing::debug!(?event, "pull");
    let image = hutch_registry::pull(&app.registry, store, &parsed, &log)
        .await
        .map_err(|e| pull_failed(reference, &e))?;
    Ok(image.name)
}

/// `POST /hutch/v1/images/pull {"reference": ...}`: `application/x-ndjson`, one progress
/// event per line, ending with `done` or `{"event":"error","code":..,"message":..}`.
pub async fn pull(
    State(app): State<Arc<App>>,
    _: Caller,
    req: Request,
) -> Result<Response, ApiError> {
    let body: hutch_api::PullImageRequest = crate::lifecycle::json_body(req.into_body()).await?;
    let parsed = Reference::parse(&body.reference).map_err(|e| pull_failed(&body.reference, &e))?;
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(PULL_EVENTS);
    tokio::spawn(async move {
        // Progress a client does not read in time is dropped; the last line (`done` or
        // `error`) always goes out.
        let done = std::sync::Mutex::new(None);
        let events = |event: Event| {
            let line = serde_json::to_string(&event).unwrap_or_default() + "\n";
            match event {
                Event::Done { .. } => *done.lock().unwrap_or_else(|p| p.into_inner()) = Some(line),
                _ => {
                    let _ = tx.try_send(line);
                }
            }
        };
        let outcome =
            hutch_registry::pull(&app.registry, app.sandboxes.store(), &parsed, &events).await;
        let last = match outcome {
            Ok(_) => done.into_inner().unwrap_or_else(|p| p.into_inner()),
            Err(e) => {
                let err = pull_failed(&body.reference, &e);
                let line =
                    serde_json::json!({"event": "error", "code": err.code, "message": err.message});
                Some(line.to_string() + "\n")
            }
        };
        if let Some(line) = last {
            let _ = tx.send(line).await;
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|line| (Ok::<_, std::convert::Infallible>(line), rx))
    });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
