//! The lazy NBD export (osfarm_core::nbd): start and stop a server over a partly present
//! image, answer its fetch requests from JavaScript, drive the prefetch, read the boot
//! profile, publish. Work that may wait for the JS fetcher (`start` opens and plans,
//! `ensure` fetches) runs on a thread of its own and settles a promise: on the libuv pool
//! it could take the threads a fetcher's own `fs` calls need.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunction, ThreadsafeFunctionCallMode};
use napi_derive::napi;
use osfarm_core::nbd::{Event, FetchReply, FetchRequest, Fetcher, LazyImage, LazyOptions, Server, ServerOptions};
use osfarm_core::progress::Silent;

use crate::repo::{add_options, image, runs, IndexSource, RepoAddOptions, RepoImage, RepoRun, RepositoryHandle};
use crate::{coded_error, js_err, Result};

#[napi(object)]
pub struct NbdServerOptions {
    /// The unix socket to listen on (a stale socket file is replaced).
    pub socket: String,
    /// The export's name; clients may also ask for "" (default: the image digest).
    pub export_name: Option<String>,
    /// Refuse an index that names another image.
    pub expected_digest: Option<String>,
    /// Largest fetch request, and largest step of `ensure`, in blocks (default 8 MiB worth).
    pub max_fetch_blocks: Option<u32>,
    /// Worker threads per client connection (default 8).
    pub workers: Option<u32>,
}

/// Blocks the server needs: answer with `supply(id, bytes)` or `fail(id, message)`.
#[napi(object)]
#[derive(Clone, Copy)]
pub struct NbdFetchRequest {
    pub id: u32,
    pub first: f64,
    pub count: f64,
    /// The byte range: exactly `length` bytes from `offset` are expected.
    pub offset: f64,
    pub length: f64,
    /// A client read waits for these blocks (else they are prefetch): serve them first.
    pub urgent: bool,
}

/// `kind` "bad-block": `block` (from `origin`: "store", "local" or "fetched") did not
/// match its digest and was not served; "fetch-failed": blocks `first`..`first+count`
/// could not be fetched.
#[napi(object)]
#[derive(Clone)]
pub struct NbdEvent {
    pub kind: String,
    pub block: Option<f64>,
    pub origin: Option<String>,
    pub first: Option<f64>,
    pub count: Option<f64>,
    pub message: String,
}

#[napi(object)]
pub struct NbdStats {
    pub block_count: f64,
    pub have_blocks: f64,
    pub reads: f64,
    pub read_bytes: f64,
    pub local_blocks: f64,
    pub fetch_requests: f64,
    pub fetched_blocks: f64,
    pub fetched_bytes: f64,
    pub coalesced: f64,
    pub bad_blocks: f64,
}

#[napi(object)]
pub struct NbdEnsureReport {
    /// Blocks that became present.
    pub blocks: f64,
}

pub type FetchCallback = ThreadsafeFunction<NbdFetchRequest, (), NbdFetchRequest, Status, false, true>;
pub type EventCallback = ThreadsafeFunction<NbdEvent, (), NbdEvent, Status, false, true>;

/// Unanswered fetch requests by id.
type Pending = Arc<Mutex<HashMap<u32, FetchReply>>>;

struct JsFetcher {
    callback: FetchCallback,
    pending: Pending,
    next: AtomicU32,
}

impl Fetcher for JsFetcher {
    fn fetch(&self, r: FetchRequest, reply: FetchReply) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().unwrap().insert(id, reply);
        let req = NbdFetchRequest {
            id,
            first: r.first as f64,
            count: r.count as f64,
            offset: r.offset as f64,
            length: r.length as f64,
            urgent: r.urgent,
        };
        if self.callback.call(req, ThreadsafeFunctionCallMode::NonBlocking) != Status::Ok {
            // JavaScript is going away: dropping the reply fails the request.
            self.pending.lock().unwrap().remove(&id);
        }
    }
}

fn event(e: Event) -> NbdEvent {
    match e {
        Event::BadBlock { block, origin, message } => NbdEvent {
            kind: "bad-block".into(),
            block: Some(block as f64),
            origin: Some(origin.as_str().into()),
            first: None,
            count: None,
            message,
        },
        Event::FetchFailed { first, count, message } => NbdEvent {
            kind: "fetch-failed".into(),
            block: None,
            origin: None,
            first: Some(first as f64),
            count: Some(count as f64),
            message,
        },
    }
}

fn stopped() -> osfarm_core::Error {
    osfarm_core::Error::new(
        osfarm_core::Code::InvalidArgument,
        "this NBD server was stopped: start a new one (it resumes from the blocks already stored)",
    )
}

/// A running NBD export of one image (see `osfarm_core::nbd`).
#[napi]
pub struct NbdServer {
    /// None once stopped: the partial's lock goes with the last reference.
    image: Mutex<Option<Arc<LazyImage>>>,
    server: Mutex<Option<Server>>,
    pending: Pending,
    socket: String,
}

#[napi]
impl NbdServer {
    /// Opens (or resumes) the lazy assembly of the image `index` (an `.osfi` path, an
    /// image path, or index bytes) in `repo`, and serves it on `options.socket`.
    /// Missing blocks are asked of `fetch`; `onEvent` hears of bad blocks and failed fetches.
    #[napi(ts_return_type = "Promise<NbdServer>")]
    pub fn start<'env>(
        env: &'env Env,
        repo: &RepositoryHandle,
        #[napi(ts_arg_type = "string | Buffer")] index: Either<String, Buffer>,
        options: NbdServerOptions,
        #[napi(ts_arg_type = "((request: NbdFetchRequest) => void) | undefined | null")] fetch: Option<FetchCallback>,
        #[napi(ts_arg_type = "((event: NbdEvent) => void) | undefined | null")] on_event: Option<EventCallback>,
    ) -> napi::Result<Object<'env>> {
        let (deferred, promise) = env.create_deferred()?;
        let repo = repo.repo.clone();
        let index = IndexSource::from_js(index);
        let pending: Pending = Arc::default();
        let fetcher = fetch.map(|callback| {
            Arc::new(JsFetcher { callback, pending: pending.clone(), next: AtomicU32::new(0) }) as Arc<dyn Fetcher>
        });
        let events = on_event.map(|cb| {
            Arc::new(move |e| {
                cb.call(event(e), ThreadsafeFunctionCallMode::NonBlocking);
            }) as osfarm_core::nbd::EventSink
        });
        std::thread::spawn(move || {
            let started = (|| {
                let index = index.load(&repo, &Silent)?;
                let opts = LazyOptions {
                    expected_digest: options.expected_digest,
                    fetcher,
                    events,
                    max_fetch_blocks: options.max_fetch_blocks.unwrap_or(0) as u64,
                };
                let image = Arc::new(LazyImage::open(&repo, index, opts)?);
                let name = options.export_name.unwrap_or_else(|| image.digest_hex());
                let server_opts = ServerOptions { export_name: name, workers: options.workers.unwrap_or(0) as usize };
                let server = Server::start(Path::new(&options.socket), image.clone(), server_opts)?;
                Ok((image, server))
            })();
            deferred.resolve(move |env| match started {
                Ok((image, server)) => Ok(NbdServer {
                    image: Mutex::new(Some(image)),
                    server: Mutex::new(Some(server)),
                    pending,
                    socket: options.socket,
                }),
                Err(e) => Err(coded_error(env, e)),
            })
        });
        Ok(promise)
    }

    fn lazy(&self) -> osfarm_core::Result<Arc<LazyImage>> {
        self.image.lock().unwrap().clone().ok_or_else(stopped)
    }

    fn get(&self) -> Result<Arc<LazyImage>> {
        self.lazy().map_err(js_err)
    }

    #[napi(getter)]
    pub fn socket(&self) -> String {
        self.socket.clone()
    }

    #[napi(getter)]
    pub fn digest(&self) -> Result<String> {
        Ok(self.get()?.digest_hex())
    }

    #[napi(getter)]
    pub fn size(&self) -> Result<f64> {
        Ok(self.get()?.size() as f64)
    }

    #[napi(getter)]
    pub fn block_size(&self) -> Result<u32> {
        Ok(self.get()?.block_size())
    }

    /// Answers fetch request `id` with its bytes; they are verified before use.
    #[napi]
    pub fn supply(&self, id: u32, data: Buffer) -> Result<()> {
        self.answer(id, Ok(data.to_vec()))
    }

    /// Answers fetch request `id` with a failure: the reads that wanted it get EIO.
    #[napi]
    pub fn fail(&self, id: u32, message: String) -> Result<()> {
        self.answer(id, Err(message))
    }

    fn answer(&self, id: u32, result: std::result::Result<Vec<u8>, String>) -> Result<()> {
        let reply = self.pending.lock().unwrap().remove(&id).ok_or_else(|| {
            js_err(osfarm_core::Error::new(
                osfarm_core::Code::InvalidArgument,
                format!("fetch request {id} is not pending (answered already, or the server stopped)"),
            ))
        })?;
        reply.complete(result);
        Ok(())
    }

    /// Makes blocks `first`..`first+count` present (copied or fetched, verified, stored):
    /// the background prefetch.
    #[napi(ts_return_type = "Promise<NbdEnsureReport>")]
    pub fn ensure<'env>(&self, env: &'env Env, first: f64, count: f64) -> napi::Result<Object<'env>> {
        let image = self.lazy();
        let (deferred, promise) = env.create_deferred()?;
        std::thread::spawn(move || {
            let r = image.and_then(|image| image.ensure(first as u64, count as u64));
            deferred.resolve(move |env| {
                r.map(|r| NbdEnsureReport { blocks: r.blocks as f64 }).map_err(|e| coded_error(env, e))
            })
        });
        Ok(promise)
    }

    /// The boot profile: runs of blocks in the order clients first read them.
    #[napi]
    pub fn profile(&self) -> Result<Vec<RepoRun>> {
        Ok(runs(&self.get()?.profile()))
    }

    /// Blocks not yet stored, as runs.
    #[napi]
    pub fn missing(&self) -> Result<Vec<RepoRun>> {
        Ok(runs(&self.get()?.missing()))
    }

    #[napi]
    pub fn stats(&self) -> Result<NbdStats> {
        let s = self.get()?.stats();
        Ok(NbdStats {
            block_count: s.block_count as f64,
            have_blocks: s.have_blocks as f64,
            reads: s.reads as f64,
            read_bytes: s.read_bytes as f64,
            local_blocks: s.local_blocks as f64,
            fetch_requests: s.fetch_requests as f64,
            fetched_blocks: s.fetched_blocks as f64,
            fetched_bytes: s.fetched_bytes as f64,
            coalesced: s.coalesced as f64,
            bad_blocks: s.bad_blocks as f64,
        })
    }

    /// Makes the stored blocks durable and recorded for a resume.
    #[napi]
    pub fn flush(&self) -> Result<()> {
        self.get()?.flush().map_err(js_err)
    }

    /// Publishes the image into the repository once every block is stored; the export
    /// keeps serving.
    #[napi(ts_return_type = "Promise<RepoImage>")]
    pub fn publish<'env>(&self, env: &'env Env, options: Option<RepoAddOptions>) -> napi::Result<Object<'env>> {
        let lazy = self.lazy();
        let opts = add_options(options);
        let (deferred, promise) = env.create_deferred::<RepoImage, _>()?;
        std::thread::spawn(move || {
            let r = lazy.and_then(|lazy| lazy.publish(&opts));
            deferred.resolve(move |env| r.map(image).map_err(|e| coded_error(env, e)))
        });
        Ok(promise)
    }

    /// Stops serving: fails fetches still pending, disconnects clients, removes the
    /// socket, and (once running `ensure`s end) flushes and unlocks the partial for a
    /// later resume. Idempotent.
    #[napi]
    pub fn stop(&self) {
        if let Some(image) = self.image.lock().unwrap().take() {
            image.close();
        }
        self.pending.lock().unwrap().clear();
        if let Some(server) = self.server.lock().unwrap().take() {
            server.stop();
        }
    }
}
