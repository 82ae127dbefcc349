//! The public listener: actix-web's app served through actix-http, with every connection
//! wrapped in a [`HeadDeadline`] (actix-web's `HttpServer` offers no way to wrap connections)
//! and stamped with the time it is to be told to close ([`RetireAt`]).

use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix_http::{ConnectionType, Extensions, HttpService, KeepAlive, Protocol, Request};
use actix_server::Server;
use actix_service::{
    IntoServiceFactory, Service, ServiceFactory, ServiceFactoryExt, apply_fn_factory, fn_service,
    map_config,
};
use actix_web::body::BoxBody;
use actix_web::dev::{AppConfig, ServiceResponse};
use actix_web::rt::net::TcpStream;
use actix_web::{App, HttpResponse, web};

use super::head_deadline::HeadDeadline;
use super::{Ingress, routes};
use crate::ops::Metrics;

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
    /// Kept-alive connections older than this (within 10% either way) are told
    /// `Connection: close` on their next answer; `None`: never.
    pub max_connection_age: Option<Duration>,
}

/// Binds the webhook route on `listener`; the returned server runs once awaited.
pub fn public(
    listener: TcpListener,
    ingress: web::Data<Ingress>,
    settings: ServerSettings,
) -> std::io::Result<Server> {
    let request_timeout = settings.request_timeout;
    let max_age = settings.max_connection_age;
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
            let app = map_config(
                app.into_factory()
                    .map_err(|error: actix_web::Error| error.as_response_error().error_response()),
                |_| AppConfig::default(),
            );
            let stopping = stopping.clone();
            let mut http = HttpService::build()
                .graceful_shutdown_signal(move || {
                    let stopping = stopping.clone();
                    async move { stopping.notified().await }
                })
                .keep_alive(KeepAlive::Timeout(KEEP_ALIVE))
                // actix's own deadline for a connection's first head; HeadDeadline times every
                // one after it too.
                .client_request_timeout(request_timeout)
                .client_disconnect_timeout(DISCONNECT_TIMEOUT);
            if let Some(age) = max_age {
                http = http.on_connect_ext(
                    move |_: &HeadDeadline<TcpStream>, data: &mut Extensions| {
                        data.insert(RetireAt::drawn(age));
                    },
                );
            }
            let http = http.finish(close_when_old(app, ingress.metrics.clone()));
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

/// When a connection is to be told `Connection: close`: when it was accepted, plus its age.
#[derive(Debug, Clone, Copy)]
struct RetireAt(Instant);

impl RetireAt {
    /// The age within 10% either way (grpc-java's jitter, and Vector's): connections opened
    /// together, as when every sender reconnects to the replicas a rollout or a scale-up made,
    /// then close over a fifth of the age instead of in the same second, so they do not all
    /// reconnect at once and land on the balancer's choice of the moment together.
    fn drawn(age: Duration) -> Self {
        let now = Instant::now();
        let spread = age / 10;
        let range = u64::try_from(spread.as_millis()).unwrap_or(u64::MAX / 4) * 2 + 1;
        let draw = RandomState::new().hash_one(now) % range;
        Self(now + age - spread + Duration::from_millis(draw))
    }
}

/// Every answer of the public port (404 and 405 included) on a connection past its age says
/// `Connection: close`, and actix-http closes the connection once it is written: never in the
/// middle of a request, and a young connection keeps alive.
fn close_when_old<F>(
    app: F,
    metrics: Arc<Metrics>,
) -> impl ServiceFactory<
    Request,
    Config = (),
    Response = ServiceResponse<BoxBody>,
    Error = HttpResponse<BoxBody>,
    InitError = (),
>
where
    F: ServiceFactory<
            Request,
            Config = (),
            Response = ServiceResponse<BoxBody>,
            Error = HttpResponse<BoxBody>,
            InitError = (),
        >,
{
    apply_fn_factory(app, move |request: Request, app: &F::Service| {
        let retire = request.conn_data::<RetireAt>().copied();
        let answer = app.call(request);
        let metrics = metrics.clone();
        async move {
            let mut answer = answer.await;
            if retire.is_some_and(|at| Instant::now() >= at.0) {
                let head = match &mut answer {
                    Ok(response) => response.response_mut().head_mut(),
                    Err(response) => response.head_mut(),
                };
                head.set_connection_type(ConnectionType::Close);
                metrics.observe_connection_aged_out();
            }
            answer
        }
    })
}
