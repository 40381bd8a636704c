//! The deployment artefacts under `deploy/`, checked as data: every
//! Kubernetes document parses and keeps its security settings, every shipped
//! `gateway.toml` (ConfigMaps, the systemd example, the container default)
//! validates with the gateway's own validation, and each config agrees with
//! the manifest, unit or Dockerfile that runs it (mount points, ports,
//! credential paths, probe targets). No cluster, systemd or Docker is needed;
//! `scripts/check-deploy.sh` adds `systemd-analyze` and a schema check.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use signgate::config::{AuditSink, SecretSource, VaultAuth};
use signgate::Config;
use yaml_rust2::{Yaml, YamlLoader};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The uid/gid of distroless' `nonroot` user, used everywhere.
const NONROOT: i64 = 65532;
const ADMIN_PORT: i64 = 9090;
/// What a stop needs on top of the shutdown delay and the drain (detached
/// upstream exchanges ending, the audit log's last flush).
const STOP_MARGIN: Duration = Duration::from_secs(5);
/// The shortest `shutdown_delay_ms` behind a Service: endpoint removal takes
/// a few seconds to reach kube-proxy and the mesh proxies.
const MIN_SERVICE_SHUTDOWN_DELAY: Duration = Duration::from_secs(5);

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Validate a config with no environment overrides (the process environment
/// of a test run must not change the verdict).
fn validate_file(rel: &str) -> Config {
    let path = Path::new(ROOT).join(rel);
    Config::load_with_env(&path, Vec::<(String, String)>::new())
        .unwrap_or_else(|e| panic!("{rel} does not validate:\n{e}"))
}

// ---------------------------------------------------------------- Kubernetes

/// One parsed document and the file it came from.
struct Doc {
    file: String,
    yaml: Yaml,
}

impl Doc {
    fn kind(&self) -> &str {
        self.yaml["kind"].as_str().unwrap_or_default()
    }
    fn name(&self) -> &str {
        self.yaml["metadata"]["name"].as_str().unwrap_or_default()
    }
    fn what(&self) -> String {
        format!("{}: {} {}", self.file, self.kind(), self.name())
    }
}

fn k8s_docs() -> Vec<Doc> {
    let dir = Path::new(ROOT).join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no YAML under {}", dir.display());
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let file = f.file_name().unwrap().to_string_lossy().into_owned();
        let parsed = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
        for yaml in parsed.into_iter().filter(|y| !y.is_null()) {
            docs.push(Doc {
                file: file.clone(),
                yaml,
            });
        }
    }
    docs
}

fn list(y: &Yaml) -> &[Yaml] {
    y.as_vec().map(Vec::as_slice).unwrap_or_default()
}

/// A workload's pod template (Deployment, StatefulSet, DaemonSet, Job).
fn pod_template(doc: &Doc) -> Option<&Yaml> {
    match doc.kind() {
        "Deployment" | "StatefulSet" | "DaemonSet" | "Job" => Some(&doc.yaml["spec"]["template"]),
        _ => None,
    }
}

/// Regular and init containers (a native sidecar is an init container).
fn all_containers(pod_spec: &Yaml) -> Vec<&Yaml> {
    list(&pod_spec["initContainers"])
        .iter()
        .chain(list(&pod_spec["containers"]))
        .collect()
}

fn signgate_container(pod_spec: &Yaml) -> Option<&Yaml> {
    all_containers(pod_spec)
        .into_iter()
        .find(|c| c["name"].as_str() == Some("signgate"))
}

/// A container's setting, falling back to the pod's securityContext.
fn security<'a>(pod_spec: &'a Yaml, c: &'a Yaml, key: &str) -> &'a Yaml {
    let own = &c["securityContext"][key];
    if own.is_badvalue() {
        &pod_spec["securityContext"][key]
    } else {
        own
    }
}

/// A port given as a number or as the name of one of the container's ports.
fn resolve_port(c: &Yaml, port: &Yaml) -> Option<i64> {
    match port {
        Yaml::Integer(n) => Some(*n),
        Yaml::String(name) => list(&c["ports"])
            .iter()
            .find(|p| p["name"].as_str() == Some(name))
            .and_then(|p| p["containerPort"].as_i64()),
        _ => None,
    }
}

fn parse_k8s_duration_secs(y: &Yaml) -> Option<u64> {
    y.as_i64().and_then(|n| u64::try_from(n).ok())
}

#[test]
fn every_kubernetes_document_parses_and_names_its_kind() {
    let docs = k8s_docs();
    for d in &docs {
        assert!(d.yaml["apiVersion"].as_str().is_some(), "{}: no apiVersion", d.what());
        assert!(!d.kind().is_empty(), "{}: no kind", d.file);
        assert!(!d.name().is_empty(), "{}: no metadata.name", d.what());
    }
    let kinds: Vec<&str> = docs.iter().map(Doc::kind).collect();
    for k in ["ConfigMap", "Deployment", "Service", "NetworkPolicy"] {
        assert!(kinds.contains(&k), "no {k} among {kinds:?}");
    }
    let files: Vec<&str> = docs.iter().map(|d| d.file.as_str()).collect();
    assert!(files.contains(&"sidecar.yaml") && files.contains(&"egress.yaml"));
}

#[test]
fn pods_run_as_nonroot_with_a_read_only_root_and_no_privileges() {
    let docs = k8s_docs();
    let mut pods = 0;
    for d in &docs {
        let Some(template) = pod_template(d) else { continue };
        pods += 1;
        let spec = &template["spec"];
        let what = d.what();
        assert_eq!(
            spec["automountServiceAccountToken"].as_bool(),
            Some(false),
            "{what}: the gateway needs no Kubernetes API token"
        );
        let containers = all_containers(spec);
        assert!(!containers.is_empty(), "{what}: no containers");
        for c in containers {
            let cw = format!("{what} container {}", c["name"].as_str().unwrap_or("?"));
            let sc = &c["securityContext"];
            assert_eq!(
                security(spec, c, "runAsNonRoot").as_bool(),
                Some(true),
                "{cw}: runAsNonRoot"
            );
            assert_eq!(
                security(spec, c, "runAsUser").as_i64(),
                Some(NONROOT),
                "{cw}: runAsUser"
            );
            assert_eq!(
                security(spec, c, "seccompProfile")["type"].as_str(),
                Some("RuntimeDefault"),
                "{cw}: seccompProfile"
            );
            assert_eq!(
                sc["readOnlyRootFilesystem"].as_bool(),
                Some(true),
                "{cw}: readOnlyRootFilesystem"
            );
            assert_eq!(
                sc["allowPrivilegeEscalation"].as_bool(),
                Some(false),
                "{cw}: allowPrivilegeEscalation"
            );
            assert_ne!(sc["privileged"].as_bool(), Some(true), "{cw}: privileged");
            let drop: Vec<&str> = list(&sc["capabilities"]["drop"])
                .iter()
                .filter_map(Yaml::as_str)
                .collect();
            assert!(drop.contains(&"ALL"), "{cw}: capabilities.drop must contain ALL");
            assert!(list(&sc["capabilities"]["add"]).is_empty(), "{cw}: capabilities.add");
            for kind in ["requests", "limits"] {
                assert!(
                    c["resources"][kind]["memory"].as_str().is_some(),
                    "{cw}: resources.{kind}.memory"
                );
            }
        }
        let sg = signgate_container(spec).unwrap_or_else(|| panic!("{what}: no container named signgate"));
        if list(&spec["initContainers"]).iter().any(|c| std::ptr::eq(c, sg)) {
            // Without restartPolicy: Always an init container must exit before
            // the app starts: a gateway that never exits would hold the pod forever.
            assert_eq!(sg["restartPolicy"].as_str(), Some("Always"), "{what}: native sidecar");
        }
    }
    assert!(pods >= 2, "expected the sidecar and the egress workloads");
}

#[test]
fn signgate_is_probed_on_the_admin_port_and_scraped_by_prometheus() {
    for d in &k8s_docs() {
        let Some(template) = pod_template(d) else { continue };
        let what = d.what();
        let sg = signgate_container(&template["spec"]).unwrap();
        for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
            let get = &sg[probe]["httpGet"];
            assert_eq!(get["path"].as_str(), Some(path), "{what}: {probe}.httpGet.path");
            assert_eq!(
                resolve_port(sg, &get["port"]),
                Some(ADMIN_PORT),
                "{what}: {probe}.httpGet.port"
            );
            assert!(
                get["host"].is_badvalue(),
                "{what}: {probe}.httpGet.host: the kubelet must probe the pod IP"
            );
        }
        let ann = &template["metadata"]["annotations"];
        // Annotation values are strings in Kubernetes: an unquoted `true` or
        // 9090 would be refused by the API server.
        assert_eq!(ann["prometheus.io/scrape"].as_str(), Some("true"), "{what}");
        assert_eq!(ann["prometheus.io/port"].as_str(), Some("9090"), "{what}");
        assert_eq!(ann["prometheus.io/path"].as_str(), Some("/metrics"), "{what}");
    }
}

/// Whether `selector` (a `matchLabels` or a Service `selector` map) selects
/// `labels`; an empty or missing selector selects nothing here.
fn selects_labels(selector: &Yaml, labels: &Yaml) -> bool {
    selector
        .as_hash()
        .is_some_and(|h| !h.is_empty() && h.iter().all(|(k, v)| labels[k.as_str().unwrap_or_default()] == *v))
}

fn namespace(d: &Doc) -> &str {
    d.yaml["metadata"]["namespace"].as_str().unwrap_or("")
}

/// The workloads in `ns` whose pods `selector` selects.
fn pods_selected<'a>(docs: &'a [Doc], ns: &str, selector: &Yaml) -> Vec<&'a Doc> {
    docs.iter()
        .filter(|w| {
            namespace(w) == ns && pod_template(w).is_some_and(|t| selects_labels(selector, &t["metadata"]["labels"]))
        })
        .collect()
}

#[test]
fn prometheus_operator_monitors_scrape_the_admin_port() {
    let docs = k8s_docs();
    let monitors: Vec<&Doc> = docs
        .iter()
        .filter(|d| matches!(d.kind(), "PodMonitor" | "ServiceMonitor"))
        .collect();
    for kind in ["PodMonitor", "ServiceMonitor"] {
        assert!(
            monitors.iter().any(|d| d.kind() == kind),
            "no {kind} under deploy/kubernetes"
        );
    }
    let mut scraped = Vec::new();
    for m in monitors {
        let what = m.what();
        assert_eq!(
            m.yaml["apiVersion"].as_str(),
            Some("monitoring.coreos.com/v1"),
            "{what}"
        );
        let spec = &m.yaml["spec"];
        let (endpoints, workloads) = if m.kind() == "PodMonitor" {
            let workloads = pods_selected(&docs, namespace(m), &spec["selector"]["matchLabels"]);
            (list(&spec["podMetricsEndpoints"]), workloads)
        } else {
            let ns: Vec<&str> = list(&spec["namespaceSelector"]["matchNames"])
                .iter()
                .filter_map(Yaml::as_str)
                .collect();
            let services: Vec<&Doc> = docs
                .iter()
                .filter(|s| {
                    s.kind() == "Service"
                        && (if ns.is_empty() {
                            namespace(s) == namespace(m)
                        } else {
                            ns.contains(&namespace(s))
                        })
                        && selects_labels(&spec["selector"]["matchLabels"], &s.yaml["metadata"]["labels"])
                })
                .collect();
            assert_eq!(services.len(), 1, "{what}: selects {} Services", services.len());
            let svc = services[0];
            for e in list(&spec["endpoints"]) {
                let port = list(&svc.yaml["spec"]["ports"])
                    .iter()
                    .find(|p| p["name"] == e["port"])
                    .unwrap_or_else(|| panic!("{what}: {} has no port {:?}", svc.what(), e["port"]));
                assert_eq!(port["targetPort"].as_str(), Some("admin"), "{}: targetPort", svc.what());
            }
            let workloads = pods_selected(&docs, namespace(svc), &svc.yaml["spec"]["selector"]);
            (list(&spec["endpoints"]), workloads)
        };
        assert!(!workloads.is_empty(), "{what}: selects no pods");
        assert!(!endpoints.is_empty(), "{what}: no endpoints");
        for e in endpoints {
            assert_eq!(e["port"].as_str(), Some("admin"), "{what}: the admin port, by name");
            assert_eq!(e["path"].as_str(), Some("/metrics"), "{what}: path");
            assert!(
                matches!(e["scheme"].as_str(), None | Some("http")),
                "{what}: the admin listener is plain HTTP"
            );
        }
        for w in workloads {
            let spec = &pod_template(w).unwrap()["spec"];
            let sg = signgate_container(spec)
                .unwrap_or_else(|| panic!("{what} scrapes {}, which runs no signgate", w.what()));
            assert_eq!(
                resolve_port(sg, &Yaml::String("admin".into())),
                Some(ADMIN_PORT),
                "{}",
                w.what()
            );
            // Only the signgate container may answer on a port named admin.
            let named_admin = all_containers(spec)
                .iter()
                .filter(|c| list(&c["ports"]).iter().any(|p| p["name"].as_str() == Some("admin")))
                .count();
            assert_eq!(named_admin, 1, "{}: one container port named admin", w.what());
            // A NetworkPolicy over these pods must let the scrape through.
            for np in docs.iter().filter(|n| {
                n.kind() == "NetworkPolicy"
                    && namespace(n) == namespace(w)
                    && selects_labels(
                        &n.yaml["spec"]["podSelector"]["matchLabels"],
                        &pod_template(w).unwrap()["metadata"]["labels"],
                    )
            }) {
                assert!(
                    list(&np.yaml["spec"]["ingress"])
                        .iter()
                        .any(|r| list(&r["ports"]).iter().any(|p| p["port"].as_i64() == Some(ADMIN_PORT))),
                    "{}: no ingress on {ADMIN_PORT} for the scrape",
                    np.what()
                );
            }
            scraped.push(w.name().to_string());
        }
    }
    scraped.sort();
    assert_eq!(
        scraped,
        ["merchant-app", "signgate-egress"],
        "both layouts are scraped, once each"
    );
}

/// A volume mount of the signgate container.
struct Mount {
    path: PathBuf,
    volume: String,
    read_only: bool,
}

fn mounts(c: &Yaml) -> Vec<Mount> {
    list(&c["volumeMounts"])
        .iter()
        .map(|m| {
            assert!(
                m["subPath"].is_badvalue(),
                "subPath mounts never see ConfigMap/Secret updates"
            );
            Mount {
                path: PathBuf::from(m["mountPath"].as_str().unwrap()),
                volume: m["name"].as_str().unwrap().to_string(),
                read_only: m["readOnly"].as_bool().unwrap_or(false),
            }
        })
        .collect()
}

fn mount_of<'a>(mounts: &'a [Mount], p: &Path) -> Option<&'a Mount> {
    mounts
        .iter()
        .filter(|m| p.starts_with(&m.path))
        .max_by_key(|m| m.path.components().count())
}

fn volume<'a>(pod_spec: &'a Yaml, name: &str) -> &'a Yaml {
    list(&pod_spec["volumes"])
        .iter()
        .find(|v| v["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no volume {name}"))
}

/// The files a config reads, and the files and directories it writes.
fn config_paths(config: &Config) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut reads = Vec::new();
    if let Some(tls) = &config.listener.tls {
        reads.push(tls.cert.clone());
        reads.push(tls.key.clone());
        reads.extend(tls.client_ca.clone());
    }
    reads.extend(config.egress.ca_file.clone());
    for c in config.credentials.values() {
        match &c.source {
            SecretSource::Env { .. } => {}
            SecretSource::File { path, .. } => reads.push(path.clone()),
            SecretSource::Vault(v) => vault_reads(&v.ca_file, &v.auth, &mut reads),
            SecretSource::VaultTransit(t) => vault_reads(&t.ca_file, &t.auth, &mut reads),
        }
    }
    let mut writes = vec![config.state.dir.clone()];
    if let AuditSink::File(p) = &config.audit.sink {
        writes.push(p.clone());
    }
    (reads, writes)
}

/// The files a Vault credential reads: its CA and its auth files.
fn vault_reads(ca_file: &Option<PathBuf>, auth: &VaultAuth, reads: &mut Vec<PathBuf>) {
    reads.extend(ca_file.clone());
    match auth {
        VaultAuth::Token { token_file } => reads.extend(token_file.clone()),
        VaultAuth::AppRole {
            role_id_file,
            secret_id_file,
        } => {
            reads.push(role_id_file.clone());
            reads.push(secret_id_file.clone());
        }
    }
}

#[test]
fn configmaps_hold_valid_gateway_configs_that_fit_their_pods() {
    let docs = k8s_docs();
    let mut checked = 0;
    for cm in docs.iter().filter(|d| d.kind() == "ConfigMap") {
        let Some(toml) = cm.yaml["data"]["gateway.toml"].as_str() else {
            continue;
        };
        let config = Config::from_toml_str(toml).unwrap_or_else(|e| panic!("{}: gateway.toml:\n{e}", cm.what()));
        checked += 1;
        // The workload in the same file that mounts this ConfigMap.
        let (d, spec) = docs
            .iter()
            .filter(|d| d.file == cm.file)
            .filter_map(|d| pod_template(d).map(|t| (d, &t["spec"])))
            .find(|(_, spec)| {
                list(&spec["volumes"])
                    .iter()
                    .any(|v| v["configMap"]["name"].as_str() == Some(cm.name()))
            })
            .unwrap_or_else(|| panic!("{}: no workload in {} mounts it", cm.what(), cm.file));
        let what = d.what();
        let sg = signgate_container(spec).unwrap();
        let mounts = mounts(sg);
        for m in &mounts {
            for other in &mounts {
                assert!(
                    std::ptr::eq(m, other) || !m.path.starts_with(&other.path),
                    "{what}: {} is mounted inside {}",
                    m.path.display(),
                    other.path.display()
                );
            }
        }

        // The config file the container is told to read comes from this ConfigMap.
        let args: Vec<&str> = list(&sg["args"]).iter().filter_map(Yaml::as_str).collect();
        let at = args.iter().position(|a| *a == "--config").expect("--config in args");
        let config_file = Path::new(args[at + 1]);
        let m = mount_of(&mounts, config_file).unwrap_or_else(|| panic!("{what}: {config_file:?} not mounted"));
        assert_eq!(
            volume(spec, &m.volume)["configMap"]["name"].as_str(),
            Some(cm.name()),
            "{what}"
        );
        assert_eq!(config_file.strip_prefix(&m.path).unwrap(), Path::new("gateway.toml"));

        // Files it reads are mounted; what it writes is a writable emptyDir.
        let (reads, writes) = config_paths(&config);
        for p in &reads {
            let m = mount_of(&mounts, p).unwrap_or_else(|| panic!("{what}: {} is not mounted", p.display()));
            assert!(m.read_only, "{what}: {} should be mounted read-only", m.path.display());
        }
        for p in &writes {
            let m = mount_of(&mounts, p).unwrap_or_else(|| panic!("{what}: {} is not mounted", p.display()));
            assert!(!m.read_only, "{what}: {} must be writable", p.display());
            assert!(
                volume(spec, &m.volume)["emptyDir"].as_hash().is_some(),
                "{what}: {} on an emptyDir",
                p.display()
            );
        }

        // SIGTERM: readiness off, the shutdown delay, then the drain; all of
        // it, with a margin, before the kubelet's SIGKILL.
        let grace = parse_k8s_duration_secs(&spec["terminationGracePeriodSeconds"]).unwrap_or(30);
        let stop = config.listener.shutdown_delay + config.listener.drain_timeout + STOP_MARGIN;
        assert!(
            Duration::from_secs(grace) >= stop,
            "{what}: terminationGracePeriodSeconds {grace} must cover shutdown_delay_ms + drain_timeout_ms + {STOP_MARGIN:?} ({stop:?})"
        );

        // The admin listener answers the kubelet and Prometheus on the pod IP.
        let admin: SocketAddr = config.admin.addr.expect("admin listener enabled");
        assert!(
            admin.ip().is_unspecified(),
            "{what}: admin.addr {admin} is not reachable on the pod IP"
        );
        assert_eq!(i64::from(admin.port()), ADMIN_PORT, "{what}");

        // The traffic listener: pod-local for the sidecar; TLS on a declared
        // port, behind the Service and the NetworkPolicy, for the egress service.
        let listen = config.listener.addr;
        if listen.ip().is_loopback() {
            assert!(config.listener.tls.is_none() || config.listener.allow_plaintext);
        } else {
            let tls = config.listener.tls.as_ref().expect("non-loopback listener uses TLS");
            assert!(
                tls.client_ca.is_some(),
                "{what}: the shared egress service requires mTLS"
            );
            let port = i64::from(listen.port());
            assert!(
                list(&sg["ports"])
                    .iter()
                    .any(|p| p["containerPort"].as_i64() == Some(port)),
                "{what}: containerPort {port}"
            );
            let selects = |other: &Doc, sel: &Yaml| {
                let labels = &d.yaml["spec"]["template"]["metadata"]["labels"];
                other.file == cm.file
                    && sel
                        .as_hash()
                        .is_some_and(|h| h.iter().all(|(k, v)| labels[k.as_str().unwrap()] == *v))
            };
            let svc = docs
                .iter()
                .find(|s| s.kind() == "Service" && selects(s, &s.yaml["spec"]["selector"]))
                .unwrap_or_else(|| panic!("{what}: no Service selects it"));
            // Behind a Service, kube-proxy and the meshes' proxies (Envoy,
            // linkerd) take a terminating pod out a few seconds after it
            // got SIGTERM: it keeps accepting until then.
            assert!(
                config.listener.shutdown_delay >= MIN_SERVICE_SHUTDOWN_DELAY,
                "{what}: listener.shutdown_delay_ms {:?} behind a Service; at least {MIN_SERVICE_SHUTDOWN_DELAY:?}",
                config.listener.shutdown_delay
            );
            assert!(
                list(&svc.yaml["spec"]["ports"])
                    .iter()
                    .any(|p| resolve_port(sg, &p["targetPort"]) == Some(port)),
                "{}: targetPort must be the listener's {port}",
                svc.what()
            );
            let np = docs
                .iter()
                .find(|n| n.kind() == "NetworkPolicy" && selects(n, &n.yaml["spec"]["podSelector"]["matchLabels"]))
                .unwrap_or_else(|| panic!("{what}: no NetworkPolicy selects it"));
            let rule = list(&np.yaml["spec"]["ingress"])
                .iter()
                .find(|r| list(&r["ports"]).iter().any(|p| p["port"].as_i64() == Some(port)))
                .unwrap_or_else(|| panic!("{}: no ingress rule for {port}", np.what()));
            assert!(
                list(&rule["from"])
                    .iter()
                    .all(|f| f["podSelector"]["matchLabels"].as_hash().is_some_and(|h| !h.is_empty())),
                "{}: traffic port open to unlabelled pods",
                np.what()
            );
        }
    }
    assert!(
        checked >= 2,
        "expected the sidecar's and the egress service's ConfigMaps"
    );
}

// ------------------------------------------------------------------ systemd

/// `Key=value` lines of a unit file, by key, in order (comments skipped).
fn unit_directives(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') || line.starts_with('[') {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a directive: {line}"));
        out.entry(k.trim().to_string()).or_default().push(v.trim().to_string());
    }
    out
}

fn systemd_secs(v: &str) -> Duration {
    let (n, unit) = v.split_at(v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len()));
    let n: u64 = n.parse().unwrap();
    match unit {
        "" | "s" | "sec" => Duration::from_secs(n),
        "min" => Duration::from_secs(n * 60),
        other => panic!("unexpected time unit {other}"),
    }
}

/// Where systemd puts this unit's credentials (`%d`, `$CREDENTIALS_DIRECTORY`).
const CREDENTIALS_DIR: &str = "/run/credentials/signgate.service";

#[test]
fn systemd_unit_carries_the_hardening_deploy_readme_explains() {
    let unit = unit_directives(&read("deploy/systemd/signgate.service"));
    let one = |k: &str| -> &str {
        match unit.get(k).map(Vec::as_slice) {
            Some([v]) => v,
            other => panic!("{k}: expected exactly one value, got {other:?}"),
        }
    };
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("NoNewPrivileges", "yes"),
        ("ProtectSystem", "strict"),
        ("ProtectHome", "yes"),
        ("PrivateTmp", "yes"),
        ("PrivateDevices", "yes"),
        ("ProtectKernelTunables", "yes"),
        ("ProtectKernelModules", "yes"),
        ("ProtectControlGroups", "yes"),
        ("LockPersonality", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("RestrictNamespaces", "yes"),
        ("RestrictSUIDSGID", "yes"),
        ("UMask", "0077"),
        ("CapabilityBoundingSet", "CAP_NET_BIND_SERVICE"),
        ("AmbientCapabilities", "CAP_NET_BIND_SERVICE"),
        ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
        ("SystemCallArchitectures", "native"),
        ("StateDirectory", "signgate"),
        ("LogsDirectory", "signgate"),
        ("ExecReload", "/bin/kill -HUP $MAINPID"),
        // READY=1 once listening, RELOADING=1/READY=1 around a reload, STOPPING=1.
        ("Type", "notify"),
        ("NotifyAccess", "main"),
        ("Restart", "on-failure"),
        (
            "ExecStart",
            "/usr/local/bin/signgate run --config /etc/signgate/gateway.toml",
        ),
    ] {
        assert_eq!(one(k), v, "{k}");
    }
    assert_eq!(unit["SystemCallFilter"][0], "@system-service");
    assert!(systemd_secs(one("RestartSec")) > Duration::ZERO);
    let example = validate_file("deploy/systemd/gateway.toml");
    let stop = example.listener.shutdown_delay + example.listener.drain_timeout + STOP_MARGIN;
    assert!(
        systemd_secs(one("TimeoutStopSec")) >= stop,
        "TimeoutStopSec must cover shutdown_delay_ms + drain_timeout_ms + {STOP_MARGIN:?} ({stop:?})"
    );
    // Every credential the example config reads from %d is loaded by the unit.
    let loaded: Vec<&str> = unit["LoadCredential"]
        .iter()
        .map(|v| v.split_once(':').unwrap().0)
        .collect();
    let config = validate_file("deploy/systemd/gateway.toml");
    let (reads, _) = config_paths(&config);
    let from_credentials: Vec<&Path> = reads
        .iter()
        .filter_map(|p| p.strip_prefix(CREDENTIALS_DIR).ok())
        .collect();
    assert!(
        from_credentials.len() >= 3,
        "TLS key, role id and secret id come from LoadCredential="
    );
    for name in from_credentials {
        assert!(
            loaded.contains(&name.to_str().unwrap()),
            "{name:?} is not in LoadCredential="
        );
    }
    // A port below 1024 is why CAP_NET_BIND_SERVICE is there; nothing else needs a capability.
    assert!(config.listener.addr.port() < 1024);
}

#[test]
fn systemd_example_config_validates_and_matches_the_unit() {
    let config = validate_file("deploy/systemd/gateway.toml");
    assert_eq!(config.egress.source_addr, Some("203.0.113.10".parse().unwrap()));
    let tls = config.listener.tls.as_ref().expect("TLS listener");
    assert!(tls.client_ca.is_some(), "mTLS");
    assert!(!config.listener.addr.ip().is_loopback() && !config.listener.addr.ip().is_unspecified());
    // The only writable places: StateDirectory= and LogsDirectory=.
    assert!(config.state.dir.starts_with("/var/lib/signgate"));
    match &config.audit.sink {
        AuditSink::File(p) => assert!(p.starts_with("/var/log/signgate"), "{}", p.display()),
        AuditSink::Stdout => panic!("the egress host keeps its audit log in LogsDirectory="),
    }
    let kwikpaisa = &config.credentials["kwikpaisa"];
    assert!(matches!(
        &kwikpaisa.source,
        SecretSource::Vault(v) if matches!(v.auth, VaultAuth::AppRole { .. })
    ));

    // The unit's SIGNGATE__ overrides, with %d expanded as systemd does,
    // still validate and name the very same files: the two cannot drift apart.
    let unit = unit_directives(&read("deploy/systemd/signgate.service"));
    let vars: Vec<(String, String)> = unit["Environment"]
        .iter()
        .filter_map(|e| e.split_once('='))
        .filter(|(k, _)| k.starts_with("SIGNGATE__"))
        .map(|(k, v)| (k.to_string(), v.replace("%d", CREDENTIALS_DIR)))
        .collect();
    assert!(vars.len() >= 3, "{vars:?}");
    let path = Path::new(ROOT).join("deploy/systemd/gateway.toml");
    let overridden = Config::load_with_env(&path, vars).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config_paths(&overridden), config_paths(&config));
}

// ---------------------------------------------------------------- container

#[test]
fn container_default_config_validates_and_is_what_the_dockerfile_ships() {
    let config = validate_file("deploy/container/gateway.toml");
    assert!(
        config.listener.addr.ip().is_loopback() && config.listener.tls.is_none(),
        "the image's default is a pod-local plain listener"
    );
    let dockerfile = read("deploy/container/Dockerfile");
    let lines: Vec<&str> = dockerfile
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    let has = |l: &str| lines.contains(&l);
    assert!(has(r#"ENTRYPOINT ["/usr/local/bin/signgate"]"#));
    assert!(has(r#"CMD ["run", "--config", "/etc/signgate/gateway.toml"]"#));
    assert!(has("COPY deploy/container/gateway.toml /etc/signgate/gateway.toml"));
    assert!(has("USER 65532:65532"));
    assert!(dockerfile.contains("cargo build --release --locked"));
    let from: Vec<&str> = lines.iter().filter(|l| l.starts_with("FROM ")).copied().collect();
    assert!(from
        .first()
        .is_some_and(|f| f.contains("rust:") && f.contains(" AS build")));
    assert_eq!(from.last().copied(), Some("FROM gcr.io/distroless/cc-debian12:nonroot"));
    let exposed: Vec<u16> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("EXPOSE "))
        .flat_map(|l| l.split_whitespace().map(|p| p.parse::<u16>().unwrap()))
        .collect();
    assert!(exposed.contains(&config.listener.addr.port()));
    assert!(exposed.contains(&config.admin.addr.unwrap().port()));

    // Everything copied from the build context passes .dockerignore's allowlist.
    let ignore = read(".dockerignore");
    let allowed: Vec<&str> = ignore
        .lines()
        .filter_map(|l| l.trim().strip_prefix('!'))
        .map(|l| l.trim_end_matches('/'))
        .collect();
    assert!(ignore.lines().any(|l| l.trim() == "*"), ".dockerignore is an allowlist");
    for l in lines.iter().filter(|l| l.starts_with("COPY ")) {
        let args: Vec<&str> = l.split_whitespace().skip(1).collect();
        if args.iter().any(|a| a.starts_with("--from")) {
            continue;
        }
        let paths: Vec<&str> = args.into_iter().filter(|a| !a.starts_with("--")).collect();
        for src in &paths[..paths.len() - 1] {
            let src = src.trim_end_matches('/');
            assert!(Path::new(ROOT).join(src).exists(), "COPY {src}: no such path");
            assert!(
                allowed.iter().any(|a| src == *a || src.starts_with(&format!("{a}/"))),
                "COPY {src} is excluded by .dockerignore"
            );
        }
    }
}
