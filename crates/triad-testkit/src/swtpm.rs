//! A real TPM 2.0 simulator per simulated node: an `swtpm` process with its own state
//! directory, started by the test that needs it (the suite needs nothing running).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `swtpm`; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Swtpm {
    child: Child,
    port: u16,
    dir: PathBuf,
}

/// Two free ports (server, control). Tests run in parallel and each probe listener is
/// closed before `swtpm` binds, so the OS could hand the same pair to two of them: ports
/// handed out here are never handed out again in this process.
fn free_port_pair() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    loop {
        let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        let taken = given.iter().any(|g| g.abs_diff(port) <= 1);
        if !taken && port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok()
        {
            given.push(port);
            return port;
        }
    }
}

impl Swtpm {
    /// Starts `swtpm` on two free ports with its state in `dir` (created); returns when it
    /// accepts connections.
    pub fn start(dir: &Path) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        // A port can still be taken between choosing it and swtpm binding it (another
        // process's connection): swtpm then exits, and it is started again on other ports.
        for _ in 0..5 {
            let port = free_port_pair();
            let mut child = Command::new("swtpm")
                .args(["socket", "--tpm2", "--flags", "not-need-init,startup-clear"])
                .arg("--tpmstate")
                .arg(format!("dir={}", dir.display()))
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={},bindaddr=127.0.0.1", port + 1))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("swtpm is installed (scripts/dev.sh installs it)");
            // Ready when both ports are bound (probed by binding, which disturbs no session)
            // and the process is alive: a condition, not a fixed delay.
            let bound = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_err();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                if bound(port) && bound(port + 1) {
                    return Self {
                        child,
                        port,
                        dir: dir.to_owned(),
                    };
                }
                assert!(Instant::now() < deadline, "swtpm did not listen on {port}");
                std::thread::yield_now();
            }
        }
        panic!("swtpm exited five times at start (ports taken?)");
    }

    /// The TCTI string `tss-esapi` connects with.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Kills it (SIGKILL) and returns its state directory, to start it again on.
    pub fn kill(mut self) -> PathBuf {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        self.dir.clone()
    }
}

impl Drop for Swtpm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
