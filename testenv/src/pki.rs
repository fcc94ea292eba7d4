//! A throw-away PKI for one control plane: a CA, the API server's serving certificate, an admin
//! client certificate in `system:masters`, and the service-account signing key pair.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};

use crate::Error;

/// PEM files written into a control plane's state directory.
#[derive(Debug, Clone)]
pub struct Pki {
    /// CA certificate that signed the serving and client certificates.
    pub ca_cert: PathBuf,
    /// kube-apiserver serving certificate and key (SANs: 127.0.0.1, localhost, kubernetes.*).
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    /// Service-account token signing key (private) and verification key (public).
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    /// The same CA PEM text, and the admin client certificate (CN=adc-testenv-admin,
    /// O=system:masters) and key, for embedding into a kubeconfig (also written as admin.crt/.key).
    pub ca_cert_pem: String,
    pub admin_cert_pem: String,
    pub admin_key_pem: String,
}

fn name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    if let Some(org) = organization {
        dn.push(DnType::OrganizationName, org);
    }
    dn
}

fn write(dir: &Path, file: &str, pem: &str) -> Result<PathBuf, Error> {
    let path = dir.join(file);
    std::fs::write(&path, pem).map_err(|source| Error::Io {
        what: format!("writing {}", path.display()),
        source,
    })?;
    Ok(path)
}

/// Generates the PKI into `dir`.
pub fn generate(dir: &Path) -> Result<Pki, Error> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.distinguished_name = name("adc-testenv-ca", None);
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut serving_params = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])?;
    serving_params.distinguished_name = name("kube-apiserver", None);
    serving_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving_params.signed_by(&serving_key, &ca)?;

    let mut admin_params = CertificateParams::new(Vec::<String>::new())?;
    admin_params.distinguished_name = name("adc-testenv-admin", Some("system:masters"));
    admin_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin_params.signed_by(&admin_key, &ca)?;

    let sa_key = KeyPair::generate()?;
    write(dir, "admin.crt", &admin_cert.pem())?;
    write(dir, "admin.key", &admin_key.serialize_pem())?;

    Ok(Pki {
        ca_cert: write(dir, "ca.crt", &ca.pem())?,
        serving_cert: write(dir, "apiserver.crt", &serving_cert.pem())?,
        serving_key: write(dir, "apiserver.key", &serving_key.serialize_pem())?,
        sa_key: write(dir, "sa.key", &sa_key.serialize_pem())?,
        sa_pub: write(dir, "sa.pub", &sa_key.public_key_pem())?,
        ca_cert_pem: ca.pem(),
        admin_cert_pem: admin_cert.pem(),
        admin_key_pem: admin_key.serialize_pem(),
    })
}
