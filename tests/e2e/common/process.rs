//! The real `fluxplane` binary as a child process: started with arguments, its standard output and JSON log read
//! line by line, stopped with SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use serde_json::Value;

pub const BINARY: &str = env!("CARGO_BIN_EXE_fluxplane");

/// A running binary whose output lines arrive on channels.
pub struct Process {
    pub child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: mpsc::Receiver<String>,
    log: Vec<String>,
}

impl Process {
    pub fn start(args: &[&str], dir: &Path) -> Self {
        Self::start_logging(args, dir, "debug")
    }

    pub fn start_logging(args: &[&str], dir: &Path, level: &str) -> Self {
        let mut child = Command::new(BINARY)
            .args(args)
            .current_dir(dir)
            .env("RUST_LOG", level)
            .env_remove("FLUXPLANE_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the binary");
        let stdout = lines(child.stdout.take().unwrap());
        let stderr = lines(child.stderr.take().unwrap());
        Self {
            child,
            stdout,
            stderr,
            log: Vec::new(),
        }
    }

    /// Waits for a line of stdout that contains `needle`.
    pub fn stdout_line(&mut self, needle: &str) -> String {
        loop {
            match self.stdout.recv_timeout(Duration::from_secs(30)) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no stdout line with {needle:?}; log: {:#?}", self.drain_log()),
            }
        }
    }

    /// Waits for a JSON log line whose message is `message`.
    pub fn log_event(&mut self, message: &str) -> Value {
        loop {
            let line = self
                .stderr
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no log event {message:?}; log: {:#?}", self.log));
            self.log.push(line.clone());
            if let Ok(event) = serde_json::from_str::<Value>(&line)
                && event["message"] == message
            {
                return event;
            }
        }
    }

    pub fn drain_log(&mut self) -> Vec<String> {
        while let Ok(line) = self.stderr.recv_timeout(Duration::from_millis(200)) {
            self.log.push(line);
        }
        self.log.clone()
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        for _ in 0..100 {
            if let Some(exit) = self.child.try_wait().unwrap() {
                assert!(exit.success(), "exited with {exit}; log: {:#?}", self.drain_log());
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.child.kill().ok();
        panic!("the binary did not stop within 10 s of SIGTERM");
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

fn lines(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (send, receive) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    receive
}

pub fn run(args: &[&str]) -> std::process::Output {
    Command::new(BINARY).args(args).output().expect("running the binary")
}
