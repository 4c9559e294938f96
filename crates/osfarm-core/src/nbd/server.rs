//! The NBD server: a unix-socket listener and, per connection, one thread that reads
//! requests and a small pool of workers that answer them, so that reads of present
//! blocks are not held up behind a read that waits for a fetch (qemu keeps up to 16
//! requests in flight on one connection). Replies may leave in any order, as NBD allows;
//! each is written whole under the connection's write lock.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use super::lazy::LazyImage;
use super::proto::{self, ExportInfo, Request};
use crate::bail;
use crate::error::{Error, Result};

#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The export's name (clients may also ask for "", the default export).
    pub export_name: String,
    /// Worker threads per connection (0: 8).
    pub workers: usize,
}

/// Each connection: a handle on its socket (to shut it down) and its thread.
type Connections = Arc<Mutex<Vec<(UnixStream, JoinHandle<()>)>>>;

/// A running server; `stop` (or dropping it) closes the socket and every connection.
pub struct Server {
    path: PathBuf,
    listener_fd: RawFd,
    stopping: Arc<AtomicBool>,
    listener: Option<JoinHandle<()>>,
    conns: Connections,
}

impl Server {
    /// Listens on the unix socket `path` (a stale socket file is replaced; a live one
    /// is refused) and serves `image` to every client.
    pub fn start(path: &Path, image: Arc<LazyImage>, opts: ServerOptions) -> Result<Server> {
        if path.exists() {
            if UnixStream::connect(path).is_ok() {
                bail!(Locked, "{} is the socket of a running server: choose another path or stop it", path.display());
            }
            std::fs::remove_file(path).map_err(|e| Error::io(path, "cannot remove stale socket", e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| Error::io(path, "cannot listen on", e))?;
        // Only the owner (and root) may read the disk.
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| Error::io(path, "cannot set the mode of", e))?;
        let listener_fd = listener.as_raw_fd();
        let stopping = Arc::new(AtomicBool::new(false));
        let conns: Connections = Arc::default();
        let workers = if opts.workers == 0 { 8 } else { opts.workers };
        let (stop, list) = (stopping.clone(), conns.clone());
        let name = opts.export_name;
        let thread = std::thread::Builder::new()
            .name("osfarm-nbd-listen".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(stream) = stream else {
                        // EMFILE and the like: wait a little rather than spin.
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        continue;
                    };
                    let Ok(handle) = stream.try_clone() else { continue };
                    let (img, name) = (image.clone(), name.clone());
                    let spawned = std::thread::Builder::new().name("osfarm-nbd-conn".into()).spawn(move || {
                        // A client that breaks the protocol or goes away just ends its connection.
                        let _ = serve_connection(stream, &img, &name, workers);
                    });
                    if let Ok(t) = spawned {
                        let mut l = list.lock().unwrap();
                        l.retain(|(_, t)| !t.is_finished());
                        l.push((handle, t));
                    }
                }
            })
            .map_err(|e| Error::io(path, "cannot start the server thread for", e))?;
        Ok(Server { path: path.to_path_buf(), listener_fd, stopping, listener: Some(thread), conns })
    }

    pub fn socket_path(&self) -> &Path {
        &self.path
    }

    /// Stops listening, disconnects every client and waits for their threads. A read
    /// waiting for a fetch is waited for: close the image first (`LazyImage::close`) if
    /// the fetcher may never answer.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(listener) = self.listener.take() else { return };
        self.stopping.store(true, Ordering::Release);
        // SAFETY: the listener thread owns this descriptor and keeps it open until it sees
        // `stopping`; shutdown(2) on a listening socket wakes its accept(2) on Linux.
        unsafe {
            libc::shutdown(self.listener_fd, libc::SHUT_RDWR);
        }
        let _ = listener.join();
        let conns = std::mem::take(&mut *self.conns.lock().unwrap());
        for (stream, _) in &conns {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        for (_, t) in conns {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn serve_connection(mut stream: UnixStream, image: &Arc<LazyImage>, name: &str, workers: usize) -> io::Result<()> {
    let info = ExportInfo { name, size: image.size(), block_size: image.block_size() };
    if !proto::negotiate(&mut stream, &info)? {
        return Ok(());
    }
    let writer = Arc::new(Mutex::new(stream.try_clone()?));
    let (tx, rx) = sync_channel::<Request>(workers * 2);
    let rx = Arc::new(Mutex::new(rx));
    let pool: Vec<JoinHandle<()>> = (0..workers)
        .map(|_| {
            let (rx, writer, image) = (rx.clone(), writer.clone(), image.clone());
            std::thread::Builder::new().name("osfarm-nbd-work".into()).spawn(move || work(&rx, &writer, &image))
        })
        .collect::<io::Result<_>>()?;
    let result = read_requests(&mut stream, &writer, image, |r| tx.send(r).is_ok());
    drop(tx);
    for t in pool {
        let _ = t.join();
    }
    result
}

/// Reads requests until DISC or the end of the stream; reads and flushes go to the
/// workers, everything else is answered here.
fn read_requests(
    stream: &mut UnixStream,
    writer: &Mutex<UnixStream>,
    image: &LazyImage,
    mut dispatch: impl FnMut(Request) -> bool,
) -> io::Result<()> {
    let reply = |error: u32, cookie: u64| {
        let mut h = [0u8; proto::REPLY_HEADER_LEN];
        proto::put_reply_header(&mut h, error, cookie);
        writer.lock().unwrap().write_all(&h)
    };
    while let Some(req) = proto::read_request(stream)? {
        match req.command {
            proto::CMD_READ | proto::CMD_FLUSH => {
                let fits = matches!(req.offset.checked_add(req.length as u64), Some(e) if e <= image.size());
                let bad = req.command == proto::CMD_READ && (req.length > proto::MAX_PAYLOAD || !fits);
                if bad {
                    reply(proto::EINVAL, req.cookie)?;
                } else if !dispatch(req) {
                    break;
                }
            }
            proto::CMD_WRITE => {
                if req.length > proto::MAX_PAYLOAD {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "oversized write"));
                }
                io::copy(&mut (&mut *stream).take(req.length as u64), &mut io::sink())?;
                reply(proto::EPERM, req.cookie)?;
            }
            proto::CMD_TRIM | proto::CMD_WRITE_ZEROES => reply(proto::EPERM, req.cookie)?,
            proto::CMD_DISC => break,
            _ => reply(proto::EINVAL, req.cookie)?,
        }
    }
    Ok(())
}

fn work(rx: &Mutex<Receiver<Request>>, writer: &Mutex<UnixStream>, image: &LazyImage) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        let Ok(req) = rx.lock().unwrap().recv() else { return };
        let h = proto::REPLY_HEADER_LEN;
        let result = if req.command == proto::CMD_FLUSH {
            buf.resize(h, 0);
            image.flush()
        } else {
            buf.resize(h + req.length as usize, 0);
            image.read_at(req.offset, &mut buf[h..])
        };
        // Every failure is EIO to the client; the image reported bad blocks as events.
        let error = if result.is_ok() { 0 } else { proto::EIO };
        if error != 0 {
            buf.truncate(h);
        }
        proto::put_reply_header(&mut buf, error, req.cookie);
        if writer.lock().unwrap().write_all(&buf).is_err() {
            return;
        }
        // Keep a buffer for the usual reads, not the 32 MiB of a rare big one.
        if buf.capacity() > 4 << 20 {
            buf = Vec::new();
        }
    }
}
