//! Magic-byte sniffing: `policy::sniff_check` and `policy::executable`, on their own and through
//! the upload guard of a raw upload.
//!
//! Input: byte 0 picks the declared type (`TYPES`), byte 1 holds flags (bit 0: the content is
//! complete; bit 1: repeat the content past the sniff window), the rest is the content.
//!
//! Checks:
//! - only the first `SNIFF_WINDOW` bytes are read: changing any byte past it, or the
//!   `complete` flag of content longer than it, never changes the answer;
//! - content that is an executable is refused on every prefix of at least `SNIFF_ENOUGH` bytes
//!   (the upload guard decides as soon as it has that many);
//! - for every type with a signature other than text/plain, `SNIFF_ENOUGH` bytes decide the
//!   signature (as `sniff::ENOUGH` promises): a longer prefix gets the same answer;
//! - text/plain: complete content passes exactly when it is UTF-8, partial content also when it
//!   only ends inside a character;
//! - a raw upload through `check_head` + `UploadGuard::on_chunk` gets the same verdict whether
//!   the body comes in one chunk or two (an executable is refused either way, and for types
//!   other than text/plain the verdict is the same, unless a first chunk starting `MZ` is
//!   refused as a possible PE file, which sniff.rs does on purpose).
#![no_main]

use std::sync::Arc;

use http::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, CONTENT_TYPE};
use libfuzzer_sys::fuzz_target;
use mediagate::policy::{
    check_head, executable, sniff_check, Refusal, TypeMatcher, UploadRules, SNIFF_ENOUGH,
    SNIFF_WINDOW,
};

/// Every type sniff.rs knows a signature for, and a few it does not.
const TYPES: &[&str] = &[
    "image/png",
    "image/apng",
    "image/jpeg",
    "image/jpg",
    "image/pjpeg",
    "image/gif",
    "image/webp",
    "image/bmp",
    "image/x-bmp",
    "image/x-ms-bmp",
    "image/tiff",
    "image/tif",
    "image/heic",
    "image/heif",
    "image/heic-sequence",
    "image/heif-sequence",
    "image/avif",
    "image/avif-sequence",
    "video/mp4",
    "audio/mp4",
    "audio/m4a",
    "audio/x-m4a",
    "video/x-m4v",
    "video/3gpp",
    "video/3gpp2",
    "audio/3gpp",
    "audio/3gpp2",
    "video/quicktime",
    "video/webm",
    "audio/webm",
    "video/x-matroska",
    "audio/x-matroska",
    "audio/mpeg",
    "audio/mp3",
    "audio/mpeg3",
    "audio/x-mpeg-3",
    "audio/ogg",
    "video/ogg",
    "application/ogg",
    "audio/opus",
    "audio/vorbis",
    "audio/wav",
    "audio/x-wav",
    "audio/wave",
    "audio/vnd.wave",
    "audio/flac",
    "audio/x-flac",
    "audio/aac",
    "audio/x-aac",
    "audio/aacp",
    "audio/x-hx-aac-adts",
    "application/pdf",
    "application/zip",
    "application/x-zip-compressed",
    "text/plain",
    // No known signature: only the executable check applies.
    "application/octet-stream",
    "video/x-unknown",
    "image/svg+xml",
    "text/csv",
];

const TEXT: &str = "text/plain";

fn guard_verdict(essence: &str, body: &[u8], split: usize) -> Result<(), Refusal> {
    let rules = Arc::new(UploadRules {
        max_size: u64::MAX,
        types: TypeMatcher::new(&[
            "image/*".into(),
            "video/*".into(),
            "audio/*".into(),
            "application/*".into(),
            "text/*".into(),
        ]),
        sniff: true,
        require_content_size: false,
    });
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_str(essence).unwrap());
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let mut guard = check_head(&rules, &headers)?;
    let (first, second) = body.split_at(split.min(body.len()));
    if second.is_empty() {
        guard.on_chunk(first, true)
    } else {
        guard.on_chunk(first, false)?;
        guard.on_chunk(second, true)
    }
}

fn is_executable_refusal(r: &Result<(), Refusal>) -> bool {
    matches!(r, Err(refusal) if refusal.message.contains("never accepted"))
}

/// Prefix lengths worth checking: all of the first 96 bytes, then a spread up to `len`.
fn prefix_lengths(len: usize) -> impl Iterator<Item = usize> {
    let spread = [
        128,
        255,
        256,
        512,
        1023,
        1024,
        1025,
        2048,
        4096,
        len / 2,
        len - len.min(1),
        len,
    ];
    (SNIFF_ENOUGH..=len.min(96)).chain(
        spread
            .into_iter()
            .filter(move |&n| n >= SNIFF_ENOUGH && n <= len),
    )
}

fuzz_target!(|data: &[u8]| {
    let [selector, flags, content @ ..] = data else {
        return;
    };
    let essence = TYPES[usize::from(*selector) % TYPES.len()];
    let complete = flags & 1 == 1;
    let mut content = content.to_vec();
    if flags & 2 == 2 {
        let want = SNIFF_WINDOW + 1 + usize::from(*flags >> 2) * 8;
        if content.is_empty() {
            content.push(0);
        }
        content = content.iter().copied().cycle().take(want).collect();
    }
    let verdict = sniff_check(essence, &content, complete);

    // Only the window is read.
    let window = &content[..content.len().min(SNIFF_WINDOW)];
    if content.len() > SNIFF_WINDOW {
        assert_eq!(verdict, sniff_check(essence, window, false), "tail read");
        assert_eq!(
            verdict,
            sniff_check(essence, &content, !complete),
            "complete past window"
        );
        let mut changed = content.clone();
        for b in &mut changed[SNIFF_WINDOW..] {
            *b ^= 0x55;
        }
        assert_eq!(
            verdict,
            sniff_check(essence, &changed, complete),
            "tail read"
        );
    }
    if executable(window).is_some() {
        assert!(verdict.is_err(), "executable accepted as {essence}");
    }

    // What the first SNIFF_ENOUGH bytes decide, longer prefixes agree with.
    let whole_exe = executable(window).is_some();
    let whole_partial = sniff_check(essence, window, false);
    for n in prefix_lengths(window.len()) {
        let prefix = &window[..n];
        let on_prefix = sniff_check(essence, prefix, false);
        if whole_exe {
            assert!(
                on_prefix.is_err(),
                "an executable ({:?}) passes as {essence} on its first {n} bytes",
                executable(window)
            );
        } else if essence != TEXT && executable(prefix).is_none() {
            assert_eq!(
                on_prefix.is_ok(),
                whole_partial.is_ok(),
                "{essence}: {n} bytes say {on_prefix:?}, {} bytes say {whole_partial:?}",
                window.len()
            );
        }
    }

    // text/plain is UTF-8 (or a cut-off character while more is to come).
    if essence == TEXT && !whole_exe {
        let utf8 = std::str::from_utf8(window);
        let complete_here = complete && content.len() <= SNIFF_WINDOW;
        let expected = match utf8 {
            Ok(_) => true,
            Err(e) => !complete_here && e.error_len().is_none(),
        };
        assert_eq!(verdict.is_ok(), expected, "text/plain verdict");
    }

    // Through the guard, in one chunk or two.
    let whole = guard_verdict(essence, &content, content.len());
    let splits = [
        1,
        SNIFF_ENOUGH,
        SNIFF_ENOUGH + 4,
        0x3c,
        0x40,
        512,
        1024,
        content.len() / 2,
    ];
    for split in splits.into_iter().filter(|&s| s > 0 && s < content.len()) {
        let chunked = guard_verdict(essence, &content, split);
        if is_executable_refusal(&whole) {
            assert!(
                chunked.is_err(),
                "executable passes split at {split}: {whole:?}"
            );
        } else if essence != TEXT && !is_executable_refusal(&chunked) {
            // (A prefix that may still turn out to be a PE file is refused: sniff.rs's choice.)
            assert_eq!(
                chunked.as_ref().map_err(|r| r.reason),
                whole.as_ref().map_err(|r| r.reason),
                "{essence} split at {split}: {chunked:?} vs one chunk {whole:?}"
            );
        }
    }
});
