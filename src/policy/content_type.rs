//! Media types: the essence of a `Content-Type` value, and `uploads.allowed_types` matching
//! (exact types and `type/*` globs, case-insensitive, parameters ignored).

use std::collections::HashSet;

/// `type/subtype`, lower-cased, without parameters; `None` when the value is not a media type.
pub fn essence(value: &str) -> Option<String> {
    let essence = value.split(';').next()?.trim().to_ascii_lowercase();
    let (kind, sub) = essence.split_once('/')?;
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'/');
    (token(kind) && token(sub)).then_some(essence)
}

/// What curl sends when told nothing: for a raw upload it means "no type given".
pub const FORM_DEFAULT: &str = "application/x-www-form-urlencoded";

pub fn is_multipart_form(essence: &str) -> bool {
    essence == "multipart/form-data"
}

/// `uploads.allowed_types`, compiled once per service.
#[derive(Debug, Clone)]
pub struct TypeMatcher {
    exact: HashSet<String>,
    /// `image/` for `image/*`.
    prefixes: Vec<String>,
}

impl TypeMatcher {
    pub fn new(patterns: &[String]) -> TypeMatcher {
        let mut exact = HashSet::new();
        let mut prefixes = Vec::new();
        for pattern in patterns {
            let pattern = pattern.trim().to_ascii_lowercase();
            match pattern.strip_suffix("/*") {
                Some(kind) => prefixes.push(format!("{kind}/")),
                None => {
                    exact.insert(pattern);
                }
            }
        }
        TypeMatcher { exact, prefixes }
    }

    /// Whether an essence (see [`essence`]) is allowed.
    pub fn allows(&self, essence: &str) -> bool {
        self.exact.contains(essence)
            || self
                .prefixes
                .iter()
                .any(|p| essence.starts_with(p.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn essence_drops_parameters_and_case() {
        assert_eq!(
            essence("Image/PNG; charset=binary").as_deref(),
            Some("image/png")
        );
        assert_eq!(essence(" text/plain ").as_deref(), Some("text/plain"));
        for bad in ["", "png", "/png", "image/", "image /png", "a/b/c"] {
            assert_eq!(essence(bad), None, "{bad}");
        }
    }

    #[test]
    fn globs_and_exact_types() {
        let m = TypeMatcher::new(&["image/*".into(), "Application/PDF".into()]);
        assert!(m.allows("image/png"));
        assert!(m.allows("image/x-anything"));
        assert!(m.allows("application/pdf"));
        assert!(!m.allows("application/zip"));
        assert!(!m.allows("imagex/png"));
        assert!(!m.allows("video/mp4"));
    }
}
