use std::time::Duration;

use super::*;

fn material(key: &str, secret: &str) -> Material {
    Material::secret(
        SecretBytes::from(key.to_string()),
        SecretBytes::from(secret.to_string()),
        Some(3),
    )
}

#[test]
fn debug_never_shows_secrets() {
    let m = material("pk_test_visible_key", "sk_test_very_secret_value");
    let c = Credential::from_material("kp", &m).unwrap();
    for dbg in [format!("{m:?}"), format!("{c:?}"), format!("{:?}", m.key)] {
        assert!(!dbg.contains("sk_test_very_secret_value"), "{dbg}");
    }
    assert!(c.api_key().is_sensitive());
    assert_eq!(c.version(), Some(3));
}

#[test]
fn unusable_material_is_refused_with_a_reason() {
    let short = Credential::from_material("kp", &material("pk", "short")).unwrap_err();
    assert!(short.to_string().contains("too short"), "{short}");
    assert!(!short.to_string().contains("short\""));
    let empty = Credential::from_material("kp", &material("", "sk_test_0123456789abcdef")).unwrap_err();
    assert!(empty.to_string().contains("API key is empty"));
    let bad = Credential::from_material("kp", &material("pk\ntest", "sk_test_0123456789abcdef")).unwrap_err();
    assert!(bad.to_string().contains("not allowed in an HTTP header"));
}

fn spec(path: &std::path::Path) -> BTreeMap<String, CredentialSpec> {
    let mut m = BTreeMap::new();
    m.insert(
        "kp".to_string(),
        CredentialSpec {
            name: "kp".into(),
            source: SecretSource::File {
                path: path.to_path_buf(),
                api_key_field: "api_key".into(),
                secret_field: "secret_key".into(),
                poll: Duration::from_millis(20),
            },
        },
    );
    m
}

#[tokio::test]
async fn file_source_loads_json_and_toml_and_follows_atomic_replacement() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kp.cred");
    let cancel = CancellationToken::new();
    let store = CredentialStore::start(&spec(&path), &cancel).await;
    let slot = store.slot("kp").unwrap().clone();
    let why = slot.get().unwrap_err().reason;
    assert!(why.contains("create the file") && why.contains("secret_key"), "{why}");

    std::fs::write(
        dir.path().join("t"),
        "api_key = \"pk_one\"\nsecret_key = \"sk_one_0123456789abcdef\"\nextra = 5\n",
    )
    .unwrap();
    std::fs::rename(dir.path().join("t"), &path).unwrap();
    let mut waited = 0;
    while !slot.is_loaded() && waited < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    let first = slot.get().unwrap();
    assert_eq!(first.api_key(), "pk_one");

    std::fs::write(
        dir.path().join("t"),
        r#"{"secret_key":"sk_two_0123456789abcdef","api_key":"pk_two","n":[1,2]}"#,
    )
    .unwrap();
    std::fs::rename(dir.path().join("t"), &path).unwrap();
    let mut waited = 0;
    while slot.get().unwrap().api_key() != "pk_two" && waited < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    let second = slot.get().unwrap();
    assert_eq!(second.api_key(), "pk_two");
    assert!(second.version() > first.version());
    // The old Arc is still usable by a request that started with it.
    assert_eq!(first.api_key(), "pk_one");

    // A broken replacement keeps the last good secret and says why.
    std::fs::write(dir.path().join("t"), r#"{"api_key":"pk_three"}"#).unwrap();
    std::fs::rename(dir.path().join("t"), &path).unwrap();
    let mut waited = 0;
    while slot.problem().is_none() && waited < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert!(slot.problem().unwrap().contains("missing string field secret_key"));
    assert_eq!(slot.get().unwrap().api_key(), "pk_two");
    cancel.cancel();
}

#[tokio::test]
async fn env_source_names_the_missing_variables() {
    let mut m = BTreeMap::new();
    m.insert(
        "kp".to_string(),
        CredentialSpec {
            name: "kp".into(),
            source: SecretSource::Env {
                api_key_env: "SIGNGATE_TEST_SURELY_UNSET_KEY".into(),
                secret_env: "SIGNGATE_TEST_SURELY_UNSET_SECRET".into(),
            },
        },
    );
    let cancel = CancellationToken::new();
    let store = CredentialStore::start(&m, &cancel).await;
    let why = store.slot("kp").unwrap().get().unwrap_err().reason;
    assert!(
        why.contains("SIGNGATE_TEST_SURELY_UNSET_KEY") && why.contains("SIGNGATE_TEST_SURELY_UNSET_SECRET"),
        "{why}"
    );
}

/// A source that counts its polls, fails from the second one on when told,
/// signs "remotely" and can be woken.
struct Woken {
    polls: Arc<AtomicU64>,
    fail: Arc<std::sync::atomic::AtomicBool>,
    wake: Arc<tokio::sync::Notify>,
}

impl Source for Woken {
    async fn poll(&mut self) -> Result<Poll, LoadError> {
        let n = self.polls.fetch_add(1, Ordering::SeqCst);
        if self.fail.load(Ordering::SeqCst) {
            return Err(LoadError::Unreachable {
                reason: "cannot reach Vault at http://127.0.0.1:1/".into(),
            });
        }
        Ok(if n == 0 {
            Poll::Changed(material("pk_woken", "sk_woken_0123456789abcdef"))
        } else {
            Poll::Unchanged
        })
    }

    fn next_poll(&self, _last_ok: bool, _failures: u32) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }

    fn wake(&self) -> Option<Arc<tokio::sync::Notify>> {
        Some(self.wake.clone())
    }

    fn signs_remotely(&self) -> bool {
        true
    }
}

/// A Transit credential's users wake its refresh when Vault fails them: it
/// polls again long before its schedule, but at most once per second however
/// often it is woken; a failed poll makes the loaded credential not ready
/// (it cannot sign without Vault), a good one ready again.
#[tokio::test]
async fn a_woken_refresh_polls_at_most_once_a_second_and_sets_readiness() {
    let (polls, fail, wake) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(std::sync::atomic::AtomicBool::new(false)),
        Arc::new(tokio::sync::Notify::new()),
    );
    let slot = Arc::new(CredentialSlot::new("kp"));
    let cancel = CancellationToken::new();
    let source = Woken {
        polls: polls.clone(),
        fail: fail.clone(),
        wake: wake.clone(),
    };
    runner::start_source(slot.clone(), source, cancel.clone()).await;
    assert_eq!(polls.load(Ordering::SeqCst), 1);
    assert!(slot.ready().is_ok());

    fail.store(true, Ordering::SeqCst);
    let started = std::time::Instant::now();
    while started.elapsed() < Duration::from_millis(2500) {
        wake.notify_one();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let n = polls.load(Ordering::SeqCst);
    assert!((2..=4).contains(&n), "{n} polls in 2.5 s of constant wake-ups");
    assert!(slot.is_loaded(), "the credential stays loaded...");
    let why = slot.ready().unwrap_err();
    assert!(
        why.reason.contains("cannot reach Vault"),
        "...but is not ready: {why:?}"
    );

    fail.store(false, Ordering::SeqCst);
    wake.notify_one();
    let mut waited = 0;
    while slot.ready().is_err() && waited < 300 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        waited += 1;
    }
    assert!(slot.ready().is_ok());
    cancel.cancel();
}
