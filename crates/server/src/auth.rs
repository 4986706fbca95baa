//! API keys and roles. A key is 256 random bits shown once; only its SHA-256 is stored, so a
//! leaked database does not leak keys. A key acts for one user; a user has a role per team.

use std::fmt;
use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::AppState;
use crate::catalog::{self, User};
use crate::error::ApiError;

/// Every key starts with this, so a leaked key is recognisable in logs and by secret scanners.
pub const KEY_PREFIX: &str = "fck_";

/// A new random key and the digest to store.
pub fn new_key() -> (String, Vec<u8>) {
    new_token(KEY_PREFIX)
}

/// 256 random bits behind `prefix`, and the digest to store: API keys and runner tokens alike.
pub fn new_token(prefix: &str) -> (String, Vec<u8>) {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).expect("the OS random source is available");
    let token = format!("{prefix}{}", secret.iter().map(|byte| format!("{byte:02x}")).collect::<String>());
    let digest = key_digest(&token);
    (token, digest)
}

pub fn key_digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// HMAC-SHA256 (RFC 2104) of `message` under `key`, in lowercase hex: how alert deliveries are
/// signed, so that a receiver can tell them from anyone else's requests.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.map(|k| k ^ byte);
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    outer.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// A role in a team, from most to least powerful.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Owner,
    Admin,
    Billing,
    Editor,
    Viewer,
}

impl Role {
    pub const ALL: [Role; 5] = [Role::Owner, Role::Admin, Role::Billing, Role::Editor, Role::Viewer];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Billing => "billing",
            Role::Editor => "editor",
            Role::Viewer => "viewer",
        }
    }

    /// What this role may do.
    pub fn allows(self, action: Action) -> bool {
        match action {
            Action::Read => true,
            Action::Build => matches!(self, Role::Owner | Role::Admin | Role::Editor),
            Action::Bill => matches!(self, Role::Owner | Role::Admin | Role::Billing),
            Action::ManageMembers | Action::ManageRunners => matches!(self, Role::Owner | Role::Admin),
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(text: &str) -> Result<Role, String> {
        Role::ALL.into_iter().find(|role| role.as_str() == text).ok_or_else(|| format!("unknown role `{text}` (expected owner, admin, billing, editor or viewer)"))
    }
}

/// What a request wants to do in a team.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// See flows, runs, usage, invoices.
    Read,
    /// Create flows, snapshots and deployments; start and cancel runs.
    Build,
    /// Change billing settings and buy credits.
    Bill,
    /// Add, change and remove members.
    ManageMembers,
    /// Register and deregister private runners (they run the team's flows on its machines).
    ManageRunners,
}

impl Action {
    pub fn describe(self) -> &'static str {
        match self {
            Action::Read => "read this team",
            Action::Build => "change flows, deployments or runs (owner, admin or editor)",
            Action::Bill => "change billing or buy credits (owner, admin or billing)",
            Action::ManageMembers => "manage members (owner or admin)",
            Action::ManageRunners => "register or remove private runners (owner or admin)",
        }
    }
}

/// The user behind a request's API key.
#[derive(Clone, Debug)]
pub struct Caller {
    pub user: User,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, ApiError> {
        let header = parts.headers.get(axum::http::header::AUTHORIZATION).and_then(|value| value.to_str().ok());
        let token = bearer_token(header).filter(|token| token.starts_with(KEY_PREFIX)).ok_or(ApiError::Unauthenticated)?;
        let digest = key_digest(token);
        if let Some(user) = state.keys.get(&digest) {
            return Ok(Caller { user });
        }
        let lookup = digest.clone();
        let user = state.catalog.call(move |connection| catalog::user_by_key(connection, &lookup)).await?.ok_or(ApiError::Unauthenticated)?;
        state.keys.insert(digest, user.clone());
        Ok(Caller { user })
    }
}

/// The token of an `Authorization: Bearer <token>` header; the scheme's case does not matter
/// (RFC 9110).
pub fn bearer_token(header: Option<&str>) -> Option<&str> {
    let (scheme, token) = header?.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

impl Caller {
    pub fn require_operator(&self) -> Result<(), ApiError> {
        if self.user.is_operator { Ok(()) } else { Err(ApiError::Forbidden("only a platform operator may do this".into())) }
    }

    /// The caller's effective role in `team`, checked against `action`. Operators act as owners
    /// everywhere; on plans without RBAC every member is an admin. A caller who is not a member
    /// gets "not found", so team names cannot be probed.
    pub async fn authorize(&self, state: &AppState, team: &str, action: Action) -> Result<Role, ApiError> {
        let info = state.ledger.team(team).await?;
        if self.user.is_operator {
            return Ok(Role::Owner);
        }
        let member = (team.to_owned(), self.user.id.clone());
        let role = match state.roles.get(&member) {
            Some(role) => role,
            None => {
                let (team_name, user_id) = member.clone();
                let role = state.catalog.call(move |connection| catalog::role_of(connection, &team_name, &user_id)).await?.ok_or_else(|| ApiError::NotFound(format!("team {team}")))?;
                state.roles.insert(member, role);
                role
            }
        };
        let rbac = state.rules.plans.get(info.plan).rbac;
        let effective = if rbac || role == Role::Owner { role } else { Role::Admin };
        if effective.allows(action) {
            Ok(effective)
        } else {
            Err(ApiError::Forbidden(format!("your role in team {team} is {effective}; it cannot {}", action.describe())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_role_matrix() {
        use Action::*;
        let table = [
            (Role::Owner, [true, true, true, true, true]),
            (Role::Admin, [true, true, true, true, true]),
            (Role::Billing, [true, false, true, false, false]),
            (Role::Editor, [true, true, false, false, false]),
            (Role::Viewer, [true, false, false, false, false]),
        ];
        for (role, allowed) in table {
            for (action, expected) in [Read, Build, Bill, ManageMembers, ManageRunners].into_iter().zip(allowed) {
                assert_eq!(role.allows(action), expected, "{role} {action:?}");
            }
        }
    }

    #[test]
    fn hmac_matches_the_rfc_4231_test_vectors() {
        // Test cases 2 (a short key) and 6 (a key longer than a block).
        assert_eq!(hmac_sha256_hex(b"Jefe", b"what do ya want for nothing?"), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert_eq!(hmac_sha256_hex(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First"), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
    }

    #[test]
    fn keys_are_random_and_stored_as_digests() {
        let (first, digest) = new_key();
        let (second, _) = new_key();
        assert_ne!(first, second);
        assert!(first.starts_with(KEY_PREFIX) && first.len() == KEY_PREFIX.len() + 64);
        assert_eq!(digest, key_digest(&first));
        assert_eq!(digest.len(), 32);
    }
}
