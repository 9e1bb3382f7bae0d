//! Several nodes: the cluster, its nginx, a Redis of a test's own, and a
//! proxy that cuts a node off its service.

#[allow(unused_imports)]
use super::*;

/// A TCP proxy a test can cut and restore, to take a service away from a
/// node without stopping the shared service.
pub struct CutProxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl CutProxy {
    pub async fn start(target: String) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let accept = {
            let (up, conns) = (up.clone(), conns.clone());
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if !up.load(std::sync::atomic::Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
                    let target = target.clone();
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    if let Ok(mut c) = conns.lock() {
                        c.push(task);
                    }
                }
            })
        };
        CutProxy {
            port,
            up,
            conns,
            accept,
        }
    }

    /// Breaks every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        if let Ok(mut c) = self.conns.lock() {
            for task in c.drain(..) {
                task.abort();
            }
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for CutProxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// `postgres://user@host:port/db` → (`host:port`, a URL with `host_port` instead).
pub fn reroute_url(url: &str, host_port: &str) -> (String, String) {
    let (scheme, rest) = url.split_once("://").expect("url scheme");
    let (auth, after) = rest.rsplit_once('@').map_or(("", rest), |(a, b)| (a, b));
    let (target, path) = after.split_once('/').map_or((after, ""), |(t, p)| (t, p));
    let at = if auth.is_empty() {
        String::new()
    } else {
        format!("{auth}@")
    };
    (
        target.to_string(),
        format!("{scheme}://{at}{host_port}/{path}"),
    )
}

/// Several nodes on one PostgreSQL database and one Redis channel (each
/// cluster its own), optionally behind the project's nginx configuration.
pub struct Cluster {
    pub nodes: Vec<Option<TestNode>>,
    pub store: StoreEnv,
    pub redis_url: String,
    pub channel: String,
    pub nginx: Option<Nginx>,
}

impl Cluster {
    pub async fn start(n: usize) -> Cluster {
        Cluster::start_on(n, redis_url()).await
    }

    pub async fn start_on(n: usize, redis_url: String) -> Cluster {
        let mut c = Cluster {
            nodes: Vec::new(),
            store: StoreEnv::new(Backend::Postgres).await,
            redis_url,
            channel: unique("chat:events:test"),
            nginx: None,
        };
        for _ in 0..n {
            c.add_node().await;
        }
        c
    }

    /// Starts one more node; returns its index.
    pub async fn add_node(&mut self) -> usize {
        let i = self.nodes.len();
        let env = vec![
            ("NODE_ID".to_string(), format!("node-{i}")),
            ("REDIS_URL".to_string(), self.redis_url.clone()),
            ("REDIS_CHANNEL".to_string(), self.channel.clone()),
        ];
        let node = TestNode::spawn(self.store.clone(), env).await;
        self.nodes.push(Some(node));
        i
    }

    pub fn node(&self, i: usize) -> &TestNode {
        self.nodes[i].as_ref().expect("node is running")
    }

    pub async fn client(&self, i: usize) -> Client {
        self.node(i).client().await
    }

    /// Puts nginx, with nginx/confab.conf.template, in front of every node.
    pub fn start_nginx(&mut self) -> String {
        let upstreams: Vec<String> = self
            .nodes
            .iter()
            .flatten()
            .map(|n| n.addr.clone())
            .collect();
        let nginx = Nginx::start(&upstreams);
        let url = format!("ws://{}/ws", nginx.addr);
        self.nginx = Some(nginx);
        url
    }

    pub fn kill9(&mut self, i: usize) {
        if let Some(mut n) = self.nodes[i].take() {
            n.kill9();
        }
    }
}

/// A private nginx running the project's configuration.
pub struct Nginx {
    pub addr: String,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    pub fn start(upstreams: &[String]) -> Nginx {
        let nginx = std::env::var("CONFAB_TEST_NGINX").unwrap_or_else(|_| {
            panic!(
                "CONFAB_TEST_NGINX is not set: these tests need nginx. Run them with \
                 scripts/test, which installs nginx and sets it"
            )
        });
        let template = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/nginx/confab.conf.template"
        ))
        .expect("nginx/confab.conf.template");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let addr = format!("127.0.0.1:{port}");
        let servers: String = upstreams
            .iter()
            .map(|u| format!("        server {u} max_fails=1 fail_timeout=2s;\n"))
            .collect();
        let conf = template
            .replace("{{PREFIX}}", &dir.path().display().to_string())
            .replace("{{LISTEN}}", &addr)
            .replace("{{UPSTREAMS}}", &servers)
            .replace("worker_rlimit_nofile 65536;", "worker_rlimit_nofile 8192;")
            .replace("worker_connections 20000;", "worker_connections 4096;");
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf).expect("write nginx.conf");
        let errlog = dir.path().join("nginx-error.log");
        let mut child = Command::new(nginx)
            .arg("-e")
            .arg(&errlog)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&conf_path)
            .args(["-g", "daemon off;"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nginx");
        for _ in 0..100 {
            if std::net::TcpStream::connect(&addr).is_ok() {
                return Nginx {
                    addr,
                    child,
                    _dir: dir,
                };
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        let log = std::fs::read_to_string(&errlog).unwrap_or_default();
        panic!("nginx did not listen on {addr}: {log}");
    }
}

impl Drop for Nginx {
    /// SIGTERM, so that the master stops its workers (a SIGKILLed master
    /// leaves them running, holding the port); SIGKILL if it lingers.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A private redis-server on a fixed port, which a test may stop and restart.
pub struct OwnRedis {
    pub port: u16,
    child: Option<Child>,
}

impl OwnRedis {
    pub fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut r = OwnRedis { port, child: None };
        r.restart();
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    pub fn restart(&mut self) {
        let server = std::env::var("CONFAB_TEST_REDIS_SERVER").unwrap_or_else(|_| {
            panic!(
                "CONFAB_TEST_REDIS_SERVER is not set: this test starts its own Redis. \
                 Run it with scripts/test, which installs redis-server and sets it"
            )
        });
        let child = Command::new(server)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not listen on port {}", self.port);
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Clusters whose nodes share extra settings (`BUS_SECRET`, …), and what a
/// test publishes on a cluster's channel itself.
impl Cluster {
    /// `n` nodes that all get `env` besides the usual settings.
    pub async fn start_with(n: usize, env: &[(&str, &str)]) -> Cluster {
        let mut c = Cluster::start_on(0, redis_url()).await;
        for _ in 0..n {
            c.add_node_with(env).await;
        }
        c
    }

    /// Starts one more node with `env` besides the usual settings; returns its index.
    pub async fn add_node_with(&mut self, env: &[(&str, &str)]) -> usize {
        let i = self.nodes.len();
        let mut vars = vec![
            ("NODE_ID".to_string(), format!("node-{i}")),
            ("REDIS_URL".to_string(), self.redis_url.clone()),
            ("REDIS_CHANNEL".to_string(), self.channel.clone()),
        ];
        vars.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let node = TestNode::spawn(self.store.clone(), vars).await;
        self.nodes.push(Some(node));
        i
    }

    /// Publishes `payload` on the cluster's channel as anyone who can reach
    /// Redis could; returns how many subscribers got it.
    pub async fn publish_raw(&self, payload: impl Into<Vec<u8>>) -> i64 {
        let client = redis::Client::open(self.redis_url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("connect to redis");
        redis::cmd("PUBLISH")
            .arg(&self.channel)
            .arg(payload.into())
            .query_async(&mut conn)
            .await
            .expect("PUBLISH")
    }
}
