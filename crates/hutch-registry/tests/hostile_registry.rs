//! The registry client against registries that lie: bodies larger than any manifest, token
//! realms that would take credentials in clear, redirects and references aimed at the
//! server's own network. The "registries" are tiny HTTP servers on loopback that record what
//! they were sent and count what they wrote, so each test can say what never happened.

// Test helpers outside `#[test]` functions unwrap too: a panic is the failure report.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hutch_registry::{Client, ClientConfig, Credentials, EgressPolicy, Reference, RegistryError};
use sha2::Digest as _;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// What a fake registry answers.
enum Reply {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// `total` zero bytes, announced with `content_length` (or close-delimited), then close.
    Junk {
        content_length: Option<u64>,
        total: u64,
    },
}

impl Reply {
    fn status(status: u16, headers: &[(&str, &str)]) -> Reply {
        Reply::Full {
            status,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: Vec::new(),
        }
    }

    fn json(body: &[u8], media_type: &str) -> Reply {
        Reply::Full {
            status: 200,
            headers: vec![("Content-Type".into(), media_type.into())],
            body: body.to_vec(),
        }
    }
}

type Handler = Arc<dyn Fn(&str, &HashMap<String, String>) -> Reply + Send + Sync>;

/// A request as a fake registry saw it: its headers (names lowercased).
#[derive(Clone, Debug)]
struct Seen {
    headers: HashMap<String, String>,
}

struct Fake {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    connections: Arc<AtomicU64>,
    /// Body bytes the kernel accepted from the fake (what the client could have read).
    written: Arc<AtomicU64>,
}

impl Fake {
    async fn start(bind: &str, handler: Handler) -> Fake {
        let listener = TcpListener::bind(bind).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let connections = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let (s, c, w) = (seen.clone(), connections.clone(), written.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                c.fetch_add(1, Ordering::SeqCst);
                let (handler, seen, written) = (handler.clone(), s.clone(), w.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, handler, seen, written).await;
                });
            }
        });
        Fake {
            addr,
            seen,
            connections,
            written,
        }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().expect("seen").clone()
    }
}

async fn serve(
    stream: tokio::net::TcpStream,
    handler: Handler,
    seen: Arc<Mutex<Vec<Seen>>>,
    written: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut stream = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_string();
        let mut headers = HashMap::new();
        loop {
            let mut h = String::new();
            stream.read_line(&mut h).await?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
            }
        }
        seen.lock().expect("seen").push(Seen {
            headers: headers.clone(),
        });
        match handler(&path, &headers) {
            Reply::Full {
                status,
                headers,
                body,
            } => {
                let mut head = format!("HTTP/1.1 {status} X\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&body).await?;
            }
            Reply::Junk {
                content_length,
                total,
            } => {
                let mut head = "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\n".to_string();
                if let Some(len) = content_length {
                    head.push_str(&format!("Content-Length: {len}\r\n"));
                }
                head.push_str("\r\n");
                stream.write_all(head.as_bytes()).await?;
                let chunk = vec![b'x'; 64 << 10];
                let mut sent = 0u64;
                while sent < total {
                    stream.write_all(&chunk).await?;
                    sent += chunk.len() as u64;
                    written.fetch_add(chunk.len() as u64, Ordering::SeqCst);
                }
                return Ok(());
            }
        }
    }
}

/// Junk a client without caps would read whole: far beyond any cap, and beyond what the
/// loopback socket buffers can absorb unread.
const JUNK: u64 = 256 << 20;
/// What the fake may have written before the client stopped reading: a cap plus socket
/// buffers. Without caps the client reads all of [`JUNK`].
const BOUNDED: u64 = 32 << 20;

fn client(insecure: &Fake, egress: Option<EgressPolicy>) -> Client {
    Client::new(ClientConfig {
        insecure: vec![insecure.host()],
        credentials: None,
        egress,
    })
    .expect("client")
}

fn store() -> (tempfile::TempDir, hutch_store::Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = hutch_store::Store::open(&dir.path().join("store")).expect("store");
    (dir, store)
}

async fn pull(client: &Client, reference: &str) -> Result<hutch_store::Image, RegistryError> {
    let (_dir, store) = store();
    let r = Reference::parse(reference).expect("reference");
    hutch_registry::pull(client, &store, &r, &|_| {}).await
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_announced_as_2_gib_is_refused_before_it_is_read() {
    let registry = Fake::start(
        "127.0.0.1:0",
        Arc::new(|_, _| Reply::Junk {
            content_length: Some(2 << 30),
            total: JUNK,
        }),
    )
    .await;
    let err = pull(
        &client(&registry, None),
        &format!("{}/x:1", registry.host()),
    )
    .await
    .expect_err("a 2 GiB manifest");
    assert!(matches!(err, RegistryError::TooLarge { .. }), "{err}");
    assert!(err.to_string().contains("4 MiB"), "{err}");
    let written = registry.written.load(Ordering::SeqCst);
    assert!(written < BOUNDED, "the client read {written} bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_streamed_without_a_length_is_cut_at_the_cap() {
    let registry = Fake::start(
        "127.0.0.1:0",
        Arc::new(|_, _| Reply::Junk {
            content_length: None,
            total: JUNK,
        }),
    )
    .await;
    let err = pull(
        &client(&registry, None),
        &format!("{}/x:1", registry.host()),
    )
    .await
    .expect_err("an endless manifest");
    assert!(matches!(err, RegistryError::TooLarge { .. }), "{err}");
    let written = registry.written.load(Ordering::SeqCst);
    assert!(written < BOUNDED, "the client read {written} bytes");
}

/// A well-formed manifest and config whose one layer is announced as `layer_size` bytes;
/// `blob` answers the layer's download.
fn image_registry(layer_size: u64, blob: impl Fn() -> Reply + Send + Sync + 'static) -> Handler {
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "a".repeat(64))]},
    })
    .to_string()
    .into_bytes();
    let config_digest = sha256(&config);
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": format!("sha256:{}", "b".repeat(64)), "size": layer_size}],
    })
    .to_string()
    .into_bytes();
    Arc::new(move |path, _| {
        if path.contains("/manifests/") {
            Reply::json(&manifest, "application/vnd.oci.image.manifest.v1+json")
        } else if path.ends_with(&config_digest) {
            Reply::json(&config, "application/octet-stream")
        } else {
            blob()
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_layer_longer_than_its_descriptor_is_not_read_on() {
    let registry = Fake::start(
        "127.0.0.1:0",
        image_registry(1024, || Reply::Junk {
            content_length: None,
            total: JUNK,
        }),
    )
    .await;
    let err = pull(
        &client(&registry, None),
        &format!("{}/x:1", registry.host()),
    )
    .await
    .expect_err("an endless layer");
    assert!(
        matches!(
            err,
            RegistryError::TooLarge { .. } | RegistryError::Store { .. }
        ),
        "{err}"
    );
    let written = registry.written.load(Ordering::SeqCst);
    assert!(written < BOUNDED, "the client read {written} bytes");
}

/// An index's digests are checked as sha256 digests before one is asked for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_naming_a_non_sha256_manifest_is_refused_before_it_is_asked_for() {
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": format!("sha512:{}", "ab".repeat(64)), "size": 10,
                       "platform": {"architecture": "amd64", "os": "linux"}}],
    })
    .to_string()
    .into_bytes();
    let asked = Arc::new(AtomicU64::new(0));
    let counted = asked.clone();
    let registry = Fake::start(
        "127.0.0.1:0",
        Arc::new(move |path, _| {
            if path.contains("/manifests/sha512:") {
                counted.fetch_add(1, Ordering::SeqCst);
                Reply::status(404, &[])
            } else if path.contains("/manifests/") {
                Reply::json(&index, "application/vnd.oci.image.index.v1+json")
            } else {
                Reply::status(404, &[])
            }
        }),
    )
    .await;
    let err = pull(
        &client(&registry, None),
        &format!("{}/x:1", registry.host()),
    )
    .await
    .expect_err("a sha512 manifest");
    assert!(matches!(err, RegistryError::Malformed { .. }), "{err}");
    assert!(err.to_string().contains("sha512"), "{err}");
    assert_eq!(
        asked.load(Ordering::SeqCst),
        0,
        "the manifest was asked for"
    );
}

/// A registry that wants a Bearer token from `realm`, and 404s once it has one.
fn bearer_registry(realm: String) -> Handler {
    Arc::new(move |_, headers| {
        if headers
            .get("authorization")
            .is_some_and(|a| a.starts_with("Bearer "))
        {
            Reply::status(404, &[])
        } else {
            let challenge = format!("Bearer realm=\"{realm}\",service=\"test\"");
            Reply::status(401, &[("WWW-Authenticate", &challenge)])
        }
    })
}

fn token_service() -> Handler {
    Arc::new(|_, _| Reply::json(br#"{"token":"tok"}"#, "application/json"))
}

fn alice() -> Option<Credentials> {
    Some(Credentials {
        username: "alice".into(),
        password: "s3cret".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_realm_on_another_host_is_refused_and_never_gets_the_credentials() {
    let realm = Fake::start("127.0.0.1:0", token_service()).await;
    // `localhost` is another host than `127.0.0.1` by name, though the same machine.
    let registry = Fake::start(
        "127.0.0.1:0",
        bearer_registry(format!("http://localhost:{}/token", realm.addr.port())),
    )
    .await;
    let client = Client::new(ClientConfig {
        insecure: vec![registry.host()],
        credentials: alice(),
        egress: None,
    })
    .expect("client");
    let err = pull(&client, &format!("{}/x:1", registry.host()))
        .await
        .expect_err("an http realm on another host");
    assert!(matches!(err, RegistryError::Refused { .. }), "{err}");
    assert!(err.to_string().contains("not https"), "{err}");
    assert_eq!(realm.connections.load(Ordering::SeqCst), 0);

    // The control: the insecure registry's own host may serve its realm over HTTP, and
    // gets the credentials, as Docker sends them.
    let registry = Fake::start(
        "127.0.0.1:0",
        bearer_registry(format!("http://127.0.0.1:{}/token", realm.addr.port())),
    )
    .await;
    let client = Client::new(ClientConfig {
        insecure: vec![registry.host()],
        credentials: alice(),
        egress: None,
    })
    .expect("client");
    let err = pull(&client, &format!("{}/x:1", registry.host()))
        .await
        .expect_err("the registry 404s");
    assert!(err.is_not_found(), "{err}");
    let asked = realm.seen();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(
        asked[0].headers["authorization"].starts_with("Basic "),
        "{asked:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_policy_realms_and_redirects_must_reach_allowed_addresses() {
    // 127.0.0.2 is loopback too, but not the listed 127.0.0.1.
    let elsewhere = Fake::start("127.0.0.2:0", token_service()).await;
    let named = Fake::start("127.0.0.1:0", token_service()).await;
    let registry = Fake::start(
        "127.0.0.1:0",
        bearer_registry(format!("https://127.0.0.2:{}/token", elsewhere.addr.port())),
    )
    .await;
    let policy = EgressPolicy {
        allowed: vec![registry.host()],
        ..Default::default()
    };
    let err = pull(
        &client(&registry, Some(policy)),
        &format!("{}/x:1", registry.host()),
    )
    .await
    .expect_err("a realm on an unlisted private address");
    assert!(matches!(err, RegistryError::Refused { .. }), "{err}");

    // Blob downloads redirected to an unlisted address, literal or by a name that resolves
    // to one, are refused before connecting.
    for target in [
        format!("http://127.0.0.2:{}/blob", elsewhere.addr.port()),
        format!("http://localhost:{}/blob", named.addr.port()),
    ] {
        let redirecting = Fake::start(
            "127.0.0.1:0",
            image_registry(1024, {
                let target = target.clone();
                move || Reply::status(307, &[("Location", &target)])
            }),
        )
        .await;
        let policy = EgressPolicy {
            allowed: vec![redirecting.host()],
            ..Default::default()
        };
        let err = pull(
            &client(&redirecting, Some(policy)),
            &format!("{}/x:1", redirecting.host()),
        )
        .await
        .expect_err("a redirect to an unlisted address");
        assert!(
            matches!(err, RegistryError::Refused { .. }),
            "{target}: {err}"
        );
    }
    assert_eq!(elsewhere.connections.load(Ordering::SeqCst), 0);
    assert_eq!(named.connections.load(Ordering::SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_policy_private_registries_are_refused_unless_allowed() {
    let registry = Fake::start("127.0.0.1:0", Arc::new(|_, _| Reply::status(404, &[]))).await;
    let port = registry.addr.port();
    for reference in [
        format!("127.0.0.1:{port}/x:1"),
        format!("localhost:{port}/x:1"),
        format!("[::ffff:127.0.0.1]:{port}/x:1"),
    ] {
        let client = Client::new(ClientConfig {
            insecure: vec![Reference::parse(&reference).expect("ref").registry],
            credentials: None,
            egress: Some(EgressPolicy::default()),
        })
        .expect("client");
        let err = pull(&client, &reference)
            .await
            .expect_err("a loopback registry");
        assert!(
            matches!(err, RegistryError::Refused { .. }),
            "{reference}: {err}"
        );
        assert!(err.to_string().contains("loopback"), "{err}");
    }
    assert_eq!(registry.connections.load(Ordering::SeqCst), 0);

    // An allowlist refuses every other registry by name.
    let listed_only = EgressPolicy {
        allowed: vec!["registry.example".into()],
        ..Default::default()
    };
    let err = pull(
        &client(&registry, Some(listed_only)),
        &format!("{}/x:1", registry.host()),
    )
    .await
    .expect_err("not listed");
    assert!(err.to_string().contains("allowlist"), "{err}");

    // Allowed, the same registry is reached.
    let allowed = EgressPolicy {
        allow_private: true,
        ..Default::default()
    };
    let err = pull(
        &client(&registry, Some(allowed)),
        &format!("{}/x:1", registry.host()),
    )
    .await
    .expect_err("the registry 404s");
    assert!(err.is_not_found(), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_policy_a_closed_port_and_a_silent_one_read_the_same() {
    // One port accepts and hangs up; the other has nothing listening.
    let hangs_up = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let open = hangs_up.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = hangs_up.accept().await {
            drop(stream);
        }
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let message = |egress: Option<EgressPolicy>, port: u16| async move {
        let host = format!("127.0.0.1:{port}");
        let client = Client::new(ClientConfig {
            insecure: vec![host.clone()],
            credentials: None,
            egress,
        })
        .expect("client");
        let err = pull(&client, &format!("{host}/x:1"))
            .await
            .expect_err("nothing serves");
        err.to_string().replace(&port.to_string(), "PORT")
    };
    let policy = Some(EgressPolicy {
        allow_private: true,
        ..Default::default()
    });
    let (a, b) = (
        message(policy.clone(), open).await,
        message(policy, closed).await,
    );
    assert_eq!(a, b);
    assert!(a.contains("unreachable"), "{a}");
    // Without a policy (the CLI) the user gets the cause, which does tell them apart.
    assert_ne!(message(None, open).await, message(None, closed).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_a_policy_the_servers_docker_login_goes_only_to_listed_registries() {
    let registry = Fake::start(
        "127.0.0.1:0",
        Arc::new(|_, headers| match headers.get("authorization") {
            Some(_) => Reply::status(404, &[]),
            None => Reply::status(401, &[("WWW-Authenticate", "Basic realm=\"r\"")]),
        }),
    )
    .await;
    let docker = tempfile::tempdir().expect("tempdir");
    let config =
        serde_json::json!({"auths": {registry.host(): {"username": "op", "password": "pw"}}});
    std::fs::write(docker.path().join("config.json"), config.to_string()).expect("write");
    // SAFETY: nextest runs each test in a process of its own; nothing else here reads it.
    unsafe { std::env::set_var("DOCKER_CONFIG", docker.path()) };
    let reference = format!("{}/x:1", registry.host());

    let unlisted = EgressPolicy {
        allow_private: true,
        ..Default::default()
    };
    let err = pull(&client(&registry, Some(unlisted)), &reference)
        .await
        .expect_err("anonymous");
    assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err}");
    assert!(
        registry
            .seen()
            .iter()
            .all(|s| !s.headers.contains_key("authorization")),
        "the operator's login was sent"
    );

    for policy in [
        EgressPolicy {
            allowed: vec![registry.host()],
            ..Default::default()
        },
        EgressPolicy {
            allow_private: true,
            registry_credentials: true,
            ..Default::default()
        },
    ] {
        let err = pull(&client(&registry, Some(policy)), &reference)
            .await
            .expect_err("the registry 404s once authenticated");
        assert!(err.is_not_found(), "{err}");
    }
}
