//! The listener every endpoint is served on: plain HTTP or TLS as the web config says, basic auth and
//! response headers in front of the routes, the web config re-read when it (or a file it names)
//! changes, and bounds on connections, handshakes and request heads so slow or many clients cannot
//! starve the exporter.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::web_config::{Fingerprint, WebConfig, WebConfigError};
use crate::telemetry::Telemetry;

/// Limits of the listener.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections open at once; more are closed as soon as they are accepted.
    pub max_connections: usize,
    /// Time for a TLS handshake and, on each request, for its head (request line and headers).
    pub header_timeout: Duration,
    /// Time for a request from its head to its answer, body included.
    pub request_timeout: Duration,
    /// How often the web config file is checked for changes.
    pub reload_every: Duration,
}

impl Limits {
    /// The limits `web.*` sets; the web config file is checked every 5 s.
    pub fn new(s: &crate::config::WebSettings) -> Limits {
        Limits {
            max_connections: s.max_connections,
            header_timeout: s.read_header_timeout,
            request_timeout: s.request_timeout,
            reload_every: Duration::from_secs(5),
        }
    }
}

impl Default for Limits {
    /// The defaults of `web.*`.
    fn default() -> Self {
        Limits::new(&crate::config::WebSettings::default())
    }
}

/// The web config in force, swapped whole when a changed file proves good.
pub struct Web {
    path: Option<PathBuf>,
    current: ArcSwap<WebConfig>,
    fingerprint: std::sync::Mutex<Option<Fingerprint>>,
    /// Paths that authenticate on their own (webhook receivers with a token or signature) and so
    /// are not asked for basic auth as well: their senders cannot all send it.
    own_auth: Vec<String>,
    /// Where the reload gauges are published (none in tests of the listener alone).
    telemetry: Option<Arc<Telemetry>>,
    /// bcrypt checks running at once: one per core, so a flood of wrong passwords queues instead
    /// of taking every core from the scrapes and the sync.
    checks: Arc<Semaphore>,
}

impl Web {
    /// Loads `path` (none: plain HTTP, no auth). An unusable file is an error here, at start-up.
    pub fn load(
        path: Option<PathBuf>,
        own_auth: Vec<String>,
        telemetry: Option<Arc<Telemetry>>,
    ) -> Result<Arc<Web>, WebConfigError> {
        let (config, print) = match &path {
            Some(p) => {
                let (c, f) = WebConfig::load(p)?;
                (c, Some(f))
            }
            None => (WebConfig::default(), None),
        };
        let web = Web {
            path,
            current: ArcSwap::from_pointee(config),
            fingerprint: std::sync::Mutex::new(print),
            own_auth,
            telemetry,
            checks: Arc::new(Semaphore::new(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
        };
        web.count(true);
        Ok(Arc::new(web))
    }

    pub fn current(&self) -> Arc<WebConfig> {
        self.current.load_full()
    }

    /// Re-reads the file if it or a file it names changed. A bad file keeps the last good config
    /// and says why. Returns whether a new config is in force.
    pub fn reload(&self) -> bool {
        let Some(path) = &self.path else {
            return false;
        };
        let print = WebConfig::fingerprint(path);
        let mut last = crate::lock::lock(&self.fingerprint);
        // Unchanged, or still unreadable since the last attempt (reported once, not every 5 s).
        if print == *last {
            return false;
        }
        match WebConfig::load(path) {
            Ok((config, print)) => {
                self.current.store(Arc::new(config));
                *last = Some(print);
                self.count(true);
                tracing::info!(path = %path.display(), "web config reloaded");
                true
            }
            Err(e) => {
                // Remember the bad file so that it is reported once, not every few seconds.
                *last = print;
                self.count(false);
                tracing::error!(error = %e, "web config not reloaded; keeping the last good one");
                false
            }
        }
    }

    fn count(&self, ok: bool) {
        if let Some(t) = &self.telemetry {
            t.web_config_read(ok);
        }
    }
}

/// Basic auth (when the web config has users) and the configured response headers, around every
/// route but those that authenticate on their own; and a deadline on each request (a body sent a
/// byte at a time must not hold a connection for ever).
pub fn secure(router: Router, web: Arc<Web>, limits: &Limits) -> Router {
    let deadline = limits.request_timeout;
    router
        .layer(axum::middleware::from_fn_with_state(web, guard))
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| within(deadline, req, next),
        ))
}

async fn within(deadline: Duration, req: Request, next: Next) -> Response {
    match tokio::time::timeout(deadline, next.run(req)).await {
        Ok(resp) => resp,
        Err(_) => (
            StatusCode::REQUEST_TIMEOUT,
            format!("the request took longer than {deadline:?} (web.request_timeout)\n"),
        )
            .into_response(),
    }
}

async fn guard(State(web): State<Arc<Web>>, req: Request, next: Next) -> Response {
    let config = web.current();
    let exempt = web.own_auth.iter().any(|p| p == req.uri().path());
    let mut resp = match &config.users {
        Some(_) if !exempt => {
            let creds = basic_credentials(&req);
            let users = config.clone();
            // bcrypt costs tens of milliseconds of CPU: not on the threads that serve scrapes.
            let ok = match creds {
                Some((user, password)) => match web.checks.clone().acquire_owned().await {
                    Ok(slot) => tokio::task::spawn_blocking(move || {
                        let _slot = slot;
                        users
                            .users
                            .as_ref()
                            .is_some_and(|u| u.check(&user, &password))
                    })
                    .await
                    .unwrap_or(false),
                    Err(_) => false,
                },
                None => false,
            };
            if ok {
                next.run(req).await
            } else {
                unauthorized()
            }
        }
        _ => next.run(req).await,
    };
    let h = resp.headers_mut();
    for (name, value) in &config.headers {
        h.insert(name.clone(), value.clone());
    }
    resp
}

fn unauthorized() -> Response {
    let mut resp = (StatusCode::UNAUTHORIZED, "Unauthorized\n").into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"mlflow-exporter\""),
    );
    resp
}

/// User and password of an `Authorization: Basic` header.
fn basic_credentials(req: &Request) -> Option<(String, String)> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Serves `router` on `listener` until `shutdown` resolves, then lets requests in flight finish
/// (for at most `grace`).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    web: Arc<Web>,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let reloader = {
        let web = web.clone();
        let every = limits.reload_every;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let web = web.clone();
                let _ = tokio::task::spawn_blocking(move || web.reload()).await;
            }
        })
    };
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors, usually: wait instead of spinning.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: too many open");
            continue;
        };
        // Scrape bodies end in a partial segment: without TCP_NODELAY it can wait on a delayed ACK.
        let _ = tcp.set_nodelay(true);
        let tls = web.current().tls.clone();
        // The client's address, for the webhook receivers' rate limit (as axum's ConnectInfo).
        let service = TowerToHyperService::new(router.clone().map_request(
            move |mut req: Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(ConnectInfo(peer));
                req
            },
        ));
        let timeout = limits.header_timeout;
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(timeout);
            match tls {
                None => {
                    let conn = builder.serve_connection(TokioIo::new(tcp), service);
                    let _ = watcher.watch(conn).await;
                }
                Some(config) => {
                    let acceptor = tokio_rustls::TlsAcceptor::from(config);
                    let stream = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    let _ = watcher.watch(conn).await;
                }
            }
        });
    }
    reloader.abort();
    drop(listener);
    if tokio::time::timeout(Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open 10 s after shutdown; closing them");
    }
    Ok(())
}

/// The address a listener is bound to, for logs.
pub fn describe(listener: &TcpListener, web: &Web) -> (String, &'static str) {
    let addr = listener
        .local_addr()
        .map(|a: SocketAddr| a.to_string())
        .unwrap_or_default();
    let scheme = if web.current().tls.is_some() {
        "https"
    } else {
        "http"
    };
    (addr, scheme)
}
