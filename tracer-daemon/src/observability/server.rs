//! The HTTP endpoint: GET /metrics, /healthz, /readyz; 404 otherwise.
//!
//! Plain hyper (already in the tree through kube), HTTP/1 only: three
//! fixed routes need no router, and hyper's connection builder is where
//! the timeouts are set. Bounded so a slow or hostile client on the node's
//! network cannot pin the daemon: request bodies are never read, headers
//! must arrive within [`HEADER_READ_TIMEOUT`] and fit in [`MAX_BUF_BYTES`],
//! at most [`MAX_CONNECTIONS`] are served at once (the rest wait in the
//! kernel's backlog), and a connection is closed after
//! [`CONNECTION_LIFETIME`] (gracefully: a response in flight completes).

use std::{convert::Infallible, io, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue},
    server::conn::http1,
    service::service_fn,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, sync::Semaphore, task::JoinHandle};

use super::{
    health::Health,
    metrics::{Metrics, OPENMETRICS_CONTENT_TYPE},
};

pub(crate) const MAX_CONNECTIONS: usize = 32;
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Long enough for keep-alive between scrapes (15-60 s apart) to save a
/// handshake now and then; short enough that a client cannot hold a slot.
pub(crate) const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// After [`CONNECTION_LIFETIME`], how long a response in flight may take.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// hyper's minimum; a probe or scrape request is a few hundred bytes.
pub(crate) const MAX_BUF_BYTES: usize = 8 * 1024;

const TEXT: &str = "text/plain; charset=utf-8";

/// Binds `addr` and serves in a spawned task. Binding happens before this
/// returns, so a bad or busy address fails the daemon's start-up with a
/// message naming it, not a log line later. Returns the bound address
/// (the real port when `addr` has port 0).
pub(crate) async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    serve_with(addr, metrics, health, Limits::default()).await
}

/// Timeouts, separate so tests can shorten them.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    connection_lifetime: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: HEADER_READ_TIMEOUT,
            connection_lifetime: CONNECTION_LIFETIME,
        }
    }
}

async fn serve_with(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: Limits,
) -> anyhow::Result<(SocketAddr, JoinHandle<()>)> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| bind_error(addr, e))?;
    let bound = listener.local_addr().map_err(|e| bind_error(addr, e))?;
    tracing::info!(addr = %bound, "serving /metrics, /healthz, /readyz");
    let handle = tokio::spawn(accept_loop(listener, metrics, health, limits));
    Ok((bound, handle))
}

fn bind_error(addr: SocketAddr, e: io::Error) -> anyhow::Error {
    let hint = "set --metrics-addr (ROAR_NODE_METRICS_ADDR)";
    match e.kind() {
        io::ErrorKind::AddrInUse => {
            anyhow::anyhow!("metrics address {addr} is in use; {hint} to a free port")
        }
        io::ErrorKind::AddrNotAvailable => {
            anyhow::anyhow!("metrics address {addr} is not an address of this host; {hint}")
        }
        io::ErrorKind::PermissionDenied => anyhow::anyhow!(
            "metrics address {addr}: permission denied (ports below 1024 need CAP_NET_BIND_SERVICE); {hint}"
        ),
        _ => anyhow::Error::new(e).context(format!("cannot listen on metrics address {addr}")),
    }
}

async fn accept_loop(
    listener: TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    limits: Limits,
) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // Take a slot before accepting: when all are busy, new clients wait
        // in the backlog instead of costing a task each.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: transient; do not
                // spin on it.
                tracing::warn!(error = %e, "metrics endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (metrics, health) = (metrics.clone(), health.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let resp = respond(&req, &metrics, &health);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(MAX_BUF_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            let result = tokio::select! {
                r = conn.as_mut() => r,
                _ = tokio::time::sleep(limits.connection_lifetime) => {
                    conn.as_mut().graceful_shutdown();
                    tokio::time::timeout(SHUTDOWN_GRACE, conn).await.unwrap_or(Ok(()))
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "metrics endpoint: connection ended with an error");
            }
        });
    }
}

/// The whole application: the request's body is not looked at.
fn respond<B>(req: &Request<B>, metrics: &Metrics, health: &Health) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET\n".into());
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, OPENMETRICS_CONTENT_TYPE, metrics.encode()),
        "/healthz" => match health.liveness() {
            Ok(()) => reply(StatusCode::OK, TEXT, "ok\n".into()),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n")),
        },
        "/readyz" => match health.readiness() {
            Ok(()) => reply(StatusCode::OK, TEXT, "ready\n".into()),
            Err(e) => reply(StatusCode::SERVICE_UNAVAILABLE, TEXT, format!("{e}\n")),
        },
        _ => reply(
            StatusCode::NOT_FOUND,
            TEXT,
            "not found: try /metrics, /healthz, /readyz\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Probe and scrape answers are about now; no proxy may replay them.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::observability::metrics::queue;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    struct Reply {
        status: u16,
        head: String,
        body: String,
    }

    /// One HTTP/1.1 request over a plain TCP connection, as a probe makes it.
    async fn request(addr: SocketAddr, method: &str, path: &str) -> Reply {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
            .await
            .expect("response within 5 s")
            .unwrap();
        let raw = String::from_utf8(raw).unwrap();
        let (head, body) = raw.split_once("\r\n\r\n").expect("a header block");
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("a status line");
        Reply {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_string(),
        }
    }

    async fn get(addr: SocketAddr, path: &str) -> Reply {
        request(addr, "GET", path).await
    }

    async fn start(health: Health) -> (SocketAddr, Arc<Metrics>, Arc<Health>, JoinHandle<()>) {
        let metrics = Arc::new(Metrics::new("1.2.3"));
        let health = Arc::new(health);
        let (addr, h) = serve(
            "127.0.0.1:0".parse().unwrap(),
            metrics.clone(),
            health.clone(),
        )
        .await
        .unwrap();
        assert_ne!(addr.port(), 0, "the bound port is returned");
        (addr, metrics, health, h)
    }

    #[tokio::test]
    async fn readyz_names_what_is_missing_until_attached_and_synced() {
        let (addr, _m, health, task) = start(Health::default()).await;

        let r = get(addr, "/readyz").await;
        assert_eq!(r.status, 503);
        assert_eq!(
            r.body.trim(),
            "not ready: programs not attached, pod cache not synced"
        );

        health.set_programs_attached(true);
        let r = get(addr, "/readyz").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body.trim(), "not ready: pod cache not synced");

        health.set_pod_cache_synced(true);
        let r = get(addr, "/readyz").await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.body.trim(), "ready");

        let r = get(addr, "/healthz").await;
        assert_eq!((r.status, r.body.trim()), (200, "ok"));
        task.abort();
    }

    #[tokio::test]
    async fn healthz_fails_when_the_beat_is_stale() {
        let (addr, _m, health, task) = start(Health::new(Duration::from_millis(150))).await;
        health.set_programs_attached(true);
        health.set_pod_cache_synced(true);
        assert_eq!(get(addr, "/healthz").await.status, 200);

        tokio::time::sleep(Duration::from_millis(400)).await;
        let r = get(addr, "/healthz").await;
        assert_eq!(r.status, 503, "{}", r.body);
        assert!(
            r.body.starts_with("unhealthy: daemon loop last beat ") && r.body.contains("s ago"),
            "{}",
            r.body
        );
        let r = get(addr, "/readyz").await;
        assert_eq!(r.status, 503);
        assert_eq!(r.body.trim(), "not ready: daemon loop stalled");

        health.beat();
        assert_eq!(get(addr, "/healthz").await.status, 200);
        assert_eq!(get(addr, "/readyz").await.status, 200);
        task.abort();
    }

    #[tokio::test]
    async fn metrics_are_openmetrics_with_values() {
        let (addr, m, _h, task) = start(Health::default()).await;
        m.observe_events("open", 42);
        m.observe_lost(crate::probes::LossCause::KernelRingBufferFull.name(), 3);
        m.observe_lost(crate::probes::LossCause::KernelRingBufferFull.name(), 1);
        m.set_queue_depth(queue::RING_BUFFER_UNREAD_BYTES, 4096);
        m.records_emitted.inc();
        m.tasks_started.inc_by(2);
        m.active_tasks.set(1);
        m.policy_generation.set(5);

        let r = get(addr, "/metrics").await;
        assert_eq!(r.status, 200);
        assert!(
            r.head.contains(
                "content-type: application/openmetrics-text; version=1.0.0; charset=utf-8"
            ),
            "{}",
            r.head
        );
        let t = &r.body;
        for l in [
            "# HELP roar_node_events ",
            "# TYPE roar_node_events counter",
            "roar_node_events_total{kind=\"open\"} 42\n",
            "roar_node_events_total{kind=\"exec\"} 0\n",
            "# TYPE roar_node_events_lost counter",
            "roar_node_events_lost_total{cause=\"kernel_ring_buffer_full\"} 3\n",
            "# TYPE roar_node_queue_depth gauge",
            "roar_node_queue_depth{queue=\"ring_buffer_unread_bytes\"} 4096\n",
            "roar_node_records_emitted_total 1\n",
            "roar_node_tasks_started_total 2\n",
            "roar_node_active_tasks 1\n",
            "roar_node_policy_generation 5\n",
            "roar_node_build_info{version=\"1.2.3\"} 1\n",
        ] {
            assert!(t.contains(l), "missing {l:?} in\n{t}");
        }
        assert!(t.ends_with("# EOF\n"));

        // The scrape sees later changes: the families are shared handles.
        m.observe_events("open", 50);
        let t = get(addr, "/metrics").await.body;
        assert!(
            t.contains("roar_node_events_total{kind=\"open\"} 50\n"),
            "{t}"
        );
        task.abort();
    }

    #[tokio::test]
    async fn other_paths_are_404_and_other_methods_405() {
        let (addr, _m, _h, task) = start(Health::default()).await;
        assert_eq!(get(addr, "/").await.status, 404);
        assert_eq!(get(addr, "/metrics/x").await.status, 404);
        let r = request(addr, "POST", "/metrics").await;
        assert_eq!(r.status, 405);
        assert!(r.head.contains("allow: get, head"), "{}", r.head);
        let r = request(addr, "HEAD", "/healthz").await;
        assert_eq!((r.status, r.body.as_str()), (200, ""));
        task.abort();
    }

    #[tokio::test]
    async fn a_silent_client_does_not_block_others() {
        let (addr, _m, _h, task) = start(Health::default()).await;
        // Connects and sends nothing: holds one slot until its header
        // timeout, not the server.
        let _idle = tokio::net::TcpStream::connect(addr).await.unwrap();
        let r = tokio::time::timeout(Duration::from_secs(2), get(addr, "/healthz"))
            .await
            .expect("served while another client is idle");
        assert_eq!(r.status, 200);
        task.abort();
    }

    /// Reads until the server closes the connection; what it sent.
    async fn until_closed(s: &mut tokio::net::TcpStream, within: Duration) -> String {
        let mut raw = Vec::new();
        tokio::time::timeout(within, s.read_to_end(&mut raw))
            .await
            .expect("the server closes the connection in time")
            .unwrap();
        String::from_utf8_lossy(&raw).into_owned()
    }

    #[tokio::test]
    async fn slow_and_lingering_clients_are_cut_off() {
        let limits = Limits {
            header_read_timeout: Duration::from_millis(200),
            connection_lifetime: Duration::from_millis(300),
        };
        let (addr, _) = serve_with(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Metrics::new("0")),
            Arc::new(Health::default()),
            limits,
        )
        .await
        .unwrap();

        // Half a request line, then silence: closed at the header timeout.
        let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /metr").await.unwrap();
        until_closed(&mut slow, Duration::from_secs(1)).await;

        // Keep-alive after a request: closed once the connection has lived
        // its lifetime, the response it asked for delivered first.
        let mut kept = tokio::net::TcpStream::connect(addr).await.unwrap();
        kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .unwrap();
        let got = until_closed(&mut kept, Duration::from_secs(1)).await;
        assert!(got.starts_with("HTTP/1.1 200 OK\r\n"), "{got}");
        assert!(got.ends_with("\r\n\r\nok\n"), "{got}");

        // Headers larger than the buffer: refused, not buffered.
        let mut big = tokio::net::TcpStream::connect(addr).await.unwrap();
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(2 * MAX_BUF_BYTES)
        );
        let _ = big.write_all(huge.as_bytes()).await;
        let got = until_closed(&mut big, Duration::from_secs(1)).await;
        assert!(got.is_empty() || got.starts_with("HTTP/1.1 431"), "{got}");
    }

    #[tokio::test]
    async fn a_busy_address_is_an_error_naming_it() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = taken.local_addr().unwrap();
        let err = serve(
            addr,
            Arc::new(Metrics::new("0")),
            Arc::new(Health::default()),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with(&format!("metrics address {addr} is in use")),
            "{err}"
        );
        assert!(err.contains("ROAR_NODE_METRICS_ADDR"), "{err}");

        // TEST-NET-1 (RFC 5737) is never an address of this host: bind
        // fails locally, no packet is sent.
        let foreign: SocketAddr = "192.0.2.1:9477".parse().unwrap();
        let err = serve(
            foreign,
            Arc::new(Metrics::new("0")),
            Arc::new(Health::default()),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("metrics address 192.0.2.1:9477 is not an address of this host"),
            "{err}"
        );
    }
}
