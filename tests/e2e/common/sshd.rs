//! A real OpenSSH server for the tests of SSH Git sources: Debian's `sshd` on a loopback port of its own, with a host
//! key and an `authorized_keys` file of the test's making, serving the repositories of the user running the tests.

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use fluxplane_agent::deploy_key::DeployKey;
use tempfile::TempDir;

const SSHD: &str = "/usr/sbin/sshd";

/// An `sshd` serving on 127.0.0.1 until dropped.
pub struct SshServer {
    pub port: u16,
    /// `sshKnownHosts` for this server: its `known_hosts` line, base64.
    pub known_hosts: String,
    user: String,
    authorized_keys: PathBuf,
    child: Child,
    _dir: TempDir,
}

impl SshServer {
    /// `None` where OpenSSH's server is not installed, which `CI=true` does not allow (scripts/test installs it).
    pub fn start() -> Option<Self> {
        if !Path::new(SSHD).exists() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true needs Debian's openssh-server (scripts/test installs it)"
            );
            eprintln!("no {SSHD} (apt-get install openssh-server): the SSH source test is skipped");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let host_key = DeployKey::generate("fluxplane-test-host");
        let host_key_file = dir.path().join("host_ed25519");
        write_private(&host_key_file, host_key.private_openssh().as_bytes());
        let authorized_keys = dir.path().join("authorized_keys");
        write_private(&authorized_keys, b"");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\nHostKey {}\nAuthorizedKeysFile {}\nPidFile {}\n\
                 StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n\
                 PubkeyAuthentication yes\nPermitRootLogin prohibit-password\nLogLevel VERBOSE\n",
                host_key_file.display(),
                authorized_keys.display(),
                dir.path().join("sshd.pid").display(),
            ),
        )
        .unwrap();
        if is_root() {
            // sshd refuses to start as root without its privilege separation directory
            std::fs::create_dir_all("/run/sshd").unwrap();
        }
        let child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.path().join("sshd.log")).unwrap()))
            .spawn()
            .expect("starting sshd");
        let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout)
            .unwrap()
            .trim()
            .to_owned();
        let known_hosts = STANDARD.encode(format!("[127.0.0.1]:{port} {}\n", host_key.public_openssh()));
        let server = Self {
            port,
            known_hosts,
            user,
            authorized_keys,
            child,
            _dir: dir,
        };
        server.wait_for_banner();
        Some(server)
    }

    fn wait_for_banner(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut banner = [0u8; 4];
                stream.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                if stream.read_exact(&mut banner).is_ok() && &banner == b"SSH-" {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "sshd did not start: {}", self.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The `ssh://` URL of a repository on this machine.
    pub fn url(&self, repository: &Path) -> String {
        format!("ssh://{}@127.0.0.1:{}{}", self.user, self.port, repository.display())
    }

    /// Trusts exactly these public keys (`authorized_keys` lines) from now on.
    pub fn authorize(&self, keys: &[&str]) {
        let lines: String = keys.iter().map(|key| format!("{key}\n")).collect();
        write_private(&self.authorized_keys, lines.as_bytes());
    }

    /// What sshd logged, for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for SshServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_private(path: &Path, contents: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}
