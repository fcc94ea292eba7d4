//! Resource names, and the URLs Compute uses to refer to resources.

/// The host Compute uses in `selfLink` and other resource URLs (observed, docs/compute-api.md §1).
pub const LINK_PREFIX: &str = "https://www.googleapis.com/compute/v1/";

/// Whether `name` is a valid Compute resource name: `[a-z]([-a-z0-9]{0,61}[a-z0-9])?`.
pub fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let Some((&first, rest)) = bytes.split_first() else {
        return false;
    };
    if bytes.len() > 63 || !first.is_ascii_lowercase() {
        return false;
    }
    if let Some(&last) = rest.last()
        && !(last.is_ascii_lowercase() || last.is_ascii_digit())
    {
        return false;
    }
    rest.iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
}

/// The regex Compute quotes when it refuses a name.
pub const NAME_REGEX: &str = "(?:[a-z](?:[-a-z0-9]{0,61}[a-z0-9])?)";

/// A full resource URL for a path such as `projects/p/global/routes/r`.
pub fn link(path: &str) -> String {
    format!("{LINK_PREFIX}{path}")
}

/// Reduces a full or partial reference to the path after `/compute/v1/`, starting at
/// `projects/`, or relative to `project` when the reference starts below it
/// (`global/networks/default`, `zones/z/instances/i`, `regions/r/addresses/a`).
pub fn reference_path(reference: &str, project: &str) -> String {
    let trimmed = reference
        .split_once("/compute/v1/")
        .map_or(reference, |(_, path)| path)
        .trim_start_matches('/');
    if trimmed.starts_with("projects/") {
        trimmed.to_string()
    } else {
        format!("projects/{project}/{trimmed}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(valid_name("a"));
        assert!(valid_name("adc-3f9c1a-se-1"));
        assert!(valid_name(&format!("a{}", "b".repeat(62))));
        assert!(!valid_name(&format!("a{}", "b".repeat(63))));
        assert!(!valid_name(""));
        assert!(!valid_name("1abc"));
        assert!(!valid_name("abc-"));
        assert!(!valid_name("Abc"));
        assert!(!valid_name("a_b"));
        assert!(!valid_name("é"));
    }

    #[test]
    fn references() {
        assert_eq!(
            reference_path("global/networks/default", "p"),
            "projects/p/global/networks/default"
        );
        assert_eq!(
            reference_path(
                "https://www.googleapis.com/compute/v1/projects/q/zones/z/instances/i",
                "p"
            ),
            "projects/q/zones/z/instances/i"
        );
        assert_eq!(
            reference_path(
                "https://compute.googleapis.com/compute/v1/projects/q/global/networks/n",
                "p"
            ),
            "projects/q/global/networks/n"
        );
        assert_eq!(
            reference_path("projects/q/global/networks/n", "p"),
            "projects/q/global/networks/n"
        );
    }
}
