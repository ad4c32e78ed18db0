//! `pgberth certs`: a development CA, a server certificate and a client certificate (rcgen,
//! ECDSA P-256), written with the right file modes, plus the config lines that use them.
//!
//! The library side is for tests too: [`generate`] returns the PEM strings of a whole set, and
//! [`CertificateAuthority::issue_leaf`] signs further leaves (expired ones, ones from another
//! CA for "unknown CA" cases) with any validity window.

use std::fmt::Write as _;
use std::fs::{DirBuilder, OpenOptions};
use std::io::{self, Write as _};
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

/// Validity of the server and client certificates unless `--days` says otherwise (825 days is
/// the longest that Apple platforms accept for a TLS server certificate).
pub const DEFAULT_LEAF_DAYS: u32 = 825;
/// Validity of the CA certificate.
pub const DEFAULT_CA_DAYS: u32 = 3650;
/// Common name of the client certificate unless `--client-cn` says otherwise.
pub const DEFAULT_CLIENT_CN: &str = "pgberth";
/// Certificates start to be valid this long before "now", to tolerate clock skew.
const BACKDATE: Duration = Duration::from_secs(5 * 60);
const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// Mode of the private key files.
pub const KEY_MODE: u32 = 0o600;
/// Mode of the certificate files.
pub const CERT_MODE: u32 = 0o644;
/// Mode of the output directory when `certs` creates it.
pub const DIR_MODE: u32 = 0o700;

/// Errors from generating or writing certificates.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("no host name given (--host NAME[,NAME...])")]
    NoHosts,
    #[error("empty host name in --host")]
    EmptyHost,
    #[error("the validity must be at least one day")]
    ZeroDays,
    #[error("not_after is not later than not_before")]
    EmptyValidity,
    #[error("could not build a certificate")]
    Rcgen(#[from] rcgen::Error),
    #[error("refusing to overwrite existing files (use --force): {}", list_paths(.0))]
    WouldOverwrite(Vec<PathBuf>),
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn list_paths(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// What a certificate set is made of. `Default` is the `pgberth certs` default for `localhost`.
#[derive(Debug, Clone)]
pub struct CertOptions {
    /// Names of the server: DNS names, or IP addresses when they parse as one. The first is
    /// also the server certificate's CN.
    pub hosts: Vec<String>,
    /// CN of the client certificate (PostgreSQL's and PgBouncer's `cert` auth map it to the
    /// user name).
    pub client_cn: String,
    /// Validity of the server and client certificates, from `not_before`.
    pub leaf_days: u32,
    /// Validity of the CA certificate, from `not_before`.
    pub ca_days: u32,
    /// Start of the leaf certificates' validity. Default: now minus a few minutes.
    pub not_before: Option<SystemTime>,
    /// End of the leaf certificates' validity, overriding `leaf_days` (in the past for an
    /// expired certificate).
    pub not_after: Option<SystemTime>,
}

impl Default for CertOptions {
    fn default() -> Self {
        CertOptions {
            hosts: vec!["localhost".to_owned()],
            client_cn: DEFAULT_CLIENT_CN.to_owned(),
            leaf_days: DEFAULT_LEAF_DAYS,
            ca_days: DEFAULT_CA_DAYS,
            not_before: None,
            not_after: None,
        }
    }
}

/// A certificate and its private key, both PEM (the key is PKCS#8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertPem {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A CA that can sign more certificates.
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    pem: CertPem,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .field("cert_pem", &self.pem.cert_pem)
            .finish_non_exhaustive()
    }
}

/// What a leaf certificate is for: the extended key usage it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeafUsage {
    Server,
    Client,
}

/// A leaf certificate to issue with [`CertificateAuthority::issue_leaf`].
#[derive(Debug, Clone)]
pub struct LeafOptions {
    pub common_name: String,
    /// Subject alternative names: IP addresses when they parse as one, DNS names otherwise.
    pub names: Vec<String>,
    pub usage: LeafUsage,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl LeafOptions {
    /// A leaf valid from a few minutes ago for `days` days.
    pub fn valid_for_days(
        common_name: &str,
        names: &[String],
        usage: LeafUsage,
        days: u32,
    ) -> LeafOptions {
        let not_before = SystemTime::now() - BACKDATE;
        LeafOptions {
            common_name: common_name.to_owned(),
            names: names.to_vec(),
            usage,
            not_before,
            not_after: not_before + DAY * days,
        }
    }
}

impl CertificateAuthority {
    /// A new self-signed CA (fresh key) valid from a few minutes ago for `days` days.
    pub fn new(common_name: &str, days: u32) -> Result<CertificateAuthority, CertError> {
        if days == 0 {
            return Err(CertError::ZeroDays);
        }
        let not_before = SystemTime::now() - BACKDATE;
        CertificateAuthority::with_validity(common_name, not_before, not_before + DAY * days)
    }

    /// A new self-signed CA (fresh key) valid from `not_before` to `not_after`.
    pub fn with_validity(
        common_name: &str,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<CertificateAuthority, CertError> {
        let mut params = base_params(common_name, not_before, not_after)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        let pem = CertPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        Ok(CertificateAuthority {
            issuer: Issuer::new(params, key),
            pem,
        })
    }

    /// The CA certificate and key.
    pub fn pem(&self) -> &CertPem {
        &self.pem
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.pem.cert_pem
    }

    /// A new leaf certificate (fresh key) signed by this CA.
    pub fn issue_leaf(&self, options: &LeafOptions) -> Result<CertPem, CertError> {
        let mut params = base_params(&options.common_name, options.not_before, options.not_after)?;
        params.subject_alt_names = options
            .names
            .iter()
            .map(|name| san(name))
            .collect::<Result<_, _>>()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![match options.usage {
            LeafUsage::Server => ExtendedKeyUsagePurpose::ServerAuth,
            LeafUsage::Client => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertPem {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// A CA with a server and a client certificate it signed.
#[derive(Debug)]
pub struct GeneratedCerts {
    pub ca: CertificateAuthority,
    pub server: CertPem,
    pub client: CertPem,
}

impl GeneratedCerts {
    /// The server certificate followed by the CA certificate (`server-combined.pem`).
    pub fn server_combined_pem(&self) -> String {
        let mut out = self.server.cert_pem.clone();
        if !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(self.ca.cert_pem());
        out
    }
}

/// Generates a CA (valid `ca_days`), a server certificate for `hosts` and a client certificate
/// for `client_cn` (valid `leaf_days`, or `not_before`..`not_after` when given).
pub fn generate(options: &CertOptions) -> Result<GeneratedCerts, CertError> {
    let first = options.hosts.first().ok_or(CertError::NoHosts)?;
    if options.hosts.iter().any(|h| h.trim().is_empty()) {
        return Err(CertError::EmptyHost);
    }
    if options.leaf_days == 0 {
        return Err(CertError::ZeroDays);
    }
    let ca = CertificateAuthority::new("pgberth development CA", options.ca_days)?;
    let leaf = |cn: &str, names: &[String], usage| {
        let mut leaf = LeafOptions::valid_for_days(cn, names, usage, options.leaf_days);
        if let Some(not_before) = options.not_before {
            leaf.not_before = not_before;
            leaf.not_after = not_before + DAY * options.leaf_days;
        }
        if let Some(not_after) = options.not_after {
            leaf.not_after = not_after;
        }
        leaf
    };
    let server = ca.issue_leaf(&leaf(first, &options.hosts, LeafUsage::Server))?;
    let client = ca.issue_leaf(&leaf(&options.client_cn, &[], LeafUsage::Client))?;
    Ok(GeneratedCerts { ca, server, client })
}

fn base_params(
    common_name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<CertificateParams, CertError> {
    if not_after <= not_before {
        return Err(CertError::EmptyValidity);
    }
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let mut serial = [0u8; 16];
    rand::fill(&mut serial[..]);
    serial[0] &= 0x7f; // a positive INTEGER
    serial[0] |= 0x01; // and no leading zero byte to strip
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

fn san(name: &str) -> Result<SanType, CertError> {
    Ok(match name.parse::<IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(name.to_owned().try_into()?),
    })
}

/// The files `certs` writes, by name, with their modes.
pub const FILES: [(&str, u32); 7] = [
    ("ca.crt", CERT_MODE),
    ("ca.key", KEY_MODE),
    ("server.crt", CERT_MODE),
    ("server.key", KEY_MODE),
    ("client.crt", CERT_MODE),
    ("client.key", KEY_MODE),
    ("server-combined.pem", CERT_MODE),
];

/// Writes the [`FILES`] into `dir` (created with mode 0700 when missing) with explicit modes.
/// Without `force`, nothing is written when any of them exists. Returns `dir`, absolute.
pub fn write_files(dir: &Path, certs: &GeneratedCerts, force: bool) -> Result<PathBuf, CertError> {
    if !dir.exists() {
        DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(io_error("could not create", dir))?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(DIR_MODE))
            .map_err(io_error("could not chmod", dir))?;
    }
    let dir = dir
        .canonicalize()
        .map_err(io_error("could not resolve", dir))?;
    let existing: Vec<PathBuf> = FILES
        .iter()
        .map(|(name, _)| dir.join(name))
        .filter(|path| path.symlink_metadata().is_ok())
        .collect();
    if !existing.is_empty() && !force {
        return Err(CertError::WouldOverwrite(existing));
    }
    let combined = certs.server_combined_pem();
    let contents: [&str; 7] = [
        &certs.ca.pem.cert_pem,
        &certs.ca.pem.key_pem,
        &certs.server.cert_pem,
        &certs.server.key_pem,
        &certs.client.cert_pem,
        &certs.client.key_pem,
        &combined,
    ];
    for ((name, mode), text) in FILES.iter().zip(contents) {
        write_with_mode(&dir.join(name), text, *mode)?;
    }
    Ok(dir)
}

/// Replaces `path` by a new file created with `mode` (never writing through an existing file
/// or symlink), then sets the mode explicitly so the umask does not matter.
fn write_with_mode(path: &Path, text: &str, mode: u32) -> Result<(), CertError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("could not remove", path)(e)),
    }
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_error("could not create", path))?;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(io_error("could not chmod", path))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error("could not write", path))
}

fn io_error(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CertError {
    let path = path.to_path_buf();
    move |source| CertError::Io { what, path, source }
}

/// The config lines that use the files in `dir` (absolute), for PgBouncer/pgberth,
/// PostgreSQL and a psql client connecting to `host`.
pub fn config_snippet(dir: &Path, host: &str) -> String {
    let file = |name: &str| dir.join(name).display().to_string();
    let conf = |name: &str| format!("'{}'", file(name).replace('\'', "''"));
    let conninfo = |name: &str| {
        let value = file(name);
        if value.contains([' ', '\'', '\\']) {
            format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
        } else {
            value
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "# pgbouncer.ini");
    let _ = writeln!(out, "client_tls_sslmode = require");
    let _ = writeln!(out, "client_tls_key_file = {}", file("server.key"));
    let _ = writeln!(out, "client_tls_cert_file = {}", file("server.crt"));
    let _ = writeln!(out, "client_tls_ca_file = {}", file("ca.crt"));
    let _ = writeln!(out, "# postgresql.conf (server side TLS to PostgreSQL)");
    let _ = writeln!(out, "ssl = on");
    let _ = writeln!(out, "ssl_cert_file = {}", conf("server.crt"));
    let _ = writeln!(out, "ssl_key_file = {}", conf("server.key"));
    let _ = writeln!(out, "ssl_ca_file = {}", conf("ca.crt"));
    let _ = writeln!(out, "# client");
    let _ = writeln!(
        out,
        "psql \"host={host} port=6432 dbname=... sslmode=verify-full sslrootcert={} \
         sslcert={} sslkey={}\"",
        conninfo("ca.crt"),
        conninfo("client.crt"),
        conninfo("client.key")
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_makes_pem_of_the_expected_kinds() {
        let certs = generate(&CertOptions::default()).unwrap();
        for pem in [&certs.ca.pem, &certs.server, &certs.client] {
            assert!(pem.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
            assert!(pem.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        }
        let combined = certs.server_combined_pem();
        assert_eq!(combined.matches("BEGIN CERTIFICATE").count(), 2);
        assert!(combined.starts_with(&certs.server.cert_pem));
        assert!(combined.ends_with(certs.ca.cert_pem()));
    }

    #[test]
    fn generate_rejects_bad_options() {
        let no_hosts = CertOptions {
            hosts: vec![],
            ..CertOptions::default()
        };
        assert!(matches!(generate(&no_hosts), Err(CertError::NoHosts)));
        let empty_host = CertOptions {
            hosts: vec!["a".into(), "".into()],
            ..CertOptions::default()
        };
        assert!(matches!(generate(&empty_host), Err(CertError::EmptyHost)));
        let zero = CertOptions {
            leaf_days: 0,
            ..CertOptions::default()
        };
        assert!(matches!(generate(&zero), Err(CertError::ZeroDays)));
        let now = SystemTime::now();
        let inverted = CertOptions {
            not_before: Some(now),
            not_after: Some(now - DAY),
            ..CertOptions::default()
        };
        assert!(matches!(generate(&inverted), Err(CertError::EmptyValidity)));
    }

    #[test]
    fn write_files_refuses_to_overwrite_without_force() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("new/certs");
        let certs = generate(&CertOptions::default()).unwrap();
        let written = write_files(&dir, &certs, false).unwrap();
        assert!(written.is_absolute());
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&dir), DIR_MODE);
        for (name, want) in FILES {
            assert_eq!(mode(&dir.join(name)), want, "{name}");
        }
        let again = generate(&CertOptions::default()).unwrap();
        assert!(matches!(
            write_files(&dir, &again, false),
            Err(CertError::WouldOverwrite(paths)) if paths.len() == FILES.len()
        ));
        assert_eq!(
            std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
            certs.ca.pem.cert_pem
        );
        write_files(&dir, &again, true).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("ca.crt")).unwrap(),
            again.ca.pem.cert_pem
        );
    }

    #[test]
    fn config_snippet_uses_absolute_paths_and_quotes_for_postgresql() {
        let text = config_snippet(Path::new("/etc/pg it's"), "db.example");
        assert!(text.contains("client_tls_key_file = /etc/pg it's/server.key\n"));
        assert!(text.contains("ssl_cert_file = '/etc/pg it''s/server.crt'\n"));
        assert!(text.contains("host=db.example port=6432"));
        assert!(text.contains("sslrootcert='/etc/pg it\\'s/ca.crt'"));
    }
}
