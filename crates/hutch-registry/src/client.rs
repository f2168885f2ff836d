//! The HTTP side of the distribution API: one client for every registry, which knows which
//! registries are plain HTTP, authenticates when challenged (Basic, or a Bearer token from
//! the registry's realm, cached per repository and access) and maps answers to typed errors.
//! Every body it reads into memory is capped ([`crate::body`]); under an [`EgressPolicy`]
//! (a server pulling for API clients) every connection is checked against the policy and
//! network failures are reported without their cause.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, RANGE, WWW_AUTHENTICATE};
use reqwest::{Method, Response, StatusCode};

use crate::auth::{self, Challenge, Credentials};
use crate::body::{self, CappedError};
use crate::egress::{self, Denied, EgressPolicy};
use crate::error::RegistryError;
use crate::reference::Reference;

/// The manifest types a pull accepts, most wanted first.
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

/// Environment variable listing registries (`host:port,...`) to reach over plain HTTP.
pub const INSECURE_ENV: &str = "HUTCH_INSECURE_REGISTRIES";

#[derive(Clone, Debug, Default)]
pub struct ClientConfig {
    /// `host[:port]` of registries reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Used for every registry instead of Docker's config.
    pub credentials: Option<Credentials>,
    /// Where pulls may connect, for a server pulling on behalf of API clients; `None` (the
    /// CLI pulling for its own user) reaches anything.
    pub egress: Option<EgressPolicy>,
}

impl ClientConfig {
    /// [`INSECURE_ENV`] plus `extra`.
    pub fn from_env(extra_insecure: &[String]) -> Self {
        let mut insecure: Vec<String> = std::env::var(INSECURE_ENV)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect();
        insecure.extend(extra_insecure.iter().cloned());
        Self {
            insecure,
            credentials: None,
            egress: None,
        }
    }
}

#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    config: ClientConfig,
    /// `Authorization` values by `registry repository push?`.
    tokens: Mutex<HashMap<String, String>>,
    /// Credentials by registry, once looked up (`None`: anonymous).
    credentials: Mutex<HashMap<String, Option<Credentials>>>,
}

/// A request body that can be sent again (after an auth challenge).
pub enum Body {
    Empty,
    Bytes(bytes::Bytes),
    /// A file streamed from disk, with its length.
    File(std::path::PathBuf, u64),
}

impl Client {
    pub fn new(config: ClientConfig) -> Result<Client, RegistryError> {
        static PROVIDER: Once = Once::new();
        PROVIDER.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("hutch/", env!("CARGO_PKG_VERSION")));
        if let Some(policy) = &config.egress {
            let policy = Arc::new(policy.clone());
            let hops = Arc::clone(&policy);
            builder = builder
                .dns_resolver(egress::Resolver {
                    policy: Arc::clone(&policy),
                })
                // Registries redirect blob downloads (to CDNs): each hop is checked like the
                // first request (its name by the resolver when it connects).
                .redirect(reqwest::redirect::Policy::custom(move |attempt| {
                    if attempt.previous().len() >= 10 {
                        return attempt.error("too many redirects");
                    }
                    match hops.check_url(attempt.url()) {
                        Ok(()) => attempt.follow(),
                        Err(denied) => attempt.error(denied),
                    }
                }))
                // A proxy would resolve names where the policy cannot see the addresses.
                .no_proxy();
        }
        let http = builder.build().map_err(|e| RegistryError::Transport {
            reference: String::new(),
            registry: String::new(),
            detail: format!("setting up the HTTP client: {e}"),
            hint: String::new(),
        })?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                config,
                tokens: Mutex::new(HashMap::new()),
                credentials: Mutex::new(HashMap::new()),
            }),
        })
    }

    fn insecure(&self, r: &Reference) -> bool {
        self.inner.config.insecure.iter().any(|h| h == &r.registry)
    }

    /// `scheme://host` of `r`'s registry.
    pub fn base(&self, r: &Reference) -> String {
        let scheme = if self.insecure(r) { "http" } else { "https" };
        format!("{scheme}://{}", r.api_host())
    }

    fn credentials(&self, r: &Reference) -> Result<Option<Credentials>, RegistryError> {
        if let Some(c) = &self.inner.config.credentials {
            return Ok(Some(c.clone()));
        }
        // A server's own Docker login is not lent to every API client's pull: only to the
        // registries its operator listed (or to all, when they said so).
        if let Some(policy) = &self.inner.config.egress
            && !policy.credentials_for(&r.registry)
        {
            return Ok(None);
        }
        let mut cache = self.inner.credentials.lock().expect("credentials lock");
        if let Some(c) = cache.get(&r.registry) {
            return Ok(c.clone());
        }
        let found =
            auth::from_docker_config(&r.registry).map_err(|detail| RegistryError::Credentials {
                reference: r.to_string(),
                detail,
            })?;
        cache.insert(r.registry.clone(), found.clone());
        Ok(found)
    }

    fn token_key(r: &Reference, push: bool) -> String {
        format!("{} {} {push}", r.registry, r.repository)
    }

    fn refused(r: &Reference, denied: &Denied) -> RegistryError {
        RegistryError::Refused {
            reference: r.to_string(),
            registry: r.registry.clone(),
            reason: denied.to_string(),
        }
    }

    /// Checks a request's URL against the policy, if any, before it is sent.
    fn admit_url(&self, r: &Reference, url: &str) -> Result<(), RegistryError> {
        let Some(policy) = &self.inner.config.egress else {
            return Ok(());
        };
        let parsed = reqwest::Url::parse(url).map_err(|e| RegistryError::InvalidReference {
            reference: r.to_string(),
            reason: format!("{url:?} is not a URL: {e}"),
        })?;
        policy.check_url(&parsed).map_err(|d| Self::refused(r, &d))
    }

    fn transport(&self, r: &Reference, e: reqwest::Error) -> RegistryError {
        let mut detail = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            if let Some(denied) = s.downcast_ref::<Denied>() {
                return Self::refused(r, denied);
            }
            detail.push_str(": ");
            detail.push_str(&s.to_string());
            source = s.source();
        }
        if self.inner.config.egress.is_some() {
            // Refused, timed out, reset or not HTTP: told apart, these would map the
            // server's network for whoever names the image. The operator sees the cause.
            tracing::warn!(reference = %r, registry = %r.registry, error = %detail, "registry unreachable");
            return RegistryError::Unreachable {
                reference: r.to_string(),
                registry: r.registry.clone(),
            };
        }
        let hint = if !self.insecure(r)
            && (e.is_connect()
                || detail.contains("tls")
                || detail.contains("TLS")
                || detail.contains("InvalidContentType")
                || detail.contains("certificate"))
        {
            format!(
                " (if {} serves plain HTTP, pass --insecure or list it in {INSECURE_ENV})",
                r.registry
            )
        } else {
            String::new()
        };
        RegistryError::Transport {
            reference: r.to_string(),
            registry: r.registry.clone(),
            detail,
            hint,
        }
    }

    /// Sends a request to `path` on `r`'s registry (or to `url` when it is absolute, e.g. an
    /// upload location), answering an auth challenge once.
    pub async fn send(
        &self,
        r: &Reference,
        method: Method,
        path_or_url: &str,
        headers: HeaderMap,
        body: Body,
        push: bool,
    ) -> Result<Response, RegistryError> {
        if let Some(policy) = &self.inner.config.egress
            && !policy.allows_registry(&r.registry)
        {
            return Err(RegistryError::Refused {
                reference: r.to_string(),
                registry: r.registry.clone(),
                reason:
                    "it is not on the server's registry allowlist (hutch serve --allow-registry)"
                        .into(),
            });
        }
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_string()
        } else {
            format!("{}{path_or_url}", self.base(r))
        };
        self.admit_url(r, &url)?;
        let mut challenged = false;
        loop {
            let mut req = self
                .inner
                .http
                .request(method.clone(), &url)
                .headers(headers.clone());
            let token = self
                .inner
                .tokens
                .lock()
                .expect("tokens lock")
                .get(&Self::token_key(r, push))
                .cloned();
            if let Some(token) = token {
                req = req.header(AUTHORIZATION, token);
            }
            req = match &body {
                Body::Empty => req,
                Body::Bytes(b) => req.body(b.clone()),
                Body::File(path, len) => {
                    let file = tokio::fs::File::open(path).await.map_err(|e| {
                        RegistryError::Transport {
                            reference: r.to_string(),
                            registry: r.registry.clone(),
                            detail: format!("opening {}: {e}", path.display()),
                            hint: String::new(),
                        }
                    })?;
                    req.header(reqwest::header::CONTENT_LENGTH, *len)
                        .body(reqwest::Body::from(file))
                }
            };
            let resp = req.send().await.map_err(|e| self.transport(r, e))?;
            if resp.status() == StatusCode::UNAUTHORIZED && !challenged {
                challenged = true;
                let challenge = resp
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .and_then(auth::parse_challenge);
                self.authenticate(r, challenge, push).await?;
                continue;
            }
            return Ok(resp);
        }
    }

    async fn authenticate(
        &self,
        r: &Reference,
        challenge: Option<Challenge>,
        push: bool,
    ) -> Result<(), RegistryError> {
        let creds = self.credentials(r)?;
        let unauthorized = |detail: String| RegistryError::Unauthorized {
            reference: r.to_string(),
            registry: r.registry.clone(),
            detail,
        };
        let value = match challenge {
            None => {
                return Err(unauthorized(
                    "401 without a usable WWW-Authenticate challenge".into(),
                ));
            }
            Some(Challenge::Basic) => match &creds {
                Some(c) => c.basic_header(),
                None => return Err(unauthorized("basic authentication required".into())),
            },
            Some(Challenge::Bearer { realm, mut params }) => {
                let actions = if push { "pull,push" } else { "pull" };
                params.insert(
                    "scope".into(),
                    format!("repository:{}:{actions}", r.repository),
                );
                let mut url = reqwest::Url::parse(&realm).map_err(|e| {
                    unauthorized(format!("the token realm {realm:?} is not a URL: {e}"))
                })?;
                self.admit_realm(r, &url)?;
                url.query_pairs_mut().extend_pairs(params.iter());
                let mut req = self.inner.http.get(url);
                if let Some(c) = &creds {
                    req = req.header(AUTHORIZATION, c.basic_header());
                }
                let resp = req.send().await.map_err(|e| self.transport(r, e))?;
                if !resp.status().is_success() {
                    return Err(unauthorized(format!(
                        "the token service {realm} answered {}",
                        resp.status()
                    )));
                }
                let bytes = self
                    .read_body(r, resp, body::TOKEN_LIMIT, "the token service's answer")
                    .await?;
                let body: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| {
                    unauthorized(format!(
                        "the token service {realm} sent malformed JSON: {e}"
                    ))
                })?;
                let token = body["token"]
                    .as_str()
                    .or(body["access_token"].as_str())
                    .ok_or_else(|| {
                        unauthorized(format!("the token service {realm} sent no token"))
                    })?;
                format!("Bearer {token}")
            }
        };
        self.inner
            .tokens
            .lock()
            .expect("tokens lock")
            .insert(Self::token_key(r, push), value);
        Ok(())
    }

    /// A Bearer realm gets the credentials (as in Docker), so it must be https: plain HTTP
    /// only on the very host of a registry the user named insecure. Under a policy it must
    /// also be an address the policy allows (checked here for literal addresses, by the
    /// resolver for names).
    fn admit_realm(&self, r: &Reference, url: &reqwest::Url) -> Result<(), RegistryError> {
        let (registry_host, _) = egress::split_host_port(&r.registry);
        let realm_host = url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_ascii_lowercase();
        let plain_ok = self.insecure(r) && realm_host == registry_host;
        if url.scheme() != "https" && !(url.scheme() == "http" && plain_ok) {
            return Err(RegistryError::Refused {
                reference: r.to_string(),
                registry: r.registry.clone(),
                reason: format!(
                    "its token service {url} is not https (credentials and tokens would cross the network in clear)"
                ),
            });
        }
        self.admit_url(r, url.as_str())
    }

    /// A response body read into memory, at most `limit` bytes (a typed error beyond).
    pub(crate) async fn read_body(
        &self,
        r: &Reference,
        resp: Response,
        limit: u64,
        what: &str,
    ) -> Result<bytes::Bytes, RegistryError> {
        body::read_capped(resp, limit).await.map_err(|e| match e {
            CappedError::TooLarge { limit } => RegistryError::TooLarge {
                reference: r.to_string(),
                what: what.to_string(),
                limit,
            },
            CappedError::Transport(e) => self.transport(r, e),
        })
    }

    /// Fails on anything but 2xx, naming `what` in the error.
    pub async fn check(
        &self,
        r: &Reference,
        resp: Response,
        what: &str,
    ) -> Result<Response, RegistryError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let url = resp.url().to_string();
        let body = body::read_prefix(resp, body::ERROR_BODY_LIMIT).await;
        let body: String = String::from_utf8_lossy(&body).chars().take(300).collect();
        // Under a policy the answer of whatever the reference pointed at is not echoed to
        // the API client (nor where a redirect led); the log keeps it.
        let (url, body) = if self.inner.config.egress.is_some() {
            tracing::warn!(reference = %r, %url, %status, body = %body.trim(), "registry error");
            (r.registry.clone(), String::new())
        } else {
            (url, body)
        };
        Err(match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => RegistryError::Unauthorized {
                reference: r.to_string(),
                registry: r.registry.clone(),
                detail: match body.trim() {
                    "" => format!("{status} for {what}"),
                    body => format!("{status} for {what}: {body}"),
                },
            },
            StatusCode::NOT_FOUND => RegistryError::NotFound {
                reference: r.to_string(),
                registry: r.registry.clone(),
                what: what.to_string(),
            },
            _ => RegistryError::Server {
                reference: r.to_string(),
                status: status.as_u16(),
                url,
                body: body.trim().to_string(),
            },
        })
    }

    /// GETs a manifest or index by tag or digest: its bytes and media type.
    pub async fn manifest(
        &self,
        r: &Reference,
        reference: &str,
    ) -> Result<(bytes::Bytes, String), RegistryError> {
        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, MANIFEST_ACCEPT.parse().expect("static header"));
        let path = format!("/v2/{}/manifests/{reference}", r.repository);
        let what = format!("manifest {reference}");
        let resp = self
            .send(r, Method::GET, &path, headers, Body::Empty, false)
            .await?;
        let resp = self.check(r, resp, &what).await?;
        let media_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_string())
            .unwrap_or_default();
        let bytes = self.read_body(r, resp, body::MANIFEST_LIMIT, &what).await?;
        Ok((bytes, media_type))
    }

    /// Starts a blob download, from byte `offset` on when it is not 0. The flag says whether
    /// the registry honoured the range (else the body starts at 0).
    pub async fn blob(
        &self,
        r: &Reference,
        digest: &str,
        offset: u64,
    ) -> Result<(Response, bool), RegistryError> {
        let mut headers = HeaderMap::new();
        if offset > 0 {
            headers.insert(
                RANGE,
                format!("bytes={offset}-")
                    .parse()
                    .expect("valid range header"),
            );
        }
        let path = format!("/v2/{}/blobs/{digest}", r.repository);
        let resp = self
            .send(r, Method::GET, &path, headers, Body::Empty, false)
            .await?;
        let resp = self.check(r, resp, &format!("blob {digest}")).await?;
        let ranged = resp.status() == StatusCode::PARTIAL_CONTENT;
        Ok((resp, ranged))
    }

    pub(crate) fn transport_error(&self, r: &Reference, e: reqwest::Error) -> RegistryError {
        self.transport(r, e)
    }
}
