//! The accept loop: every TCP connection is served by hyper's HTTP/1 with our limits in force,
//! rather than by `warp::serve`, which offers no way to set them.
//!
//! - a client must send its request head within `limits.handshake_timeout` (and the next one
//!   on a kept-alive connection within the same time), so slowloris connections are closed;
//! - a request head larger than `limits.header_bytes_max` is answered 431 by hyper;
//! - the peer's address is attached to each request as [`Peer`], read by [`peer`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::task::TaskTracker;
use warp::Filter;

use super::{routes, App};

/// Smallest read buffer hyper accepts.
const HYPER_BUF_MIN: usize = 8192;

/// The address a request came from.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// The peer's address, when the request came over TCP.
pub fn peer() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Copy {
    warp::ext::optional::<Peer>().map(|peer: Option<Peer>| peer.map(|Peer(addr)| addr))
}

/// Serves `listener` until `stopping` turns true, then lets each open HTTP connection finish
/// its request and returns once all have. (Upgraded WebSockets are not waited for here: they
/// watch the same signal and close themselves.)
pub async fn serve(listener: TcpListener, app: Arc<App>, mut stopping: watch::Receiver<bool>) {
    let routes = routes(app.clone());
    let limits = &app.config.limits;
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.handshake_timeout)
        .max_buf_size(limits.header_bytes_max.max(HYPER_BUF_MIN))
        .max_header_size(limits.header_bytes_max)
        .keep_alive(true);
    let tracker = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = async { let _ = stopping.wait_for(|stop| *stop).await; } => break,
        };
        let (stream, addr) = match accepted {
            Ok(pair) => pair,
            Err(error) => {
                // Out of file descriptors, most likely: wait for some to be released.
                tracing::warn!(error = %error, "accept failed");
                metrics::counter!(crate::metrics::ACCEPT_ERRORS_TOTAL).increment(1);
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = warp::service(routes.clone());
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(Peer(addr));
            let mut service = service.clone();
            tower_service::Service::call(&mut service, request)
        });
        let connection = builder.serve_connection(TokioIo::new(stream), service).with_upgrades();
        let mut stopping = stopping.clone();
        tracker.spawn(async move {
            let mut connection = std::pin::pin!(connection);
            let result = tokio::select! {
                result = connection.as_mut() => result,
                () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                    connection.as_mut().graceful_shutdown();
                    connection.await
                }
            };
            if let Err(error) = result {
                tracing::debug!(peer = %addr, error = %error, "http connection ended with an error");
            }
        });
    }
    drop(listener);
    tracker.close();
    tracker.wait().await;
}
