//! A TCP proxy that can stall: the faulty endpoint for what no emulator does (a service that
//! stops answering without closing connections).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Forwards `127.0.0.1:PORT` to a target. While stalled, bytes from clients are held (requests
/// hang; nothing is closed); on resume they flow again.
#[derive(Debug)]
pub struct StallProxy {
    addr: SocketAddr,
    stalled: Arc<AtomicBool>,
    resumed: Arc<Notify>,
    task: JoinHandle<()>,
}

impl StallProxy {
    /// Starts forwarding to `target`.
    pub async fn start(target: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stalled = Arc::new(AtomicBool::new(false));
        let resumed = Arc::new(Notify::new());
        let (s, r) = (Arc::clone(&stalled), Arc::clone(&resumed));
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (s, r) = (Arc::clone(&s), Arc::clone(&r));
                tokio::spawn(async move {
                    if let Ok(server) = TcpStream::connect(target).await {
                        let _ = pipe(client, server, s, r).await;
                    }
                });
            }
        });
        Ok(Self {
            addr,
            stalled,
            resumed,
            task,
        })
    }

    /// `http://127.0.0.1:PORT` of the proxy.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Holds every byte clients send from now on.
    pub fn stall(&self) {
        self.stalled.store(true, Ordering::SeqCst);
    }

    /// Lets the held bytes through.
    pub fn resume(&self) {
        self.stalled.store(false, Ordering::SeqCst);
        self.resumed.notify_waiters();
    }
}

impl Drop for StallProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(
    client: TcpStream,
    server: TcpStream,
    stalled: Arc<AtomicBool>,
    resumed: Arc<Notify>,
) -> std::io::Result<()> {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let upstream = async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = cr.read(&mut buf).await?;
            if n == 0 {
                return sw.shutdown().await;
            }
            while stalled.load(Ordering::SeqCst) {
                let wait = resumed.notified();
                if !stalled.load(Ordering::SeqCst) {
                    break;
                }
                wait.await;
            }
            sw.write_all(&buf[..n]).await?;
        }
    };
    let downstream = tokio::io::copy(&mut sr, &mut cw);
    let (a, b) = tokio::join!(upstream, downstream);
    a.and(b.map(|_| ()))
}
