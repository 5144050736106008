//! A real S3 server for the sink tests: moto's server mode (PyPI
//! `moto[server]`, in its own venv), reached over HTTP on the loopback
//! through a TCP relay the test can cut (the store "down") and restore
//! without losing the server's state. The tests read the bucket with
//! boto3, a client independent of roar-node.

use std::{
    io,
    net::{Shutdown, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

/// The venv with moto's server and boto3: `ROAR_NODE_S3_VENV` (set by
/// `cargo xtask test`), else made here on first use.
pub fn venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        crate::venv(
            "ROAR_NODE_S3_VENV",
            "s3-venv",
            "bin/moto_server",
            "moto[server]==5.2.5",
        )
    })
    .clone()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// moto's S3 server, a relay in front of it, and one bucket.
pub struct S3 {
    moto: Child,
    moto_port: u16,
    relay: Relay,
    pub bucket: String,
}

impl S3 {
    /// Starts moto on a free loopback port and creates `bucket`.
    pub fn start(bucket: &str) -> Self {
        let moto_port = free_port();
        let moto = Command::new(venv().join("bin/moto_server"))
            .args(["-H", "127.0.0.1", "-p", &moto_port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(("127.0.0.1", moto_port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            thread::sleep(Duration::from_millis(100));
        }
        let s3 = Self {
            moto,
            moto_port,
            relay: Relay::start(moto_port),
            bucket: bucket.into(),
        };
        s3.boto(&format!("s3.create_bucket(Bucket={bucket:?})"));
        s3
    }

    /// `s3://BUCKET/PREFIX`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", self.bucket)
    }

    /// The relay's port (what roar-node is pointed at).
    pub fn port(&self) -> u16 {
        self.relay.port
    }

    /// What roar-node needs to reach this store: the standard AWS
    /// variables. The metadata endpoint is pointed at a closed loopback
    /// port, so a missing credential never sends a request off the box.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.port()),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "roar-test-key".into()),
            ("AWS_SECRET_ACCESS_KEY", "roar-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_METADATA_ENDPOINT", "http://127.0.0.1:9".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// The store unreachable (connections refused) or back.
    pub fn set_down(&self, down: bool) {
        self.relay.set_down(down);
    }

    /// The server frozen (SIGSTOP: connections are accepted, nothing is
    /// answered, as a hung store) or thawed.
    pub fn freeze(&self, frozen: bool) {
        let sig = if frozen { libc::SIGSTOP } else { libc::SIGCONT };
        // SAFETY: a signal to our own child.
        assert_eq!(unsafe { libc::kill(self.moto.id() as i32, sig) }, 0);
    }

    /// Runs Python with `s3` a boto3 client of the server (directly, not
    /// through the relay); returns stdout.
    pub fn boto(&self, code: &str) -> String {
        let script = format!(
            "import boto3, json\ns3 = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', \
             aws_access_key_id='k', aws_secret_access_key='s', region_name='us-east-1')\n{code}\n",
            self.moto_port
        );
        let out = Command::new(venv().join("bin/python"))
            .args(["-c", &script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "boto3: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Every key under `prefix`, sorted.
    pub fn keys(&self, prefix: &str) -> Vec<String> {
        let out = self.boto(&format!(
            "keys = []\nfor page in s3.get_paginator('list_objects_v2').paginate(Bucket={:?}, Prefix={prefix:?}):\n    keys += [o['Key'] for o in page.get('Contents', [])]\nprint(json.dumps(sorted(keys)))",
            self.bucket
        ));
        serde_json::from_str(&out).unwrap()
    }

    /// An object's bytes.
    pub fn get(&self, key: &str) -> Vec<u8> {
        let out = self.boto(&format!(
            "import sys\nsys.stdout.write(s3.get_object(Bucket={:?}, Key={key:?})['Body'].read().decode())",
            self.bucket
        ));
        out.into_bytes()
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.freeze(false);
        let _ = self.moto.kill();
        let _ = self.moto.wait();
        self.relay.stop();
    }
}

/// Relays TCP connections from its own loopback port to the server's.
/// Down: the port is closed and open connections are cut, as when a
/// store's endpoint goes away.
struct Relay {
    port: u16,
    down: Arc<AtomicBool>,
    stopped: Arc<AtomicBool>,
    open: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    fn start(to: u16) -> Self {
        let port = free_port();
        let r = Self {
            port,
            down: Arc::new(AtomicBool::new(false)),
            stopped: Arc::new(AtomicBool::new(false)),
            open: Arc::new(Mutex::new(Vec::new())),
        };
        let (down, stopped, open) = (r.down.clone(), r.stopped.clone(), r.open.clone());
        thread::spawn(move || {
            let mut listener: Option<TcpListener> = None;
            while !stopped.load(Ordering::Relaxed) {
                if down.load(Ordering::Relaxed) {
                    listener = None;
                    thread::sleep(Duration::from_millis(20));
                    continue;
                }
                let l = match &listener {
                    Some(l) => l,
                    None => match TcpListener::bind(("127.0.0.1", port)) {
                        Ok(l) => {
                            l.set_nonblocking(true).unwrap();
                            listener.insert(l)
                        }
                        Err(_) => {
                            thread::sleep(Duration::from_millis(20));
                            continue;
                        }
                    },
                };
                match l.accept() {
                    Ok((client, _)) => {
                        let _ = relay(client, to, &open);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => {}
                }
            }
        });
        r
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
        if down {
            for s in self.open.lock().unwrap().drain(..) {
                let _ = s.shutdown(Shutdown::Both);
            }
            // The accept loop drops the listener within a few ms.
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn stop(&self) {
        self.stopped.store(true, Ordering::Relaxed);
        self.set_down(true);
    }
}

fn relay(client: TcpStream, to: u16, open: &Mutex<Vec<TcpStream>>) -> io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect(("127.0.0.1", to))?;
    {
        let mut o = open.lock().unwrap();
        o.push(client.try_clone()?);
        o.push(server.try_clone()?);
    }
    for (mut from, mut into) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        thread::spawn(move || {
            let _ = io::copy(&mut from, &mut into);
            let _ = into.shutdown(Shutdown::Write);
        });
    }
    Ok(())
}
