//! Credentials: argon2id password hashes, opaque session tokens (stored as SHA-256), and
//! application JWTs (HS256, RS256 or EdDSA, algorithms pinned by configuration, `exp` required).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use lanes_protocol::http::Session;
use lanes_protocol::{ErrorCode, UnixMillis, UserId, limits};
use lanes_store::{Store, StoredUser};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::config::AuthConfig;
use crate::error::ApiError;
use crate::{blocking, now_millis};

/// Session tokens start with this, so they are never mistaken for JWTs.
const SESSION_TOKEN_PREFIX: &str = "lt_";
/// Allowed clock skew for JWT `exp`/`nbf`, in seconds.
const JWT_LEEWAY_SECS: u64 = 30;
/// JWT users known to exist, remembered so a reconnect needs no store read (~100 bytes each).
const KNOWN_USERS_MAX: usize = 100_000;
/// Longest token accepted at all; anything longer is refused before any parsing or hashing.
const TOKEN_BYTES_MAX: usize = 8 * 1024;

/// Why `AuthConfig` cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid auth configuration: {0}")]
pub struct AuthConfigError(String);

struct JwtVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    /// Expiry, seconds since the epoch (required by the validation).
    exp: i64,
}

/// Checks tokens and passwords.
pub(crate) struct Authenticator {
    store: Arc<dyn Store>,
    /// Argon2 runs at most this many at once (one per core): each takes ~19 MiB and tens of
    /// milliseconds, and unauthenticated logins must not exhaust memory or the blocking pool.
    hashing: tokio::sync::Semaphore,
    /// JWT users already created in the store (users are never deleted).
    known_users: Mutex<HashSet<UserId>>,
    password_enabled: bool,
    session_ttl_millis: i64,
    jwt: Vec<JwtVerifier>,
}

fn unauthorized(message: &str) -> ApiError {
    ApiError::new(ErrorCode::Unauthorized, message)
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Authenticator {
    pub(crate) fn new(
        store: Arc<dyn Store>,
        config: &AuthConfig,
    ) -> Result<Authenticator, AuthConfigError> {
        let mut jwt = Vec::new();
        let validation = |algorithm| {
            let mut validation = Validation::new(algorithm);
            validation.set_required_spec_claims(&["exp", "sub"]);
            validation.leeway = JWT_LEEWAY_SECS;
            validation.validate_nbf = true;
            match &config.jwt_audience {
                Some(audience) => validation.set_audience(&[audience]),
                None => validation.validate_aud = false,
            }
            if let Some(issuer) = &config.jwt_issuer {
                validation.set_issuer(&[issuer]);
            }
            validation
        };
        if let Some(secret) = &config.jwt_hs256_secret {
            if secret.len() < 32 {
                return Err(AuthConfigError(
                    "jwt_hs256_secret must be at least 32 bytes".into(),
                ));
            }
            jwt.push(JwtVerifier {
                algorithm: Algorithm::HS256,
                key: DecodingKey::from_secret(secret.as_bytes()),
                validation: validation(Algorithm::HS256),
            });
        }
        if let Some(pem) = &config.jwt_public_key_pem {
            let (algorithm, key) = match config.jwt_algorithm.as_deref() {
                Some("RS256") => (Algorithm::RS256, DecodingKey::from_rsa_pem(pem.as_bytes())),
                Some("EdDSA") => (Algorithm::EdDSA, DecodingKey::from_ed_pem(pem.as_bytes())),
                other => {
                    return Err(AuthConfigError(format!(
                        "jwt_algorithm must be RS256 or EdDSA with jwt_public_key_pem, not {other:?}"
                    )));
                }
            };
            let key = key.map_err(|err| AuthConfigError(format!("jwt_public_key_pem: {err}")))?;
            jwt.push(JwtVerifier {
                algorithm,
                key,
                validation: validation(algorithm),
            });
        }
        if !config.password && jwt.is_empty() {
            return Err(AuthConfigError(
                "no authentication mode enabled: enable password or configure a JWT key".into(),
            ));
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Ok(Authenticator {
            store,
            hashing: tokio::sync::Semaphore::new(cores),
            known_users: Mutex::new(HashSet::new()),
            password_enabled: config.password,
            session_ttl_millis: i64::try_from(config.session_ttl_secs.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            jwt,
        })
    }

    /// The user a session token or JWT belongs to.
    pub(crate) async fn authenticate(&self, token: &str) -> Result<UserId, ApiError> {
        Ok(self.authenticate_until(token).await?.0)
    }

    /// The user a session token or JWT belongs to, and when the token expires.
    pub(crate) async fn authenticate_until(
        &self,
        token: &str,
    ) -> Result<(UserId, UnixMillis), ApiError> {
        if token.is_empty() || token.len() > TOKEN_BYTES_MAX {
            return Err(unauthorized("invalid token"));
        }
        if token.starts_with(SESSION_TOKEN_PREFIX) {
            let hash = token_hash(token);
            let now = now_millis();
            let user = blocking(&self.store, move |store| store.session_user(&hash, now)).await?;
            return user.ok_or_else(|| unauthorized("token is invalid, expired or revoked"));
        }
        let (user_id, expires_at) = self.verify_jwt(token)?;
        if self
            .known_users
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&user_id)
        {
            return Ok((user_id, expires_at));
        }
        let ensured = user_id.clone();
        let now = now_millis();
        let password_account = blocking(&self.store, move |store| {
            let has_password =
                |store: &dyn Store| Ok(store.user(&ensured)?.map(|u| u.password_hash.is_some()));
            match has_password(store)? {
                Some(has) => Ok(has),
                // Created now, unless a registration won the race: read what stands.
                None => {
                    store.ensure_user(&ensured, now)?;
                    Ok(has_password(store)?.unwrap_or(false))
                }
            }
        })
        .await?;
        // A password account and the application's user of the same id are never one account:
        // anyone may register an id before the application first mints a token for it.
        if password_account {
            return Err(unauthorized(
                "token sub names a password account, which signs in with its password",
            ));
        }
        let mut known = self
            .known_users
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if known.len() >= KNOWN_USERS_MAX {
            // Crude but bounded: forgetting costs one read per user on their next connect.
            known.clear();
        }
        known.insert(user_id.clone());
        Ok((user_id, expires_at))
    }

    fn verify_jwt(&self, token: &str) -> Result<(UserId, UnixMillis), ApiError> {
        if self.jwt.is_empty() {
            return Err(unauthorized("token is invalid, expired or revoked"));
        }
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| unauthorized("malformed token"))?;
        // Only configured algorithms are accepted: `alg: none` and key confusion are refused here.
        let verifier = self
            .jwt
            .iter()
            .find(|verifier| verifier.algorithm == header.alg)
            .ok_or_else(|| unauthorized("token algorithm not accepted"))?;
        let data = jsonwebtoken::decode::<Claims>(token, &verifier.key, &verifier.validation)
            .map_err(|err| {
                tracing::debug!("jwt refused: {err}");
                unauthorized("token is invalid or expired")
            })?;
        let user_id = UserId::parse(&data.claims.sub)
            .map_err(|err| unauthorized(&format!("token sub: {err}")))?;
        check_user_id(&user_id)
            .map_err(|err| unauthorized(&format!("token sub: {}", err.message)))?;
        let expires_at = UnixMillis(data.claims.exp.saturating_mul(1000));
        Ok((user_id, expires_at))
    }

    /// Checks a new password's length and hashes it (argon2id, bounded concurrency).
    pub(crate) async fn hash_new_password(&self, password: String) -> Result<String, ApiError> {
        if password.chars().count() < limits::PASSWORD_CHARS_MIN
            || password.len() > limits::PASSWORD_BYTES_MAX
        {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                format!(
                    "password must be {} to {} bytes",
                    limits::PASSWORD_CHARS_MIN,
                    limits::PASSWORD_BYTES_MAX
                ),
            ));
        }
        let _permit = self.hashing_permit().await?;
        tokio::task::spawn_blocking(move || hash_password(&password))
            .await
            .map_err(|_| ApiError::new(ErrorCode::Internal, "hashing failed"))?
    }

    /// `POST /v1/register`.
    pub(crate) async fn register(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Session, ApiError> {
        self.require_password_mode()?;
        let user_id = UserId::parse(username)
            .map_err(|err| ApiError::new(ErrorCode::InvalidField, format!("username: {err}")))?;
        check_user_id(&user_id)?;
        let password_hash = self.hash_new_password(password.to_owned()).await?;
        let user = StoredUser {
            user_id: user_id.clone(),
            password_hash: Some(password_hash),
        };
        let now = now_millis();
        let created = blocking(&self.store, move |store| store.create_user(&user, now)).await?;
        if !created {
            return Err(ApiError::new(ErrorCode::Conflict, "username is taken"));
        }
        self.new_session(user_id).await
    }

    /// `POST /v1/login`.
    pub(crate) async fn login(&self, username: &str, password: &str) -> Result<Session, ApiError> {
        self.require_password_mode()?;
        let wrong = || unauthorized("wrong username or password");
        let user_id = UserId::parse(username).map_err(|_| wrong())?;
        if password.len() > limits::PASSWORD_BYTES_MAX {
            return Err(wrong());
        }
        let lookup = user_id.clone();
        let user = blocking(&self.store, move |store| store.user(&lookup)).await?;
        let Some(hash) = user.and_then(|user| user.password_hash) else {
            return Err(wrong());
        };
        let password = password.to_owned();
        let _permit = self.hashing_permit().await?;
        let verified = tokio::task::spawn_blocking(move || verify_password(&password, &hash))
            .await
            .map_err(|_| ApiError::new(ErrorCode::Internal, "verification failed"))?;
        if !verified {
            return Err(wrong());
        }
        self.new_session(user_id).await
    }

    /// What identifies `token` among revocable credentials (`Hub::register_with_credential`):
    /// for session tokens, the first 8 bytes of their hash; 0 for JWTs, which cannot be revoked.
    pub(crate) fn credential(token: &str) -> u64 {
        if !token.starts_with(SESSION_TOKEN_PREFIX) {
            return 0;
        }
        let hash = token_hash(token);
        let mut prefix = [0u8; 8];
        prefix.copy_from_slice(&hash[..8]);
        u64::from_le_bytes(prefix).max(1)
    }

    /// `POST /v1/logout`: revokes a session token. JWTs cannot be revoked here: they expire.
    pub(crate) async fn logout(&self, token: &str) -> Result<(), ApiError> {
        if !token.starts_with(SESSION_TOKEN_PREFIX) {
            return Err(ApiError::new(
                ErrorCode::InvalidField,
                "only session tokens can be revoked; application JWTs expire by themselves",
            ));
        }
        let hash = token_hash(token);
        blocking(&self.store, move |store| store.revoke_session(&hash)).await?;
        Ok(())
    }

    async fn new_session(&self, user_id: UserId) -> Result<Session, ApiError> {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let token = format!(
            "{SESSION_TOKEN_PREFIX}{}",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
        );
        let hash = token_hash(&token);
        let now = now_millis();
        let expires_at = UnixMillis(now.0.saturating_add(self.session_ttl_millis));
        let session_user = user_id.clone();
        blocking(&self.store, move |store| {
            store.create_session(&hash, &session_user, expires_at, now)
        })
        .await?;
        Ok(Session {
            user_id,
            token,
            expires_at,
        })
    }

    async fn hashing_permit(&self) -> Result<tokio::sync::SemaphorePermit<'_>, ApiError> {
        self.hashing
            .acquire()
            .await
            .map_err(|_| ApiError::new(ErrorCode::ShuttingDown, "server is shutting down"))
    }

    fn require_password_mode(&self) -> Result<(), ApiError> {
        if self.password_enabled {
            Ok(())
        } else {
            Err(ApiError::new(
                ErrorCode::Forbidden,
                "password accounts are disabled on this server",
            ))
        }
    }
}

/// User ids starting with `@` are the server's (`@system`): no user may take one.
pub(crate) fn check_user_id(user_id: &UserId) -> Result<(), ApiError> {
    if user_id.as_str().starts_with('@') {
        return Err(ApiError::new(
            ErrorCode::InvalidField,
            "user ids starting with @ are reserved",
        ));
    }
    Ok(())
}

fn hash_password(password: &str) -> Result<String, ApiError> {
    let salt = SaltString::generate(&mut rand::rngs::OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| ApiError::new(ErrorCode::Internal, format!("hashing failed: {err}")))
}

fn verify_password(password: &str, hash: &str) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(err) => {
            tracing::error!("stored password hash is unreadable: {err}");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_hashes_verify_only_their_password() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &hash));
        assert!(!verify_password("wrong horse", &hash));
        assert!(!verify_password("correct horse", "not a hash"));
    }
}
