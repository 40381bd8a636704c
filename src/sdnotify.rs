//! systemd's readiness protocol (`sd_notify(3)`), for `Type=notify` and
//! `Type=notify-reload` units: one datagram per state change to the Unix
//! socket named by `NOTIFY_SOCKET` (a path, or `@name` in the abstract
//! namespace). Without the variable every call does nothing, so the same
//! binary runs under systemd, Kubernetes or a shell.
//!
//! - `READY=1` once every listener is bound and accepting;
//! - `RELOADING=1` with `MONOTONIC_USEC=` (CLOCK_MONOTONIC, which
//!   `notify-reload` in systemd ≥ 253 requires) when a reload starts, and
//!   `READY=1` when it is over, applied or rejected;
//! - `STOPPING=1` when shutdown starts (readiness off, then draining).
//!
//! Each message may carry a `STATUS=` line for `systemctl status`. A send
//! that fails is logged at debug level and otherwise ignored: the gateway
//! serves whether or not systemd listens.

use std::os::unix::net::UnixDatagram;

/// The variable naming the socket.
pub const NOTIFY_SOCKET: &str = "NOTIFY_SOCKET";

/// Where notifications go (from `NOTIFY_SOCKET`, read once).
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    socket: Option<String>,
}

impl Notifier {
    /// The notifier for this process's `NOTIFY_SOCKET`, if set.
    pub fn from_env() -> Notifier {
        Notifier {
            socket: std::env::var(NOTIFY_SOCKET).ok().filter(|s| !s.is_empty()),
        }
    }

    /// A notifier that never sends (in-process use, tests).
    pub fn none() -> Notifier {
        Notifier::default()
    }

    /// `READY=1`: start-up is complete, or a reload is over.
    pub fn ready(&self, status: &str) {
        self.send(&format!("READY=1\nSTATUS={}", one_line(status)));
    }

    /// `RELOADING=1` with the monotonic time systemd ≥ 253 checks.
    pub fn reloading(&self) {
        let mut msg = String::from("RELOADING=1\nSTATUS=reloading the configuration and certificates");
        if let Some(usec) = monotonic_usec() {
            msg.push_str(&format!("\nMONOTONIC_USEC={usec}"));
        }
        self.send(&msg);
    }

    /// `STOPPING=1`: shutdown has begun.
    pub fn stopping(&self, status: &str) {
        self.send(&format!("STOPPING=1\nSTATUS={}", one_line(status)));
    }

    fn send(&self, msg: &str) {
        let Some(path) = &self.socket else {
            return;
        };
        if let Err(e) = send_to(path, msg.as_bytes()) {
            tracing::debug!(socket = %path, error = %e, "systemd notification not sent");
        }
    }
}

fn send_to(path: &str, msg: &[u8]) -> std::io::Result<usize> {
    let sock = UnixDatagram::unbound()?;
    match path.strip_prefix('@') {
        #[cfg(target_os = "linux")]
        Some(name) => {
            use std::os::linux::net::SocketAddrExt as _;
            let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
            sock.send_to_addr(msg, &addr)
        }
        #[cfg(not(target_os = "linux"))]
        Some(_) => Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "abstract sockets are Linux-only",
        )),
        None => sock.send_to(msg, path),
    }
}

/// CLOCK_MONOTONIC in microseconds.
fn monotonic_usec() -> Option<u64> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    let secs = u64::try_from(t.tv_sec).ok()?;
    let nanos = u64::try_from(t.tv_nsec).ok()?;
    Some(secs * 1_000_000 + nanos / 1_000)
}

/// A `STATUS=` value: one line (the protocol is newline-separated).
fn one_line(s: &str) -> String {
    s.replace(['\n', '\r'], "; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_reach_a_path_socket_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let listener = UnixDatagram::bind(&path).unwrap();
        let n = Notifier {
            socket: Some(path.display().to_string()),
        };
        n.ready("serving\non two lines");
        n.reloading();
        n.stopping("draining");
        let mut buf = [0u8; 512];
        let mut got = Vec::new();
        for _ in 0..3 {
            let len = listener.recv(&mut buf).unwrap();
            got.push(String::from_utf8(buf[..len].to_vec()).unwrap());
        }
        assert_eq!(got[0], "READY=1\nSTATUS=serving; on two lines");
        assert!(got[1].starts_with("RELOADING=1\n"), "{}", got[1]);
        let usec: u64 = got[1]
            .lines()
            .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
            .unwrap()
            .parse()
            .unwrap();
        assert!(usec > 0);
        assert_eq!(got[2], "STOPPING=1\nSTATUS=draining");
        // No socket: nothing happens, nothing fails.
        Notifier::none().ready("x");
        Notifier {
            socket: Some(dir.path().join("absent").display().to_string()),
        }
        .ready("x");
    }
}
