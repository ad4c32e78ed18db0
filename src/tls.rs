//! TLS for both sides with rustls: the acceptor for clients (`client_tls_*`) and the connector
//! for PostgreSQL (`server_tls_*`), with libpq's sslmode meanings, PgBouncer's protocol and
//! cipher keywords, and certificate verification. Built from the config at start-up and on
//! every reload, so new certificates apply to new connections without dropping anyone.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};

use crate::config::{General, SslMode};

/// The CA bundle used to verify PostgreSQL when `server_tls_ca_file` is not set.
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// ALPN protocol name PostgreSQL 17 and later use; older servers ignore it.
const ALPN_POSTGRESQL: &[u8] = b"postgresql";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{key} {path}: cannot read: {source}")]
    Read {
        key: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{key} {path}: no {what} found in the file")]
    Empty {
        key: &'static str,
        path: PathBuf,
        what: &'static str,
    },
    #[error("{key} {path}: {message}")]
    Invalid {
        key: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{0}")]
    Setting(String),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// What the config asks of TLS on both sides, ready to use.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub client_mode: SslMode,
    /// Present unless `client_tls_sslmode = disable`.
    pub acceptor: Option<Arc<rustls::ServerConfig>>,
    pub server_mode: SslMode,
    /// Present unless `server_tls_sslmode = disable`.
    pub connector: Option<Arc<rustls::ClientConfig>>,
    /// Where server-side TLS handshakes are counted: the instance's `App::events`.
    pub events: Arc<crate::metrics::Events>,
}

impl TlsSettings {
    /// Builds both sides from `[pgbouncer]`, reading every key, certificate and CA file.
    pub fn new(general: &General) -> Result<TlsSettings, TlsError> {
        let acceptor = match general.client_tls_sslmode {
            SslMode::Disable => None,
            mode => Some(Arc::new(client_facing(general, mode)?)),
        };
        let connector = match general.server_tls_sslmode {
            SslMode::Disable => None,
            mode => Some(Arc::new(server_facing(general, mode)?)),
        };
        Ok(TlsSettings {
            client_mode: general.client_tls_sslmode,
            acceptor,
            server_mode: general.server_tls_sslmode,
            connector,
            events: Arc::default(),
        })
    }

    /// No TLS on either side.
    pub fn disabled() -> TlsSettings {
        TlsSettings {
            client_mode: SslMode::Disable,
            acceptor: None,
            server_mode: SslMode::Disable,
            connector: None,
            events: Arc::default(),
        }
    }
}

/// The common name (CN) of the certificate a TLS client presented, for `auth_type = cert` and
/// hba's `cert` method. `None` without TLS, without a certificate, or without a CN.
pub fn client_certificate_cn(stream: &crate::stream::Stream) -> Option<String> {
    let crate::stream::Stream::TlsFromClient(tls) = stream else {
        return None;
    };
    let cert = tls.get_ref().1.peer_certificates()?.first()?;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}

/// The name to check a server certificate against (`verify-full`).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_owned())
        .map_err(|_| TlsError::Setting(format!("\"{host}\" is not a valid TLS server name")))
}

fn provider(ciphers: &str, key: &'static str) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    let keyword = matches!(
        ciphers.trim().to_ascii_lowercase().as_str(),
        "" | "fast" | "normal" | "secure" | "all" | "default" | "high"
    );
    if !keyword {
        let wanted: Vec<&str> = ciphers
            .split([':', ',', ' '])
            .filter(|s| !s.is_empty())
            .collect();
        provider.cipher_suites.retain(|suite| {
            // TLS 1.3 suites are not chosen by the OpenSSL cipher list, as in PgBouncer.
            suite.version() == &rustls::version::TLS13
                || openssl_name(suite.suite()).is_some_and(|name| wanted.contains(&name))
        });
        if !provider
            .cipher_suites
            .iter()
            .any(|s| s.version() == &rustls::version::TLS12)
        {
            return Err(TlsError::Setting(format!(
                "{key} = {ciphers}: none of these TLS 1.2 cipher suites is available \
                 (available: {})",
                TLS12_SUITES
                    .iter()
                    .map(|(_, n)| *n)
                    .collect::<Vec<_>>()
                    .join(":")
            )));
        }
    }
    Ok(Arc::new(provider))
}

/// OpenSSL names of the TLS 1.2 suites rustls implements.
const TLS12_SUITES: &[(rustls::CipherSuite, &str)] = &[
    (
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-ECDSA-AES128-GCM-SHA256",
    ),
    (
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-ECDSA-AES256-GCM-SHA384",
    ),
    (
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-ECDSA-CHACHA20-POLY1305",
    ),
    (
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        "ECDHE-RSA-AES128-GCM-SHA256",
    ),
    (
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        "ECDHE-RSA-AES256-GCM-SHA384",
    ),
    (
        rustls::CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        "ECDHE-RSA-CHACHA20-POLY1305",
    ),
];

fn openssl_name(suite: rustls::CipherSuite) -> Option<&'static str> {
    TLS12_SUITES
        .iter()
        .find(|(s, _)| *s == suite)
        .map(|(_, n)| *n)
}

/// `*_tls_protocols`: `secure` (default), `all`, `legacy` or a list of `tlsv1.2`, `tlsv1.3`.
/// TLS 1.0 and 1.1 are not available.
fn versions(
    spec: &str,
    key: &'static str,
) -> Result<Vec<&'static SupportedProtocolVersion>, TlsError> {
    let mut out: Vec<&'static SupportedProtocolVersion> = Vec::new();
    for token in spec.split([',', ' ', ':']).filter(|t| !t.is_empty()) {
        match token.to_ascii_lowercase().as_str() {
            "secure" | "all" | "legacy" | "default" => {
                out = vec![&rustls::version::TLS12, &rustls::version::TLS13];
            }
            "tlsv1.2" => out.push(&rustls::version::TLS12),
            "tlsv1.3" => out.push(&rustls::version::TLS13),
            "tlsv1" | "tlsv1.0" | "tlsv1.1" => {}
            other => {
                return Err(TlsError::Setting(format!(
                    "{key} = {spec}: unknown protocol \"{other}\" (expected: secure, all, legacy, tlsv1.2, tlsv1.3)"
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(TlsError::Setting(format!(
            "{key} = {spec}: pgberth supports TLS 1.2 and 1.3 only"
        )));
    }
    out.dedup_by_key(|v| v.version);
    Ok(out)
}

fn read_certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(key, path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| pem_error(key, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            key,
            path: path.to_owned(),
            what: "certificate",
        });
    }
    Ok(certs)
}

fn read_key(key: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| pem_error(key, path, e))
}

fn pem_error(key: &'static str, path: &Path, e: rustls::pki_types::pem::Error) -> TlsError {
    match e {
        rustls::pki_types::pem::Error::Io(source) => TlsError::Read {
            key,
            path: path.to_owned(),
            source,
        },
        rustls::pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            key,
            path: path.to_owned(),
            what: "PEM item",
        },
        other => TlsError::Invalid {
            key,
            path: path.to_owned(),
            message: other.to_string(),
        },
    }
}

fn roots(key: &'static str, path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in read_certs(key, path)? {
        roots.add(cert).map_err(|e| TlsError::Invalid {
            key,
            path: path.to_owned(),
            message: e.to_string(),
        })?;
    }
    Ok(roots)
}

/// The rustls server config pgberth presents to clients.
fn client_facing(general: &General, mode: SslMode) -> Result<rustls::ServerConfig, TlsError> {
    let (Some(key_file), Some(cert_file)) =
        (&general.client_tls_key_file, &general.client_tls_cert_file)
    else {
        return Err(TlsError::Setting(format!(
            "client_tls_sslmode = {mode} needs client_tls_key_file and client_tls_cert_file"
        )));
    };
    let provider = provider(&general.client_tls_ciphers, "client_tls_ciphers")?;
    let certs = read_certs("client_tls_cert_file", cert_file)?;
    let key = read_key("client_tls_key_file", key_file)?;
    let verifier = match (&general.client_tls_ca_file, mode) {
        (Some(ca), _) => {
            let builder = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots("client_tls_ca_file", ca)?),
                provider.clone(),
            );
            let builder = if mode >= SslMode::VerifyCa {
                builder
            } else {
                builder.allow_unauthenticated()
            };
            builder
                .build()
                .map_err(|e| TlsError::Setting(format!("client_tls_ca_file: {e}")))?
        }
        (None, SslMode::VerifyCa | SslMode::VerifyFull) => {
            return Err(TlsError::Setting(format!(
                "client_tls_sslmode = {mode} needs client_tls_ca_file to verify client certificates"
            )));
        }
        (None, _) => WebPkiClientVerifier::no_client_auth(),
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions(
            &general.client_tls_protocols,
            "client_tls_protocols",
        )?)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid {
            key: "client_tls_key_file",
            path: key_file.clone(),
            message: format!("does not match client_tls_cert_file: {e}"),
        })?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(config)
}

/// The rustls client config pgberth uses towards PostgreSQL.
fn server_facing(general: &General, mode: SslMode) -> Result<rustls::ClientConfig, TlsError> {
    let provider = provider(&general.server_tls_ciphers, "server_tls_ciphers")?;
    let algorithms = provider.signature_verification_algorithms;
    let verifier: Arc<dyn ServerCertVerifier> = if mode >= SslMode::VerifyCa {
        let (key, path) = match &general.server_tls_ca_file {
            Some(path) => ("server_tls_ca_file", path.clone()),
            None => (
                "server_tls_ca_file (system bundle)",
                PathBuf::from(SYSTEM_CA_BUNDLE),
            ),
        };
        let webpki = WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots(key, &path)?),
            provider.clone(),
        )
        .build()
        .map_err(|e| TlsError::Setting(format!("server_tls_ca_file: {e}")))?;
        if mode == SslMode::VerifyFull {
            webpki
        } else {
            Arc::new(ChainOnly { webpki })
        }
    } else {
        Arc::new(NoVerification { algorithms })
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&versions(
            &general.server_tls_protocols,
            "server_tls_protocols",
        )?)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (&general.server_tls_key_file, &general.server_tls_cert_file) {
        (Some(key_file), Some(cert_file)) => with_client_certificate(
            builder,
            ("server_tls_cert_file", cert_file),
            ("server_tls_key_file", key_file),
        )?,
        (None, None) => builder.with_no_client_auth(),
        _ => {
            return Err(TlsError::Setting(
                "server_tls_key_file and server_tls_cert_file go together".into(),
            ));
        }
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(config)
}

/// Finishes a client config with a client certificate and its key, each given with the
/// setting that names it (for the error messages).
fn with_client_certificate(
    builder: rustls::ConfigBuilder<rustls::ClientConfig, rustls::client::WantsClientCert>,
    (cert_setting, cert_file): (&'static str, &Path),
    (key_setting, key_file): (&'static str, &Path),
) -> Result<rustls::ClientConfig, TlsError> {
    let certs = read_certs(cert_setting, cert_file)?;
    let key = read_key(key_setting, key_file)?;
    builder
        .with_client_auth_cert(certs, key)
        .map_err(|e| TlsError::Invalid {
            key: key_setting,
            path: key_file.to_owned(),
            message: format!("does not match {cert_setting}: {e}"),
        })
}

/// A rustls client config with libpq's sslmode meanings, for pgberth's own client tools
/// (`pgberth top`). `allow`, `prefer` and `require` encrypt without checking the certificate,
/// except that `require` with a `root_cert` checks the chain as libpq does; `verify-ca` checks
/// the chain against `root_cert`, `verify-full` the chain and the host name. `client_cert` is
/// an optional certificate and key (libpq's `sslcert`, `sslkey`).
pub fn libpq_client_config(
    mode: SslMode,
    root_cert: Option<&Path>,
    client_cert: Option<(&Path, &Path)>,
) -> Result<rustls::ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, root_cert) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(TlsError::Setting(format!(
                "sslmode={mode} needs sslrootcert, the CA file to check the server's certificate with"
            )));
        }
        (SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull, Some(path)) => {
            let webpki = WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots("sslrootcert", path)?),
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Setting(format!("sslrootcert: {e}")))?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly { webpki })
            }
        }
        _ => Arc::new(NoVerification {
            algorithms: provider.signature_verification_algorithms,
        }),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client_cert {
        Some((cert_file, key_file)) => {
            with_client_certificate(builder, ("sslcert", cert_file), ("sslkey", key_file))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(config)
}

/// `allow`, `prefer`, `require`: encrypt, but accept any certificate (libpq's meaning).
#[derive(Debug)]
struct NoVerification {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to the CA, the host name is not checked.
#[derive(Debug)]
struct ChainOnly {
    webpki: Arc<WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_keywords_and_lists() {
        assert_eq!(versions("secure", "k").unwrap().len(), 2);
        assert_eq!(versions("tlsv1.3", "k").unwrap().len(), 1);
        assert!(
            versions("tlsv1.1", "k").is_err(),
            "TLS 1.1 alone cannot be offered"
        );
        assert!(
            versions("sslv3", "k")
                .unwrap_err()
                .to_string()
                .contains("unknown protocol")
        );
    }

    #[test]
    fn cipher_keywords_keep_all_suites_and_lists_filter_tls12() {
        let all = provider("fast", "k").unwrap();
        let one = provider("ECDHE-RSA-AES128-GCM-SHA256", "k").unwrap();
        assert!(one.cipher_suites.len() < all.cipher_suites.len());
        assert!(
            one.cipher_suites
                .iter()
                .any(|s| s.version() == &rustls::version::TLS13)
        );
        assert!(provider("RC4-MD5", "client_tls_ciphers").is_err());
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let general = General {
            client_tls_sslmode: SslMode::Require,
            client_tls_key_file: Some("/nonexistent/server.key".into()),
            client_tls_cert_file: Some("/nonexistent/server.crt".into()),
            ..General::default()
        };
        let err = TlsSettings::new(&general).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/server.crt"), "{err}");
    }
}
