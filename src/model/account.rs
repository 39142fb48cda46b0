//! Portal accounts, API tokens and login throttling. An account is a Docklet user: local
//! (Argon2id hash kept in etcd) or PAM (the system checks the password; the account records
//! the group and status). Its group carries the quota and decides whether it administers.
//! Tokens are random secrets of which only a SHA-256 digest is stored.

use std::collections::HashMap;

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AccountStatus {
    /// Registered, waiting for an administrator: may log in, may not create anything.
    Applying,
    Normal,
    /// May not log in; existing tokens stop working.
    Locked,
}

impl AccountStatus {
    /// Its name in the API: `applying`, `normal`, `locked`.
    pub fn as_str(self) -> &'static str {
        match self {
            AccountStatus::Applying => "applying",
            AccountStatus::Normal => "normal",
            AccountStatus::Locked => "locked",
        }
    }
}

impl std::str::FromStr for AccountStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "applying" => Ok(AccountStatus::Applying),
            "normal" => Ok(AccountStatus::Normal),
            "locked" => Ok(AccountStatus::Locked),
            other => Err(format!(
                "unknown status {other:?} (expected applying, normal or locked)"
            )),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// Docklet's own password (Argon2id).
    Local,
    /// The host's PAM service `docklet` checks the password.
    Pam,
}

/// Stored at `users/<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StoredAccount")]
pub struct Account {
    pub name: String,
    pub group: String,
    pub status: AccountStatus,
    pub auth: AuthMethod,
    /// Argon2id PHC string; only for local accounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
    /// Unix seconds.
    #[serde(default)]
    pub created_at: u64,
}

/// An account as stored by any version: records written before groups existed carry a
/// `role` instead of a group, status and method (only local accounts existed then).
#[derive(Deserialize)]
struct StoredAccount {
    name: String,
    #[serde(default)]
    group: Option<String>,
    #[serde(default)]
    role: Option<String>,
    #[serde(default)]
    status: Option<AccountStatus>,
    #[serde(default)]
    auth: Option<AuthMethod>,
    #[serde(default)]
    password_hash: Option<String>,
    #[serde(default)]
    created_at: u64,
}

impl From<StoredAccount> for Account {
    fn from(stored: StoredAccount) -> Account {
        let group = stored.group.unwrap_or_else(|| {
            match stored.role.as_deref() {
                Some("admin") => "root",
                _ => crate::model::quota::DEFAULT_GROUP,
            }
            .to_owned()
        });
        Account {
            name: stored.name,
            group,
            status: stored.status.unwrap_or(AccountStatus::Normal),
            auth: stored.auth.unwrap_or(AuthMethod::Local),
            password_hash: stored.password_hash,
            created_at: stored.created_at,
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot hash password: {0}")]
pub struct HashError(String);

/// Hashes a password with Argon2id and a random salt.
pub fn hash_password(password: &str) -> Result<String, HashError> {
    Argon2::default()
        .hash_password(password.as_bytes())
        .map(|hash| hash.to_string())
        .map_err(|e| HashError(e.to_string()))
}

impl Account {
    pub fn local(name: &str, group: &str, password: &str, now: u64) -> Result<Account, HashError> {
        Ok(Account {
            name: name.to_owned(),
            group: group.to_owned(),
            status: AccountStatus::Normal,
            auth: AuthMethod::Local,
            password_hash: Some(hash_password(password)?),
            created_at: now,
        })
    }

    /// The record a PAM user gets at the first successful login.
    pub fn pam(name: &str, group: &str, now: u64) -> Account {
        Account {
            name: name.to_owned(),
            group: group.to_owned(),
            status: AccountStatus::Normal,
            auth: AuthMethod::Pam,
            password_hash: None,
            created_at: now,
        }
    }

    /// True when `password` is this local account's password.
    pub fn verify_password(&self, password: &str) -> bool {
        let Some(stored) = &self.password_hash else {
            return false;
        };
        match PasswordHash::new(stored) {
            Ok(parsed) => Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok(),
            Err(_) => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccountError {
    #[error("user name {0:?} is invalid: {1}")]
    InvalidName(String, &'static str),
    #[error("the password is too short: at least {MIN_PASSWORD} characters")]
    ShortPassword,
    #[error("the password is too long: at most {MAX_PASSWORD} bytes")]
    LongPassword,
}

pub const MIN_PASSWORD: usize = 8;
/// Argon2 takes longer with longer input: a bound keeps a login request cheap.
pub const MAX_PASSWORD: usize = 1024;
pub const MAX_NAME: usize = 16;

/// Docklet user names: a lower-case letter, then lower-case letters and digits, at most 16.
/// No dash, so a vnode id `<user>-<cluster>-<index>` names one user and one cluster only;
/// system accounts with other names cannot use Docklet (and are told so at login).
pub fn validate_account_name(name: &str) -> Result<(), AccountError> {
    let bad = |reason| Err(AccountError::InvalidName(name.to_owned(), reason));
    if name.is_empty() || name.len() > MAX_NAME {
        return bad("must be 1 to 16 characters");
    }
    let mut bytes = name.bytes();
    if !bytes.next().is_some_and(|b| b.is_ascii_lowercase()) {
        return bad("must start with a lower-case letter a-z");
    }
    if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit()) {
        return bad("may only contain a-z and 0-9");
    }
    Ok(())
}

pub fn validate_password(password: &str) -> Result<(), AccountError> {
    if password.chars().count() < MIN_PASSWORD {
        return Err(AccountError::ShortPassword);
    }
    if password.len() > MAX_PASSWORD {
        return Err(AccountError::LongPassword);
    }
    Ok(())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TokenKind {
    /// Made by a login; ends at logout, after `session_lifetime`, or unused for `session_idle`.
    Session,
    /// Made by the user for scripts; lives until revoked.
    Api,
    /// A workspace cookie: made on a user's workspace host from a one-time grant of a
    /// login; opens that user's workspaces and nothing else, and ends with the login.
    Workspace,
}

/// `last_used_at` is written at most this often per token, not on every request.
pub const LAST_USE_PRECISION_SECS: u64 = 60;
/// Every token starts with this, so secret scanners and people recognise one.
pub const TOKEN_PREFIX: &str = "dkt_";

/// Stored at `tokens/<digest>`, where digest is [`token_digest`] of the secret: the secret
/// itself is never stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TokenRecord {
    /// Public handle (the digest's first 12 hex digits), for listing and revoking.
    pub id: String,
    pub user: String,
    pub kind: TokenKind,
    /// What the user called it (API tokens) or the client's address (sessions).
    pub name: String,
    pub created_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// The id of the login (or API token) a workspace cookie was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

impl TokenRecord {
    pub fn expired(&self, now: u64) -> bool {
        self.expires_at.is_some_and(|at| now >= at)
    }

    /// Whether a login session has gone unused for `idle_secs` (its last use is recorded
    /// to within [`LAST_USE_PRECISION_SECS`]); API tokens do not idle out.
    pub fn idle_too_long(&self, now: u64, idle_secs: u64) -> bool {
        matches!(self.kind, TokenKind::Session | TokenKind::Workspace)
            && now >= self.last_used_at.unwrap_or(self.created_at) + idle_secs
    }

    /// Whether revoking the token `id` ends this one: it is that token, or a workspace
    /// cookie made from it.
    pub fn ends_with(&self, id: &str) -> bool {
        self.id == id || self.parent.as_deref() == Some(id)
    }

    /// Whether a request at `now` should record its use.
    pub fn use_is_news(&self, now: u64) -> bool {
        self.last_used_at
            .is_none_or(|at| now >= at + LAST_USE_PRECISION_SECS)
    }
}

/// The hex SHA-256 of a token secret: its key in etcd. A fast hash suffices, unlike for
/// passwords: the secret has 190 bits of entropy.
pub fn token_digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares two secrets in time independent of where they differ.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub fn token_id(digest: &str) -> String {
    digest[..12].to_owned()
}

/// Whether `text` looks like a token at all (cheap check before any etcd read).
pub fn plausible_token(text: &str) -> bool {
    text.len() == TOKEN_PREFIX.len() + 32
        && text.starts_with(TOKEN_PREFIX)
        && text[TOKEN_PREFIX.len()..]
            .bytes()
            .all(|b| b.is_ascii_alphanumeric())
}

/// Failed-login bookkeeping for one key (an account or a source address).
#[derive(Debug, Clone, Copy, Default)]
struct Failures {
    count: u32,
    blocked_until: u64,
    last_failure: u64,
}

/// Login throttling, counted per (account, client address) and per client address, so that
/// failures from one address never lock an account out for its owner at another. After
/// `free` failures in a row for a pair (or `free_per_source` from one address), each further
/// failure blocks that key for twice as long as the last, from [`Throttle::FIRST_BLOCK_SECS`]
/// up to an hour. An attempt is *reserved* (counted as a failure) before its password is
/// checked, so a burst of concurrent guesses is refused before any of them costs a hash; a
/// success gives its reservation back and clears the pair. A key without failures for
/// [`Throttle::RESET_SECS`] starts afresh (so typos on a shared address do not add up for
/// ever, while a success cannot reset an address's count).
#[derive(Debug)]
pub struct Throttle {
    free: u32,
    free_per_source: u32,
    pairs: HashMap<(String, String), Failures>,
    sources: HashMap<String, Failures>,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle::new(5, 20)
    }
}

impl Failures {
    fn left(&self, now: u64) -> u64 {
        self.blocked_until.saturating_sub(now)
    }

    fn bump(&mut self, free: u32, now: u64) {
        if now >= self.last_failure + Throttle::RESET_SECS && now >= self.blocked_until {
            self.count = 0;
        }
        self.last_failure = now;
        self.count += 1;
        if self.count > free {
            let doublings = (self.count - free - 1).min(16);
            let block = (Throttle::FIRST_BLOCK_SECS << doublings).min(Throttle::MAX_BLOCK_SECS);
            self.blocked_until = now + block;
        }
    }

    /// Takes back one reserved failure (the attempt succeeded): a count back within `free`
    /// warrants no block.
    fn give_back(&mut self, free: u32) {
        self.count = self.count.saturating_sub(1);
        if self.count <= free {
            self.blocked_until = 0;
        }
    }
}

impl Throttle {
    pub const FIRST_BLOCK_SECS: u64 = 30;
    pub const MAX_BLOCK_SECS: u64 = 3600;
    /// Failures this long ago no longer count.
    pub const RESET_SECS: u64 = 15 * 60;
    /// Entries are forgotten this long after their last block ended.
    const FORGET_SECS: u64 = 24 * 3600;
    /// Above this many entries, old ones are forgotten (an attacker with many names and
    /// addresses cannot make the master hold more).
    const MAX_ENTRIES: usize = 100_000;

    pub fn new(free: u32, free_per_source: u32) -> Throttle {
        Throttle {
            free,
            free_per_source,
            pairs: HashMap::new(),
            sources: HashMap::new(),
        }
    }

    fn pair(user: &str, source: &str) -> (String, String) {
        (user.to_owned(), source.to_owned())
    }

    /// Seconds the caller must still wait before trying `user` from `source` again; 0: go.
    pub fn wait(&self, user: &str, source: &str, now: u64) -> u64 {
        let pair = self.pairs.get(&Self::pair(user, source));
        let source = self.sources.get(source);
        pair.map_or(0, |f| f.left(now))
            .max(source.map_or(0, |f| f.left(now)))
    }

    /// Reserves an attempt at `user` from `source`: `Err(seconds to wait)` while blocked,
    /// else the attempt counts as a failure until [`Throttle::succeeded`] gives it back.
    pub fn reserve(&mut self, user: &str, source: &str, now: u64) -> Result<(), u64> {
        match self.wait(user, source, now) {
            0 => {
                self.failed(user, source, now);
                Ok(())
            }
            wait => Err(wait),
        }
    }

    /// Counts a failure (the reserved attempts already did).
    pub fn failed(&mut self, user: &str, source: &str, now: u64) {
        self.pairs
            .entry(Self::pair(user, source))
            .or_default()
            .bump(self.free, now);
        self.sources
            .entry(source.to_owned())
            .or_default()
            .bump(self.free_per_source, now);
        if self.pairs.len() + self.sources.len() > Self::MAX_ENTRIES {
            self.forget_old(now);
        }
    }

    /// A reserved attempt was not decided (the check could not run): its reservation goes
    /// back.
    pub fn release(&mut self, user: &str, source: &str) {
        if let Some(f) = self.pairs.get_mut(&Self::pair(user, source)) {
            f.give_back(self.free);
        }
        if let Some(f) = self.sources.get_mut(source) {
            f.give_back(self.free_per_source);
        }
    }

    /// A reserved attempt succeeded: the pair starts afresh, the address gets its
    /// reservation back (its other failures still count).
    pub fn succeeded(&mut self, user: &str, source: &str) {
        self.pairs.remove(&Self::pair(user, source));
        if let Some(f) = self.sources.get_mut(source) {
            f.give_back(self.free_per_source);
        }
    }

    fn forget_old(&mut self, now: u64) {
        let keep = |f: &Failures| f.blocked_until + Self::FORGET_SECS > now && f.count > 0;
        self.pairs.retain(|_, f| keep(f));
        self.sources.retain(|_, f| keep(f));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("", "x"));
    }

    #[test]
    fn local_account_verifies_only_its_password() {
        let account = Account::local("root", "root", "correct horse", 1).unwrap();
        let hash = account.password_hash.as_deref().unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(!hash.contains("correct horse"));
        assert!(account.verify_password("correct horse"));
        assert!(!account.verify_password("correct horsE"));
        assert!(!account.verify_password(""));
    }

    #[test]
    fn same_password_gets_different_salts() {
        assert_ne!(hash_password("pw").unwrap(), hash_password("pw").unwrap());
    }

    #[test]
    fn account_without_hash_or_with_garbage_never_verifies() {
        let mut account = Account::pam("alice", "foundation", 1);
        assert!(!account.verify_password("anything"));
        account.password_hash = Some("not-a-phc-string".into());
        assert!(!account.verify_password("not-a-phc-string"));
    }

    #[test]
    fn records_from_before_groups_still_read() {
        let old: Account =
            serde_json::from_str(r#"{"name":"root","role":"admin","password_hash":"$argon2id$x"}"#)
                .unwrap();
        assert_eq!(old.group, "root");
        assert_eq!(old.auth, AuthMethod::Local);
        assert_eq!(old.status, AccountStatus::Normal);
        let new = Account::pam("alice", "primary", 5);
        let text = serde_json::to_string(&new).unwrap();
        assert_eq!(serde_json::from_str::<Account>(&text).unwrap(), new);
    }

    #[test]
    fn account_names_fit_vnode_ids() {
        for good in ["alice", "a", "bob2", "abcdefghijklmnop"] {
            assert!(validate_account_name(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Alice",
            "2bob",
            "a-b",
            "a_b",
            "a.b",
            "abcdefghijklmnopq",
            "../x",
            "a b",
        ] {
            assert!(validate_account_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn passwords_have_bounds() {
        assert_eq!(validate_password("short"), Err(AccountError::ShortPassword));
        assert!(validate_password("long enough").is_ok());
        assert_eq!(
            validate_password(&"x".repeat(2000)),
            Err(AccountError::LongPassword)
        );
    }

    #[test]
    fn token_digests_are_stable_hex_and_ids_their_prefix() {
        let d = token_digest("dkt_abc");
        assert_eq!(d.len(), 64);
        assert_eq!(d, token_digest("dkt_abc"));
        assert_ne!(d, token_digest("dkt_abd"));
        assert_eq!(token_id(&d), &d[..12]);
        assert!(plausible_token(&format!("dkt_{}", "a1".repeat(16))));
        assert!(!plausible_token("dkt_short"));
        assert!(!plausible_token(&format!("xxx_{}", "a1".repeat(16))));
        assert!(!plausible_token(&format!("dkt_{}", "a/".repeat(16))));
    }

    /// A login session of alice made at 100.
    fn session_made_at_100(expires_at: Option<u64>) -> TokenRecord {
        TokenRecord {
            id: "x".into(),
            user: "alice".into(),
            kind: TokenKind::Session,
            name: "".into(),
            created_at: 100,
            last_used_at: None,
            expires_at,
            parent: None,
        }
    }

    #[test]
    fn revoking_a_login_ends_the_workspace_cookies_made_from_it() {
        let login = session_made_at_100(None);
        let mut cookie = session_made_at_100(None);
        cookie.id = "w".into();
        cookie.kind = TokenKind::Workspace;
        cookie.parent = Some("x".into());
        assert!(login.ends_with("x") && cookie.ends_with("x"));
        assert!(cookie.ends_with("w") && !login.ends_with("w"));
        assert!(
            cookie.idle_too_long(160, 60),
            "workspace cookies idle out too"
        );
    }

    #[test]
    fn tokens_expire_and_record_use_sparingly() {
        let mut t = session_made_at_100(Some(200));
        assert!(!t.expired(199));
        assert!(t.expired(200));
        assert!(t.use_is_news(150));
        t.last_used_at = Some(150);
        assert!(!t.use_is_news(150 + LAST_USE_PRECISION_SECS - 1));
        assert!(t.use_is_news(150 + LAST_USE_PRECISION_SECS));
    }

    #[test]
    fn sessions_idle_out_and_api_tokens_do_not() {
        let mut t = session_made_at_100(None);
        assert!(!t.idle_too_long(159, 60));
        assert!(t.idle_too_long(160, 60));
        t.last_used_at = Some(1000);
        assert!(!t.idle_too_long(1059, 60));
        assert!(t.idle_too_long(1060, 60));
        t.kind = TokenKind::Api;
        assert!(!t.idle_too_long(1_000_000, 60));
    }

    #[test]
    fn throttle_blocks_a_pair_after_free_failures_and_doubles() {
        let mut t = Throttle::new(3, 100);
        for _ in 0..3 {
            assert_eq!(t.wait("alice", "10.0.0.1", 1000), 0);
            t.failed("alice", "10.0.0.1", 1000);
        }
        assert_eq!(t.wait("alice", "10.0.0.1", 1000), 0, "three are free");
        t.failed("alice", "10.0.0.1", 1000);
        assert_eq!(
            t.wait("alice", "10.0.0.1", 1000),
            Throttle::FIRST_BLOCK_SECS
        );
        // Failures from one address do not lock the account out at another.
        assert_eq!(t.wait("alice", "10.0.0.2", 1000), 0);
        assert_eq!(t.wait("bob", "10.0.0.1", 1000), 0, "others are not blocked");
        t.failed("alice", "10.0.0.1", 1000);
        assert_eq!(
            t.wait("alice", "10.0.0.1", 1000),
            2 * Throttle::FIRST_BLOCK_SECS
        );
        for _ in 0..20 {
            t.failed("alice", "10.0.0.1", 1000);
        }
        assert_eq!(t.wait("alice", "10.0.0.1", 1000), Throttle::MAX_BLOCK_SECS);
        t.succeeded("alice", "10.0.0.1");
        assert_eq!(t.wait("alice", "10.0.0.1", 1000), 0);
    }

    #[test]
    fn attempts_are_reserved_before_the_check() {
        let mut t = Throttle::new(5, 20);
        // A burst: only the free attempts, and the one that makes the block, get through to
        // a password check.
        let admitted = (0..500)
            .filter(|_| t.reserve("root", "10.0.0.1", 1000).is_ok())
            .count();
        assert_eq!(admitted, 6);
        assert!(t.reserve("root", "10.0.0.1", 1000).is_err());
        assert!(
            t.reserve("root", "10.0.0.7", 1000).is_ok(),
            "another address"
        );
        // A success gives its reservation back and clears its pair, not the address.
        let mut t = Throttle::new(5, 3);
        for user in ["a", "b", "c"] {
            t.reserve(user, "10.0.0.1", 1000).unwrap();
        }
        t.reserve("d", "10.0.0.1", 1000).unwrap();
        t.succeeded("d", "10.0.0.1");
        assert_eq!(t.wait("e", "10.0.0.1", 1000), 0, "three failures are free");
        t.reserve("e", "10.0.0.1", 1000).unwrap();
        assert_eq!(t.wait("f", "10.0.0.1", 1000), Throttle::FIRST_BLOCK_SECS);
    }

    #[test]
    fn old_failures_stop_counting() {
        let mut t = Throttle::new(2, 2);
        t.failed("alice", "a", 100);
        t.failed("alice", "a", 100);
        let later = 100 + Throttle::RESET_SECS;
        t.failed("alice", "a", later);
        assert_eq!(
            t.wait("alice", "a", later),
            0,
            "the first two no longer count"
        );
        t.failed("alice", "a", later);
        t.failed("alice", "a", later);
        assert_eq!(t.wait("alice", "a", later), Throttle::FIRST_BLOCK_SECS);
    }

    #[test]
    fn throttle_blocks_a_source_trying_many_accounts() {
        let mut t = Throttle::new(5, 4);
        for i in 0..5 {
            t.failed(&format!("user{i}"), "10.0.0.9", 50);
        }
        assert_eq!(
            t.wait("someone", "10.0.0.9", 50),
            Throttle::FIRST_BLOCK_SECS
        );
        assert_eq!(t.wait("someone", "10.0.0.8", 50), 0);
        assert_eq!(
            t.wait("someone", "10.0.0.9", 50 + Throttle::FIRST_BLOCK_SECS),
            0
        );
    }
}
