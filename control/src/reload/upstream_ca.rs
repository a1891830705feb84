//! The CA files of `protocol: h2` versions (`services[].stable.tls.caFile`,
//! `services[].canary.tls.caFile`): read here, like listener certificates, checked, and handed to
//! the data plane inside the model (`UpstreamTls::ca_pem`). A file that cannot be read or holds no
//! usable CA certificate fails the load with its field path, so the last good config keeps serving.

use std::path::PathBuf;
use std::sync::Arc;

use weir_config::Model;

use super::ReloadError;

/// Reads every version's `tls.caFile` into its `ca_pem`, adding the files to `fingerprint` (so an
/// edit of a CA file reloads like an edit of the config).
pub(super) fn read(
    model: &mut Model,
    fingerprint: &mut Vec<(PathBuf, Vec<u8>)>,
) -> Result<(), ReloadError> {
    for (idx, service) in model.services.iter_mut().enumerate() {
        let versions = std::iter::once(("stable", &mut service.stable))
            .chain(service.canary.as_mut().map(|c| ("canary", &mut c.version)));
        for (which, version) in versions {
            let Some(tls) = version.tls.as_mut() else {
                continue;
            };
            let Some(file) = &tls.ca_file else {
                continue;
            };
            let at = format!("services[{idx}].{which}.tls.caFile");
            let pem = std::fs::read(file).map_err(|source| ReloadError::ReadCertificate {
                at: at.clone(),
                path: file.clone(),
                source,
            })?;
            weir_proxy::check_upstream_ca(&pem, &file.display().to_string())
                .map_err(|source| ReloadError::UpstreamCa { at, source })?;
            if !fingerprint.iter().any(|(path, _)| path == file) {
                fingerprint.push((file.clone(), pem.clone()));
            }
            tls.ca_pem = Some(Arc::from(pem));
        }
    }
    Ok(())
}
