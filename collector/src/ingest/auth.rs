//! Who may report for which cluster. Every stream is authenticated when it opens,
//! by the agent's client certificate (TLS) or its bearer token, against
//! `[[grpc.agents]]`; its Hello may only name a cluster (and member) its grant
//! covers, and every report in it must be for that same cluster and a member the
//! grant covers (see [`super::Session`]), so an agent cannot write another
//! cluster's data or fake another member.
//!
//! ```text
//! stream opens ─> client certificate (SAN DNS names, CN) or `authorization: Bearer`
//!              ─> grant ─> Hello's cluster and member match its globs ─> session
//!              ─> every report: the same cluster, a member the grant matches
//! ```
//!
//! With `grpc.allow_plaintext` and no grants, every stream is accepted as it used
//! to be (anyone who reaches the port may write); the collector warns at start.

use sha2::{Digest as _, Sha256};
use tonic::{Request, Status};

use crate::config::{AgentGrant, GrpcConfig};
use crate::glob::glob;
use etcdmon_proto::v1::Identity;

/// The grants of `[[grpc.agents]]`, checked once per stream.
#[derive(Debug, Clone)]
pub struct AgentAuth {
    grants: Vec<Grant>,
}

#[derive(Debug, Clone)]
struct Grant {
    name: String,
    credential: Credential,
    clusters: Vec<String>,
    /// Empty: any member.
    members: Vec<String>,
}

#[derive(Debug, Clone)]
enum Credential {
    /// A DNS name or common name of the client certificate.
    Certificate(String),
    /// SHA-256 of the bearer token.
    Token([u8; 32]),
}

/// Who opened a stream.
#[derive(Debug, Clone)]
pub enum Principal {
    /// Nobody in particular: no grants are configured (`grpc.allow_plaintext`).
    Anyone,
    /// The grant at this index.
    Granted(usize),
}

impl AgentAuth {
    /// The grants of `cfg` (already validated).
    pub fn new(cfg: &GrpcConfig) -> Self {
        let grants = cfg
            .agents
            .iter()
            .filter_map(|g: &AgentGrant| {
                let credential = match (&g.certificate, &g.token_sha256) {
                    (Some(name), _) => Credential::Certificate(name.clone()),
                    (None, Some(hash)) => {
                        let mut digest = [0u8; 32];
                        hex::decode_to_slice(hash, &mut digest).ok()?;
                        Credential::Token(digest)
                    }
                    (None, None) => return None,
                };
                Some(Grant {
                    name: g.name.clone(),
                    credential,
                    clusters: g.clusters.clone(),
                    members: g.members.clone(),
                })
            })
            .collect();
        Self { grants }
    }

    /// Whether any grant is configured (else every stream is accepted).
    pub fn is_open(&self) -> bool {
        self.grants.is_empty()
    }

    /// Identifies the stream's sender by its client certificate or bearer token.
    pub fn authenticate<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        if self.grants.is_empty() {
            return Ok(Principal::Anyone);
        }
        let token = bearer_token(request)?;
        let names = request
            .peer_certs()
            .and_then(|chain| chain.first().map(|leaf| certificate_names(leaf.as_ref())))
            .unwrap_or_default();
        let digest: Option<[u8; 32]> = token.map(|t| Sha256::digest(t.as_bytes()).into());
        let found = self.grants.iter().position(|g| match &g.credential {
            Credential::Certificate(name) => names.iter().any(|n| n == name),
            Credential::Token(hash) => digest.as_ref() == Some(hash),
        });
        match found {
            Some(i) => Ok(Principal::Granted(i)),
            None if digest.is_some() => Err(Status::unauthenticated(
                "the bearer token is not one of grpc.agents",
            )),
            None if !names.is_empty() => Err(Status::unauthenticated(format!(
                "client certificate {names:?} is not one of grpc.agents"
            ))),
            None => Err(Status::unauthenticated(
                "no credentials: this collector needs a client certificate or a bearer token \
                 (upstream.tls.cert or upstream.token_file in the agent's config)",
            )),
        }
    }

    /// Whether `who` may report for the member `id` names (its cluster, and its
    /// name when the grant names members).
    pub fn authorize(&self, who: &Principal, id: &Identity) -> Result<(), Status> {
        let Principal::Granted(i) = who else {
            return Ok(());
        };
        let Some(grant) = self.grants.get(*i) else {
            return Err(Status::internal("unknown grant"));
        };
        let cluster = &id.cluster;
        if !grant.clusters.iter().any(|pattern| glob(pattern, cluster)) {
            return Err(Status::permission_denied(format!(
                "{:?} may not report for cluster {cluster:?} (it may for {:?})",
                grant.name, grant.clusters
            )));
        }
        if grant.members.is_empty() {
            return Ok(());
        }
        // By name only: an agent learns its member's name from etcd unless
        // configured, and its reports before that carry no name.
        let member = &id.member_name;
        if member.is_empty() {
            return Err(Status::permission_denied(format!(
                "{:?} names members, and this report names none: set identity.member_name \
                 in the agent's config",
                grant.name
            )));
        }
        if !grant.members.iter().any(|p| glob(p, member)) {
            return Err(Status::permission_denied(format!(
                "{:?} may not report for member {member:?} of {cluster:?} (it may for {:?})",
                grant.name, grant.members
            )));
        }
        Ok(())
    }

    /// The grant's name, for logs.
    pub fn name(&self, who: &Principal) -> &str {
        match who {
            Principal::Anyone => "anyone",
            Principal::Granted(i) => self.grants.get(*i).map_or("?", |g| g.name.as_str()),
        }
    }
}

/// The token of an `authorization: Bearer <token>` header, if any.
fn bearer_token<T>(request: &Request<T>) -> Result<Option<String>, Status> {
    let Some(value) = request.metadata().get("authorization") else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| Status::unauthenticated("the authorization header is not text"))?;
    // The scheme is case-insensitive (RFC 9110 section 11.1).
    match text.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
            Ok(Some(token.trim().to_owned()))
        }
        _ => Err(Status::unauthenticated(
            "the authorization header is not `Bearer <token>`",
        )),
    }
}

/// The DNS names (subject alternative names) and common names of a certificate.
fn certificate_names(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let mut names: Vec<String> = cert
        .subject()
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok().map(str::to_owned))
        .collect();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push((*dns).to_owned());
            }
        }
    }
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> AgentAuth {
        let cfg = GrpcConfig {
            agents: vec![AgentGrant {
                name: "lab agents".into(),
                certificate: None,
                token_sha256: Some(hex::encode(Sha256::digest(b"s3cret"))),
                clusters: vec!["lab-*".into()],
                members: vec!["m?".into()],
            }],
            ..GrpcConfig::default()
        };
        AgentAuth::new(&cfg)
    }

    #[test]
    fn a_token_grants_its_clusters_only() {
        let a = auth();
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", "bearer s3cret".parse().unwrap());
        let who = a.authenticate(&req).expect("the token is known");
        let id = |cluster: &str, member: &str| Identity {
            cluster: cluster.into(),
            member_name: member.into(),
            ..Default::default()
        };
        assert!(a.authorize(&who, &id("lab-1", "m1")).is_ok());
        let denied = a.authorize(&who, &id("prod", "m1")).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let denied = a.authorize(&who, &id("lab-1", "etcd-9")).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        assert!(denied.message().contains("member"), "{}", denied.message());

        let mut wrong = Request::new(());
        wrong
            .metadata_mut()
            .insert("authorization", "Bearer guess".parse().unwrap());
        assert_eq!(
            a.authenticate(&wrong).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let none = a.authenticate(&Request::new(())).unwrap_err();
        assert!(
            none.message().contains("no credentials"),
            "{}",
            none.message()
        );
    }
}
