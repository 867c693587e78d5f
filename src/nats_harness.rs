//! nats-server processes on loopback for tests and benchmarks: one with JetStream, or a cluster
//! of several, each with its own store folder, stopped by its pid when dropped.
//!
//! The binary is the one `.ci/need-nats` installs (pinned upstream 2.15.1; Debian's 2.9 is too
//! old), or `$ROOMLOG_NATS_SERVER`. Every server runs with `sync_interval: always`, as the
//! documentation tells operators to.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary: `$ROOMLOG_NATS_SERVER`, or what `.ci/need-nats` prints (installing
/// it the first time).
pub fn binary() -> std::io::Result<PathBuf> {
    if let Some(path) = std::env::var_os("ROOMLOG_NATS_SERVER") {
        return Ok(PathBuf::from(path));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join(".ci/need-nats");
    let out = Command::new("bash").arg(&script).stderr(Stdio::inherit()).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("{} failed: {}", script.display(), out.status)));
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// One server of a [`Cluster`].
#[derive(Debug)]
pub struct Server {
    pub name: String,
    pub port: u16,
    pub monitor_port: u16,
    config: PathBuf,
    child: Option<Child>,
}

impl Server {
    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn spawn(&mut self, binary: &Path, log: &Path) -> std::io::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = Command::new(binary)
            .arg("-c")
            .arg(&self.config)
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the process: `SIGKILL` when `hard`, else `SIGTERM` (a leader hands over first).
    pub fn stop(&mut self, hard: bool) {
        if let Some(mut child) = self.child.take() {
            if hard {
                let _ = child.kill();
            } else {
                let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether `/healthz` answers 200.
    pub fn healthy(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.monitor_port)) else { return false };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
        if stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_err() {
            return false;
        }
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
    }
}

/// nats-servers with JetStream on loopback; a cluster (routes between them) when more than
/// one. Every process is stopped by its pid when this is dropped.
#[derive(Debug)]
pub struct Cluster {
    pub servers: Vec<Server>,
    binary: PathBuf,
    dir: PathBuf,
}

impl Cluster {
    /// Starts `n` servers with their stores under `dir`, and waits until each is healthy.
    pub fn start(n: usize, dir: &Path) -> std::io::Result<Self> {
        let binary = binary()?;
        // Every listener is held until all ports are chosen: let go one by one, the kernel may
        // hand the same port out twice (a server once got its client port as its route port).
        let held: Vec<TcpListener> = (0..3 * n).map(|_| TcpListener::bind("127.0.0.1:0")).collect::<Result<_, _>>()?;
        let chosen: Vec<u16> = held.iter().map(|l| l.local_addr().map(|a| a.port())).collect::<Result<_, _>>()?;
        drop(held);
        let ports: Vec<(u16, u16, u16)> = chosen.chunks(3).map(|c| (c[0], c[1], c[2])).collect();
        let routes: Vec<String> = ports.iter().map(|p| format!("nats-route://127.0.0.1:{}", p.1)).collect();
        let mut servers = Vec::new();
        for (i, &(port, cluster_port, monitor_port)) in ports.iter().enumerate() {
            let name = format!("n{}", i + 1);
            let store = dir.join(&name);
            std::fs::create_dir_all(&store)?;
            let mut text = format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\nhttp: 127.0.0.1:{monitor_port}\n\
                 jetstream {{\n  store_dir: \"{}\"\n  sync_interval: always\n}}\n",
                store.display()
            );
            if n > 1 {
                text.push_str(&format!(
                    "cluster {{\n  name: roomlog-test\n  listen: 127.0.0.1:{cluster_port}\n  routes: [{}]\n}}\n",
                    routes.join(", ")
                ));
            }
            let config = dir.join(format!("{name}.conf"));
            std::fs::write(&config, text)?;
            servers.push(Server { name, port, monitor_port, config, child: None });
        }
        let mut cluster = Self { servers, binary, dir: dir.to_owned() };
        for i in 0..n {
            cluster.spawn(i)?;
        }
        cluster.wait_healthy(Duration::from_secs(30))?;
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> std::io::Result<()> {
        let log = self.dir.join(format!("{}.log", self.servers[i].name));
        let binary = self.binary.clone();
        self.servers[i].spawn(&binary, &log)
    }

    /// Starts server `i` again (after [`Server::stop`]), on the same ports and store.
    pub fn restart(&mut self, i: usize) -> std::io::Result<()> {
        self.spawn(i)
    }

    /// Waits until every running server answers `/healthz` with 200.
    pub fn wait_healthy(&self, within: Duration) -> std::io::Result<()> {
        let deadline = Instant::now() + within;
        while !self.servers.iter().filter(|s| s.child.is_some()).all(Server::healthy) {
            if Instant::now() > deadline {
                let mut logs = String::new();
                for server in &self.servers {
                    let text =
                        std::fs::read_to_string(self.dir.join(format!("{}.log", server.name))).unwrap_or_default();
                    let tail: Vec<&str> = text.lines().rev().take(8).collect();
                    logs.push_str(&format!("\n--- {} (healthy: {})\n", server.name, server.healthy()));
                    logs.push_str(&tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
                }
                return Err(std::io::Error::other(format!("nats-server not healthy within {within:?}:{logs}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// Every server's URL.
    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(Server::url).collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            server.stop(true);
        }
    }
}
