//! Magic-byte sniffing: the first bytes of an upload must agree with its declared type, and an
//! executable is refused whatever type it claims.
//!
//! Checked types (with their common aliases): PNG, JPEG, GIF, WebP, BMP, TIFF, HEIC/HEIF/AVIF,
//! MP4/M4A/3GP (ISO media), QuickTime MOV, WebM/Matroska, MP3, Ogg, WAV, FLAC, AAC, PDF, ZIP,
//! and text/plain (valid UTF-8). A type with no known signature passes.

/// Bytes of content after which every signature can be decided: a PDF header may start this
/// far in, and a PE file's header offset is at 0x3C.
pub const ENOUGH: usize = PDF_HEADER_WINDOW;

/// How much of the content is sniffed at most: every signature sits in its first bytes, and
/// text is judged UTF-8 on this much, which keeps sniffing a few microseconds per upload.
pub const WINDOW: usize = 8 * 1024;

/// How far into the content a PDF header may start, as PDF readers allow.
const PDF_HEADER_WINDOW: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    Png,
    Jpeg,
    Gif,
    Webp,
    Bmp,
    Tiff,
    Heif,
    IsoMedia,
    QuickTime,
    Matroska,
    Mp3,
    Ogg,
    Wav,
    Flac,
    Aac,
    Pdf,
    Zip,
    Text,
}

/// The signature family of a declared type (an essence), if we know one.
fn family(essence: &str) -> Option<Family> {
    use Family::*;
    Some(match essence {
        "image/png" | "image/apng" => Png,
        "image/jpeg" | "image/jpg" | "image/pjpeg" => Jpeg,
        "image/gif" => Gif,
        "image/webp" => Webp,
        "image/bmp" | "image/x-bmp" | "image/x-ms-bmp" => Bmp,
        "image/tiff" | "image/tif" => Tiff,
        "image/heic"
        | "image/heif"
        | "image/heic-sequence"
        | "image/heif-sequence"
        | "image/avif"
        | "image/avif-sequence" => Heif,
        "video/mp4" | "audio/mp4" | "audio/m4a" | "audio/x-m4a" | "video/x-m4v" | "video/3gpp"
        | "video/3gpp2" | "audio/3gpp" | "audio/3gpp2" => IsoMedia,
        "video/quicktime" => QuickTime,
        "video/webm" | "audio/webm" | "video/x-matroska" | "audio/x-matroska" => Matroska,
        "audio/mpeg" | "audio/mp3" | "audio/mpeg3" | "audio/x-mpeg-3" => Mp3,
        "audio/ogg" | "video/ogg" | "application/ogg" | "audio/opus" | "audio/vorbis" => Ogg,
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Wav,
        "audio/flac" | "audio/x-flac" => Flac,
        "audio/aac" | "audio/x-aac" | "audio/aacp" | "audio/x-hx-aac-adts" => Aac,
        "application/pdf" => Pdf,
        "application/zip" | "application/x-zip-compressed" => Zip,
        "text/plain" => Text,
        _ => return None,
    })
}

/// Checks `head`, the first bytes of the content, against the declared type. `complete` says
/// whether `head` is the whole content. Only the first [`WINDOW`] bytes are looked at. The
/// error says what was found, for the client.
pub fn check(essence: &str, head: &[u8], complete: bool) -> Result<(), String> {
    let complete = complete && head.len() <= WINDOW;
    let head = &head[..head.len().min(WINDOW)];
    if let Some(kind) = executable(head) {
        return Err(format!("the content is {kind}, which is never accepted"));
    }
    let Some(family) = family(essence) else {
        return Ok(());
    };
    if matches(family, head, complete) {
        Ok(())
    } else if family == Family::Text {
        Err("text/plain content must be UTF-8 text".to_string())
    } else {
        Err(format!("the content does not start like {essence}"))
    }
}

fn matches(family: Family, h: &[u8], complete: bool) -> bool {
    use Family::*;
    match family {
        Png => h.starts_with(b"\x89PNG\r\n\x1a\n"),
        Jpeg => h.starts_with(b"\xff\xd8\xff"),
        Gif => h.starts_with(b"GIF87a") || h.starts_with(b"GIF89a"),
        Webp => riff(h, b"WEBP"),
        Bmp => h.starts_with(b"BM"),
        Tiff => h.starts_with(b"II*\0") || h.starts_with(b"MM\0*"),
        Heif => iso_brands(h).is_some_and(|mut brands| brands.any(is_heif_brand)),
        IsoMedia => iso_brands(h).is_some(),
        QuickTime => {
            iso_brands(h).is_some()
                || h.get(4..8)
                    .is_some_and(|atom| QUICKTIME_ATOMS.contains(&atom))
        }
        Matroska => h.starts_with(b"\x1a\x45\xdf\xa3"),
        Mp3 => h.starts_with(b"ID3") || mpeg_audio_sync(h),
        Ogg => h.starts_with(b"OggS"),
        Wav => riff(h, b"WAVE"),
        Flac => h.starts_with(b"fLaC") || h.starts_with(b"ID3"),
        Aac => h.starts_with(b"ID3") || h.starts_with(b"ADIF") || adts_sync(h),
        Pdf => {
            let window = &h[..h.len().min(PDF_HEADER_WINDOW)];
            super::multipart::find(window, b"%PDF-", 0).is_some()
        }
        Zip => [b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08"]
            .iter()
            .any(|m| h.starts_with(*m)),
        Text => is_utf8_prefix(h, complete),
    }
}

/// Top-level atoms an old QuickTime file (without `ftyp`) starts with.
const QUICKTIME_ATOMS: [&[u8]; 6] = [b"moov", b"mdat", b"wide", b"free", b"skip", b"pnot"];

fn riff(h: &[u8], form: &[u8; 4]) -> bool {
    h.starts_with(b"RIFF") && h.get(8..12) == Some(form.as_slice())
}

/// The brands of an ISO base media `ftyp` box at the start: major, then compatible ones.
fn iso_brands(h: &[u8]) -> Option<impl Iterator<Item = &[u8]>> {
    if h.get(4..8) != Some(b"ftyp".as_slice()) {
        return None;
    }
    let size = u32::from_be_bytes(h.get(0..4)?.try_into().ok()?) as usize;
    // Brands past ENOUGH are not read: the verdict must not depend on how much has arrived.
    let end = size.clamp(12, h.len().max(12)).min(h.len()).min(ENOUGH);
    let major = h.get(8..12)?;
    let compatible = h.get(16..end).unwrap_or(&[]).chunks_exact(4);
    Some(std::iter::once(major).chain(compatible))
}

fn is_heif_brand(brand: &[u8]) -> bool {
    [
        b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis", b"hevm", b"hevs", b"mif1", b"mif2",
        b"msf1", b"avif", b"avis",
    ]
    .iter()
    .any(|b| b.as_slice() == brand)
}

/// An MPEG audio frame header: 11 set sync bits.
fn mpeg_audio_sync(h: &[u8]) -> bool {
    h.len() >= 2 && h[0] == 0xff && h[1] & 0xe0 == 0xe0
}

/// An ADTS header: 12 set sync bits, layer 0.
fn adts_sync(h: &[u8]) -> bool {
    h.len() >= 2 && h[0] == 0xff && h[1] & 0xf6 == 0xf0
}

/// Valid UTF-8, allowing a character cut off at the end of a partial read.
fn is_utf8_prefix(h: &[u8], complete: bool) -> bool {
    match std::str::from_utf8(h) {
        Ok(_) => true,
        Err(e) => !complete && e.error_len().is_none(),
    }
}

/// Names the executable format `head` starts with, if any: ELF, PE, Mach-O, or a script.
pub fn executable(h: &[u8]) -> Option<&'static str> {
    if h.starts_with(b"\x7fELF") {
        return Some("an ELF executable");
    }
    let mach_o: [&[u8]; 5] = [
        b"\xfe\xed\xfa\xce",
        b"\xfe\xed\xfa\xcf",
        b"\xce\xfa\xed\xfe",
        b"\xcf\xfa\xed\xfe",
        b"\xca\xfe\xba\xbe",
    ];
    if mach_o.iter().any(|m| h.starts_with(m)) {
        return Some("a Mach-O executable");
    }
    if is_pe(h) {
        return Some("a Windows (PE) executable");
    }
    if h.starts_with(b"#!/") || h.starts_with(b"#! /") {
        return Some("a script (#!)");
    }
    None
}

/// `MZ`, then at the offset stored at 0x3C either `PE\0\0` or, when that offset lies past what
/// was read but within reach, nothing to contradict it. Text that happens to start with "MZ"
/// has a far-off or absent offset and passes.
fn is_pe(h: &[u8]) -> bool {
    if !h.starts_with(b"MZ") {
        return false;
    }
    let Some(offset) = h
        .get(0x3c..0x40)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
    else {
        return false;
    };
    let offset = offset as usize;
    if offset >= 64 * 1024 {
        return false;
    }
    match h.get(offset..offset + 4) {
        Some(signature) => signature == b"PE\0\0",
        None => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(essence: &str, head: &[u8]) -> bool {
        check(essence, head, false).is_ok()
    }

    #[test]
    fn every_listed_format_is_recognised() {
        let mut ftyp = b"\0\0\0\x18ftypisom\0\0\0\0mp41".to_vec();
        assert!(ok("video/mp4", &ftyp));
        assert!(ok("video/quicktime", b"\0\0\0\x08wide\0\0\0\0mdat"));
        ftyp[8..12].copy_from_slice(b"heic");
        assert!(ok("image/heic", &ftyp));
        assert!(ok("image/avif", b"\0\0\0\x1cftypavif\0\0\0\0avifmif1miaf"));
        for (essence, head) in [
            ("image/png", &b"\x89PNG\r\n\x1a\n...."[..]),
            ("image/jpeg", b"\xff\xd8\xff\xe0"),
            ("image/jpg", b"\xff\xd8\xff\xdb"),
            ("image/gif", b"GIF89a"),
            ("image/webp", b"RIFF\0\0\0\0WEBPVP8 "),
            ("image/bmp", b"BM...."),
            ("image/tiff", b"II*\0"),
            ("video/webm", b"\x1a\x45\xdf\xa3"),
            ("audio/mpeg", b"ID3\x04"),
            ("audio/mpeg", b"\xff\xfb\x90\x00"),
            ("audio/ogg", b"OggS\0"),
            ("audio/wav", b"RIFF\0\0\0\0WAVEfmt "),
            ("audio/flac", b"fLaC"),
            ("audio/aac", b"\xff\xf1\x50\x80"),
            ("application/pdf", b"%PDF-1.7"),
            ("application/zip", b"PK\x03\x04"),
            ("text/plain", "héllo".as_bytes()),
        ] {
            assert!(ok(essence, head), "{essence}");
        }
    }

    #[test]
    fn mismatches_are_refused() {
        assert!(!ok("image/png", b"\xff\xd8\xff\xe0"));
        assert!(!ok("application/pdf", b"\x89PNG\r\n\x1a\n"));
        assert!(!ok("image/heic", b"\0\0\0\x18ftypisom\0\0\0\0mp41"));
        assert!(!ok("image/webp", b"RIFF\0\0\0\0WAVEfmt "));
        assert!(!ok("text/plain", b"\xff\xfe\0\0binary"));
        assert!(
            check("image/png", b"", true).is_err(),
            "an empty PNG is no PNG"
        );
    }

    #[test]
    fn text_may_end_inside_a_character_only_when_more_follows() {
        let cut = &"é".as_bytes()[..1];
        assert!(check("text/plain", cut, false).is_ok());
        assert!(check("text/plain", cut, true).is_err());
    }

    #[test]
    fn executables_are_refused_under_any_type() {
        let mut pe = vec![0u8; 0x90];
        pe[..2].copy_from_slice(b"MZ");
        pe[0x3c] = 0x80;
        pe[0x80..0x84].copy_from_slice(b"PE\0\0");
        for (essence, head) in [
            ("image/png", &b"\x7fELF\x02\x01\x01"[..]),
            ("application/octet-stream", b"\xcf\xfa\xed\xfe"),
            ("text/plain", b"#!/bin/sh\nrm -rf /"),
            ("video/mp4", &pe),
        ] {
            assert!(check(essence, head, false).is_err(), "{essence}");
        }
        // Text that merely starts with "MZ" is not a PE file.
        assert!(check("text/plain", b"MZ is a two-letter word, and this text goes on and on for more than sixty-four bytes.", false).is_ok());
        assert!(ok("application/x-unknown", b"anything at all"));
    }
}
