//! The public listener: actix-web's app served through actix-http, with every connection
//! wrapped in a [`HeadDeadline`] (actix-web's `HttpServer` offers no way to wrap connections).

use std::net::TcpListener;
use std::time::Duration;

use actix_http::{HttpService, KeepAlive, Protocol};
use actix_server::Server;
use actix_service::{IntoServiceFactory, ServiceFactoryExt, fn_service, map_config};
use actix_web::dev::AppConfig;
use actix_web::rt::net::TcpStream;
use actix_web::{App, web};

use super::head_deadline::HeadDeadline;
use super::{Ingress, routes};

/// Idle kept-alive connections close after this; longer than the 60 s idle timeout of common
/// load balancers, so the balancer always closes first.
const KEEP_ALIVE: Duration = Duration::from_secs(75);
/// How long a closing connection may take to flush its last response.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// What the public server is given.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub workers: usize,
    /// Open connections per worker.
    pub connections_per_worker: usize,
    /// How long in-flight requests get to finish once stopping.
    pub drain: Duration,
    /// Each request's headers, and again its body, must arrive within this.
    pub request_timeout: Duration,
}

/// Binds the webhook route on `listener`; the returned server runs once awaited.
pub fn public(
    listener: TcpListener,
    ingress: web::Data<Ingress>,
    settings: ServerSettings,
) -> std::io::Result<Server> {
    let request_timeout = settings.request_timeout;
    let builder = Server::build();
    // Tells each connection when a graceful stop starts, so kept-alive ones close after their
    // current request instead of taking new ones until the drain deadline cuts them off.
    let stopping = builder.graceful_shutdown_signal();
    Ok(builder
        .workers(settings.workers)
        .max_concurrent_connections(settings.connections_per_worker)
        .disable_signals()
        .shutdown_timeout(settings.drain.as_secs().max(1))
        .listen("omnichat-bridge", listener, move || {
            let app = App::new().app_data(ingress.clone()).configure(routes);
            let stopping = stopping.clone();
            let http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                .keep_alive(KeepAlive::Timeout(KEEP_ALIVE))
                // actix's own deadline for a connection's first head; HeadDeadline times every
                // one after it too.
                .client_request_timeout(request_timeout)
                .client_disconnect_timeout(DISCONNECT_TIMEOUT)
                .finish(map_config(
                    app.into_factory().map_err(|error: actix_web::Error| {
                        error.as_response_error().error_response()
                    }),
                    |_| AppConfig::default(),
                ));
            fn_service(move |io: TcpStream| async move {
                let _ = io.set_nodelay(true);
                let peer = io.peer_addr().ok();
                Ok((
                    HeadDeadline::new(io, request_timeout),
                    Protocol::Http1,
                    peer,
                ))
            })
            .and_then(http)
        })?
        .run())
}
