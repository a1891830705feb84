//! One certificate order (RFC 8555 §7.4) with instant-acme: the account (stored, or created on
//! first use), the order for the listener's domains, the challenges published in the
//! [`ChallengeStore`] for the data plane to answer (and withdrawn however the order ends), the
//! CSR (a fresh key per certificate), and the certificate chain.

use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::{Deserialize, Serialize};
use weir_config::{Acme, AcmeChallenge};
use weir_proxy::acme::ChallengeStore;
use weir_proxy::tls::CertificatePem;

use super::certs::{self, CertInfo};
use super::client::AcmeHttp;
use super::files::{self, Paths};

/// How long the CA is polled for the order to become ready, then for the certificate.
const POLL_TIMEOUT: Duration = Duration::from_secs(90);

/// `account.json`: the credentials and the directory they belong to (a new directory means a new
/// account).
#[derive(Serialize, Deserialize)]
struct StoredAccount {
    directory: String,
    credentials: AccountCredentials,
}

/// Orders a certificate for `acme.domains`, stores it in `paths` and returns it.
pub(super) async fn issue(
    listener: &str,
    acme: &Acme,
    paths: &Paths,
    store: &ChallengeStore,
) -> Result<(CertificatePem, CertInfo), String> {
    let ca_file = acme.ca_file.clone();
    let http = blocking(move || AcmeHttp::new(ca_file.as_deref())).await??;
    let account = account(acme, paths, http).await?;
    let identifiers: Vec<Identifier> = acme
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .map_err(|e| format!("new order: {e}"))?;
    tracing::info!(target: "weir::acme", listener, url = order.url(), domains = ?acme.domains, "ACME order created");

    // Withdrawn when this function returns, whatever happened.
    let mut published = Published {
        store,
        http: Vec::new(),
        tls: Vec::new(),
    };
    let kind = match acme.challenge {
        AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        AcmeChallenge::Http01 => ChallengeType::Http01,
    };
    {
        let mut authorizations = order.authorizations();
        while let Some(authz) = authorizations.next().await {
            let mut authz = authz.map_err(|e| format!("authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("authorization is {other:?}")),
            }
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("the CA offers no {} challenge", acme.challenge.as_str()))?;
            let domain = challenge.identifier().to_string().to_ascii_lowercase();
            let key_authorization = challenge.key_authorization();
            match acme.challenge {
                AcmeChallenge::Http01 => {
                    if !store.set_http(&challenge.token, &domain, key_authorization.as_str()) {
                        return Err(format!("the CA sent an unusable token for {domain}"));
                    }
                    published.http.push(challenge.token.clone());
                }
                AcmeChallenge::TlsAlpn01 => {
                    let pem = certs::tls_alpn(&domain, key_authorization.digest().as_ref())
                        .map_err(|e| format!("challenge certificate for {domain}: {e}"))?;
                    store
                        .set_tls_alpn(&domain, &pem)
                        .map_err(|e| format!("challenge certificate for {domain}: {e}"))?;
                    published.tls.push(domain.clone());
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("challenge for {domain}: {e}"))?;
        }
    }
    let retries = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .timeout(POLL_TIMEOUT);
    let status = order
        .poll_ready(&retries)
        .await
        .map_err(|e| format!("order: {e}"))?;
    if status != OrderStatus::Ready {
        let mut why = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut authz)) = authorizations.next().await {
            if let Ok(state) = authz.refresh().await {
                for challenge in &state.challenges {
                    if let Some(error) = &challenge.error {
                        why.push(error.to_string());
                    }
                }
            }
        }
        return Err(format!("order {status:?}: {}", why.join("; ")));
    }
    let private_key = order
        .finalize()
        .await
        .map_err(|e| format!("finalize: {e}"))?;
    let chain = order
        .poll_certificate(&retries)
        .await
        .map_err(|e| format!("certificate: {e}"))?;
    drop(published);

    let pem = CertificatePem {
        origin: paths.cert().display().to_string(),
        cert_chain: chain.into_bytes(),
        private_key: private_key.into_bytes(),
    };
    weir_proxy::tls::server_config(std::slice::from_ref(&pem))
        .map_err(|e| format!("the issued certificate is unusable: {e}"))?;
    let info = CertInfo::of_pem(&pem.cert_chain)?;
    let (stored, to_store) = (paths.clone(), pem.clone());
    blocking(move || stored.write_certificate(&to_store))
        .await?
        .map_err(|e| {
            format!(
                "cannot store the certificate in {}: {e}",
                paths.dir.display()
            )
        })?;
    Ok((pem, info))
}

/// The stored account for this directory, or a new one (stored before use).
async fn account(acme: &Acme, paths: &Paths, http: AcmeHttp) -> Result<Account, String> {
    let path = paths.account();
    let read_path = path.clone();
    let stored = blocking(move || std::fs::read(&read_path)).await?;
    if let Ok(bytes) = stored {
        match serde_json::from_slice::<StoredAccount>(&bytes) {
            Ok(stored) if stored.directory == acme.directory => {
                return Account::builder_with_http(Box::new(http))
                    .from_credentials(stored.credentials)
                    .await
                    .map_err(|e| format!("account: {e}"));
            }
            Ok(_) => {
                tracing::info!(target: "weir::acme", "the ACME directory changed: creating a new account")
            }
            Err(error) => {
                tracing::warn!(target: "weir::acme", %error, path = %path.display(), "unreadable ACME account file: creating a new account")
            }
        }
    }
    let contact = acme.email.as_ref().map(|e| format!("mailto:{e}"));
    let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = Account::builder_with_http(Box::new(http))
        .create(
            &NewAccount {
                contact: &contacts,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory.clone(),
            None,
        )
        .await
        .map_err(|e| format!("new account: {e}"))?;
    let bytes = serde_json::to_vec_pretty(&StoredAccount {
        directory: acme.directory.clone(),
        credentials,
    })
    .map_err(|e| format!("account: {e}"))?;
    blocking(move || files::write_private(&path, &bytes))
        .await?
        .map_err(|e| format!("cannot store the ACME account: {e}"))?;
    Ok(account)
}

/// Challenges published for one order; withdrawn when dropped.
struct Published<'s> {
    store: &'s ChallengeStore,
    http: Vec<String>,
    tls: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for token in &self.http {
            self.store.remove_http(token);
        }
        for domain in &self.tls {
            self.store.remove_tls_alpn(domain);
        }
    }
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| format!("blocking task failed: {e}"))
}
