//! A `confab` process under test: started on a free port with its own
//! store, its log kept, killed or signalled when a test says so.

#[allow(unused_imports)]
use super::*;

/// A running `confab` process.
pub struct TestNode {
    pub addr: String,
    pub store: StoreEnv,
    pub env: Vec<(String, String)>,
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl TestNode {
    /// A node on a new, empty store.
    pub async fn start(backend: Backend) -> TestNode {
        TestNode::start_with(backend, &[]).await
    }

    pub async fn start_with(backend: Backend, env: &[(&str, &str)]) -> TestNode {
        let store = StoreEnv::new(backend).await;
        let env = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        TestNode::spawn(store, env).await
    }

    /// A node on an existing store, with extra environment.
    pub async fn spawn(store: StoreEnv, env: Vec<(String, String)>) -> TestNode {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_confab"));
        cmd.env_clear()
            .env("HOST", "127.0.0.1")
            .env("PORT", "0")
            .env("RUST_LOG", "info")
            .env("WORKERS", "2")
            .env("RATE_LIMIT_PER_SEC", "100000")
            .env("RATE_LIMIT_BURST", "100000")
            .env("REST_RATE_PER_SEC", "100000")
            .env("REST_RATE_BURST", "100000")
            .envs(store.vars.iter().cloned())
            .envs(env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn confab");
        let stderr = child.stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut tx = Some(tx);
                for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                    if let Some(rest) = line.split("confab listening on http://").nth(1) {
                        // The address alone, also from a LOG_FORMAT=json line.
                        let addr: String = rest
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                            .collect();
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(addr);
                        }
                    }
                    if let Ok(mut l) = log.lock() {
                        l.push(line);
                    }
                }
            });
        }
        let addr = tokio::task::spawn_blocking(move || rx.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("join");
        match addr {
            Ok(addr) => TestNode {
                addr,
                store,
                env,
                child,
                log,
            },
            Err(_) => {
                let _ = child.kill();
                let lines = log.lock().map(|l| l.join("\n")).unwrap_or_default();
                panic!("confab did not start within 30 s; its log:\n{lines}");
            }
        }
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.ws_url()).await
    }

    pub async fn http(&self, method: &str, path: &str, body: Option<&Value>) -> (u16, String) {
        http(&self.addr, method, path, body).await
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        for _ in 0..300 {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        panic!("confab did not exit within 15 s of SIGTERM");
    }

    /// Starts a new process on the same store and environment.
    pub async fn restart(&self) -> TestNode {
        TestNode::spawn(self.store.clone(), self.env.clone()).await
    }

    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let lines = self.log_lines();
            let start = lines.len().saturating_sub(40);
            eprintln!("--- last log lines of node {} ---", self.addr);
            for l in &lines[start..] {
                eprintln!("{l}");
            }
        }
    }
}

/// A connection to `node` that speaks for `id` from the handshake on.
pub async fn user(node: &TestNode, id: &str) -> Client {
    let c = Client::connect(&format!("{}?user_id={id}", node.ws_url())).await;
    assert_eq!(c.hello["user_id"], id, "{}", c.hello);
    c
}

impl TestNode {
    /// Waits up to 5 s for a log line that contains every one of `parts`.
    pub async fn wait_for_log(&self, parts: &[&str]) -> String {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(line) = self
                .log_lines()
                .into_iter()
                .find(|l| parts.iter().all(|p| l.contains(p)))
            {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no log line with {parts:?}:\n{}",
                self.log_lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of a counter in `/metrics` (its first series).
    pub async fn counter(&self, name: &str) -> u64 {
        let (status, body) = self.http("GET", "/metrics", None).await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .find(|l| l.starts_with(name) && !l.starts_with('#'))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .map(|v| v as u64)
            .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
    }
}
