use super::*;
use crate::config::{ByteSize, Uploads};

fn rules(sniff: bool) -> Arc<UploadRules> {
    Arc::new(UploadRules::new(&Uploads {
        max_size: ByteSize(1000),
        sniff,
        ..Uploads::default()
    }))
}

use crate::test_util::headers;

fn reason(result: Result<UploadGuard, Refusal>) -> Option<&'static str> {
    result.err().map(|r| r.reason.label())
}

#[test]
fn head_checks() {
    let r = rules(true);
    assert_eq!(
        reason(check_head(&r, &headers(&[]))),
        Some("content_type_missing")
    );
    assert_eq!(
        reason(check_head(
            &r,
            &headers(&[("content-type", "application/x-www-form-urlencoded")])
        )),
        Some("content_type_missing")
    );
    assert_eq!(
        reason(check_head(
            &r,
            &headers(&[("content-type", "application/x-sh")])
        )),
        Some("type_not_allowed")
    );
    assert_eq!(
        reason(check_head(
            &r,
            &headers(&[("content-type", "image/png"), ("content-length", "1001")])
        )),
        Some("too_large")
    );
    assert_eq!(
        reason(check_head(
            &r,
            &headers(&[("content-type", "image/png"), ("content-size", "1e3")])
        )),
        Some("size_mismatch")
    );
    assert_eq!(
        reason(check_head(
            &r,
            &headers(&[("content-type", "multipart/form-data")])
        )),
        Some("content_type_missing")
    );
    assert!(check_head(
        &r,
        &headers(&[
            ("content-type", "IMAGE/PNG; x=y"),
            ("content-length", "1000")
        ])
    )
    .is_ok());
}

#[test]
fn raw_uploads_are_inspected_only_when_sniffing() {
    let png = headers(&[("content-type", "image/png")]);
    assert!(check_head(&rules(true), &png).unwrap().inspecting());
    assert!(!check_head(&rules(false), &png).unwrap().inspecting());
    let form = headers(&[("content-type", "multipart/form-data; boundary=b")]);
    assert!(
        check_head(&rules(false), &form).unwrap().inspecting(),
        "a form's type is in its body"
    );
}

#[test]
fn the_guard_counts_against_limits_and_content_size() {
    let r = rules(false);
    let head = headers(&[("content-type", "image/png"), ("content-size", "10")]);
    let mut guard = check_head(&r, &head).unwrap();
    assert!(guard.on_chunk(&[0; 6], false).is_ok());
    assert_eq!(
        guard.on_chunk(&[0; 6], false).unwrap_err().reason,
        RejectReason::SizeMismatch
    );

    let mut short = check_head(&r, &head).unwrap();
    assert!(short.on_chunk(&[0; 6], false).is_ok());
    assert_eq!(
        short.on_chunk(&[], true).unwrap_err().reason,
        RejectReason::SizeMismatch
    );

    let mut chunked = check_head(&r, &headers(&[("content-type", "image/png")])).unwrap();
    assert!(chunked.on_chunk(&[0; 1000], false).is_ok());
    assert_eq!(
        chunked.on_chunk(&[0; 1], false).unwrap_err().reason,
        RejectReason::TooLarge
    );
}

#[test]
fn early_inspection_is_not_repeated_when_the_chunk_is_replayed() {
    let r = rules(true);
    let mut guard = check_head(&r, &headers(&[("content-type", "text/plain")])).unwrap();
    // A first chunk that ends inside a two-byte character: fine while more may follow.
    let text = "abcdefghijklmnopqrstuvwxyzé".as_bytes();
    let (first, rest) = text.split_at(text.len() - 1);
    assert!(guard.inspect_early(first, false).is_ok());
    // The proxy replays the first chunk, then the rest follows.
    assert!(guard.on_chunk(first, false).is_ok());
    assert!(guard.on_chunk(rest, true).is_ok());
    assert_eq!(guard.received(), text.len() as u64);
}

#[test]
fn a_form_part_head_split_over_chunks_is_found() {
    let r = rules(true);
    let head = headers(&[("content-type", "multipart/form-data; boundary=\"q.b\"")]);
    let body = b"--q.b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"x.png\"\r\nContent-Type: image/png\r\n\r\n\x89PNG\r\n\x1a\n0123456789\r\n--q.b--\r\n";
    for split in 1..body.len() {
        let mut guard = check_head(&r, &head).unwrap();
        let (a, b) = body.split_at(split);
        assert!(guard.on_chunk(a, false).is_ok(), "split at {split}");
        assert!(guard.on_chunk(b, true).is_ok(), "split at {split}");
        assert!(!guard.inspecting());
    }
    let wrong = b"--q.b\r\nContent-Disposition: form-data; name=\"Media\"\r\nContent-Type: image/png\r\n\r\n%PDF-1.4 not a png at all\r\n--q.b--\r\n";
    let mut guard = check_head(&r, &head).unwrap();
    assert_eq!(
        guard.on_chunk(wrong, true).unwrap_err().reason,
        RejectReason::SniffMismatch
    );
    let exe = b"--q.b\r\nContent-Disposition: form-data; name=\"file\"\r\nContent-Type: application/x-msdownload\r\n\r\nMZ";
    let mut guard = check_head(&r, &head).unwrap();
    assert_eq!(
        guard.on_chunk(exe, false).unwrap_err().reason,
        RejectReason::TypeNotAllowed
    );
}

#[test]
fn a_form_ending_inside_a_short_file_part_is_still_sniffed() {
    let r = rules(true);
    let head = headers(&[("content-type", "multipart/form-data; boundary=q.b")]);
    // No closing delimiter, and less than the sniff needs before it decides on a part.
    let body = b"--q.b\r\nContent-Disposition: form-data; name=\"file\"\r\nContent-Type: image/png\r\n\r\nGIF89a, not a PNG";
    let mut guard = check_head(&r, &head).unwrap();
    assert_eq!(
        guard.on_chunk(body, true).unwrap_err().reason,
        RejectReason::SniffMismatch
    );
}

#[test]
fn two_content_types_are_refused() {
    let r = rules(true);
    let two = headers(&[("content-type", "image/png"), ("content-type", "image/png")]);
    assert_eq!(reason(check_head(&r, &two)), Some("content_type_missing"));
}

#[test]
fn a_connection_header_naming_a_judged_header_is_refused() {
    let r = rules(false);
    let with = |connection: &str| {
        reason(check_head(
            &r,
            &headers(&[
                ("content-type", "image/png"),
                ("content-length", "10"),
                ("connection", "keep-alive"),
                ("connection", connection),
            ]),
        ))
    };
    assert_eq!(with("Content-Type"), Some("content_type_missing"));
    assert_eq!(with("te, content-length"), Some("size_mismatch"));
    assert_eq!(with(" CONTENT-SIZE "), Some("size_mismatch"));
    assert_eq!(with("close, te"), None);
    assert_eq!(with("content-types"), None);
}

#[test]
fn text_cut_by_the_sniff_window_inside_a_character_passes() {
    let r = Arc::new(UploadRules::new(&Uploads::default()));
    let mut guard = check_head(&r, &headers(&[("content-type", "text/plain")])).unwrap();
    // 10 KiB of two-byte characters, offset by one so the 8 KiB window ends inside one.
    let mut text = b"a".to_vec();
    text.extend("я".repeat(5 * 1024).as_bytes());
    assert!(guard.on_chunk(&text, true).is_ok());
}

#[test]
fn the_verdict_does_not_depend_on_where_the_first_chunk_ends() {
    // Found by fuzz/fuzz_targets/sniff.rs: decided on the first 16 bytes, a PE file passed as a
    // type without a signature (its header offset, at 0x3C, was not in view yet), and a PDF
    // whose header starts past byte 16 was refused.
    let mut pe = vec![0u8; 0x90];
    pe[..2].copy_from_slice(b"MZ");
    pe[0x3c] = 0x80;
    pe[0x80..0x84].copy_from_slice(b"PE\0\0");
    let mut pdf = b"\n".repeat(100);
    pdf.extend_from_slice(b"%PDF-1.7\n1 0 obj\n");
    let r = Arc::new(UploadRules::new(&Uploads::default()));
    for (essence, body, accepted) in [
        ("image/svg+xml", &pe, false),
        ("application/pdf", &pdf, true),
    ] {
        for split in 1..body.len() {
            let mut guard = check_head(&r, &headers(&[("content-type", essence)])).unwrap();
            let (a, b) = body.split_at(split);
            let verdict = guard
                .on_chunk(a, false)
                .and_then(|()| guard.on_chunk(b, true));
            assert_eq!(
                verdict.is_ok(),
                accepted,
                "{essence} split at {split}: {verdict:?}"
            );
        }
    }
}
