//! Deterministic GCP names: `{prefix}{object hash}-{content hash}`. The object hash is stable for
//! (cluster, kind, namespace, name); the content hash changes with what the resource holds, so a
//! changed route (immutable in GCP) gets a new name and can be inserted before the old one is
//! deleted (make-before-break).

use sha2::{Digest, Sha256};

/// Hex characters of the object hash.
const OBJECT_HASH_LEN: usize = 10;
/// Hex characters of the content hash.
const CONTENT_HASH_LEN: usize = 8;

fn hex_digest(parts: &[&str], len: usize) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        // A separator no part contains, so ("a/b", "c") and ("a", "b/c") differ.
        hasher.update([0u8]);
    }
    hex_prefix(&hasher.finalize(), len)
}

/// The first `len` hex digits of `digest` (every reconcile hashes each planned resource: no
/// string per byte).
fn hex_prefix(digest: &[u8], len: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    digest
        .iter()
        .flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]])
        .take(len)
        .map(char::from)
        .collect()
}

/// Feeds what serde_json writes straight into the hasher.
struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.update(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The stable hash of one Kubernetes object.
pub fn object_hash(cluster_id: &str, kind: &str, namespace: &str, name: &str) -> String {
    hex_digest(&[cluster_id, kind, namespace, name], OBJECT_HASH_LEN)
}

/// The hash of a resource's content (its insert body, canonical JSON).
pub fn content_hash(body: &serde_json::Value) -> String {
    // The same bytes as hashing `body.to_string()` and the separator, without the string.
    let mut hasher = Sha256::new();
    if serde_json::to_writer(HashWriter(&mut hasher), body).is_err() {
        return hex_digest(&[&body.to_string()], CONTENT_HASH_LEN);
    }
    hasher.update([0u8]);
    hex_prefix(&hasher.finalize(), CONTENT_HASH_LEN)
}

/// A resource name: `{prefix}{object}-{suffix}`; at most 63 characters for any prefix the
/// GcpCloud schema allows (20).
pub fn resource_name(prefix: &str, object: &str, suffix: &str) -> String {
    format!("{prefix}{object}-{suffix}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_content_hash_is_that_of_the_compact_json_text() {
        let body = serde_json::json!({"name": "adc-x", "priority": 2000, "tags": ["a", "b"],
                                      "description": "{\"owner\":\"ns/é\"}"});
        assert_eq!(
            content_hash(&body),
            hex_digest(&[&body.to_string()], CONTENT_HASH_LEN)
        );
        assert_eq!(hex_prefix(&[0xab, 0x01, 0xff], 5), "ab01f");
    }

    use super::*;
    use proptest::prelude::*;

    #[test]
    fn hashes_are_stable_and_separated() {
        assert_eq!(
            object_hash("c", "VirtualService", "ns", "web"),
            object_hash("c", "VirtualService", "ns", "web")
        );
        assert_ne!(
            object_hash("c", "VirtualService", "a/b", "c"),
            object_hash("c", "VirtualService", "a", "b/c")
        );
        assert_eq!(object_hash("c", "k", "n", "x").len(), OBJECT_HASH_LEN);
    }

    proptest! {
        #[test]
        fn names_are_valid_gcp_names(prefix in "[a-z][-a-z0-9]{0,19}", ns in "[a-z0-9-]{1,63}", name in "[a-z0-9.-]{1,253}") {
            let object = object_hash("cluster", "VirtualService", &ns, &name);
            let content = content_hash(&serde_json::json!({"ns": ns, "name": name}));
            let full = resource_name(&prefix, &object, &content);
            prop_assert!(full.len() <= 63);
            let re = regex::Regex::new("^[a-z]([-a-z0-9]*[a-z0-9])?$").unwrap();
            prop_assert!(re.is_match(&full), "{}", full);
        }
    }
}
