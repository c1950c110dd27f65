//! Just enough of multipart/form-data to judge an upload from the start of its body: the
//! boundary from the request's `Content-Type`, and the head of the file part (named `file` or
//! `Media`) with its own `Content-Type`. Everything else streams through unparsed.

/// The parameters of a header value such as `form-data; name="file"; filename="a b.png"`:
/// names as written, quoted values unquoted.
pub fn parameters(value: &str) -> Vec<(String, String)> {
    parameters_with(value, Escapes::Unescape)
}

/// What to do with a `\` escape in a quoted value.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Escapes {
    Unescape,
    /// Keep it as written, and the opening quote of a value never closed, so that a value
    /// with either can be told apart.
    Keep,
}

fn parameters_with(value: &str, escapes: Escapes) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = match value.split_once(';') {
        Some((_, params)) => params,
        None => return out,
    };
    loop {
        rest = rest.trim_start_matches([' ', '\t', ';']);
        let Some(eq) = rest.find('=') else { break };
        let name = rest[..eq].trim().to_string();
        let after = &rest[eq + 1..];
        let (value, remaining) = if let Some(quoted) = after.strip_prefix('"') {
            match unquote(quoted, escapes) {
                (value, false, remaining) if escapes == Escapes::Keep => {
                    (format!("\"{value}"), remaining)
                }
                (value, _, remaining) => (value, remaining),
            }
        } else {
            let end = after.find(';').unwrap_or(after.len());
            (after[..end].trim().to_string(), &after[end..])
        };
        out.push((name, value));
        rest = remaining;
    }
    out
}

/// Reads a quoted-string body (after the opening quote): the value, whether its closing quote
/// came, and what follows it.
fn unquote(text: &str, escapes: Escapes) -> (String, bool, &str) {
    let mut value = String::new();
    let mut chars = text.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (value, true, &text[i + 1..]),
            '\\' => {
                if escapes == Escapes::Keep {
                    value.push('\\');
                }
                if let Some((_, escaped)) = chars.next() {
                    value.push(escaped);
                }
            }
            c => value.push(c),
        }
    }
    (value, false, "")
}

/// The boundary of a multipart `Content-Type`, if it has a usable one: 1 to 70 of the
/// characters RFC 2046 allows, less the space it allows inside a quoted one. Parsers disagree on
/// anything else (a `\` escape in a quoted value is dropped by some and kept by others, an
/// unquoted value ends at a space for some): a form the proxy splits at one boundary and the
/// upstream at another could show the proxy a decoy file part. For the same reason there is
/// one `boundary` parameter (parsers take the first, the last, or refuse), and a quoted one is
/// closed.
pub fn boundary(content_type: &str) -> Option<String> {
    let mut boundaries = parameters_with(content_type, Escapes::Keep)
        .into_iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("boundary"))
        .map(|(_, value)| value);
    let boundary = boundaries.next()?;
    if boundaries.next().is_some() {
        return None;
    }
    Some(boundary).filter(|b| !b.is_empty() && b.len() <= 70 && b.bytes().all(is_boundary_char))
}

/// RFC 2046's `bcharsnospace`.
fn is_boundary_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"'()+_,-./:=?".contains(&b)
}

/// The head of the file part, once found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePart {
    /// The part's own `Content-Type` value, as sent.
    pub content_type: Option<String>,
    /// Where the part's bytes start in the scanned buffer.
    pub body_start: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scan {
    Found(FilePart),
    /// The buffer ends before the file part's head does.
    NeedMore,
    /// The form ended without a part named `file` or `Media`.
    NoFilePart,
    Malformed(&'static str),
}

/// The part names the Media API takes the file from.
const FILE_PART_NAMES: [&str; 2] = ["file", "Media"];

/// Looks for the file part's head in `buf`, the start of a multipart body.
pub fn find_file_part(buf: &[u8], boundary: &str) -> Scan {
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    // The first delimiter may follow a preamble; later ones follow a CRLF.
    let Some(first) = find(buf, delimiter, 0) else {
        return Scan::NeedMore;
    };
    if first > 0 && !buf[..first].ends_with(b"\r\n") {
        return Scan::Malformed("text before the first boundary");
    }
    let mut pos = first + delimiter.len();
    loop {
        // After a delimiter: `--` closes the form; otherwise padding, then CRLF and the part.
        match buf.get(pos..pos + 2) {
            None => return Scan::NeedMore,
            Some(b"--") => return Scan::NoFilePart,
            Some(_) => {}
        }
        while matches!(buf.get(pos), Some(b' ' | b'\t')) {
            pos += 1;
        }
        match buf.get(pos..pos + 2) {
            None => return Scan::NeedMore,
            Some(b"\r\n") => pos += 2,
            Some(_) => return Scan::Malformed("a boundary line with trailing text"),
        }
        if buf[pos..].starts_with(b"\r\n") {
            // Other parsers read a head up to the next CRLFCRLF: this part's content, the next
            // delimiter and the next part's head would be its head, and that part skipped.
            return Scan::Malformed("a part without headers");
        }
        let (headers, body_start) = match find(buf, b"\r\n\r\n", pos) {
            Some(end) => match std::str::from_utf8(&buf[pos..end]) {
                Ok(text) => (text, end + 4),
                Err(_) => return Scan::Malformed("part headers are not text"),
            },
            None => return Scan::NeedMore,
        };
        let head = match PartHead::parse(headers) {
            Ok(head) => head,
            Err(why) => return Scan::Malformed(why),
        };
        if head
            .name
            .as_deref()
            .is_some_and(|n| FILE_PART_NAMES.contains(&n))
        {
            return Scan::Found(FilePart {
                content_type: head.content_type,
                body_start,
            });
        }
        // Not the file: skip to the next delimiter.
        let mut next = b"\r\n".to_vec();
        next.extend_from_slice(delimiter);
        match find(buf, &next, body_start) {
            Some(at) => pos = at + next.len(),
            None => return Scan::NeedMore,
        }
    }
}

struct PartHead {
    name: Option<String>,
    content_type: Option<String>,
}

impl PartHead {
    /// Reads a part's headers, refusing any that another multipart parser could read
    /// differently (the upstream's own, say): then the part this proxy judged would not be the
    /// part the upstream stores.
    fn parse(headers: &str) -> Result<PartHead, &'static str> {
        if has_bare_line_break(headers) {
            return Err("a part header line ends without CRLF");
        }
        let mut head = PartHead {
            name: None,
            content_type: None,
        };
        let (mut dispositions, mut types) = (0, 0);
        for line in headers.split("\r\n") {
            let Some((field, value)) = line.split_once(':') else {
                continue;
            };
            let field = field.trim();
            if field.eq_ignore_ascii_case("content-disposition") {
                dispositions += 1;
                head.name = disposition_name(value)?;
            } else if field.eq_ignore_ascii_case("content-type") {
                types += 1;
                head.content_type = Some(value.trim().to_string());
            }
        }
        if dispositions > 1 || types > 1 {
            return Err("a part repeats Content-Disposition or Content-Type");
        }
        Ok(head)
    }
}

fn has_bare_line_break(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, &b)| match b {
        b'\n' => i == 0 || bytes[i - 1] != b'\r',
        b'\r' => bytes.get(i + 1) != Some(&b'\n'),
        _ => false,
    })
}

/// The `name` of a `Content-Disposition` value, when it has exactly one, spelled `name`, and no
/// `name=` hides inside a quoted value.
fn disposition_name(value: &str) -> Result<Option<String>, &'static str> {
    let params = parameters(value);
    let names: Vec<&(String, String)> = params
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("name"))
        .collect();
    if names.len() > 1 || names.iter().any(|(n, _)| n != "name") {
        return Err("a part's name is given twice or spelled unusually");
    }
    let visible = params
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("name") || n.eq_ignore_ascii_case("filename"))
        .count();
    if value.to_ascii_lowercase().matches("name=").count() > visible {
        return Err("a part's Content-Disposition hides a name inside a quoted value");
    }
    // Some parsers (multer, the local origin's) find the name as the first `name` after a
    // space or `;`, wherever it stands: in a filename (`"my name.png"`), in another value, in
    // `name*=`. Any such `name` but the parameter itself, and they read another name, or none.
    if words_name(value) > names.len() {
        return Err("a part's Content-Disposition has another word `name` than its name");
    }
    // Parsers differ on `\` escapes, on whitespace around and inside an unquoted value, and on
    // what whitespace is: the name must be written `name="…"` without `\`, or `name=token`.
    if let Some((_, name)) = names.first() {
        let plain = !value.contains('\\')
            && value
                .split(';')
                .map(|p| p.trim_matches([' ', '\t']))
                .any(|p| {
                    p == format!("name=\"{name}\"")
                        || (p == format!("name={name}") && is_token(name))
                });
        if !plain {
            return Err("a part's name is written in a way parsers read differently");
        }
    }
    Ok(names.first().map(|(_, v)| v.clone()))
}

/// How many times `name` (in any case) starts a word of `value`: at its start, or after
/// white space or `;`.
fn words_name(value: &str) -> usize {
    let lower = value.to_ascii_lowercase();
    let bytes = lower.as_bytes();
    memchr::memmem::find_iter(bytes, b"name")
        .filter(|&at| at == 0 || bytes[at - 1].is_ascii_whitespace() || bytes[at - 1] == b';')
        .count()
}

/// An HTTP token: what an unquoted parameter value may be.
fn is_token(text: &str) -> bool {
    !text.is_empty()
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// The index of `needle` in `haystack` at or after `from`.
pub fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() {
        return None;
    }
    memchr::memmem::find(haystack.get(from..)?, needle).map(|i| i + from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundaries_plain_and_quoted() {
        assert_eq!(
            boundary("multipart/form-data; boundary=abc").as_deref(),
            Some("abc")
        );
        assert_eq!(
            boundary("multipart/form-data; BOUNDARY=\"a'(b)+_,-./:=?c\"").as_deref(),
            Some("a'(b)+_,-./:=?c")
        );
        assert_eq!(
            boundary("multipart/form-data; charset=x; boundary=q1").as_deref(),
            Some("q1")
        );
        assert_eq!(boundary("multipart/form-data"), None);
        assert_eq!(boundary("multipart/form-data; boundary="), None);
        assert_eq!(
            boundary(&format!("multipart/form-data; boundary={}", "x".repeat(71))),
            None
        );
    }

    #[test]
    fn boundaries_other_parsers_could_read_differently_are_unusable() {
        // An escape: `ab` here, `a\b` for a parser that keeps escapes.
        assert_eq!(boundary("multipart/form-data; boundary=\"a\\b\""), None);
        // A space: quoted, RFC 2046 allows it, but an unquoted one ends the value for some.
        assert_eq!(boundary("multipart/form-data; boundary=\"a b\""), None);
        assert_eq!(boundary("multipart/form-data; boundary=a b"), None);
        assert_eq!(boundary("multipart/form-data; boundary=\"a;b\""), None);
        assert_eq!(boundary("multipart/form-data; boundary=\"a\u{e9}\""), None);
        // Unclosed, or given twice.
        assert_eq!(boundary("multipart/form-data; boundary=\"abc"), None);
        assert_eq!(
            boundary("multipart/form-data; boundary=a; boundary=b"),
            None
        );
    }

    const FORM: &[u8] = b"--XyZ\r\nContent-Disposition: form-data; name=\"FileName\"\r\n\r\nreport.pdf\r\n--XyZ\r\nContent-Disposition: form-data; name=\"Media\"; filename=\"r.pdf\"\r\nContent-Type: application/pdf\r\n\r\n%PDF-1.7 body\r\n--XyZ--\r\n";

    #[test]
    fn finds_the_file_part_after_other_fields() {
        match find_file_part(FORM, "XyZ") {
            Scan::Found(part) => {
                assert_eq!(part.content_type.as_deref(), Some("application/pdf"));
                assert!(FORM[part.body_start..].starts_with(b"%PDF-1.7"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_head_cut_anywhere_asks_for_more() {
        let head_end = find(FORM, b"%PDF", 0).unwrap();
        for cut in 0..head_end {
            assert_eq!(
                find_file_part(&FORM[..cut], "XyZ"),
                Scan::NeedMore,
                "cut at {cut}"
            );
        }
        assert!(matches!(
            find_file_part(&FORM[..head_end], "XyZ"),
            Scan::Found(_)
        ));
    }

    #[test]
    fn part_heads_that_parsers_could_read_differently_are_refused() {
        let form = |head: &str| format!("--b\r\n{head}\r\n\r\nbytes\r\n--b--\r\n");
        for head in [
            "Content-Disposition: form-data; NAME=\"file\"\r\nContent-Type: image/png",
            "Content-Disposition: form-data; x=\"; name=file z\"; name=\"decoy\"",
            "Content-Disposition: form-data; name=\"file\"; name=\"other\"",
            "Content-Disposition: form-data; name=\"decoy\"\r\nContent-Disposition: form-data; name=\"file\"",
            "Content-Disposition: form-data; name=\"file\"\r\nContent-Type: image/png\r\nContent-Type: text/plain",
            "Content-Disposition: form-data; name=\"file\"\nContent-Type: image/png",
        ] {
            assert!(matches!(find_file_part(form(head).as_bytes(), "b"), Scan::Malformed(_)), "{head}");
        }
        // multer (the local origin's parser) reads these names otherwise (see the multer check
        // of fuzz/fuzz_targets/multipart_head.rs), and a part without headers as one whose head
        // runs on to the next CRLFCRLF (found by that target).
        for head in [
            "Content-Disposition: form-data; name=\"fil\\e\"",
            "Content-Disposition: form-data; name=file x",
            "Content-Disposition: form-data; name= \"file\"",
            "Content-Disposition: form-data; filename=\"file\"; name=\u{a0}file",
            "Content-Disposition: form-data;\u{b}name=\"file\"",
        ] {
            assert!(
                matches!(
                    find_file_part(form(head).as_bytes(), "b"),
                    Scan::Malformed(_)
                ),
                "{head}"
            );
        }
        let headless = b"--b\r\n\r\nx\r\n--b\r\nContent-Disposition: form-data; name=file\r\n\r\ny\r\n--b--\r\n";
        assert!(matches!(find_file_part(headless, "b"), Scan::Malformed(_)));
        let fine = "Content-Disposition: form-data; name=\"file\"; filename=\"a;b.png\"\r\nContent-Type: image/png";
        assert!(matches!(
            find_file_part(form(fine).as_bytes(), "b"),
            Scan::Found(_)
        ));
    }

    #[test]
    fn forms_without_a_file_part_or_with_junk() {
        let no_file = b"--b\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--b--\r\n";
        assert_eq!(find_file_part(no_file, "b"), Scan::NoFilePart);
        assert!(matches!(
            find_file_part(b"junk--b\r\n", "b"),
            Scan::Malformed(_)
        ));
        assert!(matches!(
            find_file_part(b"--bzzz\r\n", "b"),
            Scan::Malformed(_)
        ));
        // A preamble ending in CRLF is allowed.
        let preamble = b"ignored\r\n--b\r\nContent-Disposition: form-data; name=file\r\n\r\nx";
        assert!(matches!(find_file_part(preamble, "b"), Scan::Found(_)));
    }
}
