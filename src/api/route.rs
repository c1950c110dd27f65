//! Every path the Media API serves, parsed once into a `Route`. Anything that is not one of these
//! is not the Media API, and the proxy never forwards it.

use http::Method;

use super::{MediaSid, ServiceSid};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Route {
    /// `POST /v1/Services/{IS}/Media`
    Upload { service: ServiceSid },
    /// `GET /v1/Services/{IS}/Media/{ME}`
    Metadata {
        service: ServiceSid,
        media: MediaSid,
    },
    /// `GET /v1/Services/{IS}/Media/{ME}/Content`
    Content {
        service: ServiceSid,
        media: MediaSid,
    },
    /// `POST /v1/Services/{IS}/MediaSet`
    MediaSet { service: ServiceSid },
}

/// The bounded label set the metrics use for a route.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RouteKind {
    Upload,
    Metadata,
    Content,
    MediaSet,
    Other,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// Not a Media API path.
    NotFound,
    /// A Media API path whose service or media SID is malformed.
    BadSid,
    /// A Media API path, but not with this method; carries the `Allow` value.
    MethodNotAllowed(&'static str),
}

impl Route {
    /// Parses a request's method and path (without the query string).
    pub fn parse(method: &Method, path: &str) -> Result<Route, RouteError> {
        use RouteError::NotFound;
        let rest = path.strip_prefix("/v1/Services/").ok_or(NotFound)?;
        let (service, rest) = rest.split_once('/').ok_or(NotFound)?;
        let (route, allow) = match rest {
            "Media" => (Route::upload(service)?, "POST"),
            "MediaSet" => (Route::media_set(service)?, "POST"),
            _ => {
                let media = rest.strip_prefix("Media/").ok_or(NotFound)?;
                match media.split_once('/') {
                    None => (Route::metadata(service, media)?, "GET, HEAD"),
                    Some((media, "Content")) => (Route::content(service, media)?, "GET, HEAD"),
                    Some(_) => return Err(NotFound),
                }
            }
        };
        let method_fits = match route {
            Route::Upload { .. } | Route::MediaSet { .. } => method == Method::POST,
            Route::Metadata { .. } | Route::Content { .. } => {
                method == Method::GET || method == Method::HEAD
            }
        };
        if method_fits {
            Ok(route)
        } else {
            Err(RouteError::MethodNotAllowed(allow))
        }
    }

    fn upload(service: &str) -> Result<Route, RouteError> {
        Ok(Route::Upload {
            service: parse_sid(service)?,
        })
    }

    fn media_set(service: &str) -> Result<Route, RouteError> {
        Ok(Route::MediaSet {
            service: parse_sid(service)?,
        })
    }

    fn metadata(service: &str, media: &str) -> Result<Route, RouteError> {
        Ok(Route::Metadata {
            service: parse_sid(service)?,
            media: parse_sid(media)?,
        })
    }

    fn content(service: &str, media: &str) -> Result<Route, RouteError> {
        Ok(Route::Content {
            service: parse_sid(service)?,
            media: parse_sid(media)?,
        })
    }

    pub fn service(&self) -> &ServiceSid {
        match self {
            Route::Upload { service }
            | Route::MediaSet { service }
            | Route::Metadata { service, .. }
            | Route::Content { service, .. } => service,
        }
    }

    pub fn media(&self) -> Option<&MediaSid> {
        match self {
            Route::Metadata { media, .. } | Route::Content { media, .. } => Some(media),
            Route::Upload { .. } | Route::MediaSet { .. } => None,
        }
    }

    pub fn kind(&self) -> RouteKind {
        match self {
            Route::Upload { .. } => RouteKind::Upload,
            Route::Metadata { .. } => RouteKind::Metadata,
            Route::Content { .. } => RouteKind::Content,
            Route::MediaSet { .. } => RouteKind::MediaSet,
        }
    }
}

fn parse_sid<K: super::SidKind>(text: &str) -> Result<super::Sid<K>, RouteError> {
    super::Sid::parse(text).ok_or(RouteError::BadSid)
}

impl RouteKind {
    pub const ALL: [RouteKind; 5] = [
        RouteKind::Upload,
        RouteKind::Metadata,
        RouteKind::Content,
        RouteKind::MediaSet,
        RouteKind::Other,
    ];

    /// The `route` label value of spec/metrics.md.
    pub fn label(self) -> &'static str {
        match self {
            RouteKind::Upload => "upload",
            RouteKind::Metadata => "metadata",
            RouteKind::Content => "content",
            RouteKind::MediaSet => "media_set",
            RouteKind::Other => "other",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IS: &str = "IS0123456789abcdef0123456789abcdef";
    const ME: &str = "ME0123456789abcdef0123456789abcdef";

    fn parse(method: Method, path: &str) -> Result<RouteKind, RouteError> {
        Route::parse(&method, path).map(|r| r.kind())
    }

    #[test]
    fn parses_the_four_routes() {
        let p = |s: String| s;
        assert_eq!(
            parse(Method::POST, &p(format!("/v1/Services/{IS}/Media"))),
            Ok(RouteKind::Upload)
        );
        assert_eq!(
            parse(Method::GET, &p(format!("/v1/Services/{IS}/Media/{ME}"))),
            Ok(RouteKind::Metadata)
        );
        assert_eq!(
            parse(
                Method::HEAD,
                &p(format!("/v1/Services/{IS}/Media/{ME}/Content"))
            ),
            Ok(RouteKind::Content)
        );
        assert_eq!(
            parse(Method::POST, &p(format!("/v1/Services/{IS}/MediaSet"))),
            Ok(RouteKind::MediaSet)
        );
    }

    #[test]
    fn malformed_sids_are_bad_sid() {
        assert_eq!(
            parse(Method::POST, "/v1/Services/IS123/Media"),
            Err(RouteError::BadSid)
        );
        assert_eq!(
            parse(Method::POST, "/v1/Services//Media"),
            Err(RouteError::BadSid)
        );
        assert_eq!(
            parse(Method::GET, &format!("/v1/Services/{IS}/Media/")),
            Err(RouteError::BadSid)
        );
        assert_eq!(
            parse(Method::GET, &format!("/v1/Services/{IS}/Media/..")),
            Err(RouteError::BadSid)
        );
        assert_eq!(
            parse(
                Method::GET,
                &format!("/v1/Services/{IS}/Media/{IS}/Content")
            ),
            Err(RouteError::BadSid)
        );
    }

    #[test]
    fn anything_else_is_not_found() {
        for path in [
            "/",
            "/v1",
            "/v1/Services",
            "/v2/Services/x/Media",
            &format!("/v1/Services/{IS}/Channels"),
            &format!("/v1/Services/{IS}/Media/{ME}/Content/x"),
            &format!("/v1/Services/{IS}/Media/{ME}/Content/"),
            &format!("/v1/Services/{IS}/Media/{ME}/Other"),
            &format!("/v1/Services/{IS}/MediaSet/x"),
            &format!("/v1/Services/{IS}"),
            &format!("/v1/Services/{IS}/"),
            "http://example.com/v1/Services",
        ] {
            assert_eq!(
                parse(Method::GET, path),
                Err(RouteError::NotFound),
                "{path}"
            );
        }
    }

    #[test]
    fn wrong_method_names_the_allowed_ones() {
        assert_eq!(
            parse(Method::GET, &format!("/v1/Services/{IS}/Media")),
            Err(RouteError::MethodNotAllowed("POST"))
        );
        assert_eq!(
            parse(Method::DELETE, &format!("/v1/Services/{IS}/Media/{ME}")),
            Err(RouteError::MethodNotAllowed("GET, HEAD"))
        );
    }
}
