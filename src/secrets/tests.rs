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
