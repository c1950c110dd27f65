//! `${NAME}` in any string value expands from the environment before the YAML is typed, so a
//! secret can live in the environment rather than in the file.

use serde_yaml::Value;

/// Expands every `${NAME}` in the string values of `value`. A variable that is not set is an
/// error naming the key path and the variable.
pub fn expand(value: &mut Value, lookup: &dyn Fn(&str) -> Option<String>) -> Result<(), String> {
    expand_at(value, &mut Vec::new(), lookup)
}

fn expand_at(
    value: &mut Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), String> {
    match value {
        Value::String(text) => {
            if text.contains("${") {
                *text = expand_str(text, lookup).map_err(|e| format!("{}: {e}", path.join(".")))?;
            }
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(format!("[{index}]"));
                expand_at(item, path, lookup)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push(key.as_str().unwrap_or("?").to_string());
                expand_at(item, path, lookup)?;
                path.pop();
            }
        }
        Value::Tagged(tagged) => expand_at(&mut tagged.value, path, lookup)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

fn expand_str(text: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after
            .find('}')
            .ok_or_else(|| format!("unclosed \"${{\" in \"{text}\""))?;
        let name = &after[..end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "\"${{{name}}}\" is not a valid environment variable name"
            ));
        }
        let expanded =
            lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&expanded);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<String> {
        (name == "TOKEN").then(|| "s3cret".to_string())
    }

    #[test]
    fn expands_inside_strings() {
        assert_eq!(
            expand_str("a-${TOKEN}-b", &lookup).as_deref(),
            Ok("a-s3cret-b")
        );
        assert_eq!(expand_str("plain", &lookup).as_deref(), Ok("plain"));
    }

    #[test]
    fn missing_variable_names_path_and_variable() {
        let mut value: Value = serde_yaml::from_str("credentials:\n  password: ${NOPE}\n").unwrap();
        let err = expand(&mut value, &lookup).unwrap_err();
        assert_eq!(
            err,
            "credentials.password: environment variable NOPE is not set"
        );
    }

    #[test]
    fn malformed_references_are_errors() {
        assert!(expand_str("${TOKEN", &lookup).is_err());
        assert!(expand_str("${}", &lookup).is_err());
        assert!(expand_str("${A B}", &lookup).is_err());
    }
}
