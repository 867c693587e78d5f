//! Signed tokens: who a caller is, which rooms it may read and write, whether it is an admin,
//! and until when.
//!
//! Format: `rl1.<claims>.<mac>`, both parts base64url without padding; `claims` is JSON
//! ([`Claims`]) and `mac` is blake3's keyed hash, under the server's 32-byte secret, of
//! `rl1.<claims>`. blake3's keyed mode is a MAC by design (a PRF keyed with 256 bits), it is
//! already how roomlog hashes content, and it is fast enough to verify on every connection;
//! the comparison is constant-time (`blake3::Hash`'s `PartialEq`). After a rotation the
//! previous secret is still accepted until its grace period ends.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "rl1.";
/// Longest token accepted, before any decoding.
pub const TOKEN_LEN_MAX: usize = 4096;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Claims {
    /// The user: the author of the caller's messages.
    pub user: String,
    /// Room name patterns (`*` matches any run of characters) and whether each may be written.
    pub rooms: Vec<RoomGrant>,
    /// May use the admin endpoints and act on anyone's messages.
    #[serde(default)]
    pub admin: bool,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// The roomlog session the token is bound to: it stops working when that session ends,
    /// expires or is purged (a paid session keeps it working until `exp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<crate::event::SessionId>,
    /// File key prefixes it may read, and write (upload, copy to, delete) when `write`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<FileGrant>,
}

/// File keys starting with `prefix` may be read, and written when `write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileGrant {
    pub prefix: String,
    pub write: bool,
}

/// Rooms matching `pattern` may be read, and written when `write`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoomGrant {
    pub pattern: String,
    pub write: bool,
}

/// Why a token was refused. The edges answer 401 `unauthorized` with this text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed: {0}")]
    Malformed(&'static str),
    #[error("the token's signature does not match (tampered, or signed with a secret no longer accepted)")]
    BadSignature,
    #[error("the token expired")]
    Expired,
}

/// Whether `pattern` (with `*` wildcards) matches all of `name`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    // Iterative glob with one backtrack point: linear in practice, never exponential.
    let (mut pi, mut ni, mut star, mut mark) = (0, 0, None, 0);
    while ni < n.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = ni;
            pi += 1;
        } else if pi < p.len() && p[pi] == n[ni] {
            pi += 1;
            ni += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// The secrets tokens are signed with: the current one, and the previous one until a time.
#[derive(Clone)]
pub struct Secrets {
    current: [u8; 32],
    previous: Option<([u8; 32], u64)>,
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secrets { .. }")
    }
}

/// On disk: `<dir>/secret` (hex, mode 0600) and, after a rotation, `<dir>/secret.previous`
/// (hex, a space, the Unix ms until which it is accepted).
#[derive(Debug, Clone)]
pub struct SecretFiles {
    pub dir: PathBuf,
}

fn random_secret() -> [u8; 32] {
    let mut secret = [0u8; 32];
    secret[..16].copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    secret[16..].copy_from_slice(&uuid::Uuid::new_v4().into_bytes());
    *blake3::hash(&secret).as_bytes()
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    #[cfg(unix)]
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    options.mode(0o600);
    let mut file = options.open(&tmp)?;
    file.write_all(text.as_bytes())?;
    file.sync_all()?;
    // A secret lost in a power cut would void every token: its name is made durable too.
    crate::durable::rename(&tmp, path)
}

fn parse_hex(text: &str) -> Option<[u8; 32]> {
    let text = text.trim();
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

fn hex(bytes: &[u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SecretFiles {
    fn current_path(&self) -> PathBuf {
        self.dir.join("secret")
    }

    fn previous_path(&self) -> PathBuf {
        self.dir.join("secret.previous")
    }

    /// Loads the secrets, generating the current one (mode 0600) if there is none.
    pub fn load_or_create(&self) -> std::io::Result<Secrets> {
        crate::durable::create_dir_all(&self.dir)?;
        let current = match std::fs::read_to_string(self.current_path()) {
            Ok(text) => parse_hex(&text).ok_or_else(|| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} is not 64 hex digits", self.current_path().display()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let secret = random_secret();
                write_private(&self.current_path(), &hex(&secret))?;
                tracing::info!(file = %self.current_path().display(), "token secret generated");
                secret
            }
            Err(e) => return Err(e),
        };
        let previous = std::fs::read_to_string(self.previous_path()).ok().and_then(|text| {
            let (secret, until) = text.trim().split_once(' ')?;
            Some((parse_hex(secret)?, until.parse().ok()?))
        });
        Ok(Secrets { current, previous })
    }

    /// A short-lived admin token for the operator's own commands (`roomlog stats`, `janitor
    /// run`, ...), signed with the secret in the data folder they can read; `None` when there
    /// is no secret yet (no server ever started) or it cannot be read.
    pub fn operator_token(&self, now_ms: u64, ttl: std::time::Duration) -> Option<String> {
        if !self.current_path().exists() {
            return None;
        }
        let secrets = self.load_or_create().ok()?;
        let exp = (now_ms / 1000).saturating_add(ttl.as_secs());
        let rooms = vec![RoomGrant { pattern: "*".into(), write: true }];
        Some(secrets.issue(&Claims {
            user: "operator".into(),
            rooms,
            admin: true,
            exp,
            session: None,
            files: Vec::new(),
        }))
    }

    /// The secret files as they are (`secret`, and `secret.previous` during a rotation's
    /// grace), for a backup to carry: a restore without them voids every token.
    pub fn export(&self) -> std::io::Result<Vec<(String, Vec<u8>)>> {
        let mut files = Vec::new();
        for path in [self.current_path(), self.previous_path()] {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    files.push((path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), bytes))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(files)
    }

    /// Installs secret files a backup carried (mode 0600), unless a secret is already there
    /// (it is kept: tokens signed with it stay valid); returns whether they were installed.
    pub fn install(&self, files: &[(String, Vec<u8>)]) -> std::io::Result<bool> {
        if files.is_empty() || self.current_path().exists() {
            return Ok(false);
        }
        crate::durable::create_dir_all(&self.dir)?;
        for (name, bytes) in files {
            let path = match name.as_str() {
                "secret" => self.current_path(),
                "secret.previous" => self.previous_path(),
                _ => continue,
            };
            let text = std::str::from_utf8(bytes).map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("the archived {name} is not text"))
            })?;
            write_private(&path, text)?;
        }
        Ok(true)
    }

    /// The secrets as a cluster shares them (`jetstream::share_secret`): the current one in
    /// hex, then, after a rotation, the previous one and until when it is accepted
    /// (`CURRENT [PREVIOUS UNTIL_MS]`).
    pub fn shared_form(&self) -> std::io::Result<String> {
        let secrets = self.load_or_create()?;
        Ok(match secrets.previous {
            Some((previous, until)) => format!("{} {} {until}", hex(&secrets.current), hex(&previous)),
            None => hex(&secrets.current),
        })
    }

    /// Makes the cluster's secrets (in [`SecretFiles::shared_form`]) this node's, as a node of
    /// a cluster does at start; returns whether it changed anything. Tokens signed with a
    /// current secret it replaces are no longer accepted; a previous secret shared with its
    /// grace is accepted until then.
    pub fn adopt(&self, shared: &str) -> std::io::Result<bool> {
        let invalid = || {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the cluster's token secret is not 64 hex digits (then, after a rotation, the previous secret and until when)",
            )
        };
        let mut parts = shared.split_whitespace();
        let current = parts.next().and_then(parse_hex).ok_or_else(invalid)?;
        let previous = match (parts.next(), parts.next()) {
            (Some(secret), Some(until)) => {
                Some((parse_hex(secret).ok_or_else(invalid)?, until.parse::<u64>().map_err(|_| invalid())?))
            }
            _ => None,
        };
        let mine = self.load_or_create()?;
        let mut changed = false;
        // The previous one first: cut off between the two, the old current is still accepted.
        if let Some((secret, until)) = previous.filter(|p| mine.previous != Some(*p)) {
            write_private(&self.previous_path(), &format!("{} {until}", hex(&secret)))?;
            changed = true;
        }
        if mine.current != current {
            write_private(&self.current_path(), &hex(&current))?;
            changed = true;
        }
        Ok(changed)
    }

    /// Makes a new current secret; the old one stays accepted until `until_ms`.
    pub fn rotate(&self, until_ms: u64) -> std::io::Result<()> {
        let old = self.load_or_create()?;
        write_private(&self.previous_path(), &format!("{} {until_ms}", hex(&old.current)))?;
        write_private(&self.current_path(), &hex(&random_secret()))
    }
}

impl Secrets {
    /// Secrets given directly (tests, benchmarks).
    pub fn new(current: [u8; 32], previous: Option<([u8; 32], u64)>) -> Self {
        Self { current, previous }
    }

    /// A signed token for `claims`.
    pub fn issue(&self, claims: &Claims) -> String {
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let mac = blake3::keyed_hash(&self.current, signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac.as_bytes()))
    }

    /// The claims of `token` if its signature holds (under the current secret, or the previous
    /// one within its grace period) and it has not expired at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: u64) -> Result<Claims, TokenError> {
        if token.len() > TOKEN_LEN_MAX {
            return Err(TokenError::Malformed("too long"));
        }
        let (signed, mac) = token.rsplit_once('.').ok_or(TokenError::Malformed("no signature"))?;
        let payload = signed.strip_prefix(PREFIX).ok_or(TokenError::Malformed("not an rl1 token"))?;
        let mac: [u8; 32] = URL_SAFE_NO_PAD
            .decode(mac)
            .ok()
            .and_then(|bytes| bytes.try_into().ok())
            .ok_or(TokenError::Malformed("the signature is not 32 bytes of base64url"))?;
        let given = blake3::Hash::from_bytes(mac);
        let valid_under = |secret: &[u8; 32]| blake3::keyed_hash(secret, signed.as_bytes()) == given;
        let accepted = valid_under(&self.current)
            || self.previous.as_ref().is_some_and(|(secret, until)| now_ms < *until && valid_under(secret));
        if !accepted {
            return Err(TokenError::BadSignature);
        }
        let json =
            URL_SAFE_NO_PAD.decode(payload).map_err(|_| TokenError::Malformed("the claims are not base64url"))?;
        let claims: Claims =
            serde_json::from_slice(&json).map_err(|_| TokenError::Malformed("the claims are not valid JSON"))?;
        if claims.exp.saturating_mul(1000) <= now_ms {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000_000;

    fn claims(exp_s: u64) -> Claims {
        Claims {
            user: "alice".into(),
            rooms: vec![RoomGrant { pattern: "team-*".into(), write: true }],
            admin: false,
            exp: exp_s,
            session: None,
            files: Vec::new(),
        }
    }

    #[test]
    fn a_token_verifies_until_it_expires() {
        let secrets = Secrets::new([7; 32], None);
        let token = secrets.issue(&claims(NOW / 1000 + 60));
        assert_eq!(secrets.verify(&token, NOW), Ok(claims(NOW / 1000 + 60)));
        assert_eq!(secrets.verify(&token, NOW + 60_000), Err(TokenError::Expired));
    }

    #[test]
    fn a_tampered_token_or_another_secret_is_refused() {
        let secrets = Secrets::new([7; 32], None);
        let token = secrets.issue(&claims(NOW / 1000 + 60));
        let (signed, mac) = token.rsplit_once('.').expect("two parts");
        let admin = Claims { admin: true, ..claims(NOW / 1000 + 60) };
        let forged = format!("{PREFIX}{}.{mac}", URL_SAFE_NO_PAD.encode(serde_json::to_vec(&admin).expect("json")));
        assert_eq!(secrets.verify(&forged, NOW), Err(TokenError::BadSignature), "claims changed, signature kept");
        let other = Secrets::new([8; 32], None);
        assert_eq!(other.verify(&token, NOW), Err(TokenError::BadSignature));
        assert!(matches!(secrets.verify(signed, NOW), Err(TokenError::Malformed(_))));
        for junk in ["", "rl1.", "rl1..", "x.y", "rl1.!!!.???", &"a".repeat(5000)] {
            assert!(secrets.verify(junk, NOW).is_err(), "{junk:?}");
        }
    }

    #[test]
    fn a_rotated_out_secret_is_accepted_only_during_its_grace() {
        let old = Secrets::new([1; 32], None);
        let token = old.issue(&claims(NOW / 1000 + 3600));
        let rotated = Secrets::new([2; 32], Some(([1; 32], NOW + 1000)));
        assert!(rotated.verify(&token, NOW).is_ok(), "within the grace period");
        assert_eq!(rotated.verify(&token, NOW + 1000), Err(TokenError::BadSignature), "after it");
        assert!(rotated.verify(&rotated.issue(&claims(NOW / 1000 + 60)), NOW).is_ok());
    }

    #[test]
    fn patterns_match_whole_names_with_wildcards() {
        assert!(matches("team-*", "team-a") && matches("team-*", "team-"));
        assert!(!matches("team-*", "teams") && !matches("team-*", "my-team-a"));
        assert!(matches("*", "anything") && matches("a*b*c", "aXXbYYc") && !matches("a*b*c", "aXXbYY"));
        assert!(matches("lobby", "lobby") && !matches("lobby", "lobby2"));
        assert!(!matches(&"*a".repeat(30), &"a".repeat(29)), "no exponential backtracking blowup");
    }

    #[test]
    fn the_secret_file_is_created_private_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let files = SecretFiles { dir: dir.path().join("auth") };
        let first = files.load_or_create().expect("create");
        let again = files.load_or_create().expect("load");
        assert_eq!(first.current, again.current);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("auth/secret")).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        files.rotate(NOW + 5000).expect("rotate");
        let rotated = files.load_or_create().expect("load");
        assert_ne!(rotated.current, first.current);
        assert_eq!(rotated.previous, Some((first.current, NOW + 5000)));
    }

    #[test]
    fn a_node_adopting_the_shared_form_accepts_what_the_rotating_node_accepts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (a, b) = (SecretFiles { dir: dir.path().join("a") }, SecretFiles { dir: dir.path().join("b") });
        let old = a.load_or_create().expect("a");
        assert!(b.adopt("not hex").is_err());
        assert!(b.adopt(&a.shared_form().expect("shared")).expect("adopt"), "b had a secret of its own");
        a.rotate(NOW + 5000).expect("rotate");
        assert!(b.adopt(&a.shared_form().expect("shared")).expect("adopt"));
        let (a, b) = (a.load_or_create().expect("a"), b.load_or_create().expect("b"));
        assert_eq!((b.current, b.previous), (a.current, Some((old.current, NOW + 5000))));
        let token = a.issue(&claims(NOW / 1000 + 60));
        assert!(b.verify(&token, NOW).is_ok());
        let signed_before = Secrets::new(old.current, None).issue(&claims(NOW / 1000 + 60));
        assert!(b.verify(&signed_before, NOW).is_ok(), "the old one in its grace");
    }
}
