//! The ACME state on disk: `<stateDir>/acme/<listener>/{account.json,cert.pem,key.pem}`, folders
//! 0700 and files 0600, each written to an exclusive temporary file (never through a link),
//! synced, then renamed into place, so a crash leaves the old file or the new one.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use weir_proxy::tls::CertificatePem;

/// The files of one listener.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    /// `<stateDir>/acme/<listener>`.
    pub dir: PathBuf,
}

impl Paths {
    /// The folder of `listener` below `state_dir`. The name is escaped (bytes outside
    /// `[A-Za-z0-9_-]` become `%XX`), so no listener name can leave the folder.
    pub fn new(state_dir: &Path, listener: &str) -> Paths {
        let mut escaped = String::with_capacity(listener.len());
        for b in listener.bytes() {
            if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
                escaped.push(char::from(b));
            } else {
                escaped.push_str(&format!("%{b:02X}"));
            }
        }
        Paths {
            dir: state_dir.join("acme").join(escaped),
        }
    }

    /// The account: `{"directory": URL, "credentials": …}`.
    pub fn account(&self) -> PathBuf {
        self.dir.join("account.json")
    }

    /// The certificate chain (PEM, leaf first).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    /// The certificate's private key (PEM).
    pub fn key(&self) -> PathBuf {
        self.dir.join("key.pem")
    }

    /// The stored certificate and key, if both files exist. Blocking.
    pub fn read_certificate(&self) -> std::io::Result<Option<CertificatePem>> {
        let read = |path: PathBuf| match fs::read(path) {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        };
        let (Some(cert_chain), Some(private_key)) = (read(self.cert())?, read(self.key())?) else {
            return Ok(None);
        };
        Ok(Some(CertificatePem {
            origin: self.cert().display().to_string(),
            cert_chain,
            private_key,
        }))
    }

    /// Stores a new certificate: the key first, then the chain (a reader that sees the new
    /// chain with the old key rejects the pair and keeps serving what it had). Blocking.
    pub fn write_certificate(&self, pem: &CertificatePem) -> std::io::Result<()> {
        write_private(&self.key(), &pem.private_key)?;
        write_private(&self.cert(), &pem.cert_chain)
    }
}

/// Writes `bytes` to `path` with mode 0600, creating the folder (0700) if needed. Blocking.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .ok_or_else(|| std::io::Error::other("a file path without a folder"))?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    if fs::symlink_metadata(dir)?.file_type().is_symlink() {
        return Err(std::io::Error::other(format!(
            "{} is a symbolic link; refusing to write keys through it",
            dir.display()
        )));
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    // A temporary file left by a crash (or planted as a link) goes: the link, never its target.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let written = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(nofollow())
        .open(&tmp)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        });
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if let Ok(dir) = fs::File::open(dir) {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn nofollow() -> i32 {
    // The flag's bits fit an `i32` (`O_NOFOLLOW` is 0o400000 on Linux).
    i32::try_from(rustix::fs::OFlags::NOFOLLOW.bits()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn names_cannot_escape_and_files_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let paths = Paths::new(dir.path(), "../x/y");
        assert_eq!(paths.dir, dir.path().join("acme").join("%2E%2E%2Fx%2Fy"));
        let pem = CertificatePem {
            origin: "t".into(),
            cert_chain: b"chain".to_vec(),
            private_key: b"key".to_vec(),
        };
        paths.write_certificate(&pem).expect("write");
        for file in [paths.cert(), paths.key()] {
            let mode = fs::metadata(&file).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", file.display());
        }
        let dir_mode = fs::metadata(&paths.dir).expect("meta").permissions().mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        let read = paths.read_certificate().expect("read").expect("stored");
        assert_eq!(
            (read.cert_chain, read.private_key),
            (pem.cert_chain, pem.private_key)
        );
    }
}
