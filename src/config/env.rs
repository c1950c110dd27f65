//! `${NAME}` in any string value expands from the environment before the YAML is typed, so a
//! secret can live in the environment rather than in the file.
//!
//! The values it brings in are the secrets: an error about the file must never show one. The
//! errors here quote no value, and [`Expanded::hide`] puts `${NAME}` back in place of each value
//! in the errors of typing and validation, which come after the expansion.

use serde_yaml::Value;

/// The variables a file referred to, and the values they brought in.
#[derive(Debug, Default)]
pub struct Expanded(Vec<(String, String)>);

impl Expanded {
    /// `message` with each expanded value written back, inside the message's quoted values
    /// (where errors show a value), as the reference it came from. Outside them the message is
    /// left alone: a short value such as `1s` would otherwise be replaced in its words.
    pub fn hide(&self, message: String) -> String {
        let mut by_length: Vec<_> = self
            .0
            .iter()
            .filter(|(_, value)| !value.is_empty())
            .collect();
        // The longest first: a value inside another is hidden with the other.
        by_length.sort_by_key(|(_, value)| std::cmp::Reverse(value.len()));
        let hide_in = |quoted: &str| {
            by_length
                .iter()
                .fold(quoted.to_string(), |quoted, (name, value)| {
                    quoted.replace(value.as_str(), &format!("${{{name}}}"))
                })
        };
        // Split at the quotes: the odd pieces are quoted.
        message
            .split('"')
            .enumerate()
            .map(|(i, piece)| {
                if i % 2 == 1 {
                    hide_in(piece)
                } else {
                    piece.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\"")
    }
}

/// Expands every `${NAME}` in the string values of `value`. A variable that is not set is an
/// error naming the key path and the variable.
pub fn expand(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, String> {
    let mut expanded = Expanded::default();
    expand_at(value, &mut Vec::new(), lookup, &mut expanded)?;
    Ok(expanded)
}

fn expand_at(
    value: &mut Value,
    path: &mut Vec<String>,
    lookup: &dyn Fn(&str) -> Option<String>,
    expanded: &mut Expanded,
) -> Result<(), String> {
    match value {
        Value::String(text) => {
            if text.contains("${") {
                *text = expand_str(text, lookup, expanded)
                    .map_err(|e| format!("{}: {e}", path.join(".")))?;
            }
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(format!("[{index}]"));
                expand_at(item, path, lookup, expanded)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push(key.as_str().unwrap_or("?").to_string());
                expand_at(item, path, lookup, expanded)?;
                path.pop();
            }
        }
        Value::Tagged(tagged) => expand_at(&mut tagged.value, path, lookup, expanded)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// The errors name no part of `text`: it may be a secret written in the file.
fn expand_str(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    expanded: &mut Expanded,
) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let name = after
            .find('}')
            .map(|end| &after[..end])
            .filter(|name| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            })
            .ok_or_else(|| {
                "\"${\" must start a reference like ${NAME} (letters, digits and _, then \"}\")"
                    .to_string()
            })?;
        let value =
            lookup(name).ok_or_else(|| format!("environment variable {name} is not set"))?;
        out.push_str(&value);
        expanded.0.push((name.to_string(), value));
        rest = &after[name.len() + 1..];
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

    fn expand_one(text: &str) -> Result<String, String> {
        expand_str(text, &lookup, &mut Expanded::default())
    }

    #[test]
    fn expands_inside_strings() {
        assert_eq!(expand_one("a-${TOKEN}-b").as_deref(), Ok("a-s3cret-b"));
        assert_eq!(expand_one("plain").as_deref(), Ok("plain"));
    }

    #[test]
    fn expanded_values_are_hidden_in_the_quoted_values_of_messages() {
        let mut value: Value = serde_yaml::from_str("a: x-${TOKEN}\nb: ${TOKEN}\n").unwrap();
        let expanded = expand(&mut value, &lookup).unwrap();
        assert_eq!(
            expanded.hide("got \"x-s3cret\", \"s3cret\"; s3cret unquoted".to_string()),
            "got \"x-${TOKEN}\", \"${TOKEN}\"; s3cret unquoted"
        );
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
    fn malformed_references_are_errors_that_quote_nothing_of_the_value() {
        for text in ["pa55${wqz", "pa55${}", "pa55${wq z}x"] {
            let err = expand_one(text).unwrap_err();
            assert!(!err.contains("pa55") && !err.contains("wq"), "{err}");
        }
    }
}
