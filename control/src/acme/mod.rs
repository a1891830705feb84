//! Automatic certificates (`listeners[].tls.acme`, RFC 8555) on the control plane.
//!
//! - [`Acme::attach`] runs in the config loader (off the control thread): for each ACME listener it
//!   puts the stored certificate (`<stateDir>/acme/<listener>/cert.pem`) first in the listener's
//!   TLS material, or a self-signed placeholder until one is issued, and hands the data plane the
//!   [`ChallengeStore`] (on every TLS listener, so tls-alpn-01 works on whichever serves 443). So a new certificate reaches the proxy like any certificate: through a
//!   reload and the driver's table rebuild (the proxy never reads files); connections already
//!   open keep the certificate they were made with.
//! - [`Acme::run`] keeps one task per ACME listener: it orders a certificate when none is stored
//!   (or the stored one does not cover the domains), renews it `renewBefore` ahead of expiry
//!   (see [`CertInfo::renew_at`]), writes it (0600), and asks for a reload. A failure keeps the
//!   current certificate and is retried with exponential back-off (`retry.initial` doubling to
//!   `retry.max`); it shows in `GET /api/v1/acme`, in `weir_acme_orders_total{result="failure"}`
//!   and in the log (target `weir::acme`).

mod certs;
mod client;
mod files;
mod order;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use weir_proxy::acme::ChallengeStore;
use weir_proxy::routes::TlsMaterial;
use weir_proxy::tls::CertificatePem;

pub use self::certs::CertInfo;
use self::files::Paths;
use crate::reload::{Loaded, Trigger};

/// The longest single wait of a listener's task before it looks at the clock again (wall-clock
/// jumps and suspends are noticed within this).
const MAX_SLEEP: Duration = Duration::from_secs(3600);
/// The longest failure reason kept in the status and the log (bytes).
const MAX_ERROR: usize = 1024;
/// The most time one order may take, all requests and polling included.
const ORDER_TIMEOUT: Duration = Duration::from_secs(300);

/// What a listener's task works from.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Job {
    acme: weir_config::Acme,
    paths: Paths,
}

type Labels = Vec<(&'static str, String)>;

/// The ACME side of weir (cheap to clone).
#[derive(Clone, Default)]
pub struct Acme {
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    store: ChallengeStore,
    /// Placeholders by (listener, domains), so every reload serves the same one (and the data
    /// plane reuses its TLS config).
    placeholders: Mutex<HashMap<(String, Vec<String>), CertificatePem>>,
    status: RwLock<BTreeMap<String, ListenerStatus>>,
    jobs: watch::Sender<BTreeMap<String, Job>>,
    expiry: Family<Labels, Gauge>,
    orders: Family<Labels, Counter>,
}

/// `GET /api/v1/acme`.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AcmeStatus {
    /// One entry per listener with `tls.acme`, by name.
    pub listeners: Vec<ListenerStatus>,
}

/// One ACME listener.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerStatus {
    /// The listener.
    pub listener: String,
    /// The names ordered.
    pub domains: Vec<String>,
    /// `tls-alpn-01` or `http-01`.
    pub challenge: String,
    /// The CA's directory.
    pub directory: String,
    /// `placeholder` (nothing issued yet), `valid`, `ordering` or `failing` (the last order
    /// failed; the current certificate keeps serving).
    pub state: String,
    /// The certificate served (absent while the placeholder is).
    pub certificate: Option<CertificateStatus>,
    /// When the next order is due (Unix seconds).
    pub next_order_at: Option<u64>,
    /// The last successful order (Unix seconds).
    pub last_success_at: Option<u64>,
    /// Why the last order failed (cleared by a success).
    pub last_error: Option<String>,
    /// Orders failed since the last success.
    pub consecutive_failures: u32,
}

/// A certificate's facts.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateStatus {
    /// Serial, hex.
    pub serial: String,
    /// `notBefore` (Unix seconds).
    pub not_before: u64,
    /// `notAfter` (Unix seconds).
    pub not_after: u64,
    /// The names it covers.
    pub names: Vec<String>,
}

impl From<&CertInfo> for CertificateStatus {
    fn from(info: &CertInfo) -> CertificateStatus {
        CertificateStatus {
            serial: info.serial.clone(),
            not_before: certs::unix(info.not_before),
            not_after: certs::unix(info.not_after),
            names: info.names.clone(),
        }
    }
}

impl Acme {
    /// A manager with no ACME listener yet.
    pub fn new() -> Acme {
        Acme::default()
    }

    /// The challenge store the data plane answers from.
    pub fn challenges(&self) -> &ChallengeStore {
        &self.shared.store
    }

    /// Registers `weir_acme_certificate_expiry_seconds{listener}` (the served certificate's
    /// `notAfter` as Unix seconds; 0 while the placeholder is served) and
    /// `weir_acme_orders_total{listener,result}` (`success` or `failure`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "weir_acme_certificate_expiry_seconds",
            "notAfter of the ACME certificate each listener serves, as Unix seconds (0: placeholder, none issued yet)",
            self.shared.expiry.clone(),
        );
        registry.register(
            "weir_acme_orders",
            "ACME certificate orders by listener and result",
            self.shared.orders.clone(),
        );
    }

    /// The status of every ACME listener.
    pub fn status(&self) -> AcmeStatus {
        let status = self
            .shared
            .status
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        AcmeStatus {
            listeners: status.values().cloned().collect(),
        }
    }

    /// Wraps a config loader: every config it loads gets its ACME listeners' certificates
    /// ([`Acme::attach`]).
    pub fn loader(&self, inner: crate::reload::Loader) -> crate::reload::Loader {
        let acme = self.clone();
        Arc::new(move |path| {
            let mut loaded = inner(path)?;
            acme.attach(&mut loaded);
            Ok(loaded)
        })
    }

    /// Puts each ACME listener's certificate (stored, or the placeholder) first in its TLS
    /// material with the challenge store, and tells [`Acme::run`] which listeners to look after.
    /// Blocking (reads files).
    pub fn attach(&self, loaded: &mut Loaded) {
        let mut jobs = BTreeMap::new();
        let state_dir = loaded.model.state_dir.clone();
        for listener in &loaded.model.listeners {
            let Some(acme) = listener.tls.as_ref().and_then(|t| t.acme.as_ref()) else {
                continue;
            };
            // Every load fills in the state folder (`crate::state_dir::fill`).
            let Some(state_dir) = &state_dir else {
                continue;
            };
            let paths = Paths::new(state_dir, &listener.name);
            let pem = match stored(&paths) {
                Some((pem, _)) => pem,
                None => match self.placeholder(&listener.name, &acme.domains) {
                    Some(pem) => pem,
                    None => continue,
                },
            };
            let material = loaded
                .tls
                .entry(listener.name.clone())
                .or_insert_with(|| TlsMaterial {
                    certificates: Vec::new(),
                    acme: None,
                });
            material.certificates.insert(0, pem);
            material.acme = Some(self.shared.store.clone());
            jobs.insert(
                listener.name.clone(),
                Job {
                    acme: acme.clone(),
                    paths,
                },
            );
        }
        if !jobs.is_empty() {
            // Every TLS listener answers tls-alpn-01 (the CA connects to port 443, which may be
            // another listener than the one that orders).
            for material in loaded.tls.values_mut() {
                material.acme = Some(self.shared.store.clone());
            }
        }
        self.shared
            .placeholders
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|(name, _), _| jobs.contains_key(name));
        self.shared.jobs.send_if_modified(|current| {
            if *current == jobs {
                false
            } else {
                *current = jobs;
                true
            }
        });
    }

    fn placeholder(&self, listener: &str, domains: &[String]) -> Option<CertificatePem> {
        let mut cache = self
            .shared
            .placeholders
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let key = (listener.to_string(), domains.to_vec());
        if let Some(pem) = cache.get(&key) {
            return Some(pem.clone());
        }
        match certs::placeholder(domains) {
            Ok(pem) => {
                cache.retain(|(name, _), _| name != listener);
                cache.insert(key, pem.clone());
                Some(pem)
            }
            Err(error) => {
                tracing::error!(target: "weir::acme", listener, %error, "cannot make a placeholder certificate");
                None
            }
        }
    }

    /// Looks after every ACME listener until dropped (aborting it stops every order): one task
    /// per listener, restarted when its settings change. A new certificate is installed by
    /// sending [`Trigger::Forced`] on `reload`.
    pub async fn run(self, reload: mpsc::UnboundedSender<Trigger>) {
        let mut jobs = self.shared.jobs.subscribe();
        let mut running: HashMap<String, (Job, AbortOnDrop)> = HashMap::new();
        loop {
            let wanted = jobs.borrow_and_update().clone();
            for name in running.keys().filter(|name| !wanted.contains_key(*name)) {
                self.shared.expiry.remove(&vec![("listener", name.clone())]);
            }
            running.retain(|name, (job, _)| wanted.get(name) == Some(job));
            {
                let mut status = self
                    .shared
                    .status
                    .write()
                    .unwrap_or_else(PoisonError::into_inner);
                status.retain(|name, _| wanted.contains_key(name));
            }

            for (name, job) in wanted {
                if running.contains_key(&name) {
                    continue;
                }
                let labels = vec![("listener", name.clone())];
                let _ = self.shared.expiry.get_or_create(&labels);
                for result in ["success", "failure"] {
                    let _ = self.shared.orders.get_or_create(&vec![
                        ("listener", name.clone()),
                        ("result", result.into()),
                    ]);
                }
                let task = tokio::spawn(self.clone().listener(
                    name.clone(),
                    job.clone(),
                    reload.clone(),
                ));
                running.insert(name, (job, AbortOnDrop(task)));
            }
            if jobs.changed().await.is_err() {
                return;
            }
        }
    }

    fn set_status(&self, name: &str, update: impl FnOnce(&mut ListenerStatus)) {
        let mut status = self
            .shared
            .status
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(entry) = status.get_mut(name) {
            update(entry);
        }
    }

    /// One listener's loop: wait until the certificate is due, order, store, install; back off
    /// after a failure.
    async fn listener(self, name: String, job: Job, reload: mpsc::UnboundedSender<Trigger>) {
        let acme = &job.acme;
        {
            let mut status = self
                .shared
                .status
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            status.insert(
                name.clone(),
                ListenerStatus {
                    listener: name.clone(),
                    domains: acme.domains.clone(),
                    challenge: acme.challenge.as_str().into(),
                    directory: acme.directory.clone(),
                    state: "placeholder".into(),
                    ..ListenerStatus::default()
                },
            );
        }
        let labels = vec![("listener", name.clone())];
        let mut failures: u32 = 0;
        let mut last_issued: Option<tokio::time::Instant> = None;
        loop {
            let paths = job.paths.clone();
            let current = tokio::task::spawn_blocking(move || stored(&paths))
                .await
                .ok()
                .flatten()
                .map(|(_, info)| info);
            // A stored certificate that lacks a configured domain keeps serving what it covers
            // while the new one is ordered.
            let due = match &current {
                Some(info) if info.covers(&acme.domains) => {
                    info.renew_at(acme.renew_before, weir_config::Acme::MIN_RENEW_GAP)
                }
                _ => SystemTime::now(),
            };
            self.shared.expiry.get_or_create(&labels).set(
                current
                    .as_ref()
                    .map_or(0, |i| certs::unix(i.not_after) as i64),
            );
            self.set_status(&name, |s| {
                s.certificate = current.as_ref().map(CertificateStatus::from);
                s.next_order_at = Some(certs::unix(due));
                if failures == 0 {
                    s.state = if current.is_some() {
                        "valid"
                    } else {
                        "placeholder"
                    }
                    .into();
                }
            });
            // Never sooner than MIN_RENEW_GAP after this task's last issuance.
            let wait = due
                .duration_since(SystemTime::now())
                .unwrap_or_default()
                .max(last_issued.map_or(Duration::ZERO, |at| {
                    (at + weir_config::Acme::MIN_RENEW_GAP)
                        .saturating_duration_since(tokio::time::Instant::now())
                }));
            if !wait.is_zero() {
                tokio::time::sleep(wait.min(MAX_SLEEP)).await;
                if wait > MAX_SLEEP {
                    continue;
                }
            }

            self.set_status(&name, |s| s.state = "ordering".into());
            let started = tokio::time::Instant::now();
            let result = match tokio::time::timeout(
                ORDER_TIMEOUT,
                order::issue(&name, acme, &job.paths, &self.shared.store),
            )
            .await
            {
                Ok(result) => result,
                Err(_) => Err(format!(
                    "the order took longer than {}s",
                    ORDER_TIMEOUT.as_secs()
                )),
            };
            match result {
                Ok((_, info)) => {
                    failures = 0;
                    last_issued = Some(tokio::time::Instant::now());
                    self.shared
                        .orders
                        .get_or_create(&vec![
                            ("listener", name.clone()),
                            ("result", "success".into()),
                        ])
                        .inc();
                    tracing::info!(
                        target: "weir::acme",
                        listener = %name,
                        serial = %info.serial,
                        not_after = certs::unix(info.not_after),
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "ACME certificate issued; installing it"
                    );
                    self.set_status(&name, |s| {
                        s.state = "valid".into();
                        s.last_error = None;
                        s.consecutive_failures = 0;
                        s.last_success_at = Some(certs::unix(SystemTime::now()));
                    });
                    // The reload reads the new files and rebuilds the table: new connections
                    // get the certificate, open ones keep theirs.
                    let _ = reload.send(Trigger::Forced);
                }
                Err(mut error) => {
                    // A CA's problem document can be long: the status keeps a bounded reason.
                    if error.len() > MAX_ERROR {
                        let mut end = MAX_ERROR;
                        while !error.is_char_boundary(end) {
                            end -= 1;
                        }
                        error.truncate(end);
                        error.push('…');
                    }
                    failures = failures.saturating_add(1);
                    let delay = acme.retry.delay(failures);
                    self.shared
                        .orders
                        .get_or_create(&vec![
                            ("listener", name.clone()),
                            ("result", "failure".into()),
                        ])
                        .inc();
                    tracing::warn!(
                        target: "weir::acme",
                        listener = %name,
                        failures,
                        retry_in_ms = delay.as_millis() as u64,
                        %error,
                        "ACME order failed; the current certificate keeps serving"
                    );
                    self.set_status(&name, |s| {
                        s.state = "failing".into();
                        s.last_error = Some(error);
                        s.consecutive_failures = failures;
                        s.next_order_at = Some(certs::unix(SystemTime::now() + delay));
                    });
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }
}

/// The stored certificate when it is usable and not expired. Blocking.
fn stored(paths: &Paths) -> Option<(CertificatePem, CertInfo)> {
    let pem = match paths.read_certificate() {
        Ok(Some(pem)) => pem,
        Ok(None) => return None,
        Err(error) => {
            tracing::warn!(target: "weir::acme", dir = %paths.dir.display(), %error, "cannot read the stored ACME certificate");
            return None;
        }
    };
    let info = match CertInfo::of_pem(&pem.cert_chain) {
        Ok(info) => info,
        Err(error) => {
            tracing::warn!(target: "weir::acme", dir = %paths.dir.display(), %error, "unusable stored ACME certificate");
            return None;
        }
    };
    if info.not_after <= SystemTime::now() {
        return None;
    }
    if let Err(error) = weir_proxy::tls::server_config(std::slice::from_ref(&pem)) {
        tracing::warn!(target: "weir::acme", dir = %paths.dir.display(), %error, "unusable stored ACME certificate");
        return None;
    }
    Some((pem, info))
}

/// A task aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where `listener`'s ACME files live below `state_dir` (for tools and tests).
pub fn listener_dir(state_dir: &std::path::Path, listener: &str) -> PathBuf {
    Paths::new(state_dir, listener).dir
}
