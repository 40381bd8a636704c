//! A per-test capture of everything the in-process gateway logs.

use std::cell::RefCell;
use std::sync::mpsc;

/// Everything logged (at TRACE) while the guard lives. `#[tokio::test]` runs
/// the in-process gateway's tasks on the test's own thread, so this
/// thread-local subscriber sees all of them and no other test's.
pub struct Logs {
    rx: mpsc::Receiver<Vec<u8>>,
    text: RefCell<String>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
pub struct LogWriter(mpsc::Sender<Vec<u8>>);

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(b.to_vec());
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl tracing_subscriber::fmt::MakeWriter<'_> for LogWriter {
    type Writer = LogWriter;
    fn make_writer(&self) -> LogWriter {
        self.clone()
    }
}

impl Logs {
    pub fn capture() -> Logs {
        let (tx, rx) = mpsc::channel();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(LogWriter(tx))
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .finish();
        Logs {
            rx,
            text: RefCell::new(String::new()),
            _guard: tracing::subscriber::set_default(subscriber),
        }
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        let mut text = self.text.borrow_mut();
        while let Ok(chunk) = self.rx.try_recv() {
            text.push_str(&String::from_utf8_lossy(&chunk));
        }
        text.clone()
    }

    pub fn count(&self, needle: &str) -> usize {
        self.text().matches(needle).count()
    }

    /// The capture worked, and no secret value is in it.
    pub fn assert_clean(&self, secrets: &[&str]) {
        let text = self.text();
        assert!(text.contains("credential loaded"), "the log capture saw nothing");
        for (i, s) in secrets.iter().enumerate() {
            assert!(!text.contains(s), "secret #{i} appears in the gateway's log output");
        }
    }
}
