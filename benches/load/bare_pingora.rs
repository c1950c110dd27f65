//! The load comparison's reference point: pingora and pingora-cache over mediagate's cache
//! storage (`Cache::leak`: the same `MemoryStore`, eviction and fill lock), and nothing else:
//! no client watcher, routing, credentials, policy, request ids, metrics or access log. What
//! mediagate does per cache hit beyond this is what its features cost. Built and run by
//! `benches/load/compare.sh` and `benches/load/instructions.sh`.
//!
//! Usage: `bare_pingora LISTEN UPSTREAM [PASS_LISTEN [FLOOR_LISTEN FLOOR_BODY]]` (e.g.
//! `127.0.0.1:8080 127.0.0.1:9000`). One worker thread; every GET answered 200 is cached for an
//! hour (longer than a whole comparison run, so no run meets an expired entry). On PASS_LISTEN,
//! when given, the same proxy without a cache: every request passes through. On FLOOR_LISTEN,
//! when given, pingora's floor: every request is answered from `request_filter` with the file
//! FLOOR_BODY as a 200 JSON body (a clone of one prepared head, as a cache hit clones its
//! stored one), with no cache, upstream or anything else: about the least a proxy on pingora's
//! `HttpProxy` can do to answer a cached read. It exits when its standard input closes.

use std::io::Read;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use pingora::cache::{CacheKey, CacheMeta, NoCacheReason, RespCacheable};
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::Server;
use pingora::upstreams::peer::HttpPeer;
use pingora::Result;

use mediagate::cache::Cache;

struct Bare {
    upstream: String,
    /// None: nothing is cached.
    cache: Option<&'static Cache>,
    /// Some: every request gets this answer, and nothing else happens.
    answer: Option<Answer>,
}

struct Answer {
    head: ResponseHeader,
    body: Bytes,
}

impl Answer {
    fn json(body: Vec<u8>) -> Result<Self> {
        let mut head = ResponseHeader::build(200, Some(2))?;
        head.insert_header("content-type", "application/json")?;
        head.insert_header("content-length", body.len())?;
        Ok(Answer {
            head,
            body: body.into(),
        })
    }
}

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _: &mut ()) -> Result<bool> {
        let Some(answer) = &self.answer else {
            return Ok(false);
        };
        session
            .write_response_header(Box::new(answer.head.clone()), false)
            .await?;
        session
            .write_response_body(Some(answer.body.clone()), true)
            .await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }

    fn request_cache_filter(&self, session: &mut Session, _: &mut ()) -> Result<()> {
        // pingora caches whatever method it is told to: uploads must pass through.
        if let Some(cache) = self.cache {
            if session.req_header().method == pingora::http::Method::GET {
                cache.enable_on(&mut session.cache);
            }
        }
        Ok(())
    }

    /// The path as the key; mediagate's storage files every entry under a kind.
    fn cache_key_callback(&self, session: &Session, _: &mut ()) -> Result<CacheKey> {
        Ok(CacheKey::new(
            session.req_header().uri.path(),
            mediagate::cache::Kind::Metadata.label(),
        ))
    }

    fn response_cache_filter(
        &self,
        _: &Session,
        response: &ResponseHeader,
        _: &mut (),
    ) -> Result<RespCacheable> {
        // It injects no credentials: a read without them gets a 401, which must not be what
        // the following reads are answered from.
        if response.status != pingora::http::StatusCode::OK {
            return Ok(RespCacheable::Uncacheable(NoCacheReason::OriginNotCache));
        }
        let now = SystemTime::now();
        Ok(RespCacheable::Cacheable(CacheMeta::new(
            now + Duration::from_secs(3600),
            now,
            0,
            0,
            response.clone(),
        )))
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(listen), Some(upstream)) = (args.next(), args.next()) else {
        eprintln!("usage: bare_pingora LISTEN UPSTREAM [PASS_LISTEN [FLOOR_LISTEN FLOOR_BODY]]");
        std::process::exit(2);
    };
    // Ends with whoever started it: its standard input closes then.
    std::thread::spawn(|| {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let conf = ServerConf {
        threads: 1,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let caching = Bare {
        upstream: upstream.clone(),
        cache: Some(Cache::leak(256 << 20, Duration::from_secs(10))),
        answer: None,
    };
    let mut proxy = pingora::proxy::http_proxy_service(&server.configuration, caching);
    proxy.add_tcp(&listen);
    server.add_service(proxy);
    if let Some(pass_listen) = args.next() {
        let passing = Bare {
            upstream: upstream.clone(),
            cache: None,
            answer: None,
        };
        let mut pass = pingora::proxy::http_proxy_service(&server.configuration, passing);
        pass.add_tcp(&pass_listen);
        server.add_service(pass);
    }
    if let (Some(floor_listen), Some(body_file)) = (args.next(), args.next()) {
        let answer = std::fs::read(&body_file)
            .map_err(|e| format!("{body_file}: {e}"))
            .and_then(|body| Answer::json(body).map_err(|e| e.to_string()));
        let answer = answer.unwrap_or_else(|e| {
            eprintln!("bare_pingora: {e}");
            std::process::exit(2);
        });
        let floor = Bare {
            upstream,
            cache: None,
            answer: Some(answer),
        };
        let mut floor_service = pingora::proxy::http_proxy_service(&server.configuration, floor);
        floor_service.add_tcp(&floor_listen);
        server.add_service(floor_service);
    }
    server.run_forever()
}
